package opsweb_test

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/opsweb"
)

// testDB is the Redis database of this package's tests.
const testDB = 9

// Credentials the tests configure.
const (
	testUser     = "ops"
	testPassword = "correct horse battery staple"
)

// setup builds a handler from cfg, on the test Redis unless cfg.Redis is set,
// and closes it when the test ends.
func setup(t *testing.T, cfg opsweb.Config) *opsweb.Handler {
	t.Helper()
	if cfg.Redis == nil {
		cfg.Redis = redistest.ConnOpt(testDB)
	}
	h, err := opsweb.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// request is one request to a handler.
type request struct {
	method, path string
	user, pass   string // basic auth when user is set
	header       http.Header
}

// do serves req on h and returns the status and the body.
func do(t *testing.T, h http.Handler, req request) (*http.Response, string) {
	t.Helper()
	r := httptest.NewRequest(cmp.Or(req.method, http.MethodGet), req.path, nil)
	if req.user != "" {
		r.SetBasicAuth(req.user, req.pass)
	}
	for k, v := range req.header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	res := w.Result()
	body, _ := io.ReadAll(res.Body)
	return res, string(body)
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	// Healthz never touches Redis: an unreachable one makes no difference.
	h := setup(t, opsweb.Config{Redis: asynq.RedisClientOpt{Addr: "127.0.0.1:1"}, Addr: "0.0.0.0:8080", Password: testPassword})
	res, body := do(t, h, request{path: "/healthz"})
	if res.StatusCode != http.StatusOK || body != "ok\n" {
		t.Fatalf("GET /healthz = %d %q, want 200 \"ok\\n\"", res.StatusCode, body)
	}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	errNotLoaded := errors.New("not loaded yet")
	hang := make(chan struct{}) // a ping that ignores its context waits here
	t.Cleanup(func() { close(hang) })
	for _, tc := range []struct {
		name     string
		cfg      opsweb.Config
		wantCode int
		wantBody string // prefix
	}{
		{name: "ReadyWithRealRedis", cfg: opsweb.Config{AccountsReadyFunc: func() error { return nil }},
			wantCode: http.StatusOK, wantBody: "ok\n"},
		{name: "RedisUnreachable", cfg: opsweb.Config{Redis: asynq.RedisClientOpt{Addr: "127.0.0.1:1"}, ReadyTimeout: 300 * time.Millisecond},
			wantCode: http.StatusServiceUnavailable, wantBody: "not ready: redis: "},
		{name: "RedisPingFails", cfg: opsweb.Config{RedisPingFunc: func(context.Context) error { return errors.New("NOAUTH\nAuthentication required") }},
			wantCode: http.StatusServiceUnavailable, wantBody: "not ready: redis: NOAUTH Authentication required\n"},
		{name: "RedisPingHangs", cfg: opsweb.Config{ReadyTimeout: 50 * time.Millisecond,
			RedisPingFunc: func(context.Context) error { <-hang; return nil }},
			wantCode: http.StatusServiceUnavailable, wantBody: "not ready: redis: no answer to PING within 50ms\n"},
		{name: "AccountsNotLoaded", cfg: opsweb.Config{RedisPingFunc: func(context.Context) error { return nil },
			AccountsReadyFunc: func() error { return errNotLoaded }},
			wantCode: http.StatusServiceUnavailable, wantBody: "not ready: accounts: not loaded yet\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.cfg.Redis == nil && tc.cfg.RedisPingFunc == nil {
				redistest.Client(t, testDB) // fail with the helpful message
			}
			h := setup(t, tc.cfg)
			start := time.Now()
			res, body := do(t, h, request{path: "/readyz"})
			if res.StatusCode != tc.wantCode || !strings.HasPrefix(body, tc.wantBody) || strings.Count(body, "\n") != 1 {
				t.Fatalf("GET /readyz = %d %q, want %d and one line starting %q", res.StatusCode, body, tc.wantCode, tc.wantBody)
			}
			if d := time.Since(start); d > cmp.Or(tc.cfg.ReadyTimeout, opsweb.DefaultReadyTimeout)+500*time.Millisecond {
				t.Errorf("GET /readyz took %s, want it bounded by the ready timeout", d)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	sent := prometheus.NewCounter(prometheus.CounterOpts{Name: "sendq_test_sent_total", Help: "Test counter."})
	reg.MustRegister(sent)
	sent.Add(3)

	t.Run("ServedWithoutCredentialsOnLoopback", func(t *testing.T) {
		t.Parallel()
		h := setup(t, opsweb.Config{Gatherer: reg})
		res, body := do(t, h, request{path: "/metrics"})
		if res.StatusCode != http.StatusOK || !strings.Contains(body, "sendq_test_sent_total 3") {
			t.Fatalf("GET /metrics = %d %q, want 200 with the counter", res.StatusCode, body)
		}
	})
	t.Run("NilGathererIsNotFound", func(t *testing.T) {
		t.Parallel()
		h := setup(t, opsweb.Config{})
		if res, _ := do(t, h, request{path: "/metrics"}); res.StatusCode != http.StatusNotFound {
			t.Fatalf("GET /metrics = %d, want 404", res.StatusCode)
		}
	})
	t.Run("RequiresCredentialsWhenConfigured", func(t *testing.T) {
		t.Parallel()
		h := setup(t, opsweb.Config{Gatherer: reg, User: testUser, Password: testPassword})
		if res, _ := do(t, h, request{path: "/metrics"}); res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET /metrics without credentials = %d, want 401", res.StatusCode)
		}
		res, body := do(t, h, request{path: "/metrics", user: testUser, pass: testPassword})
		if res.StatusCode != http.StatusOK || !strings.Contains(body, "sendq_test_sent_total 3") {
			t.Fatalf("GET /metrics with credentials = %d %q, want 200 with the counter", res.StatusCode, body)
		}
	})
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	h := setup(t, opsweb.Config{Addr: "0.0.0.0:8080", User: testUser, Password: testPassword, Gatherer: prometheus.NewRegistry()})
	for _, tc := range []struct {
		name     string
		req      request
		wantCode int
	}{
		{name: "MonitoringWithoutCredentials", req: request{path: "/monitoring/"}, wantCode: http.StatusUnauthorized},
		{name: "MonitoringAPIWithoutCredentials", req: request{path: "/monitoring/api/queues"}, wantCode: http.StatusUnauthorized},
		{name: "MetricsWithoutCredentials", req: request{path: "/metrics"}, wantCode: http.StatusUnauthorized},
		{name: "WrongPassword", req: request{path: "/monitoring/", user: testUser, pass: testPassword + "!"}, wantCode: http.StatusUnauthorized},
		{name: "EmptyPassword", req: request{path: "/monitoring/", user: testUser}, wantCode: http.StatusUnauthorized},
		{name: "WrongUser", req: request{path: "/monitoring/", user: "admin", pass: testPassword}, wantCode: http.StatusUnauthorized},
		{name: "MalformedHeader", req: request{path: "/monitoring/", header: http.Header{"Authorization": {"Basic !!!"}}}, wantCode: http.StatusUnauthorized},
		{name: "RightCredentials", req: request{path: "/monitoring/", user: testUser, pass: testPassword}, wantCode: http.StatusOK},
		{name: "HealthzStaysOpen", req: request{path: "/healthz"}, wantCode: http.StatusOK},
		{name: "ReadyzStaysOpen", req: request{path: "/readyz"}, wantCode: http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.name == "ReadyzStaysOpen" {
				redistest.Client(t, testDB)
			}
			res, body := do(t, h, tc.req)
			if res.StatusCode != tc.wantCode {
				t.Fatalf("%s %s = %d %q, want %d", cmp.Or(tc.req.method, "GET"), tc.req.path, res.StatusCode, body, tc.wantCode)
			}
			if tc.wantCode == http.StatusUnauthorized {
				if got := res.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, `Basic realm="sendq"`) {
					t.Errorf("WWW-Authenticate = %q, want a Basic challenge", got)
				}
				if strings.Contains(body, "<html") {
					t.Errorf("401 body is the UI: %.80q", body)
				}
			}
		})
	}
}

func TestNewRequiresCredentialsOffLoopback(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr     string
		password string
		user     string
		wantErr  string // empty: accepted
	}{
		{addr: "127.0.0.1:8080"},
		{addr: "127.0.0.53:8080"},
		{addr: "[::1]:8080"},
		{addr: "localhost:8080"},
		{addr: ""}, // DefaultAddr, loopback
		{addr: "0.0.0.0:8080", wantErr: `credentials required: "0.0.0.0:8080" is not a loopback address`},
		{addr: ":8080", wantErr: "credentials required"},
		{addr: "[::]:8080", wantErr: "credentials required"},
		{addr: "10.1.2.3:8080", wantErr: "credentials required"},
		{addr: "ops.example.net:8080", wantErr: "credentials required"},
		{addr: "0.0.0.0:8080", password: "s3cret"},
		{addr: "127.0.0.1:8080", user: "ops", wantErr: `Password: empty while User "ops" is set`},
		{addr: "127.0.0.1:8080", user: "a:b", password: "x", wantErr: "User: a basic auth user cannot contain a colon"},
		{addr: "no-port", wantErr: "Addr: address no-port: missing port in address"},
	} {
		t.Run(tc.addr+"/"+tc.user, func(t *testing.T) {
			t.Parallel()
			h, err := opsweb.New(opsweb.Config{Addr: tc.addr, User: tc.user, Password: secret(tc.password), Redis: redistest.ConnOpt(testDB)})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("New(Addr %q) = %v, want a handler", tc.addr, err)
				}
				h.Close()
				return
			}
			if err == nil {
				h.Close()
				t.Fatalf("New(Addr %q, no password) = nil error, want %q", tc.addr, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New(Addr %q) = %q, want it to contain %q", tc.addr, err, tc.wantErr)
			}
			if strings.Contains(tc.wantErr, "credentials required") && !errors.Is(err, opsweb.ErrCredentialsRequired) {
				t.Errorf("error %v does not match ErrCredentialsRequired", err)
			}
		})
	}
	t.Run("RedisRequired", func(t *testing.T) {
		t.Parallel()
		if _, err := opsweb.New(opsweb.Config{}); err == nil || !strings.Contains(err.Error(), "Redis: required") {
			t.Fatalf("New without Redis = %v, want a Redis error", err)
		}
	})
}
