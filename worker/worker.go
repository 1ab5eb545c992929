package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/tasks"
)

// Defaults for Config's zero fields.
const (
	DefaultConcurrency = 10
	// ConcurrencyPerDequeueLoop is how much of Concurrency one dequeue
	// loop serves by default (see Config.DequeueLoops).
	ConcurrencyPerDequeueLoop = 5
	// MaxDequeueLoopsPerCPU bounds the default DequeueLoops. A loop spends
	// most of its time waiting for Redis, not on a CPU: on 2 CPUs at
	// concurrency 50, four loops delivered 1.11-1.21× the naive handler's
	// rate in five alternating runs against 1.00-1.19× with two.
	MaxDequeueLoopsPerCPU = 2
	// DefaultPollInterval is Config.PollInterval's default.
	DefaultPollInterval    = 50 * time.Millisecond
	DefaultShutdownTimeout = 30 * time.Second
)

// Config configures a Worker. Redis and Accounts are required; every other
// zero field means the default its comment names.
type Config struct {
	// Redis is the queue's Redis server (asynq.ParseRedisURI reads a URL).
	Redis asynq.RedisConnOpt
	// Accounts lists the mailboxes the worker may send through.
	Accounts *accounts.File
	// Concurrency is how many messages this process sends at once.
	// Default DefaultConcurrency.
	Concurrency int
	// DequeueLoops is how many asynq servers the process runs, sharing
	// Concurrency between them. An asynq server takes tasks from Redis in
	// one loop, one task per round trip, and a send waits for its own
	// round trips to Redis (the delivery state before, the receipt after),
	// so when a loaded Redis answers slowly that loop, not the sends, sets
	// the rate; each server adds a loop (and its own heartbeat, which the
	// asynq web UI lists as a server). The servers share the worker's
	// Redis connection pool (size it with Redis's PoolSize). Default: one per
	// ConcurrencyPerDequeueLoop of Concurrency, rounded up, and at most
	// MaxDequeueLoopsPerCPU per CPU (GOMAXPROCS).
	DequeueLoops int
	// Queues maps queue names to priority weights. Default
	// {tasks.DefaultQueue: 1}.
	Queues map[string]int
	// ShutdownTimeout is how long in-flight sends get to finish after Run's
	// context ends; tasks still running then go back to the queue.
	// Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Retry decides backoff and when a message is given up. Zero fields
	// mean the defaults of tasks.RetryPolicy.
	Retry tasks.RetryPolicy
	// InvalidGrantThreshold and InvalidGrantWindow decide when refusals of
	// an account's refresh token hold it for re-authorization (see
	// tasks.HandlerConfig). Zero means the defaults.
	InvalidGrantThreshold int
	InvalidGrantWindow    time.Duration
	// Ledger configures the shared state kept in the same Redis: key
	// prefix and retention. Zero fields mean ledger's defaults. Its
	// TokenKeys and InsecurePlaintextTokens are replaced by TokenKeys and
	// DevInsecureTokenStore.
	Ledger ledger.Options
	// TokenKeys encrypts the refresh and access tokens the workers share
	// in Redis (see ledger.Keyring and ledger.LoadKeyring). Required unless
	// DevInsecureTokenStore is set.
	TokenKeys *ledger.Keyring
	// DevInsecureTokenStore, with no TokenKeys, stores tokens in Redis in
	// plaintext, and logs a warning: for development only. With TokenKeys,
	// tokens are encrypted and plaintext ones stored earlier stay readable.
	// Default false.
	DevInsecureTokenStore bool
	// TokenSharing tunes how the workers share tokens: keep-alive period,
	// lock time to live, refresh margin. Its Tokens field is replaced by
	// the ledger; zero fields mean the defaults of accounts.RegistryOptions.
	TokenSharing accounts.RegistryOptions
	// Logger receives the worker's and the queue's logs. Default: discard.
	Logger *slog.Logger
	// Metrics, if set, records the worker's metrics: outcomes of sends,
	// SMTP stage latencies, logins and reused connections, token
	// refreshes; and registers with Metrics.Registry collectors that read
	// at scrape time the tasks in Queues and, from the ledger, the
	// throttled and held accounts of Accounts and the dead letters (see
	// package metrics). Serve Metrics.Registry over HTTP to expose them.
	// The collectors are registered by New and unregistered when Run
	// returns: one Worker at a time may use a Metrics. Default nil: no
	// metrics.
	Metrics *metrics.Metrics
	// PollInterval is how long an idle worker waits before it looks for
	// new tasks again: the longest a message enqueued into an idle worker
	// waits to be picked up. Each look is one Redis round trip per
	// dequeue loop. Default DefaultPollInterval (asynq's own default is a
	// second).
	PollInterval time.Duration

	// pollInterval overrides asynq's scheduled/retry check interval (tests).
	pollInterval time.Duration
}

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.Concurrency = cmp.Or(c.Concurrency, DefaultConcurrency)
	c.DequeueLoops = cmp.Or(c.DequeueLoops,
		min((c.Concurrency+ConcurrencyPerDequeueLoop-1)/ConcurrencyPerDequeueLoop, MaxDequeueLoopsPerCPU*runtime.GOMAXPROCS(0)))
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, DefaultShutdownTimeout)
	c.PollInterval = cmp.Or(c.PollInterval, c.pollInterval, DefaultPollInterval)
	if len(c.Queues) == 0 {
		c.Queues = map[string]int{tasks.DefaultQueue: 1}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Redis == nil {
		errs = append(errs, errors.New("worker config: Redis is required"))
	}
	if c.Accounts == nil {
		errs = append(errs, errors.New("worker config: Accounts is required"))
	}
	if c.TokenKeys == nil && !c.DevInsecureTokenStore {
		errs = append(errs, ErrNoTokenKeys)
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("worker config: Concurrency %d is negative", c.Concurrency))
	}
	if c.DequeueLoops < 0 || c.DequeueLoops > max(c.Concurrency, 1) {
		errs = append(errs, fmt.Errorf("worker config: DequeueLoops %d is not between 1 and Concurrency (%d)", c.DequeueLoops, c.Concurrency))
	}
	for q, w := range c.Queues {
		if q == "" || w < 1 {
			errs = append(errs, fmt.Errorf("worker config: Queues: %q has weight %d, want a name and a weight of at least 1", q, w))
		}
	}
	return errors.Join(errs...)
}

// ErrNoTokenKeys is returned by New when Config has neither TokenKeys nor
// DevInsecureTokenStore. Its message says how to provide either.
var ErrNoTokenKeys = errors.New("worker config: no token encryption key: set " +
	ledger.EnvTokenKey + " (base64 of 32 random bytes, e.g. `openssl rand -base64 32`), " +
	ledger.EnvTokenKeys + " (id:base64,... the first current) or " + ledger.EnvTokenKeyFile +
	"; or, for development only, run with -dev-insecure-token-store (" + EnvDevInsecureTokenStore + "=1) to store tokens in plaintext")

// EnvDevInsecureTokenStore is the environment variable that turns on
// Config.DevInsecureTokenStore in cmd/worker (value 1 or true).
const EnvDevInsecureTokenStore = "SENDQ_DEV_INSECURE_TOKEN_STORE"

// Worker takes email:send tasks from Redis and delivers them.
type Worker struct {
	cfg      Config
	rdb      redis.UniversalClient
	ledger   *ledger.Store
	registry *accounts.Registry
	servers  []*asynq.Server // one per dequeue loop
	mux      *asynq.ServeMux
	handler  *tasks.Handler
	// collectors are registered with Config.Metrics until Run returns.
	collectors []prometheus.Collector
}

// New builds a Worker: it validates the configuration and prepares one token
// source and sender per account, sharing tokens with the other workers
// through the ledger (encrypted with TokenKeys). Nothing is sent until Run.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	rdb, ok := cfg.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("worker config: Redis does not make a go-redis v9 client")
	}
	lopts := cfg.Ledger
	lopts.TokenKeys = cfg.TokenKeys
	lopts.InsecurePlaintextTokens = cfg.DevInsecureTokenStore
	store := ledger.New(rdb, lopts)
	if cfg.TokenKeys == nil {
		cfg.Logger.Warn("tokens are stored in Redis in plaintext: for development only",
			"flag", "-dev-insecure-token-store", "production", "set "+ledger.EnvTokenKey)
	} else {
		cfg.Logger.Info("token encryption", "keys", cfg.TokenKeys)
	}
	// Token sources live as long as the process, not as long as a task.
	ropts := cfg.TokenSharing
	ropts.Tokens = store
	ropts.Sessions = store
	ropts.IdleConnsPerAccount = cfg.Concurrency
	var observer tasks.Observer
	if m := cfg.Metrics; m != nil {
		ropts.ObserverFunc = func(id string) accounts.Observer { return m.ForAccount(id) }
		observer = m
	}
	registry, err := accounts.NewRegistry(context.Background(), cfg.Accounts, cfg.Logger, ropts)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	h, err := tasks.NewHandler(tasks.HandlerConfig{
		SenderFunc: func(account string) (tasks.Sender, error) { return registry.SenderFor(account) },
		LimitsFunc: func(account string) tasks.AccountLimits { return accountLimits(cfg.Accounts, account) },
		Ledger:     store,
		Retry:      cfg.Retry,
		Logger:     cfg.Logger,
		Observer:   observer,
		// The ledger and asynq share rdb's server and database.
		ResultInReceipt: true,
		AsyncReceipt:    true,
		Inspector:       asynq.NewInspectorFromRedisClient(rdb),

		InvalidGrantThreshold: cfg.InvalidGrantThreshold,
		InvalidGrantWindow:    cfg.InvalidGrantWindow,
	})
	if err != nil {
		rdb.Close()
		return nil, err
	}
	// The loops share Concurrency as evenly as it divides, and rdb's
	// connection pool with the ledger: a pool per server cost 4 MiB of
	// memory each at concurrency 100 (bench/RESULTS.md) and was no faster.
	servers := make([]*asynq.Server, cfg.DequeueLoops)
	for i := range servers {
		n := cfg.Concurrency / cfg.DequeueLoops
		if i < cfg.Concurrency%cfg.DequeueLoops {
			n++
		}
		servers[i] = asynq.NewServerFromRedisClient(rdb, asynq.Config{
			Concurrency:              n,
			Queues:                   cfg.Queues,
			ShutdownTimeout:          cfg.ShutdownTimeout,
			Logger:                   asynqLogger{cfg.Logger},
			LogLevel:                 asynq.WarnLevel,
			RetryDelayFunc:           h.RetryDelay,
			IsFailure:                h.IsFailure,
			DelayedTaskCheckInterval: cfg.pollInterval,
			TaskCheckInterval:        cfg.PollInterval,
		})
	}
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeSendEmail, h)
	w := &Worker{cfg: cfg, rdb: rdb, ledger: store, registry: registry, servers: servers, mux: mux, handler: h}
	if err := w.registerCollectors(); err != nil {
		rdb.Close()
		return nil, err
	}
	return w, nil
}

// registerCollectors registers with Config.Metrics, if any, the collectors
// that read the queues and the ledger at scrape time, through the worker's
// Redis client.
func (w *Worker) registerCollectors() error {
	m := w.cfg.Metrics
	if m == nil {
		return nil
	}
	queues := slices.Sorted(maps.Keys(w.cfg.Queues))
	qc, err := metrics.NewQueueCollector(metrics.QueueCollectorConfig{
		Inspector: asynq.NewInspectorFromRedisClient(w.rdb),
		Queues:    queues,
		Logger:    w.cfg.Logger,
	})
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(w.cfg.Accounts.Accounts()))
	for _, a := range w.cfg.Accounts.Accounts() {
		ids = append(ids, a.ID)
	}
	lc, err := metrics.NewLedgerCollector(metrics.LedgerCollectorConfig{
		Ledger:   w.ledger,
		Accounts: ids,
		Logger:   w.cfg.Logger,
	})
	if err != nil {
		return err
	}
	for _, c := range []prometheus.Collector{qc, lc} {
		if err := m.Registry().Register(c); err != nil {
			w.unregisterCollectors()
			return fmt.Errorf("worker config: Metrics: %w (is another Worker using it?)", err)
		}
		w.collectors = append(w.collectors, c)
	}
	return nil
}

// unregisterCollectors undoes registerCollectors.
func (w *Worker) unregisterCollectors() {
	for _, c := range w.collectors {
		w.cfg.Metrics.Registry().Unregister(c)
	}
	w.collectors = nil
}

// shutdown shuts the servers down at once, so that the shutdown timeout is
// the whole process's, not each loop's in turn.
func shutdown(servers []*asynq.Server) {
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Go(srv.Shutdown)
	}
	wg.Wait()
}

// accountLimits returns the sending limits of an account of the file, which
// every worker enforces together (tasks.AccountLimits); none for an unknown
// account (the handler dead-letters its mail before asking).
func accountLimits(f *accounts.File, id string) tasks.AccountLimits {
	a, ok := f.Account(id)
	if !ok {
		return tasks.AccountLimits{}
	}
	return tasks.AccountLimits{
		MessagesPerMinute: a.Limits.MessagesPerMinute,
		MessagesPerDay:    a.Limits.MessagesPerDay,
		RecipientsPerDay:  a.Limits.RecipientsPerDay,
	}
}

// Run processes tasks until ctx ends, then shuts down gracefully: it stops
// taking tasks, gives in-flight sends the shutdown timeout to finish,
// returns unfinished ones to the queue, and closes the idle SMTP
// connections. Meanwhile it keeps the refresh tokens of idle accounts
// alive (accounts.Registry.KeepAlive).
func (w *Worker) Run(ctx context.Context) error {
	defer w.rdb.Close()
	defer w.unregisterCollectors()
	if err := w.ledger.LoadScripts(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it started
		}
		return fmt.Errorf("redis: %w", err)
	}
	for i, srv := range w.servers {
		if err := srv.Start(w.mux); err != nil {
			shutdown(w.servers[:i])
			return fmt.Errorf("start worker: %w", err)
		}
	}
	keepAliveCtx, stopKeepAlive := context.WithCancel(ctx)
	keepAliveDone := make(chan struct{})
	go func() {
		defer close(keepAliveDone)
		w.registry.KeepAlive(keepAliveCtx)
	}()
	w.cfg.Logger.Info("worker started", "concurrency", w.cfg.Concurrency, "dequeue_loops", len(w.servers), "queues", fmt.Sprint(w.cfg.Queues))
	<-ctx.Done()
	w.cfg.Logger.Info("worker stopping", "shutdown_timeout", w.cfg.ShutdownTimeout.String())
	stopKeepAlive()
	shutdown(w.servers)
	// The sends are over; their last receipts may still be on their way.
	w.handler.Flush()
	// End the pooled SMTP connections with QUIT.
	if err := w.registry.Close(); err != nil {
		w.cfg.Logger.Warn("closing smtp connections", "error", err)
	}
	<-keepAliveDone
	w.cfg.Logger.Info("worker stopped")
	return nil
}
