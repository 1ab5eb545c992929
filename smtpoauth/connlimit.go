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
	// held, kept alive by the limiter, until release is called, once,
	// after the connection has been closed. release must not block for
	// long.
	AcquireConn(ctx context.Context) (release func(), err error)
}
