package smtpoauthtest

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/emersion/go-smtp"
)

// Stage is a point of the SMTP transaction where a Fault can replace the
// server's normal reply.
type Stage string

// The stages a Fault can fire at.
const (
	// StageMail is the reply to MAIL FROM; the fault's Address is compared
	// with the sender.
	StageMail Stage = "MAIL"
	// StageRcpt is the reply to RCPT TO; the fault's Address is compared
	// with the recipient. The other recipients of the message are still
	// accepted.
	StageRcpt Stage = "RCPT"
	// StageData is the reply to the final "." of DATA, once the whole
	// message has been read; the fault's Address is compared with every
	// recipient the transaction accepted.
	StageData Stage = "DATA"
	// StageAuth is the reply to AUTH once the client has sent its
	// credentials, in place of checking them; the fault's Address is
	// compared with the mailbox the client authenticates as. A fault here
	// cannot Drop. For example, Microsoft's answer for a mailbox whose
	// SMTP AUTH is disabled:
	//
	//	{Stage: StageAuth, Address: "alice@contoso.com", Code: 535, Enhanced: [3]int{5, 7, 139},
	//		Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}
	StageAuth Stage = "AUTH"
)

// Fault scripts a failure of the SMTP server: at its Stage, for a
// transaction involving its Address, the server answers with Code,
// Enhanced and Text instead of going on, or with Drop it closes the
// connection without answering. Add one with Server.AddFault.
type Fault struct {
	// Stage is where the fault fires: StageMail, StageRcpt or StageData.
	Stage Stage
	// Address selects the transactions the fault fires for (see Stage),
	// compared case-insensitively. Empty: every transaction.
	Address string
	// Code is the reply code, 400 to 599. Ignored with Drop.
	Code int
	// Enhanced is the enhanced status code, such as {5, 1, 1}. The zero
	// value is sent as X.0.0, X being the first digit of Code.
	Enhanced [3]int
	// Text is the reply text; each "\n" starts a new line of a multi-line
	// reply, every line carrying the codes, as the providers send them.
	Text string
	// Times is how many times the fault fires before it disappears.
	// 0: it fires until removed.
	Times int
	// Drop closes the connection instead of replying, as if it had died:
	// the client sees an EOF or a reset, never a reply. With TLS no
	// close_notify is sent.
	Drop bool
	// StoreBeforeDrop, with StageData and Drop, keeps the message (it
	// shows in Messages) before dropping the connection: delivered, but
	// the client never hears the 250, the ambiguous case a sender must
	// treat as "possibly delivered". Without it the message is discarded.
	StoreBeforeDrop bool
}

func (f Fault) validate() error {
	switch f.Stage {
	case StageMail, StageRcpt, StageData:
	case StageAuth:
		if f.Drop {
			return errors.New("Fault.Drop: not at StageAuth")
		}
	default:
		return fmt.Errorf("Fault.Stage: unknown stage %q", f.Stage)
	}
	if !f.Drop && (f.Code < 400 || f.Code > 599) {
		return fmt.Errorf("Fault.Code: %d is not a failure reply (400 to 599)", f.Code)
	}
	if f.Times < 0 {
		return fmt.Errorf("Fault.Times: negative (%d)", f.Times)
	}
	if f.StoreBeforeDrop && (!f.Drop || f.Stage != StageData) {
		return errors.New("Fault.StoreBeforeDrop: only with Drop at StageData")
	}
	return nil
}

// reply is the fault's SMTP reply, which go-smtp writes as is.
func (f *Fault) reply() *smtp.SMTPError {
	ec := smtp.EnhancedCode(f.Enhanced)
	if ec == smtp.EnhancedCodeNotSet {
		ec = smtp.EnhancedCode{f.Code / 100, 0, 0}
	}
	return reply(f.Code, ec, strings.Split(f.Text, "\n")...)
}

// faultEntry is an added Fault and what is left of it.
type faultEntry struct {
	f    Fault
	left int // remaining firings when f.Times > 0
}

// faults holds the scripted SMTP failures, in the order they were added.
// Guarded by Server.mu.
type faults struct {
	smtp []*faultEntry
	// rcptReply remembers the faults SetRcptReply added, by normalized
	// address, so that it can replace them.
	rcptReply map[string]*faultEntry
}

// AddFault makes the SMTP server fail as f says, for every session,
// including those already open. Faults are tried in the order they were
// added and the first one that matches fires; a fault with Times stops
// matching once it has fired that many times (the count is shared by all
// sessions). The returned function removes the fault; calling it more
// than once, or after the fault ran out, does nothing.
//
// Typical faults:
//
//	{Stage: StageRcpt, Address: "bob@example.net", Code: 450, Enhanced: [3]int{4, 2, 1}, Text: "The user you are trying to contact is receiving mail too quickly.", Times: 2}
//	{Stage: StageRcpt, Address: "nobody@example.net", Code: 550, Enhanced: [3]int{5, 1, 1}, Text: "The email account that you tried to reach does not exist."}
//	{Stage: StageData, Code: 552, Enhanced: [3]int{5, 3, 4}, Text: "Message size exceeds fixed maximum message size"}
//	{Stage: StageData, Code: 550, Enhanced: [3]int{5, 4, 5}, Text: "Daily user sending limit exceeded."}
//	{Stage: StageMail, Code: 421, Enhanced: [3]int{4, 7, 0}, Text: "Try again later, closing connection.", Times: 1}
//	{Stage: StageData, Drop: true, StoreBeforeDrop: true, Times: 1}
//
// AddFault panics if f is invalid: an unknown Stage, a Code outside 400
// to 599 without Drop, a negative Times, or StoreBeforeDrop other than with
// Drop at StageData.
func (s *Server) AddFault(f Fault) (remove func()) {
	if err := f.validate(); err != nil {
		panic("smtpoauthtest: AddFault: " + err.Error())
	}
	f.Address = normalizeAddress(f.Address)
	e := &faultEntry{f: f, left: f.Times}
	s.mu.Lock()
	s.faults.smtp = append(s.faults.smtp, e)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.removeFaultLocked(e)
		s.mu.Unlock()
	}
}

// ClearFaults removes every SMTP fault, including those SetRcptReply
// scripted. Token endpoint faults (AddTokenFault) stay.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.smtp = nil
	s.faults.rcptReply = nil
}

func (s *Server) removeFaultLocked(e *faultEntry) {
	s.faults.smtp = slices.DeleteFunc(s.faults.smtp, func(x *faultEntry) bool { return x == e })
}

// SetRcptReply makes the server answer RCPT TO:<address> (compared
// case-insensitively) with the given reply instead of accepting it, for
// example SetRcptReply("nobody@example.com", 550, [3]int{5, 1, 1},
// "The email account that you tried to reach does not exist."). Other
// recipients of the same message are still accepted. A text with "\n"
// gives a multi-line reply. A zero enhanced code is sent as X.0.0. Code 0
// removes the address's scripted reply.
//
// It is a shorthand for AddFault with StageRcpt that replaces the reply
// an earlier SetRcptReply scripted for the same address.
func (s *Server) SetRcptReply(address string, code int, enhanced [3]int, text string) {
	f := Fault{Stage: StageRcpt, Address: normalizeAddress(address), Code: code, Enhanced: enhanced, Text: text}
	if code != 0 {
		if err := f.validate(); err != nil {
			panic("smtpoauthtest: SetRcptReply: " + err.Error())
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.faults.rcptReply[f.Address]; ok {
		s.removeFaultLocked(old)
		delete(s.faults.rcptReply, f.Address)
	}
	if code == 0 {
		return
	}
	e := &faultEntry{f: f}
	s.faults.smtp = append(s.faults.smtp, e)
	if s.faults.rcptReply == nil {
		s.faults.rcptReply = make(map[string]*faultEntry)
	}
	s.faults.rcptReply[f.Address] = e
}

// takeFault returns the first fault matching stage st and one of the
// addresses, counting it as fired, or nil.
func (s *Server) takeFault(st Stage, addresses ...string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.faults.smtp {
		if e.f.Stage != st {
			continue
		}
		if e.f.Address != "" && !slices.ContainsFunc(addresses, func(a string) bool { return normalizeAddress(a) == e.f.Address }) {
			continue
		}
		if e.f.Times > 0 {
			e.left--
			if e.left == 0 {
				s.removeFaultLocked(e)
			}
		}
		f := e.f
		return &f
	}
	return nil
}
