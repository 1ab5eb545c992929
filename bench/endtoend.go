package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/tasks"
)

// endToEndResult is delivered messages per second at one concurrency, one
// value per round.
type endToEndResult struct {
	concurrency int
	noop        sample // asynq server, no-op handler
	naive       sample // asynq server, naiveHandler
	sendq       sample // worker.Worker
	// CPU seconds per message (this process and the Redis server) of
	// each consumer, one value per round; empty when Redis does not report
	// its CPU time.
	noopCPU, naiveCPU, sendqCPU sample
}

// consumerNames are the names of the consumers, as -e2e-only takes them.
var consumerNames = []string{"noop", "naive", "sendq"}

// consumer is one of the three things that drain a queue.
type consumer struct {
	name string
	into *sample
	cpu  *sample // CPU seconds per message
	// fill enqueues the i-th task on q.
	fill func(ctx context.Context, q string, i int) error
	// prepare readies a consumer of q (untimed) and returns how to start
	// it, the count of messages done and how to stop it.
	prepare func(q string) (start func() error, count func() int, stop func() error, err error)
}

// measureEndToEnd drains -n messages at concurrency c with the asynq no-op
// handler, the naive handler and sendq's worker, alternately, -rounds times.
// With profile, sendq's last round is CPU-profiled into -cpuprofile and
// traced into -trace.
func (b *bench) measureEndToEnd(ctx context.Context, c int, profile bool) (endToEndResult, error) {
	r := endToEndResult{concurrency: c}
	ac := asynq.NewClient(b.redisOpt)
	defer ac.Close()
	tc := tasks.NewClient(b.redisOpt)
	defer tc.Close()

	// Baselines get plain asynq tasks with sendq's payload.
	t, _, err := tasks.NewTask(b.email(benchAccount))
	if err != nil {
		return r, err
	}
	payload := t.Payload()
	fillRaw := func(ctx context.Context, q string, _ int) error {
		_, err := ac.EnqueueContext(ctx, asynq.NewTask(tasks.TypeSendEmail, payload), asynq.Queue(q))
		return err
	}
	// The server counts what sendq and the naive handler deliver.
	delivered := func() func() int {
		b.srv.ResetMessages()
		base := b.srv.Stats().Messages
		return func() int { return b.srv.Stats().Messages - base }
	}
	asynqServer := func(q string) *asynq.Server {
		return asynq.NewServer(b.redisOpt, asynq.Config{
			Concurrency:     c,
			Queues:          map[string]int{q: 1},
			ShutdownTimeout: 10 * time.Second,
			Logger:          asynqLogger{b.log},
			LogLevel:        asynq.WarnLevel,
		})
	}

	consumers := []consumer{
		{name: "asynq no-op", into: &r.noop, cpu: &r.noopCPU, fill: fillRaw, prepare: func(q string) (func() error, func() int, func() error, error) {
			var n atomic.Int64
			srv := asynqServer(q)
			h := asynq.HandlerFunc(func(context.Context, *asynq.Task) error { n.Add(1); return nil })
			return func() error { return srv.Start(h) },
				func() int { return int(n.Load()) },
				func() error { srv.Shutdown(); return nil }, nil
		}},
		{name: "naive go-smtp", into: &r.naive, cpu: &r.naiveCPU, fill: fillRaw, prepare: func(q string) (func() error, func() int, func() error, error) {
			// Already authenticated: the connections are opened untimed.
			h, err := newNaiveHandler(b.srv, benchUser+"@example.com", c)
			if err != nil {
				return nil, nil, nil, err
			}
			srv := asynqServer(q)
			return func() error { return srv.Start(h) },
				delivered(),
				func() error { srv.Shutdown(); h.close(); return nil }, nil
		}},
		{name: "sendq", into: &r.sendq, cpu: &r.sendqCPU, fill: func(ctx context.Context, q string, _ int) error {
			_, err := tc.Enqueue(ctx, b.email(benchAccount), tasks.Queue(q))
			return err
		}, prepare: func(q string) (func() error, func() int, func() error, error) {
			w, err := b.newWorker(q, c)
			if err != nil {
				return nil, nil, nil, err
			}
			return func() error { w.start(); return nil }, delivered(), w.stop, nil
		}},
	}

	// The profile is of sendq, or of the one consumer -e2e-only names.
	profiled := "sendq"
	if len(b.cfg.EndToEndOnly) == 1 {
		profiled = b.cfg.EndToEndOnly[0]
	}
	for round := range b.cfg.Rounds {
		order := []int{0, 1, 2}
		if round%2 == 1 {
			order = []int{2, 1, 0}
		}
		for _, i := range order {
			cons := consumers[i]
			if b.cfg.EndToEndOnly != nil && !slices.Contains(b.cfg.EndToEndOnly, consumerNames[i]) {
				continue
			}
			prof := profile && (b.cfg.CPUProfile != "" || b.cfg.Trace != "") && consumerNames[i] == profiled && round == b.cfg.Rounds-1
			rate, cpu, err := b.drain(ctx, cons, c, prof)
			if err != nil {
				return r, fmt.Errorf("end to end, concurrency %d, %s: %w", c, cons.name, err)
			}
			*cons.into = append(*cons.into, rate)
			if cpu > 0 {
				*cons.cpu = append(*cons.cpu, cpu)
			}
			b.progress("end to end c=%d round %d/%d: %s %.0f msg/s, %.0f µs CPU/msg", c, round+1, b.cfg.Rounds, cons.name, rate, cpu*1e6)
		}
	}
	return r, nil
}

// drain fills a new queue with -n tasks, then times cons draining it. It
// returns messages per second and the CPU seconds per message spent by this
// process and the Redis server meanwhile (0 when Redis does not say).
func (b *bench) drain(ctx context.Context, cons consumer, c int, profile bool) (rate, cpu float64, err error) {
	q := b.queue(fmt.Sprintf("e2e-c%d", c))
	defer func() {
		// The queue and the messages' delivery state go with the round,
		// so that every round starts on a Redis of the same size.
		if derr := b.deleteKeys(context.WithoutCancel(ctx), "asynq:{"+q+"}:*", b.ledgerPrefix("inproc")+"delivery:*"); err == nil {
			err = derr
		}
	}()
	n := b.cfg.Messages
	if err := fill(ctx, n, func(ctx context.Context, i int) error { return cons.fill(ctx, q, i) }); err != nil {
		return 0, 0, err
	}
	logins := b.srv.Stats().Logins
	stopProfile := func() error { return nil }
	if profile {
		if stopProfile, err = startProfiles(b.cfg.CPUProfile, b.cfg.Trace); err != nil {
			return 0, 0, err
		}
	}
	run, count, stop, err := cons.prepare(q)
	if err != nil {
		stopProfile()
		return 0, 0, err
	}
	clock := cpuClock{b.rdb}
	proc0, srv0, cpuOK := clock.now(ctx)
	start := time.Now()
	if err := run(); err != nil {
		stopProfile()
		stop()
		return 0, 0, err
	}
	end, werr := waitCount(ctx, "messages delivered", n, drainTimeout(n), func() (int, error) { return count(), nil })
	proc1, srv1, cpuOK1 := clock.now(ctx)
	perr := stopProfile()
	serr := stop()
	if perr != nil {
		return 0, 0, perr
	}
	if werr != nil {
		return 0, 0, werr
	}
	if serr != nil {
		return 0, 0, serr
	}
	if cons.name == "sendq" {
		b.sendqLogins += b.srv.Stats().Logins - logins
		b.sendqMessages += n
	}
	if cpuOK && cpuOK1 {
		cpu = ((proc1 - proc0) + (srv1 - srv0)).Seconds() / float64(n)
		b.progress("%s: CPU per message %.0f µs in this process, %.0f µs in Redis", cons.name,
			(proc1-proc0).Seconds()*1e6/float64(n), (srv1-srv0).Seconds()*1e6/float64(n))
	}
	return float64(n) / end.Sub(start).Seconds(), cpu, nil
}

// startProfiles starts writing a CPU profile of this process to cpuFile
// and an execution trace to traceFile (either may be "") and returns the
// function that stops both.
func startProfiles(cpuFile, traceFile string) (stop func() error, err error) {
	var stops []func() error
	stopAll := func() error {
		var errs []error
		for _, s := range stops {
			errs = append(errs, s())
		}
		return errors.Join(errs...)
	}
	start := func(file, what string, begin func(io.Writer) error, end func()) error {
		if file == "" {
			return nil
		}
		f, err := os.Create(file)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := begin(f); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", what, err)
		}
		stops = append(stops, func() error {
			end()
			if err := f.Close(); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		})
		return nil
	}
	if err := start(cpuFile, "cpuprofile", pprof.StartCPUProfile, pprof.StopCPUProfile); err != nil {
		return nil, err
	}
	if err := start(traceFile, "trace", trace.Start, trace.Stop); err != nil {
		stopAll()
		return nil, err
	}
	return stopAll, nil
}
