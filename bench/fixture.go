package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
	"github.com/sendq/sendq/worker"
)

// Key names: every key the benchmark writes starts with one of these, so
// that it deletes its own keys and no other.
const (
	queuePrefix  = "sendq-bench-" // asynq queues: asynq:{sendq-bench-...}:*
	ledgerPrefix = "sendq-bench:" // sendq's ledger keys
	benchUser    = "bench"        // the mailbox of the in-process runs
	benchAccount = "acct-" + benchUser
	oauthClient  = "bench-client"
	oauthSecret  = "bench-secret" // not a secret: the test server's client
)

// bench holds what every measurement shares: the Redis database, the test
// provider and the account of the in-process runs.
type bench struct {
	cfg      config
	stderr   io.Writer
	log      *slog.Logger
	run      string // random, in every key name
	start    time.Time
	redisOpt asynq.RedisClientOpt
	rdb      *redis.Client
	srv      *smtpoauthtest.Server
	dir      string     // temporary: the provider's CA certificate
	caFile   string     // in dir
	accts    accountSet // benchAccount

	// Totals over sendq's end-to-end rounds.
	sendqLogins, sendqMessages int

	stopAlive func() // ends the heartbeat of aliveKey
}

// aliveTTL is how long the key that says a run is alive outlives its last
// renewal; it is renewed every aliveTTL/3.
const aliveTTL = 30 * time.Second

// aliveKey says that run is under way: its keys must not be deleted by
// another run.
func aliveKey(run string) string { return ledgerPrefix + run + ":alive" }

func newBench(ctx context.Context, cfg config, stderr io.Writer) (*bench, error) {
	var id [4]byte
	rand.Read(id[:])
	stderr = &lockedWriter{w: stderr} // the logs and the worker processes' output
	b := &bench{
		cfg:      cfg,
		stderr:   stderr,
		log:      newLogger(stderr),
		run:      hex.EncodeToString(id[:]),
		start:    time.Now(),
		redisOpt: asynq.RedisClientOpt{Addr: cfg.RedisAddr, DB: cfg.DB},
	}
	b.rdb = redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, DB: cfg.DB})
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := b.rdb.Ping(pctx).Err(); err != nil {
		b.rdb.Close()
		return nil, fmt.Errorf("redis at %s is not reachable (%v): start one with `redis-server --daemonize yes` or set REDIS_ADDR", cfg.RedisAddr, err)
	}
	// Say this run is alive before writing any other key, then delete
	// what runs that were killed left behind (not those of a run going on,
	// such as a TestSmoke of someone else's make test).
	if err := b.rdb.Set(ctx, aliveKey(b.run), time.Now().String(), aliveTTL).Err(); err != nil {
		b.rdb.Close()
		return nil, fmt.Errorf("redis: %w", err)
	}
	aliveCtx, stopAlive := context.WithCancel(context.Background())
	aliveDone := make(chan struct{})
	go func() {
		defer close(aliveDone)
		tick := time.NewTicker(aliveTTL / 3)
		defer tick.Stop()
		for {
			select {
			case <-aliveCtx.Done():
				return
			case <-tick.C:
				b.rdb.Expire(aliveCtx, aliveKey(b.run), aliveTTL)
			}
		}
	}()
	b.stopAlive = func() { stopAlive(); <-aliveDone }
	if err := b.deleteAbandoned(ctx); err != nil {
		b.close()
		return nil, err
	}
	srv, err := smtpoauthtest.Start(smtpoauthtest.Config{})
	if err != nil {
		b.rdb.Close()
		return nil, err
	}
	b.srv = srv
	// Accounts name their CA by file, which the worker reads itself.
	if b.dir, err = os.MkdirTemp("", "sendq-bench-"); err != nil {
		b.close()
		return nil, err
	}
	b.caFile = filepath.Join(b.dir, "ca.pem")
	if err := os.WriteFile(b.caFile, srv.CACertPEM, 0o600); err != nil {
		b.close()
		return nil, err
	}
	srv.AddClient(oauthClient, oauthSecret)
	b.accts = newAccountSet(srv, b.caFile, benchUser)
	return b, nil
}

func (b *bench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b.stopAlive != nil {
		b.stopAlive()
	}
	if err := b.deleteKeys(ctx, "asynq:{"+queuePrefix+b.run+"-*", ledgerPrefix+b.run+":*"); err != nil {
		b.log.Warn("deleting the benchmark's keys", "error", err)
	}
	if b.srv != nil {
		b.srv.Close()
	}
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
	b.rdb.Close()
}

// progress prints a line on stderr.
func (b *bench) progress(format string, args ...any) {
	elapsed := time.Since(b.start).Seconds()
	fmt.Fprintf(b.stderr, "bench: %5.1fs "+format+"\n", append([]any{elapsed}, args...)...)
}

// queue returns a new queue name of this run.
func (b *bench) queue(what string) string {
	var id [3]byte
	rand.Read(id[:])
	return queuePrefix + b.run + "-" + what + "-" + hex.EncodeToString(id[:])
}

// ledgerPrefix returns a ledger key prefix of this run.
func (b *bench) ledgerPrefix(what string) string {
	return ledgerPrefix + b.run + ":" + what + ":"
}

// deleteAbandoned deletes the keys of the runs that are no longer alive.
func (b *bench) deleteAbandoned(ctx context.Context) error {
	runs := map[string]bool{}
	for _, p := range []struct{ pattern, prefix string }{
		{"asynq:{" + queuePrefix + "*", "asynq:{" + queuePrefix},
		{ledgerPrefix + "*", ledgerPrefix},
	} {
		iter := b.rdb.Scan(ctx, 0, p.pattern, 1000).Iterator()
		for iter.Next(ctx) {
			rest := strings.TrimPrefix(iter.Val(), p.prefix)
			if i := strings.IndexAny(rest, "-:"); i > 0 {
				runs[rest[:i]] = true
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("redis: scan benchmark keys: %w", err)
		}
	}
	for run := range runs {
		if run == b.run {
			continue
		}
		n, err := b.rdb.Exists(ctx, aliveKey(run)).Result()
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		if n == 0 {
			if err := b.deleteKeys(ctx, "asynq:{"+queuePrefix+run+"-*", ledgerPrefix+run+":*"); err != nil {
				return err
			}
		}
	}
	return nil
}

// deleteQueue removes every key asynq keeps for queue q.
func (b *bench) deleteQueue(ctx context.Context, q string) error {
	return b.deleteKeys(ctx, "asynq:{"+q+"}:*")
}

// deleteKeys deletes the keys matching the patterns, and the asynq queues
// of the benchmark they belong to from asynq's list of queues.
func (b *bench) deleteKeys(ctx context.Context, patterns ...string) error {
	for _, p := range patterns {
		iter := b.rdb.Scan(ctx, 0, p, 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 1000 {
				if err := b.rdb.Unlink(ctx, keys...).Err(); err != nil {
					return fmt.Errorf("redis: delete benchmark keys: %w", err)
				}
				keys = keys[:0]
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("redis: scan benchmark keys: %w", err)
		}
		if len(keys) > 0 {
			if err := b.rdb.Unlink(ctx, keys...).Err(); err != nil {
				return fmt.Errorf("redis: delete benchmark keys: %w", err)
			}
		}
	}
	queues, err := b.rdb.SMembers(ctx, "asynq:queues").Result()
	if err != nil {
		return fmt.Errorf("redis: asynq queues: %w", err)
	}
	for _, q := range queues {
		for _, p := range patterns {
			if m, _ := filepath.Match(p, "asynq:{"+q+"}:pending"); m {
				b.rdb.SRem(ctx, "asynq:queues", q)
			}
		}
	}
	return nil
}

// accountSet is an accounts file against the test provider and the secrets
// it names, kept in memory: in-process workers parse it directly, worker
// processes receive it in their configuration. Only the CA certificate is a
// file.
type accountSet struct {
	YAML    string            `json:"yaml"`
	Secrets map[string]string `json:"secrets"`
}

// newAccountSet registers one delegated mailbox per user with srv
// ("acct-"+user, user@example.com, refresh token grant, STARTTLS) and
// returns the accounts file that sends through them, trusting caFile.
func newAccountSet(srv *smtpoauthtest.Server, caFile string, users ...string) accountSet {
	s := accountSet{Secrets: map[string]string{"CLIENT_SECRET": oauthSecret}}
	host, port, _ := net.SplitHostPort(srv.SMTPAddr)
	var y strings.Builder
	y.WriteString("accounts:\n")
	for _, u := range users {
		env := "RT_" + strings.ToUpper(u)
		s.Secrets[env] = srv.NewRefreshToken(oauthClient, u+"@example.com")
		fmt.Fprintf(&y, `  - id: acct-%[1]s
    provider: generic
    username: %[1]s@example.com
    smtp: {host: %[2]s, port: %[3]s, tls: starttls, ca_file: %[7]q}
    oauth: {grant: refresh_token, client_id: %[4]s, client_secret_env: CLIENT_SECRET, refresh_token_env: %[5]s, token_url: %[6]s}
`, u, host, port, oauthClient, env, srv.TokenURL, caFile)
	}
	s.YAML = y.String()
	return s
}

// parse returns the accounts file.
func (s accountSet) parse() (*accounts.File, error) {
	return accounts.Parse([]byte(s.YAML), accounts.ParseOptions{
		Name:   "bench-accounts.yaml",
		Getenv: func(k string) string { return s.Secrets[k] },
	})
}

// workerConfig returns the configuration of a sendq worker on queue with
// the accounts of s.
func workerConfig(redisOpt asynq.RedisConnOpt, s accountSet, queue, prefix string, concurrency int, log *slog.Logger) (worker.Config, error) {
	file, err := s.parse()
	if err != nil {
		return worker.Config{}, err
	}
	return worker.Config{
		Redis:                 redisOpt,
		Accounts:              file,
		Concurrency:           concurrency,
		Queues:                map[string]int{queue: 1},
		ShutdownTimeout:       10 * time.Second,
		Ledger:                ledger.Options{Prefix: prefix},
		DevInsecureTokenStore: true, // the test provider's tokens, in a database of our own
		Logger:                log,
	}, nil
}

// runningWorker is an in-process sendq worker.
type runningWorker struct {
	w       *worker.Worker
	started bool
	cancel  context.CancelFunc
	done    chan error
}

// newWorker builds an in-process sendq worker on queue; start runs it.
func (b *bench) newWorker(queue string, concurrency int) (*runningWorker, error) {
	wc, err := workerConfig(b.redisOpt, b.accts, queue, b.ledgerPrefix("inproc"), concurrency, b.log)
	if err != nil {
		return nil, err
	}
	w, err := worker.New(wc)
	if err != nil {
		return nil, err
	}
	return &runningWorker{w: w, done: make(chan error, 1)}, nil
}

// startWorker runs an in-process sendq worker on queue until stop.
func (b *bench) startWorker(queue string, concurrency int) (*runningWorker, error) {
	w, err := b.newWorker(queue, concurrency)
	if err != nil {
		return nil, err
	}
	w.start()
	return w, nil
}

// start runs the worker until stop.
func (w *runningWorker) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.started = cancel, true
	go func() { w.done <- w.w.Run(ctx) }()
}

// stop shuts the worker down and waits for it.
func (w *runningWorker) stop() error {
	if !w.started {
		return nil
	}
	w.cancel()
	return <-w.done
}

// email returns the message every run sends: one recipient, a text body of
// -body bytes, and the extra headers.
func (b *bench) email(account string, headers ...tasks.Header) *tasks.Email {
	user := strings.TrimPrefix(account, "acct-")
	return &tasks.Email{
		AccountID: account,
		From:      "Bench <" + user + "@example.com>",
		To:        []string{"recipient@example.net"},
		Subject:   "sendq benchmark",
		Text:      body(b.cfg.BodyBytes),
		Headers:   headers,
	}
}

var (
	bodyOnce sync.Once
	bodyText string
)

// body returns n bytes of plain text in lines of 72 characters.
func body(n int) string {
	bodyOnce.Do(func() {
		const line = "The quick brown fox jumps over the lazy dog, then sends a receipt. 0123\n"
		var s strings.Builder
		for s.Len() < n {
			s.WriteString(line)
		}
		bodyText = s.String()[:n]
	})
	return bodyText
}

// fill enqueues n tasks made by next on up to 8 goroutines (not timed).
func fill(ctx context.Context, n int, enqueue func(ctx context.Context, i int) error) error {
	const workers = 8
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ferr error
		next = make(chan int)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := enqueue(ctx, i); err != nil {
					mu.Lock()
					ferr = cmpErr(ferr, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if ferr != nil {
		return fmt.Errorf("fill queue: %w", ferr)
	}
	return ctx.Err()
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// waitCount polls count every 2 ms until it reaches n and returns when it
// did; it fails when count does, or after timeout, naming what it waited
// for.
func waitCount(ctx context.Context, what string, n int, timeout time.Duration, count func() (int, error)) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := count()
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %w", what, err)
		}
		if got >= n {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s: %d of %d after %v: %w", what, got, n, timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// drainTimeout is how long a run of n messages may take before the
// benchmark gives up with an error.
func drainTimeout(n int) time.Duration {
	return 60*time.Second + time.Duration(n)*10*time.Millisecond
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// newLogger returns the logger of the workers: warnings and errors, but for
// the one every worker with DevInsecureTokenStore logs at start. w must be
// safe for concurrent use.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(quietHandler{slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn})})
}

// quietHandler drops the plaintext token store warning: the benchmark's
// tokens are the test provider's, in a database of its own.
type quietHandler struct{ slog.Handler }

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "tokens are stored in Redis in plaintext") {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as)}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}

// asynqLogger sends asynq's warnings and errors to a slog.Logger.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) {}
func (a asynqLogger) Info(args ...any)  {}
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)) }
