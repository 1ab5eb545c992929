package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/ledger"
)

func TestRequeueCommand(t *testing.T) {
	t.Parallel()

	t.Run("ByID", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		archived := b.enqueue(t, []string{"alice@example.org"})
		b.archive(t, archived, "message rejected: 554 5.6.0 content rejected")
		trimmed := b.enqueue(t, []string{"bob@example.org"})
		b.archive(t, trimmed, "gave up after 300 attempts: 451 4.3.0 try later")
		if err := b.insp.DeleteTask(b.queue, trimmed.TaskID); err != nil {
			t.Fatal(err)
		}

		out := b.mustRun(t, "requeue", archived.TaskID, trimmed.TaskID)
		checkOutput(t, out, `ARCHIVED: task ARCHIVED runs again on queue QUEUE
TRIMMED: enqueued as task TRIMMED on queue QUEUE
`, "ARCHIVED", archived.TaskID, "TRIMMED", trimmed.TaskID, "QUEUE", b.queue)
		for _, id := range []string{archived.TaskID, trimmed.TaskID} {
			info, err := b.insp.GetTaskInfo(b.queue, id)
			if err != nil || info.State != asynq.TaskStatePending {
				t.Errorf("task %s: %v, %v; want pending", id, info, err)
			}
		}
		if out := b.mustRun(t, "dead"); out != "no dead letters\n" {
			t.Errorf("dead letters left:\n%s", out)
		}
	})

	t.Run("Recipients", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		ctx := context.Background()
		enq := b.enqueue(t, []string{"alice@example.org", "bob@example.org"})
		b.complete(t, enq.TaskID)
		info, err := b.insp.GetTaskInfo(b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		dl := &ledger.DeadLetter{
			Kind: ledger.DeadLetterRecipients, TaskID: enq.TaskID, Queue: b.queue, MessageID: enq.MessageID,
			Account: "support", Recipients: []string{"bob@example.org"}, Reason: "recipient rejected: 550 5.1.1 user unknown",
			Payload: info.Payload,
		}
		if err := b.store.AddDeadLetter(ctx, dl); err != nil {
			t.Fatal(err)
		}
		out := b.mustRun(t, "requeue", dl.ID)
		prefix := dl.ID + ": enqueued as task requeue-"
		if !strings.HasPrefix(out, prefix) || !strings.HasSuffix(out, " on queue "+b.queue+"\n") {
			t.Errorf("output %q; want %q…", out, prefix)
		}
	})

	t.Run("All", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		for _, to := range []string{"alice@example.org", "bob@example.org"} {
			b.archive(t, b.enqueue(t, []string{to}), "message rejected")
		}
		checkOutput(t, b.mustRun(t, "requeue", "-all"), "requeued 2 dead letters\n")
		pending, err := b.insp.ListPendingTasks(b.queue)
		if err != nil || len(pending) != 2 {
			t.Errorf("%d pending tasks, %v; want 2", len(pending), err)
		}
		checkOutput(t, b.mustRun(t, "requeue", "-all"), "requeued 0 dead letters\n")
	})

	t.Run("Errors", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		if _, _, err := b.run(t, "requeue", "no-such-letter"); !errors.Is(err, ledger.ErrNotFound) {
			t.Errorf("unknown ID: error %v; want ledger.ErrNotFound", err)
		}
		if _, _, err := b.run(t, "requeue", "-all", "some-id"); err == nil || !strings.Contains(err.Error(), "not both") {
			t.Errorf("-all with an ID: error %v", err)
		}
		if _, errOut, err := b.run(t, "requeue"); err == nil || !strings.Contains(errOut, "usage: enqueue requeue ID...") {
			t.Errorf("no ID: error %v, stderr %q", err, errOut)
		}
	})
}
