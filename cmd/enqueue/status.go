package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sendq/sendq/internal/redisconn"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/tasks"
)

// ledgerPrefixEnv names the environment variable holding the ledger's key
// prefix; it must match the workers'. Empty means ledger.DefaultPrefix.
const ledgerPrefixEnv = "SENDQ_LEDGER_PREFIX"

// operatorEnvHelp is the environment paragraph of the operator commands'
// usage.
const operatorEnvHelp = "Redis: REDIS_URL (default redis://127.0.0.1:6379/0), REDIS_CA_FILE, REDIS_SENTINEL_ADDRS, REDIS_SENTINEL_MASTER; ledger key prefix: " +
	ledgerPrefixEnv + " (default " + ledger.DefaultPrefix + ", the worker's)\n"

// openAdmin connects the operator commands to the queue and the ledger.
func openAdmin(e env) (*tasks.Admin, error) {
	opt, _, err := redisconn.FromEnv(e.getenv)
	if err != nil {
		return nil, err
	}
	return tasks.NewAdmin(opt, ledger.Options{Prefix: e.getenv(ledgerPrefixEnv)})
}

// parseInterspersed parses fs over args, letting flags follow positional
// arguments ("status ID -json"), and returns the positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

// timeFormat is how the operator commands print times: UTC, to the second.
const timeFormat = time.RFC3339

func formatTime(t time.Time) string { return t.UTC().Format(timeFormat) }

func runStatus(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("enqueue status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	queue := fs.String("queue", tasks.DefaultQueue, "queue the tasks are in")
	asJSON := fs.Bool("json", false, "print one JSON object per task (NDJSON)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: enqueue status [-queue Q] [-json] TASK_ID...

Prints what became of each task: its state, retries, next attempt and
last error; for an archived task the class and reason it was given up;
for a completed one the accepted and refused recipients and the server's
reply. Never a message body.

%s
`, operatorEnvHelp)
		fs.PrintDefaults()
	}
	ids, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		fs.Usage()
		return errors.New("status: no task ID given")
	}
	admin, err := openAdmin(e)
	if err != nil {
		return err
	}
	defer admin.Close()

	var errs []error
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	printed := 0
	for _, id := range ids {
		st, err := admin.Status(ctx, *queue, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if *asJSON {
			if err := enc.Encode(st); err != nil {
				return err
			}
			continue
		}
		if printed > 0 {
			fmt.Fprintln(stdout)
		}
		printed++
		writeStatus(stdout, st)
	}
	return errors.Join(errs...)
}

// writeStatus prints one task's status as an indented block of fields.
func writeStatus(w io.Writer, st *tasks.Status) {
	fmt.Fprintf(w, "task %s\n", st.TaskID)
	field := func(name, format string, args ...any) {
		fmt.Fprintf(w, "  %-13s %s\n", name+":", fmt.Sprintf(format, args...))
	}
	field("queue", "%s", st.Queue)
	state := string(st.State)
	switch {
	case st.Deferred:
		state += " (deferred: the account may not send yet)"
	case st.Trimmed:
		state += " (trimmed from the queue; the dead letter remains)"
	}
	field("state", "%s", state)
	if st.MessageID != "" {
		field("message-id", "%s", st.MessageID)
	}
	if st.Account != "" {
		field("account", "%s", st.Account)
	}
	if !st.Trimmed {
		field("retries", "%d of %d", st.Attempts, st.MaxRetry)
	}
	if !st.NextAttempt.IsZero() {
		field("next attempt", "%s", formatTime(st.NextAttempt))
	}
	if st.Class != "" {
		field("class", "%s", st.Class)
	}
	if st.Reason != "" {
		field("reason", "%s", st.Reason)
	}
	if st.LastError != "" && st.Reason == "" {
		field("last error", "%s", st.LastError)
	}
	if !st.CompletedAt.IsZero() {
		field("completed", "%s", formatTime(st.CompletedAt))
	}
	if r := st.Result; r != nil {
		field("accepted", "%s", listOrNone(r.Accepted))
		for _, rj := range r.Rejected {
			field("rejected", "%s (%s)", rj.Address, rj.Reply)
		}
		if r.Reply != "" {
			field("reply", "%s", r.Reply)
		}
		if r.PossibleDuplicate {
			field("warning", "possible duplicate: an attempt lost its connection after sending the message")
		}
	}
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
