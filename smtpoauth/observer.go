package smtpoauth

import "time"

// Observer hears about a Sender's work on the wire, for metrics (see
// Config.Observer). Its methods are called by the goroutine doing the work,
// during Send: they must be quick, must not block, and must be safe for
// concurrent use. They are given no address, token or message content.
type Observer interface {
	// ObserveStage reports that one step of stage took d, whether it
	// succeeded or failed: StageConnect the TCP connection and the
	// server's greeting, StageTLS the STARTTLS command and the handshake
	// (the handshake alone with TLSImplicit), StageToken the call to the
	// TokenSource, StageRcpt one RCPT command (one per recipient),
	// StageData the DATA command and the transfer of the message,
	// StageDataEnd the wait for the reply to the final ".", and every
	// other stage its one command (StageHello twice with STARTTLS, before
	// and after it).
	ObserveStage(stage Stage, d time.Duration)
	// Login reports a SASL exchange started on a new connection: an
	// access token sent to the server, whether it was accepted or not.
	Login()
	// ConnectionReused reports that a Send took an idle authenticated
	// connection from the pool instead of logging in on a new one.
	ConnectionReused()
}

// observe reports to Config.Observer, if any, that a step of stage that
// started at start has ended.
func (s *Sender) observe(stage Stage, start time.Time) {
	if o := s.cfg.Observer; o != nil {
		o.ObserveStage(stage, time.Since(start))
	}
}
