package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

// QueueCollectorConfig configures a QueueCollector. Inspector is required.
type QueueCollectorConfig struct {
	// Inspector reads the queues; asynq.NewInspectorFromRedisClient
	// shares the worker's Redis client. Required.
	Inspector *asynq.Inspector
	// Queues are the queues reported; one that asynq does not know yet
	// (no task was ever enqueued to it) is reported with zeros. Default
	// nil: every queue asynq knows in that Redis.
	Queues []string
	// Timeout bounds each collection. Default DefaultScrapeTimeout.
	Timeout time.Duration
	// Logger hears about failed collections, at warning level. Default
	// nil: quiet.
	Logger *slog.Logger
}

// QueueCollector is a prometheus.Collector of the number of tasks in asynq
// queues by state, read from Redis at each scrape with an asynq.Inspector:
//
//	sendq_queue_tasks{queue, state}   pending, active, scheduled, retry, archived, completed
//	sendq_scrape_errors_total{collector="queue"}
//
// A collection that fails or takes longer than Config.Timeout reports no
// sendq_queue_tasks and counts the failure instead of holding the scrape.
// asynq's own x/metrics collector is not used: it names its metrics
// asynq_*, waits on Redis without bound and needs go-redis v8.
type QueueCollector struct {
	cfg     QueueCollectorConfig
	log     *slog.Logger
	scraper *scraper[[]*asynq.QueueInfo]
}

var _ prometheus.Collector = (*QueueCollector)(nil)

var queueTasksDesc = prometheus.NewDesc(
	prometheus.BuildFQName(namespace, "", "queue_tasks"),
	"Tasks in an asynq queue, by state (pending, active, scheduled, retry, archived, completed), read at scrape time.",
	[]string{"queue", "state"}, nil)

// NewQueueCollector validates cfg and returns a QueueCollector. Register it
// with Metrics.Registry.
func NewQueueCollector(cfg QueueCollectorConfig) (*QueueCollector, error) {
	var errs []error
	if cfg.Inspector == nil {
		errs = append(errs, errors.New("metrics: QueueCollectorConfig.Inspector is required"))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("metrics: QueueCollectorConfig.Timeout %s is negative", cfg.Timeout))
	}
	for _, q := range cfg.Queues {
		if q == "" {
			errs = append(errs, errors.New("metrics: QueueCollectorConfig.Queues has an empty name"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.Queues = slices.Clone(cfg.Queues)
	c := &QueueCollector{cfg: cfg, log: cfg.Logger}
	c.scraper = newScraper("queue", cfg.Timeout, c.queueInfos)
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueTasksDesc
	c.scraper.describe(ch)
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	defer c.scraper.collect(ch)
	infos, err := c.scraper.scrape()
	if err != nil {
		c.log.Warn("collect queue metrics", "error", err)
		return
	}
	for _, qi := range infos {
		for _, s := range [...]struct {
			state string
			n     int
		}{
			{"pending", qi.Pending},
			{"active", qi.Active},
			{"scheduled", qi.Scheduled},
			{"retry", qi.Retry},
			{"archived", qi.Archived},
			{"completed", qi.Completed},
		} {
			ch <- prometheus.MustNewConstMetric(queueTasksDesc, prometheus.GaugeValue, float64(s.n), qi.Queue, s.state)
		}
	}
}

// queueInfos reads the queues' counts. The Inspector takes no context:
// scrape abandons it when ctx ends, and ctx only stops it between queues.
func (c *QueueCollector) queueInfos(ctx context.Context) ([]*asynq.QueueInfo, error) {
	known, err := c.cfg.Inspector.Queues()
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	names := c.cfg.Queues
	if len(names) == 0 {
		names = known
	}
	infos := make([]*asynq.QueueInfo, 0, len(names))
	for _, q := range names {
		if !slices.Contains(known, q) {
			infos = append(infos, &asynq.QueueInfo{Queue: q})
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		qi, err := c.cfg.Inspector.GetQueueInfo(q)
		if err != nil {
			return nil, fmt.Errorf("queue %s: %w", q, err)
		}
		infos = append(infos, qi)
	}
	return infos, nil
}
