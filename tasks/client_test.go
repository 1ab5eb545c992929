package tasks_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/tasks"
)

// redisDB is this package's Redis database number.
const redisDB = 2

type testBundle struct {
	client    *tasks.Client
	inspector *asynq.Inspector
	queue     string // a queue of this test only, deleted at cleanup
}

// setup connects to the test Redis (failing with one line that says how to
// start it when it is down) and gives the test its own queue.
func setup(t *testing.T) *testBundle {
	t.Helper()
	queue := redistest.Queue(t, redisDB)
	opt := redistest.ConnOpt(redisDB)
	b := &testBundle{
		client:    tasks.NewClient(opt),
		inspector: asynq.NewInspector(opt),
		queue:     queue,
	}
	t.Cleanup(func() {
		b.client.Close()
		b.inspector.Close()
	})
	return b
}

// queued returns every task of the queue, in any state.
func (b *testBundle) queued(t *testing.T) []*asynq.TaskInfo {
	t.Helper()
	var all []*asynq.TaskInfo
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		b.inspector.ListPendingTasks, b.inspector.ListScheduledTasks, b.inspector.ListRetryTasks,
		b.inspector.ListArchivedTasks, b.inspector.ListCompletedTasks,
	} {
		infos, err := list(b.queue)
		if err != nil && !errors.Is(err, asynq.ErrQueueNotFound) {
			t.Fatalf("list tasks: %v", err)
		}
		all = append(all, infos...)
	}
	return all
}

func TestClientEnqueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	e := validEmail()
	res, err := b.client.Enqueue(ctx, e, tasks.Queue(b.queue))
	if err != nil {
		t.Fatalf("Enqueue() = %v", err)
	}
	if res.Queue != b.queue || res.TaskID == "" || res.Duplicate {
		t.Errorf("Enqueue() = %+v", res)
	}
	if !regexp.MustCompile(`^<[a-z2-7]{26}@example\.com>$`).MatchString(res.MessageID) {
		t.Errorf("MessageID = %q, want <26 base32 characters@example.com>", res.MessageID)
	}

	info, err := b.inspector.GetTaskInfo(b.queue, res.TaskID)
	if err != nil {
		t.Fatalf("GetTaskInfo: %v", err)
	}
	if info.Type != tasks.TypeSendEmail || info.State != asynq.TaskStatePending {
		t.Errorf("task type %q state %v, want %q pending", info.Type, info.State, tasks.TypeSendEmail)
	}
	if info.Retention != tasks.DefaultRetention {
		t.Errorf("retention = %v, want %v", info.Retention, tasks.DefaultRetention)
	}
	p, err := tasks.DecodePayload(info.Payload)
	if err != nil {
		t.Fatalf("DecodePayload(queued payload) = %v", err)
	}
	if p.MessageID != res.MessageID || p.AccountID != e.AccountID || p.To[0] != e.To[0] || p.IdempotencyKey != "" {
		t.Errorf("queued payload = %+v", p)
	}
	if age := time.Since(p.Date); age < 0 || age > time.Minute || p.Date.Nanosecond() != 0 {
		t.Errorf("payload Date = %v, want now to the second", p.Date)
	}
	if strings.Contains(string(info.Payload), `\u003c`) {
		t.Errorf("payload JSON escapes HTML characters: %s", info.Payload)
	}

	second, err := b.client.Enqueue(ctx, e, tasks.Queue(b.queue))
	if err != nil {
		t.Fatal(err)
	}
	if second.TaskID == res.TaskID || second.MessageID == res.MessageID {
		t.Errorf("without a key, two enqueues share TaskID or Message-ID: %+v %+v", res, second)
	}
	if n := len(b.queued(t)); n != 2 {
		t.Errorf("%d tasks queued, want 2", n)
	}
}

func TestClientEnqueueIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	first, err := b.client.Enqueue(ctx, validEmail(), tasks.Queue(b.queue), tasks.IdempotencyKey("order-42"))
	if err != nil {
		t.Fatalf("first Enqueue() = %v", err)
	}
	if first.Duplicate || !strings.HasPrefix(first.TaskID, "idem-") || len(first.TaskID) != len("idem-")+32 {
		t.Errorf("first Enqueue() = %+v, want a fresh idem- task ID", first)
	}
	changed := validEmail()
	changed.Subject = "Hello again" // same account and key: still the same email
	second, err := b.client.Enqueue(ctx, changed, tasks.Queue(b.queue), tasks.IdempotencyKey("order-42"))
	if err != nil {
		t.Fatalf("second Enqueue() = %v, want nil for a duplicate", err)
	}
	want := *first
	want.Duplicate = true
	if *second != want {
		t.Errorf("second Enqueue() = %+v, want %+v", second, want)
	}
	queued := b.queued(t)
	if len(queued) != 1 {
		t.Fatalf("%d tasks queued, want 1", len(queued))
	}
	p, err := tasks.DecodePayload(queued[0].Payload)
	if err != nil {
		t.Fatal(err)
	}
	if p.Subject != "Hello" || p.MessageID != first.MessageID || p.IdempotencyKey != "order-42" {
		t.Errorf("queued payload subject %q Message-ID %q key %q", p.Subject, p.MessageID, p.IdempotencyKey)
	}

	other := validEmail()
	other.AccountID = "billing"
	third, err := b.client.Enqueue(ctx, other, tasks.Queue(b.queue), tasks.IdempotencyKey("order-42"))
	if err != nil || third.Duplicate || third.TaskID == first.TaskID || third.MessageID == first.MessageID {
		t.Errorf("same key on another account = %+v, %v; want a new email", third, err)
	}
}

func TestClientEnqueueInvalidEmailEnqueuesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := validEmail()
	e.To = []string{"a@example.org", "b@example.org", "carol"}
	res, err := b.client.Enqueue(t.Context(), e, tasks.Queue(b.queue))
	if res != nil || !errors.Is(err, tasks.ErrInvalidEmail) {
		t.Fatalf("Enqueue() = %+v, %v; want nil and ErrInvalidEmail", res, err)
	}
	if got, want := err.Error(), "enqueue email: invalid email: to[2]: missing '@' or angle-addr"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	queues, err := b.inspector.Queues()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(queues, b.queue) {
		t.Errorf("queue %s exists: an invalid email must not touch Redis", b.queue)
	}
	if n := len(b.queued(t)); n != 0 {
		t.Errorf("%d tasks queued, want 0", n)
	}
}

func TestClientEnqueueDoesNotTouchRedisForBadInput(t *testing.T) {
	t.Parallel()
	// Nothing listens on this address: an invalid email must fail on
	// validation, not on the connection.
	c := tasks.NewClient(asynq.RedisClientOpt{Addr: "127.0.0.1:1", DialTimeout: time.Second})
	defer c.Close()
	tests := []struct {
		name string
		e    *tasks.Email
		opts []tasks.Option
		want string
	}{
		{"NilEmail", nil, nil, "enqueue email: invalid email: email is nil"},
		{"InvalidEmail", &tasks.Email{}, nil, "enqueue email: invalid email: account_id: required"},
		{"EmptyQueueName", validEmail(), []tasks.Option{tasks.Queue(" ")}, "enqueue email: invalid option: queue name is empty"},
		{"BadIdempotencyKey", validEmail(), []tasks.Option{tasks.IdempotencyKey("a\nb")}, "enqueue email: invalid email: idempotency_key: contains the control character U+000A"},
		{"OverCustomLimit", validEmail(), []tasks.Option{tasks.WithLimits(tasks.Limits{MaxBytes: 2})}, "enqueue email: invalid email: size:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := c.Enqueue(t.Context(), tt.e, tt.opts...)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Enqueue() = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestClientEnqueueOptions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	at := time.Now().Add(time.Hour).Truncate(time.Second)
	res, err := b.client.Enqueue(ctx, validEmail(), tasks.Queue(b.queue), tasks.ProcessAt(at),
		tasks.MaxRetry(3), tasks.Timeout(2*time.Minute), tasks.Retention(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.inspector.GetTaskInfo(b.queue, res.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != asynq.TaskStateScheduled || !info.NextProcessAt.Equal(at) {
		t.Errorf("state %v next %v, want scheduled at %v", info.State, info.NextProcessAt, at)
	}
	if info.MaxRetry != 3 || info.Timeout != 2*time.Minute || info.Retention != time.Hour {
		t.Errorf("MaxRetry %d Timeout %v Retention %v, want 3, 2m, 1h", info.MaxRetry, info.Timeout, info.Retention)
	}

	res, err = b.client.Enqueue(ctx, validEmail(), tasks.Queue(b.queue), tasks.ProcessIn(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	info, err = b.inspector.GetTaskInfo(b.queue, res.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if until := time.Until(info.NextProcessAt); info.State != asynq.TaskStateScheduled || until < 59*time.Minute || until > time.Hour {
		t.Errorf("ProcessIn(1h): state %v next in %v", info.State, until)
	}
}

func TestClientEnqueueBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	bad := validEmail()
	bad.From = "nobody"
	emails := []*tasks.Email{validEmail(), bad, validEmail(), nil}

	res, err := b.client.EnqueueBatch(ctx, emails, tasks.Queue(b.queue), tasks.IdempotencyKey("batch-7"))
	if len(res) != 4 || res[0] == nil || res[1] != nil || res[2] == nil || res[3] != nil {
		t.Fatalf("EnqueueBatch() results = %+v, want entries 0 and 2 only", res)
	}
	want := "enqueue batch: emails[1]: invalid email: from: missing '@' or angle-addr\n" +
		"enqueue batch: emails[3]: invalid email: email is nil"
	if err == nil || err.Error() != want {
		t.Errorf("EnqueueBatch() error =\n%v\nwant\n%s", err, want)
	}
	if !errors.Is(err, tasks.ErrInvalidEmail) {
		t.Errorf("batch error does not match ErrInvalidEmail")
	}
	if res[0].TaskID == res[2].TaskID || res[0].MessageID == res[2].MessageID {
		t.Errorf("batch items share an ID: %+v %+v", res[0], res[2])
	}
	if n := len(b.queued(t)); n != 2 {
		t.Errorf("%d tasks queued, want 2", n)
	}

	// The same batch again: keys "batch-7#0" and "batch-7#2" hold.
	again, err := b.client.EnqueueBatch(ctx, []*tasks.Email{validEmail(), validEmail(), validEmail()},
		tasks.Queue(b.queue), tasks.IdempotencyKey("batch-7"))
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].Duplicate || again[1].Duplicate || !again[2].Duplicate || again[0].TaskID != res[0].TaskID {
		t.Errorf("re-sent batch = %+v %+v %+v, want items 0 and 2 duplicates", again[0], again[1], again[2])
	}
	if n := len(b.queued(t)); n != 3 {
		t.Errorf("%d tasks queued, want 3", n)
	}
}

func TestClientEnqueueBatchResultsFollowTheInputOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 50 // more than are enqueued at once
	emails := make([]*tasks.Email, n)
	for i := range emails {
		emails[i] = validEmail()
		emails[i].Subject = fmt.Sprintf("message %d", i)
	}
	res, err := b.client.EnqueueBatch(t.Context(), emails, tasks.Queue(b.queue))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		info, err := b.inspector.GetTaskInfo(b.queue, r.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		p, err := tasks.DecodePayload(info.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("message %d", i); p.Subject != want || p.MessageID != r.MessageID {
			t.Errorf("result %d is task %s with subject %q, want %q", i, r.TaskID, p.Subject, want)
		}
	}
}

func TestClientEnqueueBatchStopsOnCanceledContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	res, err := b.client.EnqueueBatch(ctx, []*tasks.Email{validEmail(), validEmail()}, tasks.Queue(b.queue))
	if !errors.Is(err, context.Canceled) || res[0] != nil || res[1] != nil {
		t.Errorf("EnqueueBatch(canceled) = %+v, %v", res, err)
	}
	if err == nil || err.Error() != "enqueue batch: emails[0:]: context canceled" {
		t.Errorf("error = %v", err)
	}
}

func TestNewClientFromLeavesTheClientOpen(t *testing.T) {
	t.Parallel()
	queue := redistest.Queue(t, redisDB)
	ac := asynq.NewClient(redistest.ConnOpt(redisDB))
	defer ac.Close()
	c := tasks.NewClientFrom(ac)
	if err := c.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if _, err := ac.Enqueue(asynq.NewTask("noop", nil), asynq.Queue(queue)); err != nil {
		t.Errorf("the asynq client no longer works after Close: %v", err)
	}
}

func TestNewTask(t *testing.T) {
	t.Parallel()
	task, p, err := tasks.NewTask(validEmail(), tasks.IdempotencyKey("k1"))
	if err != nil {
		t.Fatal(err)
	}
	if task.Type() != tasks.TypeSendEmail {
		t.Errorf("Type() = %q", task.Type())
	}
	decoded, err := tasks.DecodePayload(task.Payload())
	if err != nil {
		t.Fatalf("DecodePayload(task payload) = %v", err)
	}
	if decoded.MessageID != p.MessageID || !decoded.Date.Equal(p.Date) || decoded.IdempotencyKey != "k1" {
		t.Errorf("decoded %+v, returned %+v", decoded, p)
	}
	_, p2, err := tasks.NewTask(validEmail(), tasks.IdempotencyKey("k1"))
	if err != nil || p2.MessageID != p.MessageID {
		t.Errorf("same key: Message-ID %q then %q, want equal", p.MessageID, p2.MessageID)
	}
	_, p3, err := tasks.NewTask(validEmail(), tasks.IdempotencyKey("k2"))
	if err != nil || p3.MessageID == p.MessageID {
		t.Errorf("other key: same Message-ID %q", p3.MessageID)
	}
	if _, _, err := tasks.NewTask(&tasks.Email{}); !errors.Is(err, tasks.ErrInvalidEmail) {
		t.Errorf("NewTask(invalid) = %v, want ErrInvalidEmail", err)
	}
}

func TestMessageIDTakesTheDomainOfFrom(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ from, suffix string }{
		{"Support <Support@Example.COM>", "@example.com>"},
		{"bench@mail.example.net", "@mail.example.net>"},
		{`"Dr. Who" <who@[192.0.2.1]>`, "@[192.0.2.1]>"},
	} {
		_, p, err := tasks.NewTask(&tasks.Email{AccountID: "a", From: tc.from, To: []string{"b@example.org"}, Text: "hi"})
		if err != nil {
			t.Fatalf("From %q: %v", tc.from, err)
		}
		if !strings.HasSuffix(p.MessageID, tc.suffix) || !strings.HasPrefix(p.MessageID, "<") {
			t.Errorf("From %q: Message-ID %s, want it to end %s", tc.from, p.MessageID, tc.suffix)
		}
	}
}
