package smtpoauth

import (
	"context"
	"errors"
)

// ErrConnLimit is wrapped by the error of a Send that could not open a
// connection because every connection slot of the mailbox (see
// Config.ConnLimiter) is held by other Senders. Nothing was sent to the
// server: the message may be tried again once a slot frees, and the
// failure says nothing about the message or the account.
var ErrConnLimit = errors.New("every connection slot of the mailbox is in use")

// ConnLimiter bounds how many connections to one mailbox are open at once
// across every Sender sharing it, such as the workers of a cluster
// (Microsoft 365 allows 3 concurrent SMTP sessions per mailbox). The
// ledger package implements it on Redis.
type ConnLimiter interface {
	// AcquireConn takes a connection slot before a Sender dials. It
	// returns an error wrapping ErrConnLimit when no slot is free, or
	// another error when the limiter cannot tell. On success the slot is
	// held, kept alive by the limiter, until its Release is called.
	AcquireConn(ctx context.Context) (*ConnSlot, error)
}

// ConnSlot is a connection slot held from a ConnLimiter.
type ConnSlot struct {
	// Release gives the slot back. The Sender calls it once, after the
	// connection has been closed; it must not block for long.
	Release func()
	// Lost, if not nil, is closed by the limiter when the slot was taken
	// from this holder (its lease ran out while the process was paused,
	// say, and another took it). The Sender then closes the connection
	// instead of reusing it, so that the limit holds again.
	Lost <-chan struct{}
}

// lost reports whether the limiter took the slot back. A nil slot is never
// lost.
func (c *ConnSlot) lost() bool {
	if c == nil || c.Lost == nil {
		return false
	}
	select {
	case <-c.Lost:
		return true
	default:
		return false
	}
}
