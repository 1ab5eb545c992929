// Command worker takes email:send tasks from Redis and delivers them through
// the accounts listed in an accounts file.
//
// Usage:
//
//	worker -accounts accounts.yaml [-concurrency 10] [-queues email=1]
//
// Redis is found through REDIS_URL (default redis://127.0.0.1:6379/0;
// rediss:// for TLS). Every flag has an environment default, listed by -h.
//
// The workers share each account's access and refresh tokens in Redis,
// encrypted with AES-256-GCM. The key comes from the environment, never from
// a flag: SENDQ_TOKEN_KEY (base64 of 32 random bytes: `openssl rand -base64
// 32`), SENDQ_TOKEN_KEYS ("id:base64,id:base64", the first one current, the
// others still read: how keys rotate) or SENDQ_TOKEN_KEY_FILE (a file holding
// either form). Without a key the worker refuses to start, unless run with
// -dev-insecure-token-store (SENDQ_DEV_INSECURE_TOKEN_STORE=1), which stores
// tokens in plaintext: for development only.
//
// The operations listener (package opsweb) serves /healthz, /readyz, /metrics
// and the asynq web UI under /monitoring/ on -http (SENDQ_HTTP_ADDR, default
// 127.0.0.1:8080; empty turns it off). /monitoring and /metrics take HTTP
// basic auth, user SENDQ_HTTP_USER (default admin), password
// SENDQ_HTTP_PASSWORD or the file SENDQ_HTTP_PASSWORD_FILE; a password is
// required unless -http is a loopback address. -monitoring-readonly
// (SENDQ_MONITORING_READONLY=1) turns the UI's actions off.
// SIGINT or SIGTERM stops it gracefully: in-flight sends get the shutdown
// timeout to finish, and whatever has not finished by then goes back to the
// queue.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redisconn"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/opsweb"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/tasks"
	"github.com/sendq/sendq/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// options are the worker's settings after flags and environment.
type options struct {
	accountsFile    string
	redis           asynq.RedisConnOpt
	redisDesc       string // for logs: no password
	concurrency     int
	queues          map[string]int
	shutdownTimeout time.Duration
	pollInterval    time.Duration
	retry           tasks.RetryPolicy
	ledgerPrefix    string
	logFormat       string
	logLevel        slog.Level
	// tokenKeys encrypts the tokens shared in Redis; nil only with
	// devInsecureTokenStore.
	tokenKeys             *ledger.Keyring
	devInsecureTokenStore bool
	// httpAddr is the operations listener's address; empty turns it off.
	httpAddr           string
	httpUser           string
	httpPassword       smtpoauth.Secret
	monitoringReadOnly bool
}

// parseFlags reads args with defaults from getenv. It is a pure function so
// the flag and environment rules can be table-tested.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var queues, concurrency, shutdown, level string
	devInsecure, err := envBool(getenv, worker.EnvDevInsecureTokenStore)
	if err != nil {
		return o, err
	}
	fs.StringVar(&o.accountsFile, "accounts", env("SENDQ_ACCOUNTS", ""), "accounts file (env SENDQ_ACCOUNTS)")
	fs.StringVar(&concurrency, "concurrency", env("SENDQ_CONCURRENCY", "10"), "messages sent at once by this process (env SENDQ_CONCURRENCY)")
	fs.StringVar(&queues, "queues", env("SENDQ_QUEUES", "email=1"), "queues and their weights, name=weight,... (env SENDQ_QUEUES)")
	var poll string
	fs.StringVar(&poll, "poll-interval", env("SENDQ_POLL_INTERVAL", worker.DefaultPollInterval.String()),
		"how often an idle worker looks for new tasks: the longest pickup delay; each look is a Redis round trip (env SENDQ_POLL_INTERVAL)")
	fs.StringVar(&shutdown, "shutdown-timeout", env("SENDQ_SHUTDOWN_TIMEOUT", "30s"), "time in-flight sends get to finish on SIGTERM (env SENDQ_SHUTDOWN_TIMEOUT)")
	var retryBase, retryCap, lifetime, attempts string
	fs.StringVar(&retryBase, "retry-base", env("SENDQ_RETRY_BASE", tasks.DefaultRetryBase.String()), "first retry delay, doubled on each failure (env SENDQ_RETRY_BASE)")
	fs.StringVar(&retryCap, "retry-cap", env("SENDQ_RETRY_CAP", tasks.DefaultRetryCap.String()), "longest retry delay (env SENDQ_RETRY_CAP)")
	fs.StringVar(&attempts, "max-attempts", env("SENDQ_MAX_ATTEMPTS", strconv.Itoa(tasks.DefaultMaxAttempts)), "failed attempts before a message is dead-lettered (env SENDQ_MAX_ATTEMPTS)")
	fs.StringVar(&lifetime, "queue-lifetime", env("SENDQ_QUEUE_LIFETIME", tasks.DefaultQueueLifetime.String()), "how long a message may wait before it is dead-lettered (env SENDQ_QUEUE_LIFETIME)")
	o.ledgerPrefix = env("SENDQ_LEDGER_PREFIX", "")
	fs.StringVar(&o.logFormat, "log-format", env("SENDQ_LOG_FORMAT", "text"), "log format: text or json (env SENDQ_LOG_FORMAT)")
	fs.StringVar(&level, "log-level", env("SENDQ_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env SENDQ_LOG_LEVEL)")
	fs.BoolVar(&o.devInsecureTokenStore, "dev-insecure-token-store", devInsecure,
		"DEVELOPMENT ONLY: without a token key, store tokens in Redis in plaintext (env "+worker.EnvDevInsecureTokenStore+"=1)")
	fs.StringVar(&o.httpAddr, "http", env(opsweb.EnvAddr, opsweb.DefaultAddr),
		"address of /healthz, /readyz, /metrics and the web UI /monitoring/; empty disables (env "+opsweb.EnvAddr+")")
	readOnly, err := envBool(getenv, opsweb.EnvMonitoringReadOnly)
	if err != nil {
		return o, err
	}
	fs.BoolVar(&o.monitoringReadOnly, "monitoring-readonly", readOnly, "web UI in read-only mode (env "+opsweb.EnvMonitoringReadOnly+"=1)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: worker -accounts FILE [flags]\n\nRedis: REDIS_URL (default redis://127.0.0.1:6379/0)\n"+
			"Token encryption key (one of): %s (base64 of 32 bytes), %s (id:base64,... first current), %s (a file)\n\n",
			ledger.EnvTokenKey, ledger.EnvTokenKeys, ledger.EnvTokenKeyFile)
		fmt.Fprintf(fs.Output(), "Web UI and /metrics basic auth: %s (default %s), %s or %s (required off loopback)\n\n",
			opsweb.EnvUser, opsweb.DefaultUser, opsweb.EnvPassword, opsweb.EnvPasswordFile)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.redis, o.redisDesc, err = redisconn.FromEnv(getenv); err != nil {
		return o, err
	}
	if o.accountsFile == "" {
		return o, errors.New("-accounts: an accounts file is required (or set SENDQ_ACCOUNTS)")
	}
	n, err := strconv.Atoi(concurrency)
	if err != nil || n < 1 {
		return o, fmt.Errorf("-concurrency: %q is not a positive number", concurrency)
	}
	o.concurrency = n
	if o.queues, err = parseQueues(queues); err != nil {
		return o, fmt.Errorf("-queues: %w", err)
	}
	for _, d := range []struct {
		flag string
		raw  string
		into *time.Duration
	}{{"-retry-base", retryBase, &o.retry.Base}, {"-retry-cap", retryCap, &o.retry.Cap}, {"-queue-lifetime", lifetime, &o.retry.Lifetime}} {
		v, err := time.ParseDuration(d.raw)
		if err != nil || v <= 0 {
			return o, fmt.Errorf("%s: %q is not a positive duration", d.flag, d.raw)
		}
		*d.into = v
	}
	if o.retry.Cap < o.retry.Base {
		return o, fmt.Errorf("-retry-cap %s is below -retry-base %s", o.retry.Cap, o.retry.Base)
	}
	if o.retry.MaxAttempts, err = strconv.Atoi(attempts); err != nil || o.retry.MaxAttempts < 1 {
		return o, fmt.Errorf("-max-attempts: %q is not a positive number", attempts)
	}
	if o.pollInterval, err = time.ParseDuration(poll); err != nil || o.pollInterval <= 0 {
		return o, fmt.Errorf("-poll-interval: %q is not a positive duration", poll)
	}
	if o.shutdownTimeout, err = time.ParseDuration(shutdown); err != nil || o.shutdownTimeout < 0 {
		return o, fmt.Errorf("-shutdown-timeout: %q is not a duration", shutdown)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return o, fmt.Errorf("-log-format: %q is neither text nor json", o.logFormat)
	}
	if err := o.logLevel.UnmarshalText([]byte(level)); err != nil {
		return o, fmt.Errorf("-log-level: %q is not a level", level)
	}
	o.httpUser = getenv(opsweb.EnvUser)
	if o.httpPassword, err = opsweb.PasswordFromEnv(getenv); err != nil {
		return o, err
	}
	if o.tokenKeys, err = ledger.LoadKeyring(getenv); err != nil {
		return o, err
	}
	if o.tokenKeys == nil && !o.devInsecureTokenStore {
		return o, worker.ErrNoTokenKeys
	}
	return o, nil
}

// envBool reads a boolean environment variable: unset or empty is false.
func envBool(getenv func(string) string, name string) (bool, error) {
	v := getenv(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s: %q is not a boolean (1, true, 0, false)", name, v)
	}
	return b, nil
}

// parseQueues reads "name=weight,name=weight"; a bare name has weight 1.
func parseQueues(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, weight, found := strings.Cut(part, "=")
		w := 1
		if found {
			n, err := strconv.Atoi(weight)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("queue %q: weight %q is not a positive number", name, weight)
			}
			w = n
		}
		if name == "" {
			return nil, fmt.Errorf("empty queue name in %q", s)
		}
		out[name] = w
	}
	if len(out) == 0 {
		return nil, errors.New("no queue given")
	}
	return out, nil
}

func newLogger(o options, w io.Writer) *slog.Logger {
	ho := &slog.HandlerOptions{Level: o.logLevel}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	logger := newLogger(o, stderr)
	redisOpt := o.redis
	logger.Info("redis", "server", o.redisDesc)
	m := metrics.New()
	var accountsLoaded atomic.Bool
	stopHTTP, err := startOpsListener(o, m, &accountsLoaded, logger)
	if err != nil {
		return err
	}
	defer stopHTTP() // after the worker: health and metrics last through its shutdown
	file, err := accounts.Load(o.accountsFile)
	if err != nil {
		return err
	}
	w, err := worker.New(worker.Config{
		Redis:           redisOpt,
		Accounts:        file,
		Concurrency:     o.concurrency,
		Queues:          o.queues,
		ShutdownTimeout: o.shutdownTimeout,
		PollInterval:    o.pollInterval,
		Retry:           o.retry,
		Ledger:          ledger.Options{Prefix: o.ledgerPrefix},
		Logger:          logger,
		Metrics:         m,

		TokenKeys:             o.tokenKeys,
		DevInsecureTokenStore: o.devInsecureTokenStore,
	})
	if err != nil {
		return err
	}
	accountsLoaded.Store(true)
	return w.Run(ctx)
}

// startOpsListener serves the opsweb handler on o.httpAddr, unless it is
// empty, and returns the func that shuts it down gracefully.
func startOpsListener(o options, m *metrics.Metrics, accountsLoaded *atomic.Bool, logger *slog.Logger) (stop func(), err error) {
	if o.httpAddr == "" {
		return func() {}, nil
	}
	h, err := opsweb.New(opsweb.Config{
		Addr:  o.httpAddr,
		Redis: o.redis,
		AccountsReadyFunc: func() error {
			if !accountsLoaded.Load() {
				return errors.New("not loaded yet")
			}
			return nil
		},
		Gatherer: m.Registry(),
		User:     o.httpUser,
		Password: o.httpPassword,
		ReadOnly: o.monitoringReadOnly,
		Logger:   logger,
	})
	if err != nil {
		return nil, fmt.Errorf("-http %s: %w", o.httpAddr, err)
	}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("-http: %w", err)
	}
	logger.Info("http listener", "addr", ln.Addr().String(), "monitoring", opsweb.MonitoringPath+"/",
		"basic_auth", !o.httpPassword.IsZero(), "monitoring_readonly", o.monitoringReadOnly)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := h.Serve(ctx, ln); err != nil {
			logger.Error("http listener", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
		h.Close()
	}, nil
}
