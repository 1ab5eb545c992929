package metrics

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultScrapeTimeout bounds the Redis calls of a collector read at scrape
// time when its config's Timeout is zero: well within Prometheus's default
// scrape timeout of 10 s.
const DefaultScrapeTimeout = 5 * time.Second

// scrapeErrorsName is the metric every collector read at scrape time reports
// its failures in, with its own value of the collector label.
var scrapeErrorsName = prometheus.BuildFQName(namespace, "", "scrape_errors_total")

// scraper runs the Redis calls of one collector at scrape time, single
// flight: a collection that starts while a call is under way waits for that
// call's result instead of starting another, so that concurrent or
// back-to-back scrapes never pile up calls on a slow Redis. Each collection
// waits at most the timeout; a call it gives up on goes on in the
// background until Redis answers or the client's own timeouts end it, and
// the collections meanwhile wait for it, each at most the timeout.
type scraper[T any] struct {
	fn      func(ctx context.Context) (T, error)
	timeout time.Duration
	errDesc *prometheus.Desc
	errors  atomic.Uint64

	mu   sync.Mutex
	call *scrapeCall[T] // under way; nil when none
}

// scrapeCall is one run of scraper.fn; v and err are set before done is
// closed.
type scrapeCall[T any] struct {
	done chan struct{}
	v    T
	err  error
}

func newScraper[T any](collector string, timeout time.Duration, fn func(ctx context.Context) (T, error)) *scraper[T] {
	if timeout <= 0 {
		timeout = DefaultScrapeTimeout
	}
	return &scraper[T]{
		fn:      fn,
		timeout: timeout,
		errDesc: prometheus.NewDesc(scrapeErrorsName,
			"Collections of metrics read from Redis at scrape time that failed or timed out; their metrics are left out of that scrape.",
			nil, prometheus.Labels{"collector": collector}),
	}
}

// scrape returns the result of a call of fn, the one under way or a new
// one, or an error when it fails or the timeout ends first. A failure is
// counted.
func (s *scraper[T]) scrape() (T, error) {
	s.mu.Lock()
	c := s.call
	if c == nil {
		c = &scrapeCall[T]{done: make(chan struct{})}
		s.call = c
		go s.run(c)
	}
	s.mu.Unlock()

	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-c.done:
		if c.err == nil {
			return c.v, nil
		}
		s.errors.Add(1)
		return c.v, c.err
	case <-t.C:
		s.errors.Add(1)
		var zero T
		return zero, fmt.Errorf("no answer from redis within %s", s.timeout)
	}
}

// run makes call c, whose context ends after the timeout (which the
// asynq Inspector, having no context, does not see).
func (s *scraper[T]) run(c *scrapeCall[T]) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	c.v, c.err = s.fn(ctx)
	cancel()
	s.mu.Lock()
	s.call = nil
	s.mu.Unlock()
	close(c.done)
}

// describe sends the error metric's description.
func (s *scraper[T]) describe(ch chan<- *prometheus.Desc) { ch <- s.errDesc }

// collect sends the error metric.
func (s *scraper[T]) collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(s.errDesc, prometheus.CounterValue, float64(s.errors.Load()))
}
