package opsweb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/smtpoauth"
)

// DefaultAddr is the listen address of the worker's operations listener.
const DefaultAddr = "127.0.0.1:8080"

// DefaultUser is the basic auth user when Config.User is empty.
const DefaultUser = "admin"

// DefaultReadyTimeout bounds the checks behind /readyz.
const DefaultReadyTimeout = time.Second

// DefaultShutdownTimeout is how long [Handler.Serve] lets requests in flight
// finish once its context is done.
const DefaultShutdownTimeout = 5 * time.Second

// The environment variables the worker reads the listener's settings from.
const (
	// EnvAddr holds the listen address (the -http flag's default).
	EnvAddr = "SENDQ_HTTP_ADDR"
	// EnvUser holds the basic auth user.
	EnvUser = "SENDQ_HTTP_USER"
	// EnvPassword holds the basic auth password.
	EnvPassword = "SENDQ_HTTP_PASSWORD"
	// EnvPasswordFile names a file holding the basic auth password.
	EnvPasswordFile = "SENDQ_HTTP_PASSWORD_FILE"
	// EnvMonitoringReadOnly set to 1 or true puts the web UI in read-only
	// mode (the -monitoring-readonly flag's default).
	EnvMonitoringReadOnly = "SENDQ_MONITORING_READONLY"
)

// MonitoringPath is where the asynq web UI is served; its API is under
// MonitoringPath + "/api".
const MonitoringPath = "/monitoring"

// ErrCredentialsRequired is matched by the error [New] returns for a
// non-loopback Config.Addr without a password.
var ErrCredentialsRequired = errors.New("credentials required")

// Config configures [New]. Only Redis is required.
type Config struct {
	// Addr is the address the listener is bound to, host:port. It decides
	// whether credentials are required: they are unless the host is a
	// loopback IP address or "localhost" (":8080" and "0.0.0.0:8080" listen
	// on every interface and require them). The handler does not listen on
	// it itself. Empty means DefaultAddr.
	Addr string

	// Redis is the asynq Redis the web UI inspects and /readyz pings.
	// Required.
	Redis asynq.RedisConnOpt

	// RedisPingFunc reports whether Redis answers, for /readyz; it gets a
	// context with the ReadyTimeout deadline. Nil means a PING through a
	// client made from Redis.
	RedisPingFunc func(ctx context.Context) error

	// AccountsReadyFunc returns nil once the accounts are loaded, or why they
	// are not, for /readyz. Nil means the accounts are not checked.
	AccountsReadyFunc func() error

	// ReadyTimeout bounds the /readyz checks. Zero means DefaultReadyTimeout
	// (1s).
	ReadyTimeout time.Duration

	// Gatherer is served on /metrics in the Prometheus exposition format.
	// Nil means /metrics answers 404.
	Gatherer prometheus.Gatherer

	// User is the basic auth user. Empty means DefaultUser ("admin"). It may
	// not contain a colon.
	User string

	// Password turns basic auth on for /monitoring and /metrics. Empty means
	// no authentication, which is only accepted when Addr is a loopback
	// address. See [PasswordFromEnv].
	Password smtpoauth.Secret

	// ReadOnly puts the web UI in read-only mode: its API refuses every
	// method but GET. The default lets an operator pause queues and run,
	// archive or delete tasks.
	ReadOnly bool

	// Logger receives refused logins and listener errors. Nil means a logger
	// that discards everything.
	Logger *slog.Logger
}

// WithDefaults returns a copy of c with every zero field that has a default
// set to it.
func (c Config) WithDefaults() Config {
	c.Addr = cmp.Or(c.Addr, DefaultAddr)
	c.ReadyTimeout = cmp.Or(c.ReadyTimeout, DefaultReadyTimeout)
	if !c.Password.IsZero() {
		// Without a password an explicit User is a mistake validate reports.
		c.User = cmp.Or(c.User, DefaultUser)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// validate checks c after WithDefaults; its errors name the field.
func (c Config) validate() error {
	if c.Redis == nil {
		return errors.New("opsweb: Redis: required")
	}
	if c.ReadyTimeout < 0 {
		return fmt.Errorf("opsweb: ReadyTimeout: %s is negative", c.ReadyTimeout)
	}
	if strings.Contains(c.User, ":") {
		return errors.New("opsweb: User: a basic auth user cannot contain a colon")
	}
	if c.Password.IsZero() {
		if c.User != "" {
			return fmt.Errorf("opsweb: Password: empty while User %q is set (set %s or %s)", c.User, EnvPassword, EnvPasswordFile)
		}
		loopback, err := isLoopback(c.Addr)
		if err != nil {
			return fmt.Errorf("opsweb: Addr: %w", err)
		}
		if !loopback {
			return fmt.Errorf("opsweb: Password: %w: %q is not a loopback address, so /monitoring and /metrics need a password (set %s or %s)",
				ErrCredentialsRequired, c.Addr, EnvPassword, EnvPasswordFile)
		}
	}
	return nil
}

// isLoopback reports whether the host of addr (host:port) can only be
// reached from this machine: a loopback IP or "localhost".
func isLoopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	if strings.EqualFold(host, "localhost") {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}
