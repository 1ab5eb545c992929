package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/sendq/sendq/ledger"
)

// deadPage is the JSON output of "enqueue dead -json".
type deadPage struct {
	// Total counts every dead letter, Offset is where the page starts.
	Total       int                  `json:"total"`
	Offset      int                  `json:"offset"`
	DeadLetters []*ledger.DeadLetter `json:"dead_letters"`
}

func runDead(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("enqueue dead", flag.ContinueOnError)
	fs.SetOutput(stderr)
	limit := fs.Int("limit", ledger.DefaultDeadLetterPage, "how many dead letters to list")
	offset := fs.Int("offset", 0, "how many of the newest to skip")
	asJSON := fs.Bool("json", false, `print {"total", "offset", "dead_letters"} as JSON`)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: enqueue dead [-limit N] [-offset N] [-json]

Lists the dead letters, newest first: mail given up for good (kind
"message") and recipients refused while the message went to the others
(kind "recipients"). Requeue one with "enqueue requeue ID".

%s
`, operatorEnvHelp)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("dead: unexpected argument %q", fs.Arg(0))
	}
	if *limit < 1 || *offset < 0 {
		return fmt.Errorf("dead: -limit %d -offset %d: want a positive limit and an offset of at least 0", *limit, *offset)
	}
	admin, err := openAdmin(e)
	if err != nil {
		return err
	}
	defer admin.Close()
	list, total, err := admin.DeadLetters(ctx, *offset, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(deadPage{Total: total, Offset: *offset, DeadLetters: list})
	}
	writeDeadLetters(stdout, list, total, *offset)
	return nil
}

// writeDeadLetters prints a page of dead letters as a table, then where the
// page sits among all of them.
func writeDeadLetters(w io.Writer, list []*ledger.DeadLetter, total, offset int) {
	if total == 0 {
		fmt.Fprintln(w, "no dead letters")
		return
	}
	if len(list) > 0 {
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tWHEN\tKIND\tACCOUNT\tRCPTS\tREASON")
		for _, d := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, formatTime(d.At), d.Kind, d.Account, len(d.Recipients), d.Reason)
		}
		tw.Flush()
	}
	switch end := offset + len(list); {
	case len(list) == 0:
		fmt.Fprintf(w, "no dead letters past %d (there are %d)\n", offset, total)
	case end < total:
		fmt.Fprintf(w, "%d-%d of %d dead letters; next page: -offset %d\n", offset+1, end, total, end)
	default:
		fmt.Fprintf(w, "%d-%d of %d dead letters\n", offset+1, end, total)
	}
}
