package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/metrics"
)

func TestLedgerCollector(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	now := time.Now()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.store.Throttle(ctx, "throttled", now.Add(time.Hour), "550 5.4.5 Daily user sending limit exceeded"))
	must(b.store.Throttle(ctx, "ended", now.Add(time.Minute), "450 4.2.1 Peak SMTP relay limit exceeded"))
	must(b.store.Hold(ctx, "held", ledger.HoldReauthorize, "invalid_grant"))
	must(b.store.Hold(ctx, "removed", ledger.HoldConfiguration, "no longer in the accounts file"))
	for range 2 {
		must(b.store.AddDeadLetter(ctx, &ledger.DeadLetter{Kind: ledger.DeadLetterMessage, Account: "held", Reason: "gave up", Class: "transient"}))
	}

	c, err := metrics.NewLedgerCollector(metrics.LedgerCollectorConfig{
		Ledger:   b.store,
		Accounts: []string{"throttled", "ended", "held", "ok"},
		NowFunc:  func() time.Time { return now.Add(2 * time.Minute) },
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `
# HELP sendq_accounts Accounts whose mail waits, by state: "throttled" (until the provider's limit lifts) or "held" (until someone re-authorizes or resumes it), read from the ledger at scrape time.
# TYPE sendq_accounts gauge
sendq_accounts{state="held"} 1
sendq_accounts{state="throttled"} 1
# HELP sendq_dead_letters Dead letters kept in the ledger (messages and recipients given up), read at scrape time.
# TYPE sendq_dead_letters gauge
sendq_dead_letters 2
# HELP sendq_scrape_errors_total Collections of metrics read from Redis at scrape time that failed or timed out; their metrics are left out of that scrape.
# TYPE sendq_scrape_errors_total counter
sendq_scrape_errors_total{collector="ledger"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}

	t.Run("BackToBackCollectionsSucceed", func(t *testing.T) {
		for range 20 {
			testutil.CollectAndCount(c)
		}
		if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP sendq_scrape_errors_total Collections of metrics read from Redis at scrape time that failed or timed out; their metrics are left out of that scrape.
# TYPE sendq_scrape_errors_total counter
sendq_scrape_errors_total{collector="ledger"} 0
`), "sendq_scrape_errors_total"); err != nil {
			t.Error(err)
		}
	})
	t.Run("RegistersBesideAQueueCollector", func(t *testing.T) {
		m := metrics.New()
		qc, err := metrics.NewQueueCollector(metrics.QueueCollectorConfig{Inspector: newInspector(t), Queues: []string{"unused-" + randomHex()}})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Registry().Register(c); err != nil {
			t.Fatal(err)
		}
		if err := m.Registry().Register(qc); err != nil {
			t.Fatal(err)
		}
		if n, err := testutil.GatherAndCount(m.Registry(), "sendq_scrape_errors_total"); err != nil || n != 2 {
			t.Errorf("sendq_scrape_errors_total series = %d, %v; want 2 (one per collector)", n, err)
		}
	})
}

func TestNewLedgerCollectorValidates(t *testing.T) {
	t.Parallel()
	_, err := metrics.NewLedgerCollector(metrics.LedgerCollectorConfig{Timeout: -time.Second})
	if err == nil {
		t.Fatal("NewLedgerCollector(bad config) = nil error")
	}
	for _, field := range []string{"Ledger", "Timeout"} {
		if !strings.Contains(err.Error(), "LedgerCollectorConfig."+field) {
			t.Errorf("error %q does not name %s", err, field)
		}
	}
}
