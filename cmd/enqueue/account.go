package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/sendq/sendq/ledger"
)

const accountUsage = `usage: enqueue account status [-json] ID
       enqueue account list [-json]
       enqueue account resume ID

status  prints the health of one account as the workers see it
list    lists the accounts whose mail does not flow freely: throttled,
        failing authentication, or held until someone acts
resume  returns an account to ok after its cause was fixed (a new
        configuration, a re-authorization done outside sendq)

`

// accountJSON is the JSON form of a ledger.AccountStatus.
type accountJSON struct {
	Account           string    `json:"account"`
	State             string    `json:"state"`
	Until             time.Time `json:"until,omitzero"`
	Hold              string    `json:"hold,omitempty"`
	Reason            string    `json:"reason,omitempty"`
	Since             time.Time `json:"since,omitzero"`
	AuthFailures      int       `json:"auth_failures,omitempty"`
	InvalidGrants     int       `json:"invalid_grants,omitempty"`
	FirstInvalidGrant time.Time `json:"first_invalid_grant,omitzero"`
}

func toAccountJSON(st ledger.AccountStatus) accountJSON {
	return accountJSON{
		Account: st.Account, State: string(st.State), Until: st.Until, Hold: st.Hold, Reason: st.Reason,
		Since: st.Since, AuthFailures: st.AuthFailures, InvalidGrants: st.InvalidGrants,
		FirstInvalidGrant: st.FirstInvalidGrant,
	}
}

func runAccount(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	usage := func() { fmt.Fprintf(stderr, "%s%s", accountUsage, operatorEnvHelp) }
	if len(args) == 0 {
		usage()
		return errors.New("account: no subcommand given")
	}
	name, args := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help", "help":
		usage()
		return flag.ErrHelp
	case "status", "list", "resume":
	default:
		usage()
		return fmt.Errorf("account: unknown subcommand %q", name)
	}

	fs := flag.NewFlagSet("enqueue account "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var asJSON *bool
	if name != "resume" {
		asJSON = fs.Bool("json", false, "print JSON")
	}
	fs.Usage = func() {
		usage()
		fs.PrintDefaults()
	}
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	wantArgs := 1
	if name == "list" {
		wantArgs = 0
	}
	if len(rest) != wantArgs {
		fs.Usage()
		return fmt.Errorf("account %s: want %d argument(s), got %d", name, wantArgs, len(rest))
	}
	admin, err := openAdmin(e)
	if err != nil {
		return err
	}
	defer admin.Close()

	switch name {
	case "status":
		st, err := admin.AccountStatus(ctx, rest[0])
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(toAccountJSON(st))
		}
		writeAccount(stdout, st, time.Now())
	case "list":
		list, err := admin.Accounts(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			out := make([]accountJSON, 0, len(list))
			for _, st := range list {
				out = append(out, toAccountJSON(st))
			}
			return json.NewEncoder(stdout).Encode(out)
		}
		writeAccounts(stdout, list)
	case "resume":
		id := rest[0]
		before, err := admin.AccountStatus(ctx, id)
		if err != nil {
			return err
		}
		if err := admin.ResumeAccount(ctx, id); err != nil {
			return err
		}
		if before.State == ledger.AccountOK {
			fmt.Fprintf(stdout, "account %s was ok already\n", id)
			return nil
		}
		was := describeState(before)
		if before.Reason != "" {
			was += ": " + before.Reason
		}
		fmt.Fprintf(stdout, "account %s resumed (was %s)\n", id, was)
	}
	return nil
}

// describeState names the state with its hold kind, "held (reauthorize)".
func describeState(st ledger.AccountStatus) string {
	if st.Hold != "" {
		return fmt.Sprintf("%s (%s)", st.State, st.Hold)
	}
	return string(st.State)
}

// writeAccount prints one account's health as a block of fields; now
// decides whether a pause is still running.
func writeAccount(w io.Writer, st ledger.AccountStatus, now time.Time) {
	fmt.Fprintf(w, "account %s\n", st.Account)
	field := func(name, format string, args ...any) {
		fmt.Fprintf(w, "  %-15s %s\n", name+":", fmt.Sprintf(format, args...))
	}
	field("state", "%s", describeState(st))
	switch {
	case st.State == ledger.AccountOK:
		field("mail", "flows")
	case st.State == ledger.AccountHeld:
		field("mail", "held until someone acts, then: enqueue account resume %s", st.Account)
	case now.Before(st.Until):
		field("mail", "waits until %s", formatTime(st.Until))
	default:
		field("mail", "flows again since %s; the state clears at the next successful send", formatTime(st.Until))
	}
	if st.Reason != "" {
		field("reason", "%s", st.Reason)
	}
	if !st.Since.IsZero() {
		field("since", "%s", formatTime(st.Since))
	}
	if st.AuthFailures > 0 {
		field("auth failures", "%d", st.AuthFailures)
	}
	if st.InvalidGrants > 0 {
		field("invalid grants", "%d since %s", st.InvalidGrants, formatTime(st.FirstInvalidGrant))
	}
}

// writeAccounts prints the unhealthy accounts as a table.
func writeAccounts(w io.Writer, list []ledger.AccountStatus) {
	if len(list) == 0 {
		fmt.Fprintln(w, "every account is ok")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tSTATE\tUNTIL\tSINCE\tREASON")
	for _, st := range list {
		until := "-"
		if !st.Until.IsZero() {
			until = formatTime(st.Until)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", st.Account, describeState(st), until, formatTime(st.Since), st.Reason)
	}
	tw.Flush()
}
