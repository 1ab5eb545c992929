package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sendq/sendq/smtpoauth"
)

// leaseCallTimeout bounds the Redis calls that renew and give back a
// connection's lease, which run apart from any task's context.
const leaseCallTimeout = 5 * time.Second

// ConnLimiter returns the cluster-wide limit of account's SMTP connections
// for smtpoauth.Config.ConnLimiter: at most limit connections open at once
// across every process on this Redis. Each connection holds a session slot
// (AcquireSession) from before its dial until it is closed; the lease is
// renewed every third of Options.SessionLease while the connection lives,
// idle or busy, so that a worker that dies frees its slots within one
// lease. When every slot is held, AcquireConn's error wraps both
// smtpoauth.ErrConnLimit and ErrSessionsFull. logger (nil: quiet) hears
// about renewals and releases that failed.
func (s *Store) ConnLimiter(account string, limit int, logger *slog.Logger) smtpoauth.ConnLimiter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &connLimiter{s: s, account: account, limit: limit, log: logger}
}

type connLimiter struct {
	s       *Store
	account string
	limit   int
	log     *slog.Logger
}

func (c *connLimiter) AcquireConn(ctx context.Context) (*smtpoauth.ConnSlot, error) {
	lease, err := c.s.AcquireSession(ctx, c.account, c.limit)
	if errors.Is(err, ErrSessionsFull) {
		return nil, fmt.Errorf("%w: account %s has all %d sessions (max_sessions) open: %w",
			smtpoauth.ErrConnLimit, c.account, c.limit, ErrSessionsFull)
	}
	if err != nil {
		return nil, err
	}
	return c.hold(lease), nil
}

// hold renews lease in the background until the slot's Release is called,
// which then gives it back. A renewal or release that fails is logged: the
// lease ends by itself at its expiry. A renewal that finds the slot taken
// by another holder closes the slot's Lost channel and stops.
func (c *connLimiter) hold(lease *Lease) *smtpoauth.ConnSlot {
	stop, done, lost := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(max(lease.Duration()/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), leaseCallTimeout)
				err := lease.Renew(ctx)
				cancel()
				if errors.Is(err, ErrLeaseLost) {
					c.log.Warn("an SMTP session lease ran out and its slot was taken; closing the connection",
						"account", c.account)
					close(lost)
					return
				}
				if err != nil {
					c.log.Warn("could not renew an SMTP session lease; the account may exceed max_sessions",
						"account", c.account, "error", err)
				}
			}
		}
	}()
	var once sync.Once
	release := func() {
		once.Do(func() {
			close(stop)
			<-done
			ctx, cancel := context.WithTimeout(context.Background(), leaseCallTimeout)
			defer cancel()
			if err := lease.Release(ctx); err != nil {
				c.log.Warn("could not give back an SMTP session lease; it ends by itself",
					"account", c.account, "error", err, "expiry", lease.Expiry())
			}
		})
	}
	return &smtpoauth.ConnSlot{Release: release, Lost: lost}
}
