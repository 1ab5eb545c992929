package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/ledger"
)

// LedgerCollectorConfig configures a LedgerCollector. Ledger is required.
type LedgerCollectorConfig struct {
	// Ledger is the store the workers share. Required.
	Ledger *ledger.Store
	// Accounts are the ids of the accounts counted (those of the accounts
	// file); the ledger may remember others, removed from the file since.
	// Default nil: every account the ledger records.
	Accounts []string
	// Timeout bounds each collection. Default DefaultScrapeTimeout.
	Timeout time.Duration
	// Logger hears about failed collections, at warning level. Default
	// nil: quiet.
	Logger *slog.Logger
	// NowFunc is the clock that tells whether a throttle has ended.
	// Default time.Now.
	NowFunc func() time.Time
}

// LedgerCollector is a prometheus.Collector of the state the workers share
// in the ledger, read from Redis at each scrape (two round trips):
//
//	sendq_accounts{state="throttled"|"held"}   accounts whose mail waits
//	sendq_dead_letters                         dead letters kept
//	sendq_scrape_errors_total{collector="ledger"}
//
// An account counts as throttled while its throttle lasts (not once it has
// ended but no message has gone since), as held until it is resumed or
// re-authorized. A collection that fails or takes longer than
// Config.Timeout reports neither gauge and counts the failure instead of
// holding the scrape.
type LedgerCollector struct {
	cfg      LedgerCollectorConfig
	accounts map[string]bool // nil: all
	log      *slog.Logger
	scraper  *scraper[ledgerCounts]
}

var _ prometheus.Collector = (*LedgerCollector)(nil)

var (
	accountsDesc = prometheus.NewDesc(
		prometheus.BuildFQName(namespace, "", "accounts"),
		`Accounts whose mail waits, by state: "throttled" (until the provider's limit lifts) or "held" (until someone re-authorizes or resumes it), read from the ledger at scrape time.`,
		[]string{"state"}, nil)
	deadLettersDesc = prometheus.NewDesc(
		prometheus.BuildFQName(namespace, "", "dead_letters"),
		"Dead letters kept in the ledger (messages and recipients given up), read at scrape time.",
		nil, nil)
)

// NewLedgerCollector validates cfg and returns a LedgerCollector. Register
// it with Metrics.Registry.
func NewLedgerCollector(cfg LedgerCollectorConfig) (*LedgerCollector, error) {
	var errs []error
	if cfg.Ledger == nil {
		errs = append(errs, errors.New("metrics: LedgerCollectorConfig.Ledger is required"))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("metrics: LedgerCollectorConfig.Timeout %s is negative", cfg.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.NowFunc == nil {
		cfg.NowFunc = time.Now
	}
	c := &LedgerCollector{cfg: cfg, log: cfg.Logger}
	c.scraper = newScraper("ledger", cfg.Timeout, c.counts)
	if cfg.Accounts != nil {
		c.accounts = make(map[string]bool, len(cfg.Accounts))
		for _, id := range cfg.Accounts {
			c.accounts[id] = true
		}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Describe implements prometheus.Collector.
func (c *LedgerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- accountsDesc
	ch <- deadLettersDesc
	c.scraper.describe(ch)
}

// ledgerCounts is what one collection reads.
type ledgerCounts struct {
	throttled, held, deadLetters int
}

// Collect implements prometheus.Collector.
func (c *LedgerCollector) Collect(ch chan<- prometheus.Metric) {
	defer c.scraper.collect(ch)
	n, err := c.scraper.scrape()
	if err != nil {
		c.log.Warn("collect ledger metrics", "error", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(accountsDesc, prometheus.GaugeValue, float64(n.throttled), string(ledger.AccountThrottled))
	ch <- prometheus.MustNewConstMetric(accountsDesc, prometheus.GaugeValue, float64(n.held), string(ledger.AccountHeld))
	ch <- prometheus.MustNewConstMetric(deadLettersDesc, prometheus.GaugeValue, float64(n.deadLetters))
}

func (c *LedgerCollector) counts(ctx context.Context) (ledgerCounts, error) {
	var n ledgerCounts
	sts, err := c.cfg.Ledger.Accounts(ctx)
	if err != nil {
		return n, err
	}
	now := c.cfg.NowFunc()
	for _, st := range sts {
		if c.accounts != nil && !c.accounts[st.Account] {
			continue
		}
		switch st.State {
		case ledger.AccountThrottled:
			if st.Until.After(now) {
				n.throttled++
			}
		case ledger.AccountHeld:
			n.held++
		}
	}
	// The page of one letter comes with the total.
	_, n.deadLetters, err = c.cfg.Ledger.DeadLetters(ctx, 0, 1)
	if err != nil {
		return n, err
	}
	return n, nil
}
