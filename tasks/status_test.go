package tasks_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/tasks"
)

// adminDB is the Redis database of the Admin tests (Status, Requeue,
// accounts): they run a real asynq server on their own queues.
const adminDB = 6

// adminBundle is what an Admin test works with: a queue and a ledger prefix
// of its own, the producer's Client, the operator's Admin, and a worker
// (started by startWorker) whose SMTP side is a fakeSender.
type adminBundle struct {
	admin  *tasks.Admin
	client *tasks.Client
	insp   *asynq.Inspector
	store  *ledger.Store
	queue  string
	sender *fakeSender
	// resultInReceipt and asyncReceipt are the worker's
	// HandlerConfig.ResultInReceipt and AsyncReceipt (with b.insp).
	resultInReceipt, asyncReceipt bool
}

func setupAdmin(t *testing.T) *adminBundle {
	t.Helper()
	rdb := redistest.Client(t, adminDB)
	queue := redistest.Queue(t, adminDB)
	prefix := queue + ":"
	t.Cleanup(func() {
		deleteKeys(t, rdb, prefix)
		// Inspector.DeleteQueue leaves completed tasks and statistics.
		deleteKeys(t, rdb, "asynq:{"+queue+"}:")
	})
	opts := ledger.Options{Prefix: prefix}
	admin, err := tasks.NewAdmin(redistest.ConnOpt(adminDB), opts)
	if err != nil {
		t.Fatal(err)
	}
	b := &adminBundle{
		admin:  admin,
		client: tasks.NewClient(redistest.ConnOpt(adminDB)),
		insp:   asynq.NewInspector(redistest.ConnOpt(adminDB)),
		store:  ledger.New(rdb, opts),
		queue:  queue,
		sender: &fakeSender{},
	}
	t.Cleanup(func() {
		admin.Close()
		b.client.Close()
		b.insp.Close()
	})
	return b
}

// deleteKeys deletes the keys starting with prefix.
func deleteKeys(t *testing.T, rdb *redis.Client, prefix string) {
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, prefix+"*", 100).Iterator()
	for iter.Next(ctx) {
		rdb.Del(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("delete keys %s*: %v", prefix, err)
	}
}

// startWorker runs a real asynq server with the real tasks.Handler on the
// bundle's queue until the test ends; b.sender plays the SMTP server of the
// account "support" (any other account is unknown). stop shuts the server
// down and flushes the handler's receipts; the test's end calls it too.
func (b *adminBundle) startWorker(t *testing.T) (stop func()) {
	t.Helper()
	var insp *asynq.Inspector
	if b.asyncReceipt {
		insp = b.insp
	}
	h, err := tasks.NewHandler(tasks.HandlerConfig{
		SenderFunc: func(account string) (tasks.Sender, error) {
			if account != "support" {
				return nil, fmt.Errorf("unknown account %q", account)
			}
			return b.sender, nil
		},
		Ledger:          b.store,
		ResultInReceipt: b.resultInReceipt,
		AsyncReceipt:    b.asyncReceipt,
		Inspector:       insp,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServer(redistest.ConnOpt(adminDB), asynq.Config{
		Concurrency:              1,
		Queues:                   map[string]int{b.queue: 1},
		RetryDelayFunc:           h.RetryDelay,
		IsFailure:                h.IsFailure,
		TaskCheckInterval:        10 * time.Millisecond,
		DelayedTaskCheckInterval: 50 * time.Millisecond,
		ShutdownTimeout:          5 * time.Second,
		LogLevel:                 asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeSendEmail, h)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	stop = sync.OnceFunc(func() {
		srv.Shutdown()
		h.Flush()
	})
	t.Cleanup(stop)
	return stop
}

// enqueue enqueues an email from support@example.com to rcpts on the
// bundle's queue.
func (b *adminBundle) enqueue(t *testing.T, rcpts []string, opts ...tasks.Option) *tasks.Enqueued {
	t.Helper()
	res, err := b.client.Enqueue(context.Background(), &tasks.Email{
		AccountID: "support",
		From:      "Support <support@example.com>",
		To:        rcpts,
		Subject:   "Your ticket",
		Text:      "It is solved.",
	}, append([]tasks.Option{tasks.Queue(b.queue)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// waitState waits until the task is in state.
func (b *adminBundle) waitState(t *testing.T, taskID string, state asynq.TaskState) *asynq.TaskInfo {
	t.Helper()
	var info *asynq.TaskInfo
	waitFor(t, fmt.Sprintf("task %s %s", taskID, state), func() bool {
		var err error
		info, err = b.insp.GetTaskInfo(b.queue, taskID)
		return err == nil && info.State == state
	})
	return info
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// sendFunc answers one submission; call counts from 1.
type sendFunc func(call int, m *smtpoauth.Message) (*smtpoauth.Result, error)

// fakeSender is the SMTP side of the tests' worker: it records the envelope
// recipients of every submission and answers with reply (accept all by
// default).
type fakeSender struct {
	mu    sync.Mutex
	calls [][]string
	reply sendFunc
}

func (f *fakeSender) setReply(r sendFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reply = r
}

// recipients returns the envelope recipients of each submission so far.
func (f *fakeSender) recipients() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeSender) Send(ctx context.Context, m *smtpoauth.Message) (*smtpoauth.Result, error) {
	f.mu.Lock()
	f.calls = append(f.calls, slices.Clone(m.To))
	call, reply := len(f.calls), f.reply
	f.mu.Unlock()
	if reply == nil {
		return acceptAll(m, nil), nil
	}
	return reply(call, m)
}

var _ tasks.Sender = (*fakeSender)(nil)

var okReply = &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK queued as 42"}

// acceptAll is a submission that went through, except for the recipients
// refused with the given replies.
func acceptAll(m *smtpoauth.Message, refused map[string]*smtp.SMTPError) *smtpoauth.Result {
	res := &smtpoauth.Result{Reply: okReply}
	for _, to := range m.To {
		rr := smtpoauth.RecipientResult{Address: to, Accepted: true, Reply: &smtp.SMTPError{Code: 250, Message: "OK"}}
		if r, ok := refused[to]; ok {
			rr.Accepted, rr.Reply = false, r
		}
		res.Recipients = append(res.Recipients, rr)
	}
	return res
}

// userUnknown is a recipient's permanent refusal.
var userUnknown = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "user unknown"}

// contentRejected is a permanent refusal of the message after the final ".".
var contentRejected = &smtpoauth.SendError{
	Stage: smtpoauth.StageDataEnd,
	Err:   &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content rejected"},
}

// rejectFirst refuses the first submission with err and accepts the others.
func rejectFirst(err error) sendFunc {
	return func(call int, m *smtpoauth.Message) (*smtpoauth.Result, error) {
		if call == 1 {
			return nil, err
		}
		return acceptAll(m, nil), nil
	}
}

func TestAdminStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("Pending", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		enq := b.enqueue(t, []string{"alice@example.org"})
		st, err := b.admin.Status(ctx, b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		want := &tasks.Status{
			TaskID: enq.TaskID, Queue: b.queue, State: tasks.StatePending,
			MessageID: enq.MessageID, Account: "support", MaxRetry: tasks.DefaultMaxRetry,
		}
		if diff := statusDiff(st, want); diff != "" {
			t.Error(diff)
		}
	})

	t.Run("Scheduled", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		at := time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC)
		enq := b.enqueue(t, []string{"alice@example.org"}, tasks.ProcessAt(at))
		st, err := b.admin.Status(ctx, b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != tasks.StateScheduled || !st.NextAttempt.Equal(at) {
			t.Errorf("state %s, next attempt %v; want scheduled at %v", st.State, st.NextAttempt, at)
		}
	})

	t.Run("CompletedWithTheResult", func(t *testing.T) {
		t.Parallel()
		// Through asynq's ResultWriter, and in the receipt's transaction
		// (the worker's way), the result asynq shows is the same.
		for _, inReceipt := range []bool{false, true} {
			t.Run(fmt.Sprintf("ResultInReceipt=%v", inReceipt), func(t *testing.T) {
				t.Parallel()
				b := setupAdmin(t)
				b.resultInReceipt = inReceipt
				b.sender.setReply(func(_ int, m *smtpoauth.Message) (*smtpoauth.Result, error) {
					return acceptAll(m, map[string]*smtp.SMTPError{"bob@example.org": userUnknown}), nil
				})
				b.startWorker(t)
				enq := b.enqueue(t, []string{"alice@example.org", "bob@example.org"}, tasks.IdempotencyKey("ticket-1"))
				b.waitState(t, enq.TaskID, asynq.TaskStateCompleted)

				st, err := b.admin.Status(ctx, b.queue, enq.TaskID)
				if err != nil {
					t.Fatal(err)
				}
				if st.State != tasks.StateCompleted || st.CompletedAt.IsZero() || st.Result == nil {
					t.Fatalf("status %+v; want completed with a result", st)
				}
				want := tasks.Result{
					MessageID: enq.MessageID,
					Accepted:  []string{"alice@example.org"},
					Rejected:  []tasks.Rejection{{Address: "bob@example.org", Reply: "550 5.1.1 user unknown"}},
					Reply:     "250 2.0.0 OK queued as 42",
				}
				if got := *st.Result; !resultEqual(got, want) {
					t.Errorf("result\n got %+v\nwant %+v", got, want)
				}
			})
		}
	})

	t.Run("ArchivedWithTheDeadLetterReason", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		b.sender.setReply(rejectFirst(contentRejected))
		b.startWorker(t)
		enq := b.enqueue(t, []string{"alice@example.org"})
		b.waitState(t, enq.TaskID, asynq.TaskStateArchived)

		st, err := b.admin.Status(ctx, b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != tasks.StateArchived || st.Trimmed || st.MessageID != enq.MessageID {
			t.Errorf("status %+v; want archived, not trimmed", st)
		}
		if st.Class != "permanent-message" || !strings.Contains(st.Reason, "554 5.6.0 content rejected") {
			t.Errorf("class %q, reason %q; want permanent-message and the server's reply", st.Class, st.Reason)
		}
		if !strings.Contains(st.LastError, st.Reason) {
			t.Errorf("last error %q does not hold the reason %q", st.LastError, st.Reason)
		}

		// Once asynq trims it, the ledger's dead letter still answers.
		if err := b.insp.DeleteTask(b.queue, enq.TaskID); err != nil {
			t.Fatal(err)
		}
		trimmed, err := b.admin.Status(ctx, b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		want := &tasks.Status{
			TaskID: enq.TaskID, Queue: b.queue, State: tasks.StateArchived, MessageID: enq.MessageID,
			Account: "support", Class: st.Class, Reason: st.Reason, Trimmed: true,
		}
		if diff := statusDiff(trimmed, want); diff != "" {
			t.Error(diff)
		}
	})

	t.Run("RetryingDeferredByAThrottledAccount", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		until := time.Now().Add(time.Hour).Truncate(time.Second)
		if err := b.store.Throttle(ctx, "support", until, "454 4.7.0 too many logins"); err != nil {
			t.Fatal(err)
		}
		b.startWorker(t)
		enq := b.enqueue(t, []string{"alice@example.org"})
		b.waitState(t, enq.TaskID, asynq.TaskStateRetry)

		st, err := b.admin.Status(ctx, b.queue, enq.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != tasks.StateRetrying || !st.Deferred || st.Attempts != 0 {
			t.Errorf("status %+v; want retrying, deferred, no attempt spent", st)
		}
		if d := st.NextAttempt.Sub(until); d < -time.Second || d > time.Second {
			t.Errorf("next attempt %v; want about %v", st.NextAttempt, until)
		}
		if !strings.Contains(st.LastError, "too many logins") {
			t.Errorf("last error %q; want the throttle's reason", st.LastError)
		}
		if got := b.sender.recipients(); len(got) != 0 {
			t.Errorf("sent %v; want nothing while the account is throttled", got)
		}
	})

	t.Run("UnknownTask", func(t *testing.T) {
		t.Parallel()
		b := setupAdmin(t)
		b.enqueue(t, []string{"alice@example.org"}) // the queue exists
		for _, q := range []string{b.queue, b.queue + "-nonexistent"} {
			_, err := b.admin.Status(ctx, q, "no-such-task")
			if !errors.Is(err, tasks.ErrTaskNotFound) {
				t.Errorf("queue %s: error %v; want ErrTaskNotFound", q, err)
			}
		}
	})
}

func TestAdminAccounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAdmin(t)
	if err := b.store.Hold(ctx, "support", ledger.HoldReauthorize, "token refresh refused: invalid_grant"); err != nil {
		t.Fatal(err)
	}
	until := time.Now().Add(time.Hour)
	if err := b.store.Throttle(ctx, "sales", until, "550 5.4.5 daily sending quota exceeded"); err != nil {
		t.Fatal(err)
	}

	list, err := b.admin.Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, st := range list {
		got = append(got, st.Account+"="+string(st.State))
	}
	if want := []string{"sales=throttled", "support=held"}; !slices.Equal(got, want) {
		t.Errorf("accounts %v; want %v", got, want)
	}

	st, err := b.admin.AccountStatus(ctx, "support")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != ledger.AccountHeld || st.Hold != ledger.HoldReauthorize || !strings.Contains(st.Reason, "invalid_grant") {
		t.Errorf("status %+v; want held for reauthorization", st)
	}

	if err := b.admin.ResumeAccount(ctx, "support"); err != nil {
		t.Fatal(err)
	}
	if st, err = b.admin.AccountStatus(ctx, "support"); err != nil || st.State != ledger.AccountOK {
		t.Errorf("after resume: %+v, %v; want ok", st, err)
	}
	if list, err = b.admin.Accounts(ctx); err != nil || len(list) != 1 || list[0].Account != "sales" {
		t.Errorf("after resume: accounts %+v, %v; want sales only", list, err)
	}
}

// statusDiff compares the fields of two statuses, times included.
func statusDiff(got, want *tasks.Status) string {
	g, w := fmt.Sprintf("%+v", *got), fmt.Sprintf("%+v", *want)
	if g != w {
		return fmt.Sprintf("status\n got %s\nwant %s", g, w)
	}
	return ""
}

func resultEqual(a, b tasks.Result) bool {
	return a.MessageID == b.MessageID && slices.Equal(a.Accepted, b.Accepted) &&
		slices.Equal(a.Rejected, b.Rejected) && a.Reply == b.Reply && a.PossibleDuplicate == b.PossibleDuplicate
}

// An operator asks what became of a task, by queue and task ID. This one is
// scheduled; a completed one would show its Result, an archived one the
// dead letter's Reason. It needs the test Redis server.
func ExampleAdmin_Status() {
	ctx := context.Background()
	redisOpt := redistest.ConnOpt(adminDB)
	queue := "example-status-" + rand.Text()
	client := tasks.NewClient(redisOpt)
	defer client.Close()
	res, err := client.Enqueue(ctx, &tasks.Email{
		AccountID: "support",
		From:      "support@example.com",
		To:        []string{"alice@example.org"},
		Subject:   "Reminder",
		Text:      "Your appointment is tomorrow.",
	}, tasks.Queue(queue), tasks.ProcessAt(time.Date(2099, 6, 1, 9, 0, 0, 0, time.UTC)))
	if err != nil {
		fmt.Println(err)
		return
	}

	admin, err := tasks.NewAdmin(redisOpt, ledger.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer admin.Close()
	st, err := admin.Status(ctx, queue, res.TaskID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(st.State, st.Account, st.NextAttempt.UTC().Format(time.RFC3339))

	insp := asynq.NewInspector(redisOpt)
	defer insp.Close()
	_ = insp.DeleteQueue(queue, true)

	_, err = admin.Status(ctx, queue, res.TaskID)
	fmt.Println(errors.Is(err, tasks.ErrTaskNotFound))
	// Output:
	// scheduled support 2099-06-01T09:00:00Z
	// true
}
