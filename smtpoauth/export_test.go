package smtpoauth

import "time"

// SetNowFunc replaces the clock s's pool measures idle time with. Call it
// before the first Send.
func SetNowFunc(s *Sender, now func() time.Time) { s.pool.nowFunc = now }

// SetReapedFunc has f called whenever the idle timer of s takes a
// connection out of the pool to close it. Call it before the first Send.
func SetReapedFunc(s *Sender, f func()) { s.pool.reaped = f }

// SetWaitingFunc has f called whenever a Send of s starts waiting for a
// connection (Config.MaxConns). Call it before the first Send.
func SetWaitingFunc(s *Sender, f func()) { s.pool.waiting = f }

// IdleConns returns how many connections s keeps idle.
func IdleConns(s *Sender) int {
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	return len(s.pool.idle)
}

// OpenConns returns how many connections s has open: being dialled, in
// use, idle or being closed.
func OpenConns(s *Sender) int {
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	return s.pool.open
}
