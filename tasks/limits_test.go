package tasks_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/tasks"
)

// limitsBundle is what a limits test works with: a queue and ledger prefix
// of its own on this package's DB, and the producer's client.
type limitsBundle struct {
	queue  string
	prefix string
	client *tasks.Client
	insp   *asynq.Inspector
	store  *ledger.Store // an observer's view of the ledger
}

func setupLimits(t *testing.T) *limitsBundle {
	t.Helper()
	rdb := redistest.Client(t, redisDB)
	queue := redistest.Queue(t, redisDB)
	b := &limitsBundle{
		queue:  queue,
		prefix: queue + ":",
		client: tasks.NewClient(redistest.ConnOpt(redisDB)),
		insp:   asynq.NewInspector(redistest.ConnOpt(redisDB)),
	}
	b.store = ledger.New(rdb, ledger.Options{Prefix: b.prefix})
	t.Cleanup(func() {
		b.client.Close()
		b.insp.Close()
		deleteKeys(t, rdb, b.prefix)
		deleteKeys(t, rdb, "asynq:{"+queue+"}:")
	})
	return b
}

// startProcess runs what one worker process runs: its own Redis client and
// ledger over the bundle's prefix, a tasks.Handler and an asynq server on
// the bundle's queue, until the test ends. sender plays the provider of the
// account "support".
func (b *limitsBundle) startProcess(t *testing.T, sender tasks.Sender, concurrency int, cfg tasks.HandlerConfig) {
	t.Helper()
	cfg.SenderFunc = func(account string) (tasks.Sender, error) {
		if account != "support" {
			return nil, fmt.Errorf("unknown account %q", account)
		}
		return sender, nil
	}
	cfg.Ledger = ledger.New(redistest.Client(t, redisDB), ledger.Options{Prefix: b.prefix})
	h, err := tasks.NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServer(redistest.ConnOpt(redisDB), asynq.Config{
		Concurrency:              concurrency,
		Queues:                   map[string]int{b.queue: 1},
		RetryDelayFunc:           h.RetryDelay,
		IsFailure:                h.IsFailure,
		TaskCheckInterval:        10 * time.Millisecond,
		DelayedTaskCheckInterval: 20 * time.Millisecond,
		ShutdownTimeout:          5 * time.Second,
		LogLevel:                 asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeSendEmail, h)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
}

// enqueue enqueues n emails of the account "support" to rcpts.
func (b *limitsBundle) enqueue(t *testing.T, n int, rcpts ...string) []string {
	t.Helper()
	var ids []string
	for i := range n {
		res, err := b.client.Enqueue(context.Background(), &tasks.Email{
			AccountID: "support",
			From:      "support@example.com",
			To:        rcpts,
			Subject:   fmt.Sprintf("Message %d", i),
			Text:      "Hello.",
		}, tasks.Queue(b.queue))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.TaskID)
	}
	return ids
}

// tasksIn returns the tasks of the bundle's queue in one state.
func (b *limitsBundle) tasksIn(t *testing.T, state asynq.TaskState) []*asynq.TaskInfo {
	t.Helper()
	list := map[asynq.TaskState]func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		asynq.TaskStateCompleted: b.insp.ListCompletedTasks,
		asynq.TaskStateRetry:     b.insp.ListRetryTasks,
		asynq.TaskStateArchived:  b.insp.ListArchivedTasks,
	}[state]
	infos, err := list(b.queue)
	if err != nil && !errors.Is(err, asynq.ErrQueueNotFound) {
		t.Fatalf("list %s tasks: %v", state, err)
	}
	return infos
}

// sessionProvider plays an account's SMTP server for limits tests: it
// counts the submissions, and answers the next ones with fails when set.
type sessionProvider struct {
	mu    sync.Mutex
	sends int
	fails []func() (*smtpoauth.Result, error) // answer the next sends, in turn
}

func newSessionProvider() *sessionProvider { return &sessionProvider{} }

func (p *sessionProvider) Send(ctx context.Context, m *smtpoauth.Message) (*smtpoauth.Result, error) {
	p.mu.Lock()
	var fail func() (*smtpoauth.Result, error)
	if len(p.fails) > 0 {
		fail, p.fails = p.fails[0], p.fails[1:]
	} else {
		p.sends++
	}
	p.mu.Unlock()
	if fail != nil {
		return fail()
	}
	return acceptAll(m, nil), nil
}

// stats returns how many submissions the provider accepted.
func (p *sessionProvider) stats() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sends
}

func TestHandlerLimits(t *testing.T) {
	t.Parallel()

	t.Run("AnAccountOverItsPerMinuteLimitIsDeferredWithoutARetry", func(t *testing.T) {
		t.Parallel()
		b := setupLimits(t)
		provider := newSessionProvider()
		b.startProcess(t, provider, 2, tasks.HandlerConfig{
			LimitsFunc: func(string) tasks.AccountLimits { return tasks.AccountLimits{MessagesPerMinute: 2} },
		})
		b.enqueue(t, 5, "alice@example.org")

		waitFor(t, "2 completed and 3 deferred", func() bool {
			return len(b.tasksIn(t, asynq.TaskStateCompleted)) == 2 && len(b.tasksIn(t, asynq.TaskStateRetry)) == 3
		})
		for _, info := range b.tasksIn(t, asynq.TaskStateRetry) {
			if info.Retried != 0 {
				t.Errorf("deferred task %s: Retried = %d, want 0", info.ID, info.Retried)
			}
			if !strings.Contains(info.LastErr, "reached its messages_per_minute of 2") {
				t.Errorf("deferred task %s: LastErr = %q", info.ID, info.LastErr)
			}
			// The next opening is a minute after the first send.
			if wait := time.Until(info.NextProcessAt); wait < 30*time.Second || wait > 62*time.Second {
				t.Errorf("deferred task %s comes back in %s, want about a minute", info.ID, wait)
			}
		}
		if sends := provider.stats(); sends != 2 {
			t.Errorf("the provider saw %d submissions, want 2", sends)
		}
		used, err := b.store.Used(context.Background(), "support",
			ledger.Rate{Name: tasks.RateMessagesPerMinute, Limit: 2, Window: time.Minute})
		if err != nil || used != 2 {
			t.Errorf("Used = %d, %v; want 2", used, err)
		}
	})

	t.Run("NoFreeSessionDefersWithoutARetryAndTakesBackTheCount", func(t *testing.T) {
		t.Parallel()
		b := setupLimits(t)
		provider := newSessionProvider()
		full := func() (*smtpoauth.Result, error) {
			return nil, &smtpoauth.SendError{Stage: smtpoauth.StageConnect,
				Err: fmt.Errorf("%w: account support has all 3 sessions (max_sessions) open", smtpoauth.ErrConnLimit)}
		}
		provider.fails = append(provider.fails, full, full)
		b.startProcess(t, provider, 1, tasks.HandlerConfig{
			LimitsFunc:     func(string) tasks.AccountLimits { return tasks.AccountLimits{MessagesPerMinute: 1} },
			SessionRecheck: 20 * time.Millisecond,
		})
		b.enqueue(t, 1, "alice@example.org")

		// With one message a minute, the third try goes only if the two
		// that found no session gave their count back.
		waitFor(t, "the task completed", func() bool { return len(b.tasksIn(t, asynq.TaskStateCompleted)) == 1 })
		if info := b.tasksIn(t, asynq.TaskStateCompleted)[0]; info.Retried != 0 {
			t.Errorf("Retried = %d, want 0: waiting for a session is not a failure", info.Retried)
		}
		if sends := provider.stats(); sends != 1 {
			t.Errorf("the provider accepted %d submissions, want 1", sends)
		}
		used, err := b.store.Used(context.Background(), "support",
			ledger.Rate{Name: tasks.RateMessagesPerMinute, Limit: 1, Window: time.Minute})
		if err != nil || used != 1 {
			t.Errorf("Used = %d, %v; want 1", used, err)
		}
	})

	t.Run("RecipientsPerDayCountsRecipients", func(t *testing.T) {
		t.Parallel()
		b := setupLimits(t)
		provider := newSessionProvider()
		b.startProcess(t, provider, 1, tasks.HandlerConfig{
			LimitsFunc: func(string) tasks.AccountLimits { return tasks.AccountLimits{RecipientsPerDay: 5} },
		})
		b.enqueue(t, 2, "a@example.org", "b@example.org")
		waitFor(t, "2 completed", func() bool { return len(b.tasksIn(t, asynq.TaskStateCompleted)) == 2 })
		b.enqueue(t, 1, "c@example.org", "d@example.org")
		waitFor(t, "1 deferred", func() bool { return len(b.tasksIn(t, asynq.TaskStateRetry)) == 1 })
		info := b.tasksIn(t, asynq.TaskStateRetry)[0]
		if info.Retried != 0 || !strings.Contains(info.LastErr, "reached its recipients_per_day of 5") {
			t.Errorf("deferred task: Retried %d, LastErr %q", info.Retried, info.LastErr)
		}
		if wait := time.Until(info.NextProcessAt); wait < 23*time.Hour {
			t.Errorf("deferred task comes back in %s, want about a day", wait)
		}
	})

	t.Run("AMessageOverTheDailyRecipientsIsDeadLettered", func(t *testing.T) {
		t.Parallel()
		b := setupLimits(t)
		provider := newSessionProvider()
		b.startProcess(t, provider, 1, tasks.HandlerConfig{
			LimitsFunc: func(string) tasks.AccountLimits {
				return tasks.AccountLimits{RecipientsPerDay: 2}
			},
		})
		b.enqueue(t, 1, "a@example.org", "b@example.org", "c@example.org")
		waitFor(t, "the task archived", func() bool { return len(b.tasksIn(t, asynq.TaskStateArchived)) == 1 })
		info := b.tasksIn(t, asynq.TaskStateArchived)[0]
		if !strings.Contains(info.LastErr, "3 recipients exceed the 2 recipients_per_day of account support") {
			t.Errorf("LastErr = %q", info.LastErr)
		}
		if sends := provider.stats(); sends != 0 {
			t.Errorf("the provider saw %d submissions, want 0", sends)
		}
	})

	t.Run("NoLimitsFuncNoLimits", func(t *testing.T) {
		t.Parallel()
		b := setupLimits(t)
		provider := newSessionProvider()
		b.startProcess(t, provider, 4, tasks.HandlerConfig{})
		b.enqueue(t, 5, "alice@example.org")
		waitFor(t, "5 completed", func() bool { return len(b.tasksIn(t, asynq.TaskStateCompleted)) == 5 })
	})
}

func TestNewHandlerRefusesANegativeSessionRecheck(t *testing.T) {
	t.Parallel()
	_, err := tasks.NewHandler(tasks.HandlerConfig{
		SenderFunc:     func(string) (tasks.Sender, error) { return nil, nil },
		Ledger:         ledger.New(redistest.Client(t, redisDB), ledger.Options{}),
		SessionRecheck: -time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "SessionRecheck") {
		t.Errorf("NewHandler = %v, want an error naming SessionRecheck", err)
	}
}
