package smtpoauth_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth"
)

// Pipelined transcripts (RFC 2920). The scripts read MAIL, every RCPT and
// DATA before answering any of them, so a client that waited for a reply
// before the next command would stall: each passing script shows the
// commands arrived as one burst.

// scriptHelloPipelining is scriptHello from a server offering PIPELINING
// and 8BITMIME, with the good token accepted.
const scriptHelloPipelining = `
S: 220 smtp.example.com ESMTP ready
C: EHLO localhost
S: 250-smtp.example.com at your service
S: 250-SIZE 35882577
S: 250-8BITMIME
S: 250-PIPELINING
S: 250-AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER
S: 250 ENHANCEDSTATUSCODES
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
`

// pipelinedSender is scriptSender with a DebugWriter.
func pipelinedSender(t *testing.T, srv *scriptServer, trace *strings.Builder) *smtpoauth.Sender {
	t.Helper()
	s, err := smtpoauth.NewSender(smtpoauth.Config{
		Host:                  "127.0.0.1",
		Port:                  srv.port,
		TLS:                   smtpoauth.TLSNone,
		AllowInsecureLoopback: true,
		Username:              "alice@example.com",
		TokenSource:           staticToken("ya29.good-token"),
		DebugWriter:           trace,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var pipelinedMessage = &smtpoauth.Message{
	From: "alice@example.com",
	To:   []string{"bob@example.com", "nobody@example.com"},
	Data: []byte("Subject: hi\r\n\r\n.dot-stuffed\n"),
}

func TestTranscriptPipelinedOneRecipientRefused(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHelloPipelining+`
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=28
C: RCPT TO:<bob@example.com>
C: RCPT TO:<nobody@example.com>
C: DATA
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n550-5.1.1 No such user\r\n550 5.1.1 Try again
S: 354 Go ahead
C: Subject: hi
C:
C: ..dot-stuffed
C: .
S: 250 2.0.0 OK queued as 12345
C: QUIT
S: 221 2.0.0 closing connection
`)
	var trace strings.Builder
	s := pipelinedSender(t, srv, &trace)
	res, err := s.Send(t.Context(), pipelinedMessage)
	s.Close()
	srv.wait(t, 1)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if len(res.Recipients) != 2 || !res.Recipients[0].Accepted || res.Recipients[0].Reply.Code != 250 ||
		res.Recipients[1].Accepted || res.Recipients[1].Reply.Code != 550 ||
		res.Recipients[1].Reply.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) ||
		res.Recipients[1].Reply.Message != "No such user\nTry again" {
		t.Errorf("Recipients = %+v", res.Recipients)
	}
	if res.Reply == nil || smtpoauth.FormatReply(res.Reply) != "250 2.0.0 OK queued as 12345" {
		t.Errorf("Reply = %+v", res.Reply)
	}
	// The trace reads as a lock-step dialogue: each command before its
	// reply, the content counted.
	want := "MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=28\r\n250 2.1.0 OK\r\n" +
		"RCPT TO:<bob@example.com>\r\n250 2.1.5 OK\r\n" +
		"RCPT TO:<nobody@example.com>\r\n550-5.1.1 No such user\r\n550 5.1.1 Try again\r\n" +
		"DATA\r\n354 Go ahead\r\n[30 bytes of message content not shown]\r\n.\r\n" +
		"250 2.0.0 OK queued as 12345\r\nQUIT\r\n"
	if got := trace.String(); !strings.Contains(got, want) || strings.Contains(got, "dot-stuffed") {
		t.Errorf("trace =\n%s\nwant it to contain\n%s", got, want)
	}
}

func TestTranscriptPipelinedMailRefused(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHelloPipelining+`
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=23
C: RCPT TO:<bob@example.com>
C: DATA
S: 550 5.7.1 Sender refused\r\n503 5.5.1 Need MAIL first\r\n503 5.5.1 Need MAIL first
C: RSET
S: 250 2.0.0 OK
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=23
C: RCPT TO:<bob@example.com>
C: DATA
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 Go ahead
C: Subject: hi
C:
C: Hello.
C: .
S: 250 2.0.0 OK queued
C: QUIT
S: 221 2.0.0 closing connection
`)
	var trace strings.Builder
	s := pipelinedSender(t, srv, &trace)
	res, err := s.Send(t.Context(), testMessage)
	requireSendError(t, err, smtpoauth.StageMail)
	var reply *smtp.SMTPError
	if !errors.As(err, &reply) || reply.Code != 550 || reply.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Errorf("cause = %+v, want the MAIL reply", reply)
	}
	if res != nil {
		t.Errorf("Result = %+v, want nil", res)
	}
	// The connection is kept, and reset before the next message.
	if _, err := s.Send(t.Context(), testMessage); err != nil {
		t.Fatalf("second Send: %v", err)
	}
	s.Close()
	srv.wait(t, 1)
	if got, want := trace.String(), "DATA\r\n503 5.5.1 Need MAIL first\r\nRSET\r\n250 2.0.0 OK\r\n"; !strings.Contains(got, want) {
		t.Errorf("trace =\n%s\nwant it to contain\n%s", got, want)
	}
}

func TestTranscriptPipelinedAllRecipientsRefused(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHelloPipelining+`
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=28
C: RCPT TO:<bob@example.com>
C: RCPT TO:<nobody@example.com>
C: DATA
S: 250 2.1.0 OK\r\n550 5.1.1 No such user\r\n550 5.7.1 Relaying denied\r\n354 Go ahead
C: .
S: 554 5.5.1 No valid recipients
C: RSET
S: 250 2.0.0 OK
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=23
C: RCPT TO:<bob@example.com>
C: DATA
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 Go ahead
C: Subject: hi
C:
C: Hello.
C: .
S: 250 2.0.0 OK queued
C: QUIT
S: 221 2.0.0 closing connection
`)
	var trace strings.Builder
	s := pipelinedSender(t, srv, &trace)
	res, err := s.Send(t.Context(), pipelinedMessage)
	requireSendError(t, err, smtpoauth.StageRcpt)
	var reply *smtp.SMTPError
	if !errors.As(err, &reply) || reply.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Errorf("cause = %+v, want the first rejection", reply)
	}
	if res == nil || len(res.Rejected()) != 2 || res.Reply != nil {
		t.Fatalf("Result = %+v, want both recipients rejected and no DATA reply", res)
	}
	if _, err := s.Send(t.Context(), testMessage); err != nil {
		t.Fatalf("second Send: %v", err)
	}
	s.Close()
	srv.wait(t, 1)
	if got, want := trace.String(), "354 Go ahead\r\n[0 bytes of message content not shown]\r\n.\r\n554 5.5.1 No valid recipients\r\nRSET\r\n"; !strings.Contains(got, want) {
		t.Errorf("trace =\n%s\nwant it to contain\n%s", got, want)
	}
}

func TestTranscriptPipelinedDataRefused(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHelloPipelining+`
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=23
C: RCPT TO:<bob@example.com>
C: DATA
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n451 4.3.0 Try again later
C: QUIT
S: 221 2.0.0 closing connection
`)
	s := pipelinedSender(t, srv, new(strings.Builder))
	res, err := s.Send(t.Context(), testMessage)
	s.Close()
	srv.wait(t, 1)
	requireSendError(t, err, smtpoauth.StageData)
	var reply *smtp.SMTPError
	if !errors.As(err, &reply) || reply.Code != 451 {
		t.Errorf("cause = %+v, want the DATA reply", reply)
	}
	if res == nil || len(res.Accepted()) != 1 || res.Reply != nil {
		t.Errorf("Result = %+v", res)
	}
}

func TestTranscriptPipelinedConnectionLostAfterTheFinalDot(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHelloPipelining+`
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=23
C: RCPT TO:<bob@example.com>
C: DATA
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 Go ahead
C: Subject: hi
C:
C: Hello.
C: .
CLOSE
`)
	s := pipelinedSender(t, srv, new(strings.Builder))
	_, err := s.Send(t.Context(), testMessage)
	s.Close()
	srv.wait(t, 1)
	requireSendError(t, err, smtpoauth.StageDataEnd)
	if c := smtpoauth.Classify(err); c.Class != smtpoauth.ClassAmbiguous {
		t.Errorf("Classify = %+v, want ambiguous", c)
	}
}
