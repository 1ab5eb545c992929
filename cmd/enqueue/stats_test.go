package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/tasks"
)

func TestStatsCommand(t *testing.T) {
	t.Parallel()
	b := setupOps(t)
	ctx := context.Background()

	// One completed, two pending, one scheduled, one archived (with its
	// dead letter).
	done := b.enqueue(t, []string{"a@example.net"})
	b.complete(t, done.TaskID)
	b.enqueue(t, []string{"b@example.net"})
	b.enqueue(t, []string{"c@example.net"})
	b.enqueue(t, []string{"d@example.net"}, tasks.ProcessIn(time.Hour))
	b.archive(t, b.enqueue(t, []string{"e@example.net"}), "message content rejected: 554 5.6.0 refused")
	// Accounts: one held, one throttled, one ok that sent lately.
	if err := b.store.Hold(ctx, "support", ledger.HoldReauthorize, "token refresh refused: invalid_grant"); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Throttle(ctx, "sales", storeNow.Add(time.Hour), "550 5.4.5 daily sending quota exceeded"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Allow(ctx, "billing", ledger.Use{Rate: ledger.Rate{Name: "messages_per_minute", Limit: 30, Window: time.Minute}, N: 1}); err != nil {
		t.Fatal(err)
	}
	unknownQueue := b.queue + "-unknown"

	t.Run("TextShowsQueuesAndTheAccountsTheLedgerKnows", func(t *testing.T) {
		out := b.mustRun(t, "stats", "-queue", b.queue, "-queue", unknownQueue)
		queues, accounts, ok := strings.Cut(out, "\n\n")
		if !ok {
			t.Fatalf("no blank line between the tables:\n%s", out)
		}
		lines := strings.Split(queues, "\n")
		wantRows := [][]string{
			{"QUEUE", "PENDING", "ACTIVE", "SCHEDULED", "RETRY", "ARCHIVED", "COMPLETED", "PROCESSED", "TODAY", "FAILED", "TODAY"},
			{b.queue, "2", "0", "1", "0", "1", "1", "1", "0"},
			{unknownQueue, "0", "0", "0", "0", "0", "0", "0", "0"},
		}
		if len(lines) != len(wantRows) {
			t.Fatalf("queue table has %d lines, want %d:\n%s", len(lines), len(wantRows), out)
		}
		for i, want := range wantRows {
			if got := strings.Fields(lines[i]); !slices.Equal(got, want) {
				t.Errorf("queue table line %d: %q, want %q", i+1, got, want)
			}
		}
		// Aligned: every value ends where its header does not start yet,
		// that is, each column starts at the same offset on every line.
		if h, r := lines[0], lines[1]; strings.Index(h, "PENDING") != strings.Index(r, " 2 ")+1 {
			t.Errorf("columns not aligned:\n%s\n%s", h, r)
		}
		checkOutput(t, accounts, `ACCOUNT  STATE               UNTIL                 DEAD LETTERS  REASON
billing  ok                  -                     0             -
sales    throttled           2026-03-02T10:30:00Z  0             550 5.4.5 daily sending quota exceeded
support  held (reauthorize)  -                     1             token refresh refused: invalid_grant
`)
	})

	t.Run("EveryQueueByDefault", func(t *testing.T) {
		out := b.mustRun(t, "stats")
		if !strings.Contains(out, "\n"+b.queue+" ") {
			t.Errorf("stats without -queue does not list %s:\n%s", b.queue, out)
		}
	})

	t.Run("AccountsFromTheFileWithoutTheirSecrets", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "accounts.yaml")
		err := os.WriteFile(path, []byte(`accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth: {grant: refresh_token, client_id: x, client_secret_env: UNSET_SECRET, refresh_token_env: UNSET_TOKEN}
  - id: marketing
    provider: microsoft
    username: marketing@example.com
`), 0o600)
		if err != nil {
			t.Fatal(err)
		}
		out := b.mustRun(t, "stats", "-queue", b.queue, "-accounts", path)
		_, accounts, _ := strings.Cut(out, "\n\n")
		checkOutput(t, accounts, `ACCOUNT    STATE               UNTIL  DEAD LETTERS  REASON
support    held (reauthorize)  -      1             token refresh refused: invalid_grant
marketing  ok                  -      0             -
`)
		if _, _, err := b.run(t, "stats", "-accounts", filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
			t.Errorf("missing accounts file: %v, want an error naming it", err)
		}
	})

	t.Run("JSON", func(t *testing.T) {
		var got stats
		if err := json.Unmarshal([]byte(b.mustRun(t, "stats", "-json", "-queue", b.queue)), &got); err != nil {
			t.Fatal(err)
		}
		wantQueue := queueStats{Queue: b.queue, Pending: 2, Scheduled: 1, Archived: 1, Completed: 1, ProcessedToday: 1}
		if len(got.Queues) != 1 || got.Queues[0] != wantQueue {
			t.Errorf("queues %+v, want [%+v]", got.Queues, wantQueue)
		}
		wantAccounts := []accountStats{
			{Account: "billing", State: "ok"},
			{Account: "sales", State: "throttled", Until: storeNow.Add(time.Hour), Reason: "550 5.4.5 daily sending quota exceeded"},
			{Account: "support", State: "held", Hold: ledger.HoldReauthorize, Reason: "token refresh refused: invalid_grant", DeadLetters: 1},
		}
		if len(got.Accounts) != len(wantAccounts) {
			t.Fatalf("accounts %+v, want %+v", got.Accounts, wantAccounts)
		}
		for i, want := range wantAccounts {
			g := got.Accounts[i]
			if g.Account != want.Account || g.State != want.State || g.Hold != want.Hold || !g.Until.Equal(want.Until) ||
				g.Reason != want.Reason || g.DeadLetters != want.DeadLetters {
				t.Errorf("account %d: %+v, want %+v", i, g, want)
			}
		}
	})
}
