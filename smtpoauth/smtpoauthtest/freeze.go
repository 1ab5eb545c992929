package smtpoauthtest

import (
	"context"
	"fmt"
)

// Freezing the SMTP server stops every session at a point a crash test can
// reason about: nothing more is said to any client and nothing more is
// stored until Thaw. Sessions park in two places:
//
//   - before writing any reply (the greeting included): a write to the
//     connection parks, so the client has not heard the reply;
//   - in DATA, once the final "." has been read, before the message is
//     stored.
//
// A message stored before the Freeze gets its 250 all the same: the reply
// to a stored message never parks, so a frozen server holds no message
// whose client has not been told.
//
// TLS handshakes and the closing of connections do not park.

// thawGate is one Freeze: sessions parked during it wait for released to
// be closed and then read discard, which Thaw writes before closing it.
type thawGate struct {
	released chan struct{}
	discard  bool
}

// freezer is the Freeze state. Guarded by Server.mu.
type freezer struct {
	gate    *thawGate // non-nil while frozen
	parked  int
	changed chan struct{} // closed and replaced when parked grows
}

// Freeze makes every SMTP session park before writing any reply and before
// storing a message (a session whose DATA has been read completely parks
// before storing it), until Thaw. Sessions that start while frozen park at
// their first reply, the greeting (on the implicit-TLS port, after the TLS
// handshake). Use it to stop the server at a moment a crash test can
// reason about: WaitParked until the sessions of interest are parked, kill
// the client, then Thaw. Freezing a frozen server does nothing. The token
// endpoint is not affected.
//
// Parked counts sessions, each parked at one point; a session idle
// between commands parks only once the client sends something. A session
// writing a multi-line reply when Freeze is called may park between two
// of its lines: the client has not heard the whole reply either.
func (s *Server) Freeze() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.freeze.gate == nil {
		s.freeze.gate = &thawGate{released: make(chan struct{})}
		s.log.Info("smtp frozen")
	}
}

// Parked returns how many SMTP sessions are parked by Freeze now. It drops
// to 0 when Thaw releases them.
func (s *Server) Parked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.freeze.parked
}

// WaitParked waits until at least n SMTP sessions are parked by Freeze. It
// waits on a signal, not a timer, and returns an error wrapping ctx.Err()
// when ctx is done first, or ErrServerClosed when the server is closed.
func (s *Server) WaitParked(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		parked, changed := s.freeze.parked, s.freeze.changed
		s.mu.Unlock()
		if parked >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("wait for %d parked sessions, got %d: %w", n, s.Parked(), ctx.Err())
		case <-s.closed:
			return fmt.Errorf("wait for %d parked sessions, got %d: %w", n, s.Parked(), ErrServerClosed)
		}
	}
}

// Thaw ends a Freeze and releases the parked sessions. With discard false
// they go on as if nothing happened. With discard true every parked
// session closes its connection without replying, as if the connection
// had died before the server committed: one parked before storing a
// message drops the message (it never shows in Messages); one parked
// before a reply just closes (if that reply was the 250 to the final ".",
// the message was already stored: the ambiguous case). Thawing a server
// that is not frozen does nothing.
func (s *Server) Thaw(discard bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.freeze.gate
	if g == nil {
		return
	}
	s.log.Info("smtp thawed", "parked", s.freeze.parked, "discard", discard)
	s.freeze.gate = nil
	s.freeze.parked = 0
	g.discard = discard
	close(g.released)
}

// park blocks while the server is frozen. It reports whether the session
// may go on; false means it must close its connection without replying
// (Thaw(true), or the server is closing). Before it blocks it calls
// beforePark, if not nil, outside its lock: the connection sends the replies
// it holds, which were given before the freeze.
func (s *Server) park(what string, beforePark func()) (proceed bool) {
	s.mu.Lock()
	g := s.freeze.gate
	if g != nil && beforePark != nil {
		s.mu.Unlock()
		beforePark()
		s.mu.Lock()
		g = s.freeze.gate
	}
	if g == nil {
		s.mu.Unlock()
		return true
	}
	s.freeze.parked++
	close(s.freeze.changed)
	s.freeze.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Debug("smtp session parked", "before", what)
	select {
	case <-g.released:
		return !g.discard
	case <-s.closed:
		return false
	}
}
