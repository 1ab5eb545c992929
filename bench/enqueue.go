package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/tasks"
)

// enqueueResult is the enqueue rates, messages per second, one value per
// round.
type enqueueResult struct {
	payloadBytes int
	raw          sample // asynq Client.Enqueue
	single       sample // tasks.Client.Enqueue
	bulk         sample // tasks.Client.EnqueueBatch
}

// measureEnqueue times one goroutine enqueuing -enqueue-n messages: raw
// asynq, sendq one at a time, sendq in batches, in turn, -rounds times.
func (b *bench) measureEnqueue(ctx context.Context) (enqueueResult, error) {
	var r enqueueResult
	// The raw task carries random bytes as many as sendq's payload.
	t, _, err := tasks.NewTask(b.email(benchAccount))
	if err != nil {
		return r, err
	}
	r.payloadBytes = len(t.Payload())
	rawPayload := make([]byte, r.payloadBytes)
	rand.Read(rawPayload)

	ac := asynq.NewClient(b.redisOpt)
	defer ac.Close()
	tc := tasks.NewClient(b.redisOpt)
	defer tc.Close()
	n := b.cfg.EnqueueN

	runs := []struct {
		name string
		into *sample
		// f enqueues count messages on q.
		f func(ctx context.Context, q string, count int) error
	}{
		{"raw asynq", &r.raw, func(ctx context.Context, q string, count int) error {
			for range count {
				if _, err := ac.EnqueueContext(ctx, asynq.NewTask(tasks.TypeSendEmail, rawPayload), asynq.Queue(q)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"sendq Enqueue", &r.single, func(ctx context.Context, q string, count int) error {
			for range count {
				if _, err := tc.Enqueue(ctx, b.email(benchAccount), tasks.Queue(q)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"sendq EnqueueBatch", &r.bulk, func(ctx context.Context, q string, count int) error {
			batch := make([]*tasks.Email, 0, b.cfg.Batch)
			for i := range count {
				batch = append(batch, b.email(benchAccount))
				if len(batch) == b.cfg.Batch || i == count-1 {
					if _, err := tc.EnqueueBatch(ctx, batch, tasks.Queue(q)); err != nil {
						return err
					}
					batch = batch[:0]
				}
			}
			return nil
		}},
	}
	// A round enqueues n messages with each measure, in chunks of about a
	// thousand (whole batches) taking turns: A B C, then C B A. A slow
	// moment of this shared machine lasts a fraction of a second, about
	// one chunk, and so falls on every measure alike instead of on
	// whichever ran through it; a measure's rate is its n messages over
	// the sum of its chunks' times.
	chunk := min(n, b.cfg.Batch*max(1, enqueueChunk/b.cfg.Batch))
	for round := range b.cfg.Rounds {
		queues := make([]string, len(runs))
		elapsed := make([]time.Duration, len(runs))
		for i := range runs {
			queues[i] = b.queue("enqueue")
		}
		var err error
		for k, done := 0, 0; done < n && err == nil; k, done = k+1, done+chunk {
			count := min(chunk, n-done)
			order := []int{0, 1, 2}
			if k%2 == 1 {
				slices.Reverse(order)
			}
			for _, i := range order {
				start := time.Now()
				if err = runs[i].f(ctx, queues[i], count); err != nil {
					err = fmt.Errorf("enqueue rate, %s: %w", runs[i].name, err)
					break
				}
				elapsed[i] += time.Since(start)
			}
		}
		for _, q := range queues {
			if derr := b.deleteQueue(ctx, q); err == nil {
				err = derr
			}
		}
		if err != nil {
			return r, err
		}
		for i, run := range runs {
			rate := float64(n) / elapsed[i].Seconds()
			*run.into = append(*run.into, rate)
			b.progress("enqueue round %d/%d: %s %.0f/s", round+1, b.cfg.Rounds, run.name, rate)
		}
	}
	return r, nil
}

// enqueueChunk is about how many messages one enqueue measure sends before
// the next takes its turn.
const enqueueChunk = 1000
