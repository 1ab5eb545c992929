package smtpoauthtest

import "github.com/emersion/go-smtp"

// rejectFault: a Fault at StageAuth answered the AUTH.
const rejectFault authReject = "scripted fault"

// authFault fires the first fault at StageAuth for user and returns its
// reply, or nil when none matches. Such a fault never drops (see
// Fault.validate).
func (s *Server) authFault(user string) *smtp.SMTPError {
	f := s.takeFault(StageAuth, user)
	if f == nil {
		return nil
	}
	return f.reply()
}
