package worker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// TestWorkerMetrics runs a worker with Config.Metrics through one delivery
// and reads what it recorded, from the hooks and from Redis at scrape time.
func TestWorkerMetrics(t *testing.T) {
	t.Parallel()
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	t.Cleanup(srv.Close)
	queue := redistest.Queue(t, redisDB)
	srv.AddClient("delegated-client", "delegated-secret")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(srv.SMTPAddr)
	env := map[string]string{"SECRET": "delegated-secret", "REFRESH": srv.NewRefreshToken("delegated-client", "user@example.com")}
	file, err := accounts.Parse(fmt.Appendf(nil, `accounts:
  - id: delegated
    provider: generic
    username: user@example.com
    smtp: {host: %s, port: %s, ca_file: ca.pem}
    oauth:
      grant: refresh_token
      client_id: delegated-client
      client_secret_env: SECRET
      refresh_token_env: REFRESH
      token_url: %s
`, host, port, srv.TokenURL), accounts.ParseOptions{Name: "accounts.yaml", BaseDir: dir, Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}

	prefix := "test:" + randomHex() + ":"
	rdb := redistest.Client(t, redisDB)
	t.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	m := metrics.New()
	cfg := Config{
		Redis:        redistest.ConnOpt(redisDB),
		Accounts:     file,
		Queues:       map[string]int{queue: 1},
		Ledger:       ledger.Options{Prefix: prefix},
		TokenKeys:    testKeyring(t),
		Logger:       slog.New(slog.DiscardHandler),
		Metrics:      m,
		pollInterval: 50 * time.Millisecond,
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})

	client := tasks.NewClient(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { client.Close() })
	insp := asynq.NewInspector(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { insp.Close() })
	enq, err := client.Enqueue(ctx, &tasks.Email{
		AccountID: "delegated", From: "user@example.com", To: []string{"alice@example.net"}, Subject: "hi", Text: "hello",
	}, tasks.Queue(queue))
	if err != nil {
		t.Fatal(err)
	}
	waitMessages(t, srv, 1)
	waitCompleted(t, &testBundle{queue: queue, insp: insp}, enq.TaskID)

	t.Run("RecordsTheDelivery", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			labels prometheus.Labels
			want   float64
		}{
			{"sendq_sends_total", prometheus.Labels{"account": "delegated", "outcome": "delivered"}, 1},
			{"sendq_sends_total", prometheus.Labels{"account": "delegated", "outcome": "transient"}, 0},
			{"sendq_token_refreshes_total", prometheus.Labels{"account": "delegated"}, 1},
			{"sendq_token_refresh_failures_total", prometheus.Labels{"account": "delegated"}, 0},
			{"sendq_smtp_logins_total", prometheus.Labels{"account": "delegated"}, 1},
			{"sendq_queue_tasks", prometheus.Labels{"queue": queue, "state": "completed"}, 1},
			{"sendq_queue_tasks", prometheus.Labels{"queue": queue, "state": "pending"}, 0},
			{"sendq_accounts", prometheus.Labels{"state": "held"}, 0},
			{"sendq_dead_letters", nil, 0},
			{"sendq_scrape_errors_total", prometheus.Labels{"collector": "queue"}, 0},
			{"sendq_scrape_errors_total", prometheus.Labels{"collector": "ledger"}, 0},
		} {
			got, ok := gathered(t, m.Registry(), c.name, c.labels)
			if !ok || got != c.want {
				t.Errorf("%s%v = %v (present: %v), want %v", c.name, c.labels, got, ok, c.want)
			}
		}
	})
	t.Run("RefusesASecondWorker", func(t *testing.T) {
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), "Metrics") {
			t.Errorf("New with Metrics in use = %v, want an error naming Metrics", err)
		}
	})
	t.Run("UnregistersItsCollectorsWhenRunReturns", func(t *testing.T) {
		stopped = true
		stop()
		if _, ok := gathered(t, m.Registry(), "sendq_queue_tasks", nil); ok {
			t.Error("sendq_queue_tasks still collected after Run returned")
		}
		if _, ok := gathered(t, m.Registry(), "sendq_sends_total", prometheus.Labels{"account": "delegated", "outcome": "delivered"}); !ok {
			t.Error("the counters went with the collectors")
		}
	})
}

// gathered returns the value of the counter or gauge name whose labels
// include labels, and whether there is one.
func gathered(t *testing.T, g prometheus.Gatherer, name string, labels prometheus.Labels) (float64, bool) {
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
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metric
				}
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue(), true
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}
