package tasks

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Defaults of RetryPolicy, shaped like an MTA's queue: minutes doubling to
// about an hour, for about five days (Postfix's maximal_queue_lifetime).
const (
	DefaultRetryBase     = time.Minute
	DefaultRetryCap      = time.Hour
	DefaultQueueLifetime = 5 * 24 * time.Hour
	// DefaultMaxAttempts bounds the attempts that count as failures; with
	// full jitter the average delay at the cap is half an hour, so this
	// outlasts DefaultQueueLifetime.
	DefaultMaxAttempts = 300
	// DefaultMaxRetry is the asynq retry limit the producer sets on every
	// task: above DefaultMaxAttempts, so that the worker's policy, which
	// writes a dead letter, gives up first, with room for the attempts
	// asynq counts when a worker crashes.
	DefaultMaxRetry = DefaultMaxAttempts + 100
	// DefaultHeldRecheck is how often a task of a held account looks
	// again whether the account was resumed.
	DefaultHeldRecheck = time.Minute
)

// RetryPolicy decides when a failed delivery is tried again and when it is
// given up. Zero fields mean the defaults named on them.
type RetryPolicy struct {
	// Base is the first delay; each failure doubles it. Default
	// DefaultRetryBase.
	Base time.Duration
	// Cap bounds the delay. Default DefaultRetryCap.
	Cap time.Duration
	// MaxAttempts is how many failed attempts a task gets before it is
	// dead-lettered; deferrals of a throttled or held account do not count.
	// asynq counts a worker crash as a failed attempt. Default
	// DefaultMaxAttempts. A task's own asynq MaxRetry, when lower, wins.
	MaxAttempts int
	// Lifetime is how long after enqueue a message is given up, whatever
	// its attempts. Default DefaultQueueLifetime.
	Lifetime time.Duration
	// HeldRecheck is how long a task of a held account waits before it
	// looks again. Default DefaultHeldRecheck.
	HeldRecheck time.Duration
}

// WithDefaults returns a copy of p with zero fields set to their defaults.
func (p RetryPolicy) WithDefaults() RetryPolicy {
	p.Base = cmp.Or(p.Base, DefaultRetryBase)
	p.Cap = cmp.Or(p.Cap, DefaultRetryCap)
	p.MaxAttempts = cmp.Or(p.MaxAttempts, DefaultMaxAttempts)
	p.Lifetime = cmp.Or(p.Lifetime, DefaultQueueLifetime)
	p.HeldRecheck = cmp.Or(p.HeldRecheck, DefaultHeldRecheck)
	return p
}

func (p RetryPolicy) validate() error {
	var errs []error
	if p.Base < 0 || p.Cap < 0 || p.Lifetime < 0 || p.HeldRecheck < 0 {
		errs = append(errs, errors.New("tasks: RetryPolicy: durations must not be negative"))
	}
	if p.Cap < p.Base {
		errs = append(errs, fmt.Errorf("tasks: RetryPolicy.Cap %s is below Base %s", p.Cap, p.Base))
	}
	if p.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("tasks: RetryPolicy.MaxAttempts %d is negative", p.MaxAttempts))
	}
	return errors.Join(errs...)
}

// Backoff returns the delay before attempt n+1 after n failures: "full
// jitter", a uniform random delay between zero and min(Cap, Base·2ⁿ), which
// spreads a burst of failures out instead of retrying them in lockstep.
func (p RetryPolicy) Backoff(n int) time.Duration {
	ceiling := p.Cap
	if n < 62 {
		if d := p.Base << n; d > 0 && d < ceiling {
			ceiling = d
		}
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}

// deferError postpones a task without counting a failed attempt: its
// account is throttled, failing authentication or held.
type deferError struct {
	until  time.Time
	reason string
}

func (e *deferError) Error() string {
	return fmt.Sprintf("deferred until %s: %s", e.until.UTC().Format(time.RFC3339), e.reason)
}
