package smtpoauthtest

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// trackingListener remembers the connections it accepted so that Close can
// close them all, including those still in a TLS handshake. go-smtp's own
// Server.Close does close connections but does not wait for their
// goroutines, and Shutdown waits but does not close them: closing them here
// and then calling Shutdown does both.
type trackingListener struct {
	net.Listener
	tlsConfig *tls.Config // non-nil: implicit TLS
	// park, when non-nil, is called before every write of a reply (see
	// trackedConn.Write), with the function that sends the replies held
	// so far, which it calls before it blocks; false means the connection
	// must be dropped.
	park func(what string, beforePark func()) bool

	mu     sync.Mutex
	closed bool
	conns  map[*trackedConn]struct{}
}

func newTrackingListener(l net.Listener, tlsConfig *tls.Config, park func(what string, beforePark func()) bool) *trackingListener {
	return &trackingListener{Listener: l, tlsConfig: tlsConfig, park: park, conns: make(map[*trackedConn]struct{})}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := newTrackedConn(c, l)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		c.Close()
		return nil, net.ErrClosed
	}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	if l.tlsConfig != nil {
		return tls.Server(tc, l.tlsConfig), nil
	}
	return tc, nil
}

// Close closes the listener and every connection it accepted.
func (l *trackingListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	err := l.Listener.Close()
	for c := range conns {
		c.Conn.Close()
	}
	return err
}

// trackedConn is an accepted connection: the raw TCP connection, under
// TLS if any. It is where Freeze parks the replies (a reply is one write
// or, multi-line, a few) and where faults drop connections.
//
// Its writes wait in a buffer until the server next reads (or the
// connection closes), so the replies to a group of pipelined commands leave
// in one TCP write, as servers that offer PIPELINING send them (RFC 2920
// §3.2; Postfix flushes its replies only when no pipelined input is left).
// A client that waits for each reply sees no difference: the server reads
// again right after replying.
type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
	// wmu guards wbuf, the replies written since the server last read,
	// and wdeadline, the write deadline last set.
	wmu       sync.Mutex
	wbuf      []byte
	wdeadline time.Time
	// closing is set once the connection is being closed or dropped:
	// what is still written then (a TLS close_notify) is no reply and
	// must not park.
	closing atomic.Bool
	// stored is set when the session has just stored a message: the reply
	// that says so (the 250 to the final ".") is written without parking,
	// so that Freeze never separates a stored message from its 250.
	stored atomic.Bool
	// rmu guards reading, set while the server waits in Read, and
	// timedOut, set by timeOut: every read from then on times out.
	rmu      sync.Mutex
	reading  bool
	timedOut bool
	// closed is closed by Close.
	closed chan struct{}
}

func newTrackedConn(c net.Conn, l *trackingListener) *trackedConn {
	return &trackedConn{Conn: c, l: l, closed: make(chan struct{})}
}

// timeOut makes the server's read, the one it waits in or its next, fail
// with a timeout, as when its idle timeout passes: go-smtp then replies 421
// 4.4.2 and closes the connection.
func (c *trackedConn) timeOut() {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.timedOut = true
	if c.reading {
		c.Conn.SetReadDeadline(time.Unix(1, 0)) // wakes the read
	}
}

// Write parks while the server is frozen, except for TLS records that are
// not application data (the handshake, alerts): go-smtp writes each line
// of a reply as it goes, so parking here stops every reply, the greeting
// included, on both ports. A TLS 1.3 close_notify is application data on
// the wire: closing marks the connection first.
func (c *trackedConn) Write(b []byte) (int, error) {
	if c.l.park != nil && len(b) > 0 && !c.closing.Load() && !isTLSControlRecord(b[0]) && !c.stored.Swap(false) {
		// The replies given before the server froze go out before it
		// parks.
		if !c.l.park("reply", func() { c.flush() }) {
			c.drop()
			return 0, net.ErrClosed
		}
	}
	c.wmu.Lock()
	c.wbuf = append(c.wbuf, b...)
	c.wmu.Unlock()
	return len(b), nil
}

// flush writes out the buffered replies.
func (c *trackedConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	return err
}

// SetWriteDeadline sends the buffered replies first when t comes before
// the deadline they were written under: a writer that shortens its deadline
// wants what it wrote out by then (crypto/tls does, around its
// close_notify). go-smtp's deadline per reply only ever moves later.
func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	c.flushBefore(t)
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline is SetWriteDeadline for both directions.
func (c *trackedConn) SetDeadline(t time.Time) error {
	c.flushBefore(t)
	return c.Conn.SetDeadline(t)
}

// flushBefore flushes when the write deadline t is earlier than the one
// in force, and records t.
func (c *trackedConn) flushBefore(t time.Time) {
	c.wmu.Lock()
	earlier := !t.IsZero() && (c.wdeadline.IsZero() || t.Before(c.wdeadline))
	c.wdeadline = t
	c.wmu.Unlock()
	if earlier {
		c.flush() // an error shows at the next write or read
	}
}

// Read sends the buffered replies, then reads. It marks the connection
// closing on a read error other than a timeout: go-smtp closes the
// connection then.
func (c *trackedConn) Read(b []byte) (int, error) {
	if err := c.flush(); err != nil {
		c.closing.Store(true)
		return 0, err
	}
	c.rmu.Lock()
	if c.timedOut {
		c.rmu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	c.reading = true
	c.rmu.Unlock()
	n, err := c.Conn.Read(b)
	c.rmu.Lock()
	c.reading = false
	c.rmu.Unlock()
	if err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			c.closing.Store(true)
		}
	}
	return n, err
}

// drop closes the connection at once, without a TLS close_notify, as if
// it had died.
func (c *trackedConn) drop() {
	c.closing.Store(true)
	c.Close()
}

// isTLSControlRecord reports whether a write starting with b is a TLS
// record of type change_cipher_spec, alert or handshake. SMTP replies
// start with a digit, TLS application data with 23.
func isTLSControlRecord(b byte) bool { return b >= 20 && b <= 22 }

func (c *trackedConn) Close() error {
	c.flush() // a write error here changes nothing: the connection goes
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		close(c.closed)
	})
	return c.Conn.Close()
}
