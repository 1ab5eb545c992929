package smtpoauth

import (
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// boundConn is the network connection under an SMTP session. It bridges
// context.Context to go-smtp, which has no context support: while an
// operation is bound to a ctx (bind), every deadline go-smtp sets (it sets
// one per command, and clears it afterwards) is clamped to ctx's deadline,
// and cancelling ctx closes the connection. Between operations nothing is
// clamped, so a later operation (a pooled connection's next message) can
// bind its own ctx.
type boundConn struct {
	net.Conn

	mu    sync.Mutex
	limit time.Time // ctx deadline of the bound operation; zero: none
	read  time.Time // read deadline last asked for
	write time.Time // write deadline last asked for
}

func newBoundConn(c net.Conn) *boundConn { return &boundConn{Conn: c} }

// bind ties the connection to ctx until release is called: deadlines are
// clamped to ctx's deadline and cancelling ctx closes the connection (an
// SMTP exchange interrupted half-way cannot be resumed anyway).
func (c *boundConn) bind(ctx context.Context) (release func()) {
	d, _ := ctx.Deadline()
	c.setLimit(d)
	stop := context.AfterFunc(ctx, func() { c.Conn.Close() })
	return func() {
		stop()
		c.setLimit(time.Time{})
	}
}

// setLimit changes the clamp and re-applies the deadlines last asked for.
func (c *boundConn) setLimit(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limit = t
	c.Conn.SetReadDeadline(c.clamp(c.read))
	c.Conn.SetWriteDeadline(c.clamp(c.write))
}

// tighten lowers the clamp to t if t is earlier; used to bound the
// best-effort QUIT.
func (c *boundConn) tighten(t time.Time) {
	c.mu.Lock()
	limit := c.limit
	c.mu.Unlock()
	if limit.IsZero() || t.Before(limit) {
		c.setLimit(t)
	}
}

func (c *boundConn) clamp(t time.Time) time.Time {
	if !c.limit.IsZero() && (t.IsZero() || t.After(c.limit)) {
		return c.limit
	}
	return t
}

// SetDeadline implements net.Conn, clamping t to the bound ctx's deadline.
func (c *boundConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read, c.write = t, t
	return c.Conn.SetDeadline(c.clamp(t))
}

// SetReadDeadline implements net.Conn, clamping t to the bound ctx's
// deadline.
func (c *boundConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read = t
	return c.Conn.SetReadDeadline(c.clamp(t))
}

// SetWriteDeadline implements net.Conn, clamping t to the bound ctx's
// deadline.
func (c *boundConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.write = t
	return c.Conn.SetWriteDeadline(c.clamp(t))
}

// replayConn hands go-smtp a connection whose first bytes are the greeting
// this package already read (and checked) itself, followed by whatever the
// connection delivers next. go-smtp's Client always starts by reading a
// greeting and has no exported STARTTLS, so this is how the session prefix
// this package runs (greeting, EHLO, STARTTLS, TLS handshake) is joined to
// the go-smtp Client that runs the rest.
type replayConn struct {
	net.Conn
	r io.Reader
}

// Read implements net.Conn, from the replayed greeting first.
func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }
