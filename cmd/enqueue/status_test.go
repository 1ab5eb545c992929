package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/tasks"
)

// adminTestDB is the Redis database of the operator commands' tests.
const adminTestDB = 6

// opsBundle is what a test of an operator command works with: a queue and
// a ledger key prefix of its own, passed to run through env as a deployment
// would pass them.
type opsBundle struct {
	env    env
	queue  string
	client *tasks.Client
	insp   *asynq.Inspector
	// store writes the ledger as the workers would, with a clock fixed at
	// storeNow so that recorded times print the same every run.
	store *ledger.Store
}

// storeNow is the clock of opsBundle.store.
var storeNow = time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)

func setupOps(t *testing.T) *opsBundle {
	t.Helper()
	rdb := redistest.Client(t, adminTestDB)
	queue := redistest.Queue(t, adminTestDB)
	prefix := queue + ":"
	t.Cleanup(func() {
		deleteKeys(t, rdb, prefix)
		deleteKeys(t, rdb, "asynq:{"+queue+"}:") // DeleteQueue leaves completed tasks
	})
	url := redistest.URL(adminTestDB)
	b := &opsBundle{
		env: env{getenv: func(k string) string {
			switch k {
			case "REDIS_URL":
				return url
			case ledgerPrefixEnv:
				return prefix
			}
			return ""
		}},
		queue:  queue,
		client: tasks.NewClient(redistest.ConnOpt(adminTestDB)),
		insp:   asynq.NewInspector(redistest.ConnOpt(adminTestDB)),
		store:  ledger.New(rdb, ledger.Options{Prefix: prefix, NowFunc: func() time.Time { return storeNow }}),
	}
	t.Cleanup(func() {
		b.client.Close()
		b.insp.Close()
	})
	return b
}

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

// run runs the command line args and returns what it printed.
func (b *opsBundle) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, b.env, &out, &errOut)
	return out.String(), errOut.String(), err
}

// mustRun runs args and fails the test on an error.
func (b *opsBundle) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := b.run(t, args...)
	if err != nil {
		t.Fatalf("enqueue %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// enqueue enqueues an email from support to rcpts on the bundle's queue.
func (b *opsBundle) enqueue(t *testing.T, rcpts []string, opts ...tasks.Option) *tasks.Enqueued {
	t.Helper()
	res, err := b.client.Enqueue(context.Background(), &tasks.Email{
		AccountID: "support",
		From:      "support@example.com",
		To:        rcpts,
		Subject:   "Your ticket",
		Text:      "It is solved.",
	}, append([]tasks.Option{tasks.Queue(b.queue)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// archive archives the task and records its dead letter, as the handler
// does when it gives a message up.
func (b *opsBundle) archive(t *testing.T, enq *tasks.Enqueued, reason string) {
	t.Helper()
	if err := b.insp.ArchiveTask(b.queue, enq.TaskID); err != nil {
		t.Fatal(err)
	}
	info, err := b.insp.GetTaskInfo(b.queue, enq.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tasks.DecodePayload(info.Payload)
	if err != nil {
		t.Fatal(err)
	}
	_, rcpts := p.Envelope()
	err = b.store.AddDeadLetter(context.Background(), &ledger.DeadLetter{
		Kind: ledger.DeadLetterMessage, TaskID: enq.TaskID, Queue: b.queue, MessageID: enq.MessageID,
		Account: p.AccountID, Recipients: rcpts, Reason: reason, Class: "permanent-message", Payload: info.Payload,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// complete processes the bundle's pending tasks with a real asynq server
// whose handler refuses every recipient but the first and writes the result
// as tasks.Handler does, and waits until the task taskID has completed.
func (b *opsBundle) complete(t *testing.T, taskID string) {
	t.Helper()
	srv := asynq.NewServer(redistest.ConnOpt(adminTestDB), asynq.Config{
		Concurrency:       1,
		Queues:            map[string]int{b.queue: 1},
		TaskCheckInterval: 10 * time.Millisecond,
		LogLevel:          asynq.FatalLevel,
	})
	err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		p, err := tasks.DecodePayload(task.Payload())
		if err != nil {
			return err
		}
		r := tasks.Result{MessageID: p.MessageID, Accepted: p.To[:1], Reply: "250 2.0.0 OK queued as 42"}
		for _, to := range p.To[1:] {
			r.Rejected = append(r.Rejected, tasks.Rejection{Address: to, Reply: "550 5.1.1 user unknown"})
		}
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = task.ResultWriter().Write(data)
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	waitFor(t, "task "+taskID+" completed", func() bool {
		info, err := b.insp.GetTaskInfo(b.queue, taskID)
		return err == nil && info.State == asynq.TaskStateCompleted
	})
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

var rfc3339 = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`)

// checkOutput compares got with want line by line, after replacing each
// key of vars in want by its value. A line of want that holds <TIME> matches
// any RFC 3339 time there.
func checkOutput(t *testing.T, got, want string, vars ...string) {
	t.Helper()
	want = strings.NewReplacer(vars...).Replace(want)
	gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(gl), len(wl)) {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if strings.Contains(w, "<TIME>") {
			g = rfc3339.ReplaceAllString(g, "<TIME>")
		}
		if g != w {
			t.Errorf("line %d:\n got %q\nwant %q\nfull output:\n%s", i+1, g, w, got)
			return
		}
	}
}

func TestStatusCommand(t *testing.T) {
	t.Parallel()

	t.Run("OneBlockPerTask", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		done := b.enqueue(t, []string{"alice@example.org", "bob@example.org"})
		b.complete(t, done.TaskID)
		pending := b.enqueue(t, []string{"alice@example.org"})
		later := b.enqueue(t, []string{"alice@example.org"}, tasks.ProcessAt(time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC)))
		dead := b.enqueue(t, []string{"alice@example.org"})
		b.archive(t, dead, "message rejected: 554 5.6.0 content rejected")

		out := b.mustRun(t, "status", "-queue", b.queue, pending.TaskID, later.TaskID, done.TaskID, dead.TaskID)
		checkOutput(t, out, `task PENDING
  queue:        QUEUE
  state:        pending
  message-id:   PENDING_MSG
  account:      support
  retries:      0 of 400

task LATER
  queue:        QUEUE
  state:        scheduled
  message-id:   LATER_MSG
  account:      support
  retries:      0 of 400
  next attempt: 2099-01-02T03:04:05Z

task DONE
  queue:        QUEUE
  state:        completed
  message-id:   DONE_MSG
  account:      support
  retries:      0 of 400
  completed:    <TIME>
  accepted:     alice@example.org
  rejected:     bob@example.org (550 5.1.1 user unknown)
  reply:        250 2.0.0 OK queued as 42

task DEAD
  queue:        QUEUE
  state:        archived
  message-id:   DEAD_MSG
  account:      support
  retries:      0 of 400
  class:        permanent-message
  reason:       message rejected: 554 5.6.0 content rejected
`,
			"PENDING_MSG", pending.MessageID, "PENDING", pending.TaskID,
			"LATER_MSG", later.MessageID, "LATER", later.TaskID,
			"DONE_MSG", done.MessageID, "DONE", done.TaskID,
			"DEAD_MSG", dead.MessageID, "DEAD", dead.TaskID,
			"QUEUE", b.queue)

		// Trimmed from asynq's archive, the dead letter still answers.
		if err := b.insp.DeleteTask(b.queue, dead.TaskID); err != nil {
			t.Fatal(err)
		}
		out = b.mustRun(t, "status", dead.TaskID, "-queue", b.queue)
		checkOutput(t, out, `task DEAD
  queue:        QUEUE
  state:        archived (trimmed from the queue; the dead letter remains)
  message-id:   DEAD_MSG
  account:      support
  class:        permanent-message
  reason:       message rejected: 554 5.6.0 content rejected
`, "DEAD_MSG", dead.MessageID, "DEAD", dead.TaskID, "QUEUE", b.queue)
	})

	t.Run("JSONLines", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		first := b.enqueue(t, []string{"alice@example.org"})
		second := b.enqueue(t, []string{"alice@example.org"}, tasks.ProcessIn(time.Hour))
		out := b.mustRun(t, "status", "-json", "-queue", b.queue, first.TaskID, second.TaskID)
		var got []tasks.Status
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var st tasks.Status
			if err := json.Unmarshal(sc.Bytes(), &st); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			got = append(got, st)
		}
		if len(got) != 2 || got[0].TaskID != first.TaskID || got[0].State != tasks.StatePending ||
			got[1].State != tasks.StateScheduled || got[1].NextAttempt.IsZero() || got[1].MessageID != second.MessageID {
			t.Errorf("statuses %+v", got)
		}
		if strings.Contains(out, "It is solved") {
			t.Errorf("the output shows the body: %s", out)
		}
	})

	t.Run("UnknownTaskIsAnErrorAfterTheOthers", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		known := b.enqueue(t, []string{"alice@example.org"})
		out, _, err := b.run(t, "status", "-queue", b.queue, "no-such-task", known.TaskID)
		if !errors.Is(err, tasks.ErrTaskNotFound) || !strings.Contains(err.Error(), "no-such-task") {
			t.Errorf("error %v; want ErrTaskNotFound naming the task", err)
		}
		if !strings.HasPrefix(out, "task "+known.TaskID+"\n") {
			t.Errorf("output %q; want the known task's block", out)
		}
	})

	t.Run("Usage", func(t *testing.T) {
		t.Parallel()
		b := setupOps(t)
		_, errOut, err := b.run(t, "status", "-h")
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(errOut, "usage: enqueue status [-queue Q] [-json] TASK_ID...") ||
			!strings.Contains(errOut, ledgerPrefixEnv) {
			t.Errorf("-h: %v\n%s", err, errOut)
		}
		if _, _, err := b.run(t, "status"); err == nil || !strings.Contains(err.Error(), "no task ID") {
			t.Errorf("no ID: error %v", err)
		}
	})
}
