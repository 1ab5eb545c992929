package tasks_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/tasks"
)

// letters returns every dead letter of the bundle's ledger.
func (b *adminBundle) letters(t *testing.T) []*ledger.DeadLetter {
	t.Helper()
	list, total, err := b.admin.DeadLetters(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if total != len(list) {
		t.Fatalf("%d dead letters listed of %d", len(list), total)
	}
	return list
}

// deadLetter records a dead letter of kind for the task enq, with the task's
// payload, as the handler would.
func (b *adminBundle) deadLetter(t *testing.T, kind string, enq *tasks.Enqueued, rcpts ...string) *ledger.DeadLetter {
	t.Helper()
	info, err := b.insp.GetTaskInfo(b.queue, enq.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	dl := &ledger.DeadLetter{
		Kind: kind, TaskID: enq.TaskID, Queue: b.queue, MessageID: enq.MessageID, Account: "support",
		Recipients: rcpts, Reason: "recipient rejected: 550 5.1.1 user unknown", Class: "permanent-recipient",
		Payload: info.Payload,
	}
	if err := b.store.AddDeadLetter(context.Background(), dl); err != nil {
		t.Fatal(err)
	}
	return dl
}

func TestAdminRequeue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ArchivedTaskRunsAgain", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		b.sender.setReply(rejectFirst(contentRejected))
		b.startWorker(t)
		enq := b.enqueue(t, []string{"alice@example.org"})
		b.waitState(t, enq.TaskID, asynq.TaskStateArchived)
		dead := b.letters(t)
		if len(dead) != 1 || dead[0].ID != enq.TaskID || dead[0].Kind != ledger.DeadLetterMessage {
			t.Fatalf("dead letters %+v; want one message letter for task %s", dead, enq.TaskID)
		}

		rq, err := b.admin.Requeue(ctx, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		want := tasks.Requeued{ID: enq.TaskID, Kind: ledger.DeadLetterMessage, TaskID: enq.TaskID, Queue: b.queue, Action: tasks.RequeueRan}
		if *rq != want {
			t.Errorf("requeued %+v; want %+v", *rq, want)
		}
		b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)
		if dead := b.letters(t); len(dead) != 0 {
			t.Errorf("dead letters after requeue: %+v", dead)
		}
		st, err := b.admin.Status(ctx, b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if st.Result == nil || !slices.Equal(st.Result.Accepted, []string{"alice@example.org"}) {
			t.Errorf("result %+v; want alice accepted", st.Result)
		}
	})

	t.Run("TrimmedTaskIsEnqueuedWithTheSameID", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		b.sender.setReply(rejectFirst(contentRejected))
		b.startWorker(t)
		enq := b.enqueue(t, []string{"alice@example.org"}, tasks.IdempotencyKey("order-7"))
		b.waitState(t, enq.TaskID, asynq.TaskStateArchived)
		if err := b.insp.DeleteTask(b.queue, enq.TaskID); err != nil {
			t.Fatal(err)
		}

		rq, err := b.admin.Requeue(ctx, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if rq.Action != tasks.RequeueEnqueued || rq.TaskID != enq.TaskID || rq.Queue != b.queue {
			t.Errorf("requeued %+v; want enqueued as task %s", *rq, enq.TaskID)
		}
		info := b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)
		if p, err := tasks.DecodePayload(info.Payload); err != nil || p.MessageID != enq.MessageID {
			t.Errorf("payload of the new task: %v, %v; want Message-ID %s", p, err, enq.MessageID)
		}
		if got := b.sender.recipients(); len(got) != 2 {
			t.Errorf("submissions %v; want the refused one and the requeued one", got)
		}
	})

	t.Run("RecipientsLetterSendsOnlyToTheRejected", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		b.sender.setReply(func(call int, m *smtpoauth.Message) (*smtpoauth.Result, error) {
			if call == 1 {
				return acceptAll(m, map[string]*smtp.SMTPError{"bob@example.org": userUnknown}), nil
			}
			return acceptAll(m, nil), nil
		})
		b.startWorker(t)
		enq := b.enqueue(t, []string{"alice@example.org", "bob@example.org"})
		b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)
		dead := b.letters(t)
		if len(dead) != 1 || dead[0].Kind != ledger.DeadLetterRecipients || !slices.Equal(dead[0].Recipients, []string{"bob@example.org"}) {
			t.Fatalf("dead letters %+v; want one recipients letter for bob", dead)
		}

		rq, err := b.admin.Requeue(ctx, dead[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if rq.Action != tasks.RequeueEnqueued || !strings.HasPrefix(rq.TaskID, "requeue-") || rq.TaskID == enq.TaskID {
			t.Errorf("requeued %+v; want enqueued as a new requeue- task", *rq)
		}
		b.waitState(t, rq.TaskID, asynq.TaskStateCompleted)
		want := [][]string{{"alice@example.org", "bob@example.org"}, {"bob@example.org"}}
		if got := b.sender.recipients(); !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("submissions %v; want %v", got, want)
		}
		st, err := b.admin.Status(ctx, b.queue, rq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if st.MessageID != enq.MessageID || st.Result == nil ||
			!slices.Equal(st.Result.Accepted, []string{"alice@example.org", "bob@example.org"}) || len(st.Result.Rejected) != 0 {
			t.Errorf("status %+v, result %+v; want the message complete for alice and bob", st, st.Result)
		}
		if dead := b.letters(t); len(dead) != 0 {
			t.Errorf("dead letters after requeue: %+v", dead)
		}
	})

	t.Run("RecipientsRefusedAgainAreRequeuedAgain", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		b.sender.setReply(func(call int, m *smtpoauth.Message) (*smtpoauth.Result, error) {
			if call <= 2 { // bob's mailbox is fixed after the first requeue
				return acceptAll(m, map[string]*smtp.SMTPError{"bob@example.org": userUnknown}), nil
			}
			return acceptAll(m, nil), nil
		})
		b.startWorker(t)
		enq := b.enqueue(t, []string{"alice@example.org", "bob@example.org"})
		b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)

		var taskIDs []string
		for round := range 2 {
			dead := b.letters(t)
			if len(dead) != 1 || dead[0].Kind != ledger.DeadLetterRecipients {
				t.Fatalf("round %d: dead letters %+v; want one recipients letter", round, dead)
			}
			rq, err := b.admin.Requeue(ctx, dead[0].ID)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if rq.Action != tasks.RequeueEnqueued {
				t.Errorf("round %d: action %s; want enqueued", round, rq.Action)
			}
			taskIDs = append(taskIDs, rq.TaskID)
			waitFor(t, "the requeue task to complete", func() bool {
				info, err := b.insp.GetTaskInfo(b.queue, rq.TaskID)
				return err == nil && info.State == asynq.TaskStateCompleted && len(b.sender.recipients()) == round+2
			})
		}
		if taskIDs[0] != taskIDs[1] {
			t.Errorf("requeue task IDs %v; want the completed one replaced", taskIDs)
		}
		want := [][]string{{"alice@example.org", "bob@example.org"}, {"bob@example.org"}, {"bob@example.org"}}
		if got := b.sender.recipients(); !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("submissions %v; want %v", got, want)
		}
		if dead := b.letters(t); len(dead) != 0 {
			t.Errorf("dead letters left: %+v", dead)
		}
	})

	t.Run("LettersOfOneMessageMakeOneTask", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		enq := b.enqueue(t, []string{"alice@example.org", "bob@example.org", "carol@example.org"})
		first := b.deadLetter(t, ledger.DeadLetterRecipients, enq, "bob@example.org")
		second := b.deadLetter(t, ledger.DeadLetterRecipients, enq, "carol@example.org")
		err := b.store.RecordRecipients(ctx, enq.MessageID, enq.TaskID, []string{"alice@example.org"}, "250 2.0.0 OK",
			[]ledger.Rejection{{Address: "bob@example.org", Reply: "550 5.1.1"}, {Address: "carol@example.org", Reply: "550 5.1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.insp.DeleteTask(b.queue, enq.TaskID); err != nil { // the original is gone
			t.Fatal(err)
		}

		rq1, err := b.admin.Requeue(ctx, first.ID)
		if err != nil {
			t.Fatal(err)
		}
		rq2, err := b.admin.Requeue(ctx, second.ID)
		if err != nil {
			t.Fatal(err)
		}
		if rq1.Action != tasks.RequeueEnqueued || rq2.Action != tasks.RequeueQueued || rq1.TaskID != rq2.TaskID {
			t.Errorf("requeued %+v then %+v; want one task, enqueued then joined", *rq1, *rq2)
		}
		pending, err := b.insp.ListPendingTasks(b.queue)
		if err != nil {
			t.Fatal(err)
		}
		if len(pending) != 1 || pending[0].ID != rq1.TaskID {
			t.Errorf("%d pending tasks; want the one requeue task", len(pending))
		}
		d, err := b.store.Delivery(ctx, enq.MessageID)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Pending([]string{"alice@example.org", "bob@example.org", "carol@example.org"}); !slices.Equal(got, []string{"bob@example.org", "carol@example.org"}) {
			t.Errorf("pending recipients %v; want bob and carol", got)
		}
	})

	t.Run("StaleLetterOfACompletedTaskSendsNothing", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		b.startWorker(t)
		enq := b.enqueue(t, []string{"alice@example.org"})
		b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)
		b.deadLetter(t, ledger.DeadLetterMessage, enq, "alice@example.org")

		rq, err := b.admin.Requeue(ctx, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if rq.Action != tasks.RequeueCompleted {
			t.Errorf("action %s; want completed", rq.Action)
		}
		if dead := b.letters(t); len(dead) != 0 {
			t.Errorf("dead letters: %+v", dead)
		}
		if got := b.sender.recipients(); len(got) != 1 {
			t.Errorf("submissions %v; want only the first", got)
		}
	})

	t.Run("TaskBeingDeliveredIsLeftAlone", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		started, release := make(chan struct{}), make(chan struct{})
		b.sender.setReply(func(_ int, m *smtpoauth.Message) (*smtpoauth.Result, error) {
			close(started)
			<-release
			return acceptAll(m, nil), nil
		})
		enq := b.enqueue(t, []string{"alice@example.org"})
		b.deadLetter(t, ledger.DeadLetterMessage, enq, "alice@example.org")
		b.startWorker(t)
		<-started

		_, err := b.admin.Requeue(ctx, enq.TaskID)
		close(release)
		if !errors.Is(err, tasks.ErrTaskActive) {
			t.Errorf("error %v; want ErrTaskActive", err)
		}
		if dead := b.letters(t); len(dead) != 1 {
			t.Errorf("%d dead letters; want the letter kept", len(dead))
		}
	})

	t.Run("UnknownLetter", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		_, err := b.admin.Requeue(ctx, "no-such-letter")
		if !errors.Is(err, ledger.ErrNotFound) {
			t.Errorf("error %v; want ledger.ErrNotFound", err)
		}
	})
}

func TestAdminRequeueAll(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAdmin(t)
	var archived []string
	for i := range 3 {
		enq := b.enqueue(t, []string{fmt.Sprintf("user%d@example.org", i)})
		if err := b.insp.ArchiveTask(b.queue, enq.TaskID); err != nil {
			t.Fatal(err)
		}
		b.deadLetter(t, ledger.DeadLetterMessage, enq)
		archived = append(archived, enq.TaskID)
	}
	rcpt := b.enqueue(t, []string{"alice@example.org", "bob@example.org"})
	b.deadLetter(t, ledger.DeadLetterRecipients, rcpt, "bob@example.org")
	if err := b.insp.DeleteTask(b.queue, rcpt.TaskID); err != nil {
		t.Fatal(err)
	}

	n, err := b.admin.RequeueAll(ctx)
	if err != nil || n != 4 {
		t.Fatalf("RequeueAll = %d, %v; want 4", n, err)
	}
	pending, err := b.insp.ListPendingTasks(b.queue)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, info := range pending {
		ids = append(ids, info.ID)
	}
	for _, id := range archived {
		if !slices.Contains(ids, id) {
			t.Errorf("archived task %s not pending again; pending: %v", id, ids)
		}
	}
	if len(ids) != 4 {
		t.Errorf("pending %v; want the 3 archived tasks and one requeue task", ids)
	}
	if dead := b.letters(t); len(dead) != 0 {
		t.Errorf("dead letters left: %+v", dead)
	}
	if n, err := b.admin.RequeueAll(ctx); n != 0 || err != nil {
		t.Errorf("RequeueAll with nothing dead = %d, %v; want 0, nil", n, err)
	}
}

// An operator fixed what made a message fail and gives it another chance.
// The handler archived the task and recorded the dead letter; here both are
// made by hand. Requeue runs the archived task again, with its ID. It needs
// the test Redis server.
func ExampleAdmin_Requeue() {
	ctx := context.Background()
	redisOpt := redistest.ConnOpt(adminDB)
	queue := "example-requeue-" + rand.Text()
	opts := ledger.Options{Prefix: queue + ":"} // the workers' ledger: ledger.Options{} in production
	rdb := redis.NewClient(redistest.Options(adminDB))
	defer rdb.Close()
	insp := asynq.NewInspector(redisOpt)
	defer insp.Close()
	defer func() {
		_ = insp.DeleteQueue(queue, true)
		for _, pattern := range []string{queue + ":*", "asynq:{" + queue + "}:*"} {
			keys, _ := rdb.Keys(ctx, pattern).Result()
			for _, k := range keys {
				rdb.Del(ctx, k)
			}
		}
	}()

	client := tasks.NewClient(redisOpt)
	defer client.Close()
	res, err := client.Enqueue(ctx, &tasks.Email{
		AccountID: "support",
		From:      "support@example.com",
		To:        []string{"alice@example.org"},
		Subject:   "Invoice",
		Text:      "Attached.",
	}, tasks.Queue(queue))
	if err != nil {
		fmt.Println(err)
		return
	}
	info, err := insp.GetTaskInfo(queue, res.TaskID)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := insp.ArchiveTask(queue, res.TaskID); err != nil {
		fmt.Println(err)
		return
	}
	err = ledger.New(rdb, opts).AddDeadLetter(ctx, &ledger.DeadLetter{
		Kind: ledger.DeadLetterMessage, TaskID: res.TaskID, Queue: queue, MessageID: res.MessageID,
		Account: "support", Reason: "message rejected: 552 5.3.4 message too big", Payload: info.Payload,
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	admin, err := tasks.NewAdmin(redisOpt, opts)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer admin.Close()
	before, _ := admin.Status(ctx, queue, res.TaskID)
	fmt.Println(before.State, "-", before.Reason)

	rq, err := admin.Requeue(ctx, res.TaskID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(rq.Action, rq.TaskID == res.TaskID)
	after, _ := admin.Status(ctx, queue, res.TaskID)
	fmt.Println(after.State)
	// Output:
	// archived - message rejected: 552 5.3.4 message too big
	// ran true
	// pending
}
