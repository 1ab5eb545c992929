package metrics_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// redisDB is this package's Redis database; see internal/redistest.
const redisDB = 8

// testBundle is a provider, the Metrics under test and, for the tests that
// need one, a ledger under a key prefix of the test's own.
type testBundle struct {
	srv *smtpoauthtest.Server
	m   *metrics.Metrics
	rdb *redis.Client
	// store is a ledger under prefix, whose keys are deleted at cleanup.
	store  *ledger.Store
	prefix string
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	t.Cleanup(srv.Close)
	rdb := redistest.Client(t, redisDB)
	prefix := "test:" + randomHex() + ":"
	t.Cleanup(func() { deleteKeys(rdb, prefix) })
	return &testBundle{
		srv:    srv,
		m:      metrics.New(),
		rdb:    rdb,
		store:  ledger.New(rdb, ledger.Options{Prefix: prefix}),
		prefix: prefix,
	}
}

// sender returns a Sender of the mailbox user on the provider's STARTTLS
// port, observed by the metrics of account.
func (b *testBundle) sender(t *testing.T, account, user string) *smtpoauth.Sender {
	t.Helper()
	host, port, _ := net.SplitHostPort(b.srv.SMTPAddr)
	p, _ := strconv.Atoi(port)
	s, err := smtpoauth.NewSender(smtpoauth.Config{
		Host:        host,
		Port:        p,
		RootCAs:     b.srv.CertPool(),
		Username:    user,
		TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: b.srv.IssueAccessToken(user)}),
		Observer:    b.m.ForAccount(account),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func message(to ...string) *smtpoauth.Message {
	return &smtpoauth.Message{
		From: "support@example.com",
		To:   to,
		Data: []byte("From: support@example.com\r\nSubject: hi\r\n\r\nhello\r\n"),
	}
}

// stageCounts returns how many steps of each stage the histogram holds for
// account.
func stageCounts(t *testing.T, g prometheus.Gatherer, account string) map[string]uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "sendq_smtp_stage_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["account"] == account && m.GetHistogram().GetSampleCount() > 0 {
				counts[labels["stage"]] = m.GetHistogram().GetSampleCount()
			}
		}
	}
	return counts
}

// value returns the value of the counter or gauge name with labels, and
// whether it exists.
func value(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metric
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func TestAccountObservesASender(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.sender(t, "support", "support@example.com")
	for range 2 {
		if _, err := s.Send(t.Context(), message("a@example.net", "b@example.net")); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("CountsOneLoginAndOneReuse", func(t *testing.T) {
		for name, want := range map[string]float64{
			"sendq_smtp_logins_total":             1,
			"sendq_smtp_connections_reused_total": 1,
		} {
			if got, _ := value(t, b.m.Registry(), name, map[string]string{"account": "support"}); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
	})
	t.Run("TimesEveryStep", func(t *testing.T) {
		got := stageCounts(t, b.m.Registry(), "support")
		want := map[string]uint64{
			"connect": 1, "ehlo": 2, "tls": 1, "token": 1, "auth": 1,
			"mail": 2, "rcpt": 4, "data": 2, "data-end": 2,
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("steps per stage = %v, want %v", got, want)
		}
	})
	t.Run("PutsNoAddressInALabel", func(t *testing.T) {
		mfs, err := b.m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if v := l.GetValue(); strings.Contains(v, "@") || strings.Contains(v, "127.0.0.1") {
						t.Errorf("%s has label %s=%q", mf.GetName(), l.GetName(), v)
					}
				}
			}
		}
	})
}

func TestHandlerCountsOutcomes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.sender(t, "support", "support@example.com")
	h, err := tasks.NewHandler(tasks.HandlerConfig{
		SenderFunc: func(account string) (tasks.Sender, error) {
			if account != "support" {
				return nil, accounts.ErrUnknownAccount
			}
			return s, nil
		},
		Ledger:   b.store,
		Observer: b.m,
	})
	if err != nil {
		t.Fatal(err)
	}
	process := func(account string, to ...string) {
		t.Helper()
		task, _, err := tasks.NewTask(&tasks.Email{AccountID: account, From: "support@example.com", To: to, Subject: "hi", Text: "hello"})
		if err != nil {
			t.Fatal(err)
		}
		_ = h.ProcessTask(t.Context(), task) // the outcome is what the metric says
	}

	process("support", "ok@example.net")
	b.srv.SetRcptReply("gone@example.net", 550, [3]int{5, 1, 1}, "The email account that you tried to reach does not exist.")
	process("support", "gone@example.net")
	b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 451, Enhanced: [3]int{4, 3, 0}, Text: "Temporary failure", Times: 1})
	process("support", "ok@example.net")
	b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true, StoreBeforeDrop: true, Times: 1})
	process("support", "ok@example.net")
	b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 450, Enhanced: [3]int{4, 2, 1}, Text: "Peak SMTP relay limit exceeded for customer", Times: 1})
	process("support", "ok@example.net")
	process("support", "ok@example.net") // the account is throttled now
	process("nobody", "ok@example.net")  // an unknown account is not a label

	want := `
# HELP sendq_sends_total Attempts to send a message, by account and outcome: "delivered", "deferred" (put off without contacting the server: account throttled or held, over a rate, no SMTP session free) or the failure's class (transient, throttle, auth, needs-human, permanent-recipient, permanent-message, ambiguous).
# TYPE sendq_sends_total counter
sendq_sends_total{account="support",outcome="ambiguous"} 1
sendq_sends_total{account="support",outcome="auth"} 0
sendq_sends_total{account="support",outcome="deferred"} 1
sendq_sends_total{account="support",outcome="delivered"} 1
sendq_sends_total{account="support",outcome="needs-human"} 0
sendq_sends_total{account="support",outcome="permanent-message"} 0
sendq_sends_total{account="support",outcome="permanent-recipient"} 1
sendq_sends_total{account="support",outcome="throttle"} 1
sendq_sends_total{account="support",outcome="transient"} 1
`
	if err := testutil.GatherAndCompare(b.m.Registry(), strings.NewReader(want), "sendq_sends_total"); err != nil {
		t.Error(err)
	}
}

func TestAccountObservesTokenRefreshes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddClient("web-app", "web-app-secret")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), b.srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(b.srv.SMTPAddr)
	env := map[string]string{
		"SECRET":  "web-app-secret",
		"REFRESH": b.srv.NewRefreshToken("web-app", "support@example.com"),
	}
	f, err := accounts.Parse(fmt.Appendf(nil, `accounts:
  - id: support
    provider: generic
    username: support@example.com
    smtp: {host: %s, port: %s, ca_file: ca.pem}
    oauth:
      grant: refresh_token
      client_id: web-app
      client_secret_env: SECRET
      refresh_token_env: REFRESH
      token_url: %s
`, host, port, b.srv.TokenURL), accounts.ParseOptions{Name: "accounts.yaml", BaseDir: dir, Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := accounts.NewRegistry(t.Context(), f, nil, accounts.RegistryOptions{
		ObserverFunc: func(id string) accounts.Observer { return b.m.ForAccount(id) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	s, err := reg.SenderFor("support")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Send(t.Context(), message("a@example.net")); err != nil {
		t.Fatal(err)
	}
	ts, err := reg.TokenSource("support")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	remove := b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 503})
	ts.Invalidate(tok)
	if _, err := ts.Token(); err == nil {
		t.Fatal("Token() during the outage succeeded")
	}
	remove()

	for name, want := range map[string]float64{
		"sendq_token_refreshes_total":        1,
		"sendq_token_refresh_failures_total": 1,
		"sendq_smtp_logins_total":            1,
	} {
		if got, _ := value(t, b.m.Registry(), name, map[string]string{"account": "support"}); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

func TestForAccountReturnsTheSameAccount(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	if m.ForAccount("a") != m.ForAccount("a") || m.ForAccount("a") == m.ForAccount("b") {
		t.Error("ForAccount does not return one Account per id")
	}
	if got := m.ForAccount("a").ID(); got != "a" {
		t.Errorf("ID() = %q", got)
	}
}

func TestNewRegistersTheRuntimeCollectors(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.ForAccount("support")
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if _, ok := value(t, m.Registry(), name, nil); !ok {
			t.Errorf("no %s", name)
		}
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "sendq_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestObserversDoNotAllocate(t *testing.T) {
	m := metrics.New()
	a := m.ForAccount("support")
	allocs := testing.AllocsPerRun(100, func() {
		a.ObserveStage(smtpoauth.StageRcpt, time.Millisecond)
		a.Login()
		a.ConnectionReused()
		a.TokenRefreshed()
		a.TokenRefreshFailed()
		m.SendOutcome("support", tasks.OutcomeDelivered)
	})
	if allocs != 0 {
		t.Errorf("observers allocate %v times per round", allocs)
	}
}

func BenchmarkSendOutcome(b *testing.B) {
	m := metrics.New()
	m.ForAccount("support")
	for b.Loop() {
		m.SendOutcome("support", tasks.OutcomeDelivered)
	}
}

func randomHex() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// deleteKeys deletes the keys that start with prefix.
func deleteKeys(rdb *redis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, prefix+"*", 500).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if len(keys) > 0 {
		rdb.Del(ctx, keys...)
	}
}
