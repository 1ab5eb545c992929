package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// enqueuedHeader carries a message's enqueue time, Unix nanoseconds, from
// the producer to the test server.
const enqueuedHeader = "X-Bench-Enqueued"

// latencyLoad is the shortest paced load of a latency measurement (but in
// smoke mode).
const latencyLoad = 5 * time.Second

// latencyResult is enqueue-to-250 latency under a paced load, and idle
// pickup latency.
type latencyResult struct {
	concurrency int
	target      float64 // messages/s asked for
	achieved    float64 // messages/s enqueued
	messages    int
	p50, p99    time.Duration
	idle        sample // seconds, one per idle sample
}

// measureLatency runs an in-process worker at concurrency c, enqueues
// messages at rate per second and measures enqueue to 250 for each; then
// measures idle pickup on the same worker.
func (b *bench) measureLatency(ctx context.Context, c int, rate float64) (r latencyResult, err error) {
	r = latencyResult{concurrency: c, target: rate, messages: max(50, b.cfg.Messages/4)}
	if !b.cfg.Smoke {
		// At least latencyLoad of load, to see the steady state.
		r.messages = max(r.messages, int(rate*latencyLoad.Seconds()))
	}
	q := b.queue("latency")
	defer func() {
		if derr := b.deleteQueue(context.WithoutCancel(ctx), q); err == nil {
			err = derr
		}
	}()
	tc := tasks.NewClient(b.redisOpt)
	defer tc.Close()
	w, err := b.startWorker(q, c)
	if err != nil {
		return r, err
	}
	defer func() {
		if serr := w.stop(); err == nil {
			err = serr
		}
	}()

	// Warm up: token, connections.
	b.srv.ResetMessages()
	if err := fill(ctx, c, func(ctx context.Context, _ int) error {
		_, err := tc.Enqueue(ctx, b.email(benchAccount), tasks.Queue(q))
		return err
	}); err != nil {
		return r, err
	}
	if _, err := b.waitMessages(ctx, c); err != nil {
		return r, fmt.Errorf("latency warm-up: %w", err)
	}

	b.progress("latency: %d messages at %.0f/s, concurrency %d", r.messages, rate, c)
	b.srv.ResetMessages()
	start := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		errMu sync.Mutex
		perr  error
	)
	for range 4 { // one goroutine may not keep up with the rate
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(r.messages) || ctx.Err() != nil {
					return
				}
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
				now := time.Now()
				e := b.email(benchAccount, tasks.Header{Name: enqueuedHeader, Value: strconv.FormatInt(now.UnixNano(), 10)})
				if _, err := tc.Enqueue(ctx, e, tasks.Queue(q)); err != nil {
					errMu.Lock()
					perr = cmpErr(perr, err)
					errMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if perr != nil {
		return r, fmt.Errorf("latency: enqueue: %w", perr)
	}
	r.achieved = float64(r.messages) / time.Since(start).Seconds()
	msgs, err := b.waitMessages(ctx, r.messages)
	if err != nil {
		return r, fmt.Errorf("latency: %w", err)
	}
	lat, err := latencies(msgs)
	if err != nil {
		return r, err
	}
	r.p50, r.p99 = percentile(lat, 50), percentile(lat, 99)

	for i := range b.cfg.IdleSamples {
		pause := rand.N(2 * time.Second)
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(pause):
		}
		b.srv.ResetMessages()
		now := time.Now()
		e := b.email(benchAccount, tasks.Header{Name: enqueuedHeader, Value: strconv.FormatInt(now.UnixNano(), 10)})
		if _, err := tc.Enqueue(ctx, e, tasks.Queue(q)); err != nil {
			return r, fmt.Errorf("idle pickup: enqueue: %w", err)
		}
		msgs, err := b.waitMessages(ctx, 1)
		if err != nil {
			return r, fmt.Errorf("idle pickup: %w", err)
		}
		lat, err := latencies(msgs)
		if err != nil {
			return r, err
		}
		r.idle = append(r.idle, lat[0].Seconds())
		b.progress("idle pickup %d/%d: %v", i+1, b.cfg.IdleSamples, lat[0].Round(time.Millisecond))
	}
	return r, nil
}

// waitMessages waits for n messages at the test server.
func (b *bench) waitMessages(ctx context.Context, n int) ([]smtpoauthtest.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, drainTimeout(n))
	defer cancel()
	return b.srv.WaitMessages(ctx, n)
}

// latencies returns, sorted, the time from each message's enqueuedHeader
// to its ReceivedAt.
func latencies(msgs []smtpoauthtest.Message) ([]time.Duration, error) {
	out := make([]time.Duration, 0, len(msgs))
	prefix := []byte(enqueuedHeader + ": ")
	for _, m := range msgs {
		i := bytes.Index(m.Data, prefix)
		if i < 0 {
			return nil, errors.New("latency: a message has no " + enqueuedHeader + " header")
		}
		v := m.Data[i+len(prefix):]
		if j := bytes.IndexByte(v, '\r'); j >= 0 {
			v = v[:j]
		}
		ns, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("latency: %s header %q: %w", enqueuedHeader, v, err)
		}
		out = append(out, m.ReceivedAt.Sub(time.Unix(0, ns)))
	}
	slices.Sort(out)
	return out, nil
}

// percentile returns the p-th percentile (nearest rank) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}
