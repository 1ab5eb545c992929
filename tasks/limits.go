package tasks

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
)

// DefaultSessionRecheck is how long, on average, a task whose account has
// every SMTP session open elsewhere waits before it looks again (see
// HandlerConfig.SessionRecheck).
const DefaultSessionRecheck = time.Second

// Names of the ledger counters of AccountLimits' rates: the keys of the
// accounts file's limits block.
const (
	RateMessagesPerMinute = "messages_per_minute"
	RateMessagesPerDay    = "messages_per_day"
	RateRecipientsPerDay  = "recipients_per_day"
)

// AccountLimits are one account's sending rates, enforced by every Handler
// sharing the same ledger, across processes and machines (accounts.Limits
// from the accounts file; the worker passes them). A zero field means no
// limit. Minutes and days are sliding windows (any 60 seconds, any 24 hours).
// The account's limit of concurrent SMTP sessions is the Sender's
// (smtpoauth.Config.ConnLimiter, which the accounts registry sets from the
// same file).
//
// Before each submission the handler counts the message and its envelope
// recipients against the rates. When a rate has no room, the task is
// deferred (not a failed attempt) without contacting the provider, until
// the rate's next opening. When the Sender finds every SMTP session of the
// account open elsewhere (smtpoauth.ErrConnLimit), the count is taken back
// and the task deferred for about HandlerConfig.SessionRecheck. A message
// with more recipients than RecipientsPerDay can never go and is
// dead-lettered.
//
// Counting is conservative: a submission that fails at the server still
// counts.
type AccountLimits struct {
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

// refundTimeout bounds the Redis call that takes back the count of a
// submission that could not start.
const refundTimeout = 5 * time.Second

// admit counts one submission to rcpts recipients against the account's
// rates. It returns a function that takes the count back (for a submission
// that never reached the server), or the error ProcessTask returns: a
// deferral, a dead letter or a Redis failure.
func (h *Handler) admit(ctx context.Context, a *attempt, rcpts int) (refund func(), err error) {
	noop := func() {}
	if h.cfg.LimitsFunc == nil {
		return noop, nil
	}
	acct := a.payload.AccountID
	lim := h.cfg.LimitsFunc(acct)
	uses := lim.uses(rcpts)
	if len(uses) == 0 {
		return noop, nil
	}
	allowance, err := h.cfg.Ledger.Allow(ctx, acct, uses...)
	switch {
	case errors.Is(err, ledger.ErrExceedsLimit):
		return nil, h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, smtpoauth.ClassPermanentMessage,
			fmt.Sprintf("%d recipients exceed the %d recipients_per_day of account %s", rcpts, lim.RecipientsPerDay, acct))
	case err != nil:
		return nil, err
	case !allowance.Allowed:
		until := h.cfg.NowFunc().Add(allowance.RetryAfter + rand.N(rateJitter))
		a.logger().Debug("deferred: account limit reached", "limit", allowance.Refused.Name, "until", until)
		return nil, &deferError{until: until, reason: fmt.Sprintf("account %s reached its %s of %d", acct, allowance.Refused.Name, allowance.Refused.Limit)}
	}
	return func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refundTimeout)
		defer cancel()
		if err := h.cfg.Ledger.Refund(rctx, acct, allowance, uses...); err != nil {
			a.logger().Warn("could not take back the count of a submission that did not start", "error", err)
		}
	}, nil
}

// sessionsBusy is the deferral of a task whose Sender found every SMTP
// session of the account open elsewhere.
func (h *Handler) sessionsBusy(a *attempt, err error) error {
	until := h.cfg.NowFunc().Add(h.sessionRecheck/2 + rand.N(h.sessionRecheck))
	a.logger().Debug("deferred: every SMTP session of the account is open elsewhere", "until", until)
	return &deferError{until: until, reason: err.Error()}
}
