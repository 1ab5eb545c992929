package smtpoauthtest

import (
	"time"

	"github.com/emersion/go-smtp"
)

// The replies of the per-user limits, as the providers send them.
var (
	// Exchange Online, to a fourth concurrent session of a mailbox.
	replySessionLimit = func() *smtp.SMTPError {
		return reply(432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded")
	}
	// Gmail, to too many logins in a short time.
	replyLoginRate = func() *smtp.SMTPError {
		return reply(454, smtp.EnhancedCode{4, 7, 0}, "Too many login attempts, please try again later.")
	}
)

// loginWindow is the window of Config.MaxLoginsPerMinute.
const loginWindow = time.Minute

// userLimits tracks what Config.MaxSessionsPerUser and
// Config.MaxLoginsPerMinute limit, by normalized username. Guarded by
// Server.mu.
type userLimits struct {
	sessions map[string]int         // authenticated sessions open now
	attempts map[string][]time.Time // AUTH attempts within loginWindow, oldest first
}

func newUserLimits() userLimits {
	return userLimits{sessions: make(map[string]int), attempts: make(map[string][]time.Time)}
}

// loginAttempt records an AUTH attempt naming user (normalized) and
// returns the reply refusing it when Config.MaxLoginsPerMinute is
// exceeded; a refused attempt is not recorded.
func (s *Server) loginAttempt(user string) *smtp.SMTPError {
	limit := s.cfg.MaxLoginsPerMinute
	if limit == 0 {
		return nil
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	recent := s.users.attempts[user]
	for len(recent) > 0 && !recent[0].After(now.Add(-loginWindow)) {
		recent = recent[1:]
	}
	if len(recent) >= limit {
		s.users.attempts[user] = recent
		return replyLoginRate()
	}
	s.users.attempts[user] = append(recent, now)
	return nil
}

// openSession counts a successful login of user (normalized) and an
// authenticated session, or returns the reply refusing it when
// Config.MaxSessionsPerUser sessions are already open.
func (s *Server) openSession(user string) *smtp.SMTPError {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.users.sessions[user]
	if limit := s.cfg.MaxSessionsPerUser; limit > 0 && n >= limit {
		return replySessionLimit()
	}
	n++
	s.users.sessions[user] = n
	s.stats.PeakSessions[user] = max(s.stats.PeakSessions[user], n)
	s.stats.Logins++
	s.stats.LoginsByUser[user]++
	return nil
}

// closeSession ends an authenticated session of user (normalized).
func (s *Server) closeSession(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users.sessions[user] <= 1 {
		delete(s.users.sessions, user)
		return
	}
	s.users.sessions[user]--
}
