package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"gopkg.in/yaml.v3"

	"github.com/sendq/sendq/internal/redisconn"
	"github.com/sendq/sendq/ledger"
)

// stats is the JSON output of "enqueue stats -json".
type stats struct {
	Queues   []queueStats   `json:"queues"`
	Accounts []accountStats `json:"accounts"`
}

// queueStats is one queue's counts, from asynq's Inspector. ProcessedToday
// and FailedToday count since midnight UTC; processed includes failed.
type queueStats struct {
	Queue          string `json:"queue"`
	Paused         bool   `json:"paused,omitempty"`
	Pending        int    `json:"pending"`
	Active         int    `json:"active"`
	Scheduled      int    `json:"scheduled"`
	Retry          int    `json:"retry"`
	Archived       int    `json:"archived"`
	Completed      int    `json:"completed"`
	ProcessedToday int    `json:"processed_today"`
	FailedToday    int    `json:"failed_today"`
}

// accountStats is one account's health, from the ledger, with its dead
// letters.
type accountStats struct {
	Account     string    `json:"account"`
	State       string    `json:"state"`
	Hold        string    `json:"hold,omitempty"`
	Until       time.Time `json:"until,omitzero"`
	Reason      string    `json:"reason,omitempty"`
	DeadLetters int       `json:"dead_letters"`
}

// queueList is the repeatable -queue flag.
type queueList []string

func (q *queueList) String() string     { return fmt.Sprint(*q) }
func (q *queueList) Set(v string) error { *q = append(*q, v); return nil }

func runStats(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("enqueue stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var queues queueList
	fs.Var(&queues, "queue", "show queue `Q` (repeatable); default every queue asynq knows")
	accountsFile := fs.String("accounts", "", "show the accounts of the workers' accounts `FILE` (only their ids are read: no secret needed); default the accounts the ledger knows")
	asJSON := fs.Bool("json", false, `print {"queues", "accounts"} as JSON`)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: enqueue stats [-queue Q]... [-accounts FILE] [-json]

Prints the queues and the accounts at a glance. Per queue, its tasks
pending, active, scheduled, retrying, archived and completed (kept), and
those processed and failed today (UTC; processed includes failed). Per
account, its state (ok, throttled, auth-failing, held) with until when and
why, and its dead letters ("enqueue dead" lists them). Without -accounts,
the accounts are those the ledger holds something for: a state other than
ok, a refresh token, recent sending, or dead letters.

%s
`, operatorEnvHelp)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("stats: unexpected argument %q", fs.Arg(0))
	}
	var ids []string
	if *accountsFile != "" {
		var err error
		if ids, err = readAccountIDs(*accountsFile); err != nil {
			return err
		}
	}

	opt, _, err := redisconn.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	rdb, err := redisconn.Client(opt)
	if err != nil {
		return err
	}
	defer rdb.Close()
	st, err := collectStats(ctx, asynq.NewInspectorFromRedisClient(rdb),
		ledger.New(rdb, ledger.Options{Prefix: e.getenv(ledgerPrefixEnv)}), queues, ids)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(st)
	}
	writeStats(stdout, st)
	return nil
}

// readAccountIDs returns the account ids of an accounts file, in file
// order. It reads nothing else: the operator's machine needs none of the
// secrets the workers load.
func readAccountIDs(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("stats: -accounts: %w", err)
	}
	var f struct {
		Accounts []struct {
			ID string `yaml:"id"`
		} `yaml:"accounts"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("stats: -accounts %s: %w", path, err)
	}
	var ids []string
	for i, a := range f.Accounts {
		if a.ID == "" {
			return nil, fmt.Errorf("stats: -accounts %s: account %d has no id", path, i+1)
		}
		ids = append(ids, a.ID)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("stats: -accounts %s: no accounts", path)
	}
	return ids, nil
}

// collectStats reads the queues (every queue asynq knows when queues is
// empty; a named queue asynq does not know shows empty) and the accounts
// (those the ledger knows, with dead letters or state, when ids is empty).
func collectStats(ctx context.Context, insp *asynq.Inspector, store *ledger.Store, queues, ids []string) (*stats, error) {
	st := &stats{Queues: []queueStats{}, Accounts: []accountStats{}}
	known, err := insp.Queues()
	if err != nil {
		return nil, fmt.Errorf("stats: list queues: %w", err)
	}
	if len(queues) == 0 {
		queues = slices.Sorted(slices.Values(known))
	}
	for _, q := range queues {
		if !slices.Contains(known, q) {
			st.Queues = append(st.Queues, queueStats{Queue: q})
			continue
		}
		info, err := insp.GetQueueInfo(q)
		if err != nil {
			if now, lerr := insp.Queues(); lerr == nil && !slices.Contains(now, q) {
				// Deleted since the listing: it shows empty, as an
				// unknown queue does.
				st.Queues = append(st.Queues, queueStats{Queue: q})
				continue
			}
			return nil, fmt.Errorf("stats: queue %s: %w", q, err)
		}
		st.Queues = append(st.Queues, queueStats{
			Queue: q, Paused: info.Paused, Pending: info.Pending, Active: info.Active,
			Scheduled: info.Scheduled, Retry: info.Retry, Archived: info.Archived,
			Completed: info.Completed, ProcessedToday: info.Processed, FailedToday: info.Failed,
		})
	}

	dead, err := deadLettersByAccount(ctx, store)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		if ids, err = store.KnownAccounts(ctx); err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
		for id := range dead {
			if id != "" && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
	}
	for _, id := range ids {
		a, err := store.Account(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
		st.Accounts = append(st.Accounts, accountStats{Account: id, State: string(a.State), Hold: a.Hold,
			Until: a.Until, Reason: a.Reason, DeadLetters: dead[id]})
	}
	return st, nil
}

// deadLettersByAccount counts the dead letters of each account, reading
// them a page at a time.
func deadLettersByAccount(ctx context.Context, store *ledger.Store) (map[string]int, error) {
	const page = 1000
	n := make(map[string]int)
	for offset := 0; ; offset += page {
		list, total, err := store.DeadLetters(ctx, offset, page)
		if err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
		for _, d := range list {
			n[d.Account]++
		}
		if len(list) == 0 || offset+len(list) >= total {
			return n, nil
		}
	}
}

// writeStats prints the queues and the accounts as two aligned tables.
func writeStats(w io.Writer, st *stats) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	if len(st.Queues) == 0 {
		fmt.Fprintln(w, "no queues")
	} else {
		fmt.Fprintln(tw, "QUEUE\tPENDING\tACTIVE\tSCHEDULED\tRETRY\tARCHIVED\tCOMPLETED\tPROCESSED TODAY\tFAILED TODAY")
		for _, q := range st.Queues {
			name := q.Queue
			if q.Paused {
				name += " (paused)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", name, q.Pending, q.Active, q.Scheduled,
				q.Retry, q.Archived, q.Completed, q.ProcessedToday, q.FailedToday)
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	if len(st.Accounts) == 0 {
		fmt.Fprintln(w, "no accounts known to the ledger (give -accounts FILE to list them all)")
		return
	}
	fmt.Fprintln(tw, "ACCOUNT\tSTATE\tUNTIL\tDEAD LETTERS\tREASON")
	for _, a := range st.Accounts {
		state, until := a.State, "-"
		if a.Hold != "" {
			state += " (" + a.Hold + ")"
		}
		if !a.Until.IsZero() {
			until = formatTime(a.Until)
		}
		reason := a.Reason
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", a.Account, state, until, a.DeadLetters, reason)
	}
	tw.Flush()
}
