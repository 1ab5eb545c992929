package metrics_test

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/tasks"
)

func TestQueueCollector(t *testing.T) {
	t.Parallel()
	queue := redistest.Queue(t, redisDB)
	client := tasks.NewClient(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { client.Close() })
	insp := newInspector(t)

	enqueue := func(opts ...tasks.Option) string {
		t.Helper()
		res, err := client.Enqueue(t.Context(), &tasks.Email{
			AccountID: "support", From: "support@example.com", To: []string{"a@example.net"}, Subject: "hi", Text: "hello",
		}, append(opts, tasks.Queue(queue))...)
		if err != nil {
			t.Fatal(err)
		}
		return res.TaskID
	}
	enqueue()
	enqueue()
	enqueue(tasks.ProcessIn(time.Hour))
	if err := insp.ArchiveTask(queue, enqueue()); err != nil {
		t.Fatal(err)
	}

	unused := queue + "-unused" // asynq has never seen it
	c, err := metrics.NewQueueCollector(metrics.QueueCollectorConfig{Inspector: insp, Queues: []string{queue, unused}})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("CountsTasksByState", func(t *testing.T) {
		want := strings.NewReplacer("QUEUE", queue, "UNUSED", unused).Replace(`
# HELP sendq_queue_tasks Tasks in an asynq queue, by state (pending, active, scheduled, retry, archived, completed), read at scrape time.
# TYPE sendq_queue_tasks gauge
sendq_queue_tasks{queue="QUEUE",state="active"} 0
sendq_queue_tasks{queue="QUEUE",state="archived"} 1
sendq_queue_tasks{queue="QUEUE",state="completed"} 0
sendq_queue_tasks{queue="QUEUE",state="pending"} 2
sendq_queue_tasks{queue="QUEUE",state="retry"} 0
sendq_queue_tasks{queue="QUEUE",state="scheduled"} 1
sendq_queue_tasks{queue="UNUSED",state="active"} 0
sendq_queue_tasks{queue="UNUSED",state="archived"} 0
sendq_queue_tasks{queue="UNUSED",state="completed"} 0
sendq_queue_tasks{queue="UNUSED",state="pending"} 0
sendq_queue_tasks{queue="UNUSED",state="retry"} 0
sendq_queue_tasks{queue="UNUSED",state="scheduled"} 0
# HELP sendq_scrape_errors_total Collections of metrics read from Redis at scrape time that failed or timed out; their metrics are left out of that scrape.
# TYPE sendq_scrape_errors_total counter
sendq_scrape_errors_total{collector="queue"} 0
`)
		if err := testutil.CollectAndCompare(c, strings.NewReader(want), "sendq_queue_tasks", "sendq_scrape_errors_total"); err != nil {
			t.Error(err)
		}
	})
	t.Run("RegistersWithMetrics", func(t *testing.T) {
		m := metrics.New()
		if err := m.Registry().Register(c); err != nil {
			t.Fatal(err)
		}
		if got, _ := value(t, m.Registry(), "sendq_queue_tasks", map[string]string{"queue": queue, "state": "pending"}); got != 2 {
			t.Errorf("pending = %v, want 2", got)
		}
	})
}

func TestQueueCollectorReportsAnErrorInsteadOfHanging(t *testing.T) {
	t.Parallel()
	addr, conns := silentServer(t)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: addr, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	c, err := metrics.NewQueueCollector(metrics.QueueCollectorConfig{Inspector: insp, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { insp.Close() }) // ends the abandoned call

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	start := time.Now()
	// The first collection times out; the second waits for the same
	// call, which still hangs, and times out too.
	for want := 1; want <= 2; want++ {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var errs float64
		for _, mf := range mfs {
			switch mf.GetName() {
			case "sendq_queue_tasks":
				t.Errorf("collection %d reported sendq_queue_tasks", want)
			case "sendq_scrape_errors_total":
				errs = mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		if errs != float64(want) {
			t.Errorf("after collection %d: sendq_scrape_errors_total = %v, want %d", want, errs, want)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("collections took %s with a 50ms timeout", d)
	}
	if n := conns(); n > 1 {
		t.Errorf("%d connections to the hung redis, want 1: the second collection started another call", n)
	}
}

func TestNewQueueCollectorValidates(t *testing.T) {
	t.Parallel()
	_, err := metrics.NewQueueCollector(metrics.QueueCollectorConfig{Timeout: -time.Second, Queues: []string{""}})
	if err == nil {
		t.Fatal("NewQueueCollector(bad config) = nil error")
	}
	for _, field := range []string{"Inspector", "Timeout", "Queues"} {
		if !strings.Contains(err.Error(), "QueueCollectorConfig."+field) {
			t.Errorf("error %q does not name %s", err, field)
		}
	}
}

// silentServer listens on a loopback port, accepts connections and never
// answers, like a Redis that hangs; it stops when the test ends. accepted
// tells how many connections it has accepted.
func silentServer(t *testing.T) (addr string, accepted func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}
}

// newInspector returns an Inspector of this package's Redis database,
// closed when the test ends.
func newInspector(t *testing.T) *asynq.Inspector {
	t.Helper()
	insp := asynq.NewInspector(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { insp.Close() })
	return insp
}
