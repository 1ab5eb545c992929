package tasks

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
)

// DefaultSessionRecheck is how long, on average, a task whose account has
// every SMTP session in use waits before it looks again (see
// HandlerConfig.SessionRecheck).
const DefaultSessionRecheck = time.Second

// Names of the ledger counters of AccountLimits' rates: the keys of the
// accounts file's limits block.
const (
	RateMessagesPerMinute = "messages_per_minute"
	RateMessagesPerDay    = "messages_per_day"
	RateRecipientsPerDay  = "recipients_per_day"
)

// AccountLimits are one account's sending limits, enforced by every Handler
// sharing the same ledger, across processes and machines (accounts.Limits
// from the accounts file; the worker passes them). A zero field means no
// limit. Minutes and days are sliding windows (any 60 seconds, any 24 hours).
//
// Before each submission the handler takes one of the account's MaxSessions
// session slots (a lease in Redis, renewed during long sends, released right
// after the send, and freed by expiry if the worker dies), then counts the
// message and its envelope recipients against the rates. When a slot or a
// rate has no room, the task is deferred (not a failed attempt) without
// contacting the provider: until the rate's next opening, or for about
// HandlerConfig.SessionRecheck when every session is in use. A message with
// more recipients than RecipientsPerDay can never go and is dead-lettered.
//
// Counting is conservative: a submission that fails still counts.
type AccountLimits struct {
	// MaxSessions is how many messages the account may be submitting at
	// once, across all workers.
	MaxSessions int
	// MessagesPerMinute is how many submissions the account may make in
	// any minute.
	MessagesPerMinute int
	// MessagesPerDay is how many submissions the account may make in any
	// 24 hours.
	MessagesPerDay int
	// RecipientsPerDay is how many envelope recipients the account may
	// submit to in any 24 hours; an attempt counts the recipients it sends
	// to (those still pending).
	RecipientsPerDay int
}

// uses returns the ledger uses of one submission to rcpts recipients.
func (l AccountLimits) uses(rcpts int) []ledger.Use {
	var uses []ledger.Use
	add := func(name string, limit int, window time.Duration, n int) {
		if limit > 0 {
			uses = append(uses, ledger.Use{Rate: ledger.Rate{Name: name, Limit: int64(limit), Window: window}, N: int64(n)})
		}
	}
	add(RateMessagesPerMinute, l.MessagesPerMinute, time.Minute, 1)
	add(RateMessagesPerDay, l.MessagesPerDay, 24*time.Hour, 1)
	add(RateRecipientsPerDay, l.RecipientsPerDay, 24*time.Hour, rcpts)
	return uses
}

// rateJitter bounds the random delay added to a rate's retry time, so that
// tasks waiting for the same opening do not all come back at once.
const rateJitter = time.Second

// releaseTimeout bounds the Redis calls that renew and release a session
// lease, which run even after the task's context ended.
const releaseTimeout = 5 * time.Second

// admit applies the account's limits to one submission to rcpts recipients.
// It returns a release function to call when the submission is over (it is
// idempotent), or the error ProcessTask returns: a deferral, a dead letter
// or a Redis failure.
func (h *Handler) admit(ctx context.Context, a *attempt, rcpts int) (release func(), err error) {
	noop := func() {}
	if h.cfg.LimitsFunc == nil {
		return noop, nil
	}
	acct := a.payload.AccountID
	lim := h.cfg.LimitsFunc(acct)
	now := h.cfg.NowFunc()

	release = noop
	if lim.MaxSessions > 0 {
		lease, err := h.cfg.Ledger.AcquireSession(ctx, acct, lim.MaxSessions)
		if errors.Is(err, ledger.ErrSessionsFull) {
			until := now.Add(h.sessionRecheck/2 + rand.N(h.sessionRecheck))
			a.log.Debug("deferred: every session of the account is in use", "max_sessions", lim.MaxSessions, "until", until)
			return nil, &deferError{until: until, reason: fmt.Sprintf("account %s has all %d sessions in use (max_sessions)", acct, lim.MaxSessions)}
		}
		if err != nil {
			return nil, err
		}
		release = h.holdSession(ctx, a, lease)
	}

	uses := lim.uses(rcpts)
	if len(uses) == 0 {
		return release, nil
	}
	allowance, err := h.cfg.Ledger.Allow(ctx, acct, uses...)
	switch {
	case errors.Is(err, ledger.ErrExceedsLimit):
		release()
		return nil, h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, smtpoauth.ClassPermanentMessage,
			fmt.Sprintf("%d recipients exceed the %d recipients_per_day of account %s", rcpts, lim.RecipientsPerDay, acct))
	case err != nil:
		release()
		return nil, err
	case !allowance.Allowed:
		release()
		until := now.Add(allowance.RetryAfter + rand.N(rateJitter))
		a.log.Debug("deferred: account limit reached", "limit", allowance.Refused.Name, "until", until)
		return nil, &deferError{until: until, reason: fmt.Sprintf("account %s reached its %s of %d", acct, allowance.Refused.Name, allowance.Refused.Limit)}
	}
	return release, nil
}

// holdSession renews lease in the background until the returned release
// function is called, which then gives the slot back. A renewal or release
// that fails is logged: the lease ends by itself at its expiry.
func (h *Handler) holdSession(ctx context.Context, a *attempt, lease *ledger.Lease) (release func()) {
	bg := context.WithoutCancel(ctx)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(max(lease.Duration()/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rctx, cancel := context.WithTimeout(bg, releaseTimeout)
				if err := lease.Renew(rctx); err != nil {
					a.log.Warn("could not renew the session lease; the account may exceed max_sessions", "error", err)
				}
				cancel()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			<-done
			rctx, cancel := context.WithTimeout(bg, releaseTimeout)
			defer cancel()
			if err := lease.Release(rctx); err != nil {
				a.log.Warn("could not release the session lease; it ends by itself", "error", err, "expiry", lease.Expiry())
			}
		})
	}
}
