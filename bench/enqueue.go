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
		f    func(ctx context.Context, q string) error
	}{
		{"raw asynq", &r.raw, func(ctx context.Context, q string) error {
			for range n {
				if _, err := ac.EnqueueContext(ctx, asynq.NewTask(tasks.TypeSendEmail, rawPayload), asynq.Queue(q)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"sendq Enqueue", &r.single, func(ctx context.Context, q string) error {
			for range n {
				if _, err := tc.Enqueue(ctx, b.email(benchAccount), tasks.Queue(q)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"sendq EnqueueBatch", &r.bulk, func(ctx context.Context, q string) error {
			batch := make([]*tasks.Email, 0, b.cfg.Batch)
			for i := range n {
				batch = append(batch, b.email(benchAccount))
				if len(batch) == b.cfg.Batch || i == n-1 {
					if _, err := tc.EnqueueBatch(ctx, batch, tasks.Queue(q)); err != nil {
						return err
					}
					batch = batch[:0]
				}
			}
			return nil
		}},
	}
	for round := range b.cfg.Rounds {
		// A B C, then C B A: no measure always runs first after the
		// previous round's queue was deleted.
		order := slices.Clone(runs)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, run := range order {
			q := b.queue("enqueue")
			start := time.Now()
			err := run.f(ctx, q)
			elapsed := time.Since(start)
			if derr := b.deleteQueue(ctx, q); err == nil {
				err = derr
			}
			if err != nil {
				return r, fmt.Errorf("enqueue rate, %s: %w", run.name, err)
			}
			rate := float64(n) / elapsed.Seconds()
			*run.into = append(*run.into, rate)
			b.progress("enqueue round %d/%d: %s %.0f/s", round+1, b.cfg.Rounds, run.name, rate)
		}
	}
	return r, nil
}
