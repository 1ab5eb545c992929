package opsweb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// Handler is the operations listener's http.Handler; see the package
// documentation for its routes. Close it to release its Redis connections.
type Handler struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
	mon *asynqmon.HTTPHandler
	rdb redis.UniversalClient // the default RedisPingFunc's client, or nil
}

var _ http.Handler = (*Handler)(nil)

// New validates cfg and builds the handler. It does no I/O: Redis is first
// contacted by a request. A non-loopback cfg.Addr without a password fails
// with an error matching ErrCredentialsRequired.
func New(cfg Config) (*Handler, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	// asynqmon panics on a connection option that makes no go-redis client.
	rdb, ok := cfg.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("opsweb: Redis: unsupported connection option %T", cfg.Redis)
	}
	if cfg.RedisPingFunc == nil {
		h.rdb = rdb
		h.cfg.RedisPingFunc = func(ctx context.Context) error { return rdb.Ping(ctx).Err() }
	} else {
		rdb.Close()
	}
	h.mon = asynqmon.New(asynqmon.Options{
		RootPath:         MonitoringPath,
		RedisConnOpt:     cfg.Redis,
		ReadOnly:         cfg.ReadOnly,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(FormatPayload),
		ResultFormatter:  asynqmon.ResultFormatterFunc(FormatResult),
	})

	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	if cfg.Gatherer != nil {
		h.mux.Handle("/metrics", h.basicAuth(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})))
	}
	csrf := http.NewCrossOriginProtection()
	h.mux.Handle(MonitoringPath+"/", h.basicAuth(csrf.Handler(noFraming(h.mon))))
	return h, nil
}

// ServeHTTP routes r to health, readiness, metrics or the web UI.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// Close closes the Redis connections of the web UI and of the default
// readiness check.
func (h *Handler) Close() error {
	err := h.mon.Close()
	if h.rdb != nil {
		err = errors.Join(err, h.rdb.Close())
	}
	return err
}

// readyz answers 200 when Redis answers and the accounts are loaded, 503
// with the first reason otherwise.
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	if err := h.ready(r.Context()); err != nil {
		writeText(w, http.StatusServiceUnavailable, "not ready: "+oneLine(err.Error()))
		return
	}
	writeText(w, http.StatusOK, "ok")
}

// ready runs the readiness checks within ReadyTimeout. A ping that ignores
// its context is not waited for past the deadline.
func (h *Handler) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.ReadyTimeout)
	defer cancel()
	pinged := make(chan error, 1)
	go func() { pinged <- h.cfg.RedisPingFunc(ctx) }()
	select {
	case err := <-pinged:
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
	case <-ctx.Done():
		return fmt.Errorf("redis: no answer to PING within %s", h.cfg.ReadyTimeout)
	}
	if h.cfg.AccountsReadyFunc != nil {
		if err := h.cfg.AccountsReadyFunc(); err != nil {
			return fmt.Errorf("accounts: %w", err)
		}
	}
	return nil
}

// noFraming forbids other sites from framing the UI (clickjacking its
// buttons) and from sniffing its responses into another type.
func noFraming(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// writeText writes msg and a newline as text/plain with status code.
func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}

// oneLine folds line breaks and runs of spaces into single spaces.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
