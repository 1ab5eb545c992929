package smtpoauthtest

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
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
	// trackedConn.Write); false means the connection must be dropped.
	park func(what string) bool

	mu     sync.Mutex
	closed bool
	conns  map[*trackedConn]struct{}
}

func newTrackingListener(l net.Listener, tlsConfig *tls.Config, park func(string) bool) *trackingListener {
	return &trackingListener{Listener: l, tlsConfig: tlsConfig, park: park, conns: make(map[*trackedConn]struct{})}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
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
type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
	// closing is set once the connection is being closed or dropped:
	// what is still written then (a TLS close_notify) is no reply and
	// must not park.
	closing atomic.Bool
	// stored is set when the session has just stored a message: the reply
	// that says so (the 250 to the final ".") is written without parking,
	// so that Freeze never separates a stored message from its 250.
	stored atomic.Bool
}

// Write parks while the server is frozen, except for TLS records that are
// not application data (the handshake, alerts): go-smtp writes each line
// of a reply as it goes, so parking here stops every reply, the greeting
// included, on both ports. A TLS 1.3 close_notify is application data on
// the wire: closing marks the connection first.
func (c *trackedConn) Write(b []byte) (int, error) {
	if c.l.park != nil && len(b) > 0 && !c.closing.Load() && !isTLSControlRecord(b[0]) && !c.stored.Swap(false) {
		if !c.l.park("reply") {
			c.drop()
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(b)
}

// Read marks the connection closing on a read error other than a timeout:
// go-smtp closes the connection then.
func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
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
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
