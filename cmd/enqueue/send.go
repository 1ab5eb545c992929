package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sendq/sendq/internal/redisconn"
	"github.com/sendq/sendq/tasks"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// sendOptions are the send subcommand's settings.
type sendOptions struct {
	email    tasks.Email
	attach   []string
	fromArgs bool // the message comes from flags, not stdin
	queue    string
	at       time.Time
	in       time.Duration
	key      string
}

func parseSendFlags(args []string, stderr io.Writer) (sendOptions, error) {
	fs := flag.NewFlagSet("enqueue send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o sendOptions
	var to, cc, bcc, replyTo, headers, attach listFlag
	var at string
	fs.StringVar(&o.email.AccountID, "account", "", "sending account id (from the accounts file)")
	fs.StringVar(&o.email.From, "from", "", "From address")
	fs.Var(&to, "to", "To address (repeatable)")
	fs.Var(&cc, "cc", "Cc address (repeatable)")
	fs.Var(&bcc, "bcc", "Bcc address (repeatable)")
	fs.Var(&replyTo, "reply-to", "Reply-To address (repeatable)")
	fs.StringVar(&o.email.Subject, "subject", "", "Subject")
	fs.StringVar(&o.email.Text, "text", "", "plain-text body")
	fs.StringVar(&o.email.HTML, "html", "", "HTML body")
	fs.Var(&headers, "header", `extra header "Name: value" (repeatable)`)
	fs.Var(&attach, "attach", "file to attach (repeatable)")
	fs.StringVar(&o.queue, "queue", tasks.DefaultQueue, "queue to put the tasks on")
	fs.StringVar(&at, "at", "", "send at this time (RFC 3339) instead of now")
	fs.DurationVar(&o.in, "in", 0, "send after this delay instead of now")
	fs.StringVar(&o.key, "idempotency-key", "", "the same key enqueued twice yields one email (flag mode only)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: enqueue [send] -account ID -from ADDR -to ADDR [flags]\n       enqueue [send] [-queue Q] < messages.ndjson\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o.email.To, o.email.Cc, o.email.Bcc, o.email.ReplyTo = to, cc, bcc, replyTo
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return o, fmt.Errorf("-header %q: want \"Name: value\"", h)
		}
		o.email.Headers = append(o.email.Headers, tasks.Header{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value)})
	}
	o.attach = attach
	o.fromArgs = o.email.AccountID != "" || o.email.From != "" || len(to)+len(cc)+len(bcc) > 0 ||
		o.email.Subject != "" || o.email.Text != "" || o.email.HTML != "" || len(attach) > 0
	if at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return o, fmt.Errorf("-at %q: not an RFC 3339 time", at)
		}
		o.at = t
	}
	if o.in < 0 {
		return o, fmt.Errorf("-in %s: negative delay", o.in)
	}
	if !o.fromArgs && o.key != "" {
		return o, errors.New("-idempotency-key applies to a message given by flags; on stdin give each line an idempotency_key")
	}
	return o, nil
}

// inputLine is one message read from stdin: the payload's fields plus an
// optional idempotency key.
type inputLine struct {
	tasks.Email
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// item is one message to enqueue with its place in the input.
type item struct {
	where string // "line 3", "item 2" or "flags"
	email *tasks.Email
	key   string
}

func runSend(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	o, err := parseSendFlags(args, stderr)
	if err != nil {
		return err
	}
	var items []item
	if o.fromArgs {
		for _, path := range o.attach {
			a, err := readAttachment(path)
			if err != nil {
				return err
			}
			o.email.Attachments = append(o.email.Attachments, a)
		}
		items = []item{{where: "flags", email: &o.email, key: o.key}}
	} else {
		if e.stdinIsTerminal {
			return errors.New("no message: give -account, -from, -to… or pipe JSON messages on stdin (-h for help)")
		}
		if items, err = readMessages(e.stdin); err != nil {
			return err
		}
	}
	// Validate everything before enqueueing anything: a half-enqueued batch
	// is hard to resume.
	var bad []error
	for _, it := range items {
		if err := it.email.Validate(); err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", it.where, err))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("nothing enqueued, %d invalid of %d:\n%w", len(bad), len(items), errors.Join(bad...))
	}

	opt, _, err := redisconn.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	client := tasks.NewClient(opt)
	defer client.Close()
	common := []tasks.Option{tasks.Queue(o.queue)}
	if !o.at.IsZero() {
		common = append(common, tasks.ProcessAt(o.at))
	}
	if o.in > 0 {
		common = append(common, tasks.ProcessIn(o.in))
	}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	for i, it := range items {
		opts := common
		if it.key != "" {
			opts = append(append([]tasks.Option{}, common...), tasks.IdempotencyKey(it.key))
		}
		res, err := client.Enqueue(ctx, it.email, opts...)
		if err != nil {
			out.Flush()
			return fmt.Errorf("%s: %w (%d of %d enqueued before it; their IDs are above)", it.where, err, i, len(items))
		}
		if res.Duplicate {
			fmt.Fprintf(stderr, "%s: already enqueued with the same idempotency key as task %s\n", it.where, res.TaskID)
		}
		fmt.Fprintln(out, res.TaskID)
	}
	return nil
}

// readMessages reads NDJSON (one object per line) or a JSON array.
func readMessages(r io.Reader) ([]item, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("no message on stdin")
	}
	var items []item
	if trimmed[0] == '[' {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		var lines []inputLine
		if err := dec.Decode(&lines); err != nil {
			return nil, fmt.Errorf("stdin: %w", err)
		}
		for i := range lines {
			items = append(items, item{where: fmt.Sprintf("item %d", i+1), email: &lines[i].Email, key: lines[i].IdempotencyKey})
		}
		return items, nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 64<<20)
	var bad []error
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var in inputLine
		if err := dec.Decode(&in); err != nil {
			bad = append(bad, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		items = append(items, item{where: fmt.Sprintf("line %d", n), email: &in.Email, key: in.IdempotencyKey})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("nothing enqueued:\n%w", errors.Join(bad...))
	}
	return items, nil
}

func readAttachment(path string) (tasks.Attachment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return tasks.Attachment{}, fmt.Errorf("-attach: %w", err)
	}
	name := filepath.Base(path)
	return tasks.Attachment{Filename: name, Data: data}, nil // BuildMIME picks the type from the name
}
