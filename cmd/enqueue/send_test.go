package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/tasks"
)

// sendTestDB is the Redis database of this package's tests.
const sendTestDB = 6

func testEnv(stdin string) env {
	url := redistest.URL(sendTestDB)
	return env{
		getenv: func(k string) string {
			if k == "REDIS_URL" {
				return url
			}
			return ""
		},
		stdin: strings.NewReader(stdin),
	}
}

// pendingPayloads returns the decoded payloads of the queue's pending tasks.
func pendingPayloads(t *testing.T, queue string) []*tasks.Payload {
	t.Helper()
	insp := asynq.NewInspector(redistest.ConnOpt(sendTestDB))
	defer insp.Close()
	infos, err := insp.ListPendingTasks(queue)
	if errors.Is(err, asynq.ErrQueueNotFound) {
		return nil // nothing was ever enqueued on it
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []*tasks.Payload
	for _, info := range infos {
		p, err := tasks.DecodePayload(info.Payload)
		if err != nil {
			t.Fatalf("task %s: %v", info.ID, err)
		}
		out = append(out, p)
	}
	return out
}

func TestSendFromFlags(t *testing.T) {
	t.Parallel()
	queue := redistest.Queue(t, sendTestDB)
	attachment := filepath.Join(t.TempDir(), "report.txt")
	os.WriteFile(attachment, []byte("report body"), 0o600)
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-queue", queue, "-account", "support", "-from", "Support <s@example.com>",
		"-to", "a@example.net", "-to", "b@example.net", "-cc", "c@example.net", "-subject", "Hello",
		"-text", "plain", "-html", "<p>html</p>", "-header", "X-Ticket: 42", "-attach", attachment}, testEnv(""), &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v; stderr: %s", err, stderr.String())
	}
	ids := strings.Fields(stdout.String())
	if len(ids) != 1 {
		t.Fatalf("printed %q, want one task ID", stdout.String())
	}
	ps := pendingPayloads(t, queue)
	if len(ps) != 1 {
		t.Fatalf("%d pending tasks, want 1", len(ps))
	}
	p := ps[0]
	if p.AccountID != "support" || len(p.To) != 2 || len(p.Cc) != 1 || p.Headers[0].Name != "X-Ticket" ||
		len(p.Attachments) != 1 || string(p.Attachments[0].Data) != "report body" || p.Attachments[0].Filename != "report.txt" {
		t.Errorf("payload %+v", p.Email)
	}
}

func TestSendFromStdin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		input string
	}{
		{"NDJSON", `{"account_id":"a","from":"f@example.com","to":["x@example.net"],"subject":"1","text":"t"}

{"account_id":"a","from":"f@example.com","to":["y@example.net"],"subject":"2","text":"t","idempotency_key":"k-2"}
`},
		{"JSONArray", `[{"account_id":"a","from":"f@example.com","to":["x@example.net"],"text":"t"},
 {"account_id":"a","from":"f@example.com","to":["y@example.net"],"text":"t"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			queue := redistest.Queue(t, sendTestDB)
			var stdout, stderr bytes.Buffer
			if err := run(context.Background(), []string{"-queue", queue}, testEnv(tc.input), &stdout, &stderr); err != nil {
				t.Fatalf("%v; stderr: %s", err, stderr.String())
			}
			if n := len(strings.Fields(stdout.String())); n != 2 {
				t.Errorf("printed %d task IDs, want 2", n)
			}
			if n := len(pendingPayloads(t, queue)); n != 2 {
				t.Errorf("%d pending tasks, want 2", n)
			}
		})
	}
}

func TestSendRefusesInvalidInputNamingLineAndField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		args  []string
		input string
		want  []string
	}{
		{name: "BadAddressOnLine3", input: `{"account_id":"a","from":"f@example.com","to":["x@example.net"],"text":"t"}
{"account_id":"a","from":"f@example.com","to":["y@example.net"],"text":"t"}
{"account_id":"a","from":"f@example.com","to":["not-an-address"],"text":"t"}
`, want: []string{"line 3", "to[0]"}},
		{name: "UnknownField", input: `{"account_id":"a","from":"f@example.com","to":["x@example.net"],"text":"t","colour":"red"}`,
			want: []string{"line 1", "colour"}},
		{name: "HeaderInjectionFromFlags", args: []string{"-account", "a", "-from", "f@example.com", "-to", "x@example.net", "-subject", "hi\nBcc: e@example.net", "-text", "t"},
			want: []string{"flags", "subject"}},
		{name: "NoRecipient", args: []string{"-account", "a", "-from", "f@example.com", "-text", "t"}, want: []string{"flags", "recipient"}},
		{name: "MissingAttachment", args: []string{"-account", "a", "-from", "f@example.com", "-to", "x@example.net", "-attach", "/nonexistent/file"},
			want: []string{"-attach"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			queue := redistest.Queue(t, sendTestDB)
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"-queue", queue}, tc.args...), testEnv(tc.input), &stdout, &stderr)
			if err == nil {
				t.Fatal("accepted invalid input")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("printed task IDs for a refused batch: %q", stdout.String())
			}
			if n := len(pendingPayloads(t, queue)); n != 0 {
				t.Errorf("%d tasks enqueued from invalid input, want 0", n)
			}
		})
	}
}

func TestSendIdempotencyKeyYieldsOneTask(t *testing.T) {
	t.Parallel()
	queue := redistest.Queue(t, sendTestDB)
	args := []string{"-queue", queue, "-account", "a", "-from", "f@example.com", "-to", "x@example.net", "-text", "t", "-idempotency-key", "invoice-7"}
	var first, second, stderr bytes.Buffer
	if err := run(context.Background(), args, testEnv(""), &first, &stderr); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), args, testEnv(""), &second, &stderr); err != nil {
		t.Fatal(err)
	}
	if first.String() != second.String() {
		t.Errorf("task IDs differ: %q then %q", first.String(), second.String())
	}
	if n := len(pendingPayloads(t, queue)); n != 1 {
		t.Errorf("%d tasks, want 1", n)
	}
}
