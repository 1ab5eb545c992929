package tasks_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/tasks"
)

func TestNewHandlerAsyncReceiptNeedsAnInspector(t *testing.T) {
	t.Parallel()
	_, err := tasks.NewHandler(tasks.HandlerConfig{
		SenderFunc:   func(string) (tasks.Sender, error) { return &fakeSender{}, nil },
		Ledger:       ledger.New(redistest.Client(t, adminDB), ledger.Options{}),
		AsyncReceipt: true,
	})
	if err == nil || !strings.Contains(err.Error(), "Inspector") {
		t.Fatalf("NewHandler() = %v, want an error naming the missing Inspector", err)
	}
}

// TestAsyncReceiptsAreAllWritten: with AsyncReceipt, tasks complete before
// their receipts are written; once the server is down and the handler
// flushed, every message has its receipt and every task its result.
func TestAsyncReceiptsAreAllWritten(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	b.resultInReceipt, b.asyncReceipt = true, true
	stop := b.startWorker(t)
	var sent []*tasks.Enqueued
	for i := range 20 {
		sent = append(sent, b.enqueue(t, []string{"a@example.net", "B@example.net"}, tasks.IdempotencyKey("async-"+string(rune('a'+i)))))
	}
	for _, enq := range sent {
		b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)
	}
	stop()
	ctx := context.Background()
	for _, enq := range sent {
		d, err := b.store.Delivery(ctx, enq.MessageID)
		if err != nil {
			t.Fatal(err)
		}
		if d.Receipt == nil || d.Receipt.TaskID != enq.TaskID || !slices.Equal(d.Receipt.Accepted, []string{"a@example.net", "B@example.net"}) {
			t.Errorf("message %s: receipt %+v, want one by task %s accepting both recipients", enq.MessageID, d.Receipt, enq.TaskID)
		}
		info, err := b.insp.GetTaskInfo(b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		var r tasks.Result
		if err := json.Unmarshal(info.Result, &r); err != nil || r.MessageID != enq.MessageID || len(r.Accepted) != 2 {
			t.Errorf("task %s: result %q (%v), want the receipt's", enq.TaskID, info.Result, err)
		}
	}
	if n := len(b.sender.recipients()); n != len(sent) {
		t.Errorf("%d submissions, want %d", n, len(sent))
	}
}

// TestReceiptRecoveredFromAnAcknowledgedTask plays a worker that died
// between asynq's acknowledgement of a task and its receipt: another task
// of the same message must not send it again if asynq completed the first,
// and must send it if the first did not complete.
func TestReceiptRecoveredFromAnAcknowledgedTask(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// firstState is where the first task is left; it started an
		// attempt and left no receipt.
		firstState asynq.TaskState
		wantSend   bool
	}{
		{"FirstCompleted", asynq.TaskStateCompleted, false},
		{"FirstArchived", asynq.TaskStateArchived, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupAdmin(t)
			b.resultInReceipt, b.asyncReceipt = true, true
			ctx := context.Background()
			aclient := asynq.NewClient(redistest.ConnOpt(adminDB))
			t.Cleanup(func() { aclient.Close() })
			task, p, err := tasks.NewTask(&tasks.Email{AccountID: "support", From: "support@example.com",
				To: []string{"a@example.net", "b@example.net"}, Subject: "Once", Text: "Only once."}, tasks.Queue(b.queue))
			if err != nil {
				t.Fatal(err)
			}
			first, err := aclient.Enqueue(task, asynq.TaskID("first-"+tc.name))
			if err != nil {
				t.Fatal(err)
			}
			if tc.firstState == asynq.TaskStateCompleted {
				completeWithoutHandler(t, b.queue)
			} else if err := b.insp.ArchiveTask(b.queue, first.ID); err != nil {
				t.Fatal(err)
			}
			b.waitState(t, first.ID, tc.firstState)
			if _, _, err := b.store.StartAttempt(ctx, p.MessageID, "support", ledger.Attempt{Queue: b.queue, TaskID: first.ID}); err != nil {
				t.Fatal(err)
			}

			b.startWorker(t)
			second, err := aclient.Enqueue(task, asynq.TaskID("second-"+tc.name))
			if err != nil {
				t.Fatal(err)
			}
			info := b.waitState(t, second.ID, asynq.TaskStateCompleted)

			calls := b.sender.recipients()
			d, err := b.store.Delivery(ctx, p.MessageID)
			if err != nil {
				t.Fatal(err)
			}
			if d.Receipt == nil || !slices.Equal(d.Receipt.Accepted, []string{"a@example.net", "b@example.net"}) {
				t.Fatalf("receipt %+v, want both recipients accepted", d.Receipt)
			}
			if tc.wantSend {
				if len(calls) != 1 || d.Receipt.TaskID != second.ID {
					t.Errorf("submissions %v, receipt by %s; want one, by the second task", calls, d.Receipt.TaskID)
				}
				return
			}
			if len(calls) != 0 {
				t.Errorf("the second task sent again (%v) after the first was acknowledged", calls)
			}
			if d.Receipt.TaskID != first.ID || !strings.Contains(d.Receipt.Reply, "recovered") {
				t.Errorf("receipt by %s with reply %q, want the first task's, recovered", d.Receipt.TaskID, d.Receipt.Reply)
			}
			if !strings.Contains(string(info.Result), `"accepted":["a@example.net","b@example.net"]`) {
				t.Errorf("second task's result %s, want the recovered receipt", info.Result)
			}
		})
	}
}

// TestStatusReadsTheReceiptBeforeTheResult: a task asynq completed before
// its result was written shows the result from the message's receipt.
func TestStatusReadsTheReceiptBeforeTheResult(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t)
	enq := b.enqueue(t, []string{"a@example.net"})
	completeWithoutHandler(t, b.queue)
	b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)
	ctx := context.Background()
	if st, err := b.admin.Status(ctx, b.queue, enq.TaskID); err != nil || st.Result != nil {
		t.Fatalf("Status() before the receipt = %+v, %v; want no result", st, err)
	}
	if err := b.store.WriteReceipt(ctx, &ledger.Receipt{MessageID: enq.MessageID, TaskID: enq.TaskID, Accepted: []string{"a@example.net"}, Reply: "250 2.0.0 OK"}); err != nil {
		t.Fatal(err)
	}
	st, err := b.admin.Status(ctx, b.queue, enq.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Result == nil || st.Result.Reply != "250 2.0.0 OK" || !slices.Equal(st.Result.Accepted, []string{"a@example.net"}) {
		t.Errorf("Status().Result = %+v, want the receipt's", st.Result)
	}
}

// completeWithoutHandler has asynq complete the tasks of queue without
// running sendq's handler (nor writing a result), as if a worker had
// delivered them and died before writing anything else.
func completeWithoutHandler(t *testing.T, queue string) {
	t.Helper()
	srv := asynq.NewServer(redistest.ConnOpt(adminDB), asynq.Config{
		Concurrency:       1,
		Queues:            map[string]int{queue: 1},
		TaskCheckInterval: 10 * time.Millisecond,
		LogLevel:          asynq.FatalLevel,
	})
	done := make(chan struct{}, 1)
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		select {
		case done <- struct{}{}:
		default:
		}
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the task was not taken")
	}
	srv.Shutdown() // after the handler returned: asynq acknowledges before shutting down
}
