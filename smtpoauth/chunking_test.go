package smtpoauth_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth"
)

// One-write transcripts (PIPELINING with CHUNKING, RFC 3030). As in the
// pipelined ones, the scripts read every command, and here the chunk too,
// before answering any: a client waiting for a reply would stall.

// scriptHelloChunking is scriptHelloPipelining from a server offering
// CHUNKING too, as Gmail and Microsoft 365 do.
var scriptHelloChunking = strings.Replace(scriptHelloPipelining, "S: 250-PIPELINING\n", "S: 250-PIPELINING\nS: 250-CHUNKING\n", 1)

// chunkedMessage has a line starting with "." that BDAT, unlike DATA,
// sends as it is.
var chunkedMessage = &smtpoauth.Message{
	From: "alice@example.com",
	To:   []string{"bob@example.com", "nobody@example.com"},
	Data: []byte("Subject: hi\r\n\r\n.not-stuffed\r\n"),
}

// chunkedBurst is what the server reads of chunkedMessage: the commands
// and the chunk, in one write.
const chunkedBurst = `
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=29
C: RCPT TO:<bob@example.com>
C: RCPT TO:<nobody@example.com>
C: BDAT 29 LAST
C: Subject: hi
C:
C: .not-stuffed
`

// testMessageBurst is what the server reads of testMessage.
const testMessageBurst = `
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=23
C: RCPT TO:<bob@example.com>
C: BDAT 23 LAST
C: Subject: hi
C:
C: Hello.
`

func TestTranscriptChunkedOneRecipientRefused(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHelloChunking+chunkedBurst+`
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n550-5.1.1 No such user\r\n550 5.1.1 Try again\r\n250 2.0.0 OK queued as 12345
`+testMessageBurst+`
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK queued as 12346
C: QUIT
S: 221 2.0.0 closing connection
`)
	var trace strings.Builder
	s := pipelinedSender(t, srv, &trace)
	res, err := s.Send(t.Context(), chunkedMessage)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if len(res.Recipients) != 2 || !res.Recipients[0].Accepted || res.Recipients[1].Accepted ||
		res.Recipients[1].Reply.Code != 550 || res.Recipients[1].Reply.Message != "No such user\nTry again" {
		t.Errorf("Recipients = %+v", res.Recipients)
	}
	if res.Reply == nil || smtpoauth.FormatReply(res.Reply) != "250 2.0.0 OK queued as 12345" {
		t.Errorf("Reply = %+v", res.Reply)
	}
	// The connection is reused, with no RSET: the transaction ended
	// with a 250 to BDAT LAST.
	if _, err := s.Send(t.Context(), testMessage); err != nil {
		t.Fatalf("second Send: %v", err)
	}
	s.Close()
	srv.wait(t, 1)
	want := "MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=29\r\n250 2.1.0 OK\r\n" +
		"RCPT TO:<bob@example.com>\r\n250 2.1.5 OK\r\n" +
		"RCPT TO:<nobody@example.com>\r\n550-5.1.1 No such user\r\n550 5.1.1 Try again\r\n" +
		"BDAT 29 LAST\r\n[29 bytes of message content not shown]\r\n" +
		"250 2.0.0 OK queued as 12345\r\nMAIL FROM"
	if got := trace.String(); !strings.Contains(got, want) || strings.Contains(got, "stuffed") || strings.Contains(got, "Hello") {
		t.Errorf("trace =\n%s\nwant it to contain\n%s\nand no content", got, want)
	}
}

func TestTranscriptChunkedNeedsCRLFLines(t *testing.T) {
	t.Parallel()
	// A message with a bare LF goes with DATA, which ends its lines.
	srv := startScriptServer(t, scriptHelloChunking+`
C: MAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=19
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
	s := pipelinedSender(t, srv, new(strings.Builder))
	if _, err := s.Send(t.Context(), &smtpoauth.Message{From: "alice@example.com", To: []string{"bob@example.com"},
		Data: []byte("Subject: hi\n\nHello.")}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	s.Close()
	srv.wait(t, 1)
}

func TestTranscriptChunkedRefusals(t *testing.T) {
	t.Parallel()
	const next = `
C: RSET
S: 250 2.0.0 OK
` + testMessageBurst + `
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK queued
C: QUIT
S: 221 2.0.0 closing connection
`
	for _, tc := range []struct {
		name    string
		replies string
		stage   smtpoauth.Stage
		cause   string
		class   smtpoauth.Class
		result  bool // a Result comes with the error: every RCPT was answered
	}{
		// The server refuses the RCPTs and BDAT that follow a refused
		// MAIL, and reads the chunk all the same.
		{"Mail", `550 5.7.1 Sender refused\r\n503 5.5.1 Need MAIL first\r\n503 5.5.1 Need MAIL first\r\n503 5.5.1 Need MAIL first`,
			smtpoauth.StageMail, "550 5.7.1 Sender refused", smtpoauth.ClassPermanentMessage, false},
		{"EveryRecipient", `250 2.1.0 OK\r\n550 5.1.1 No such user\r\n550 5.7.1 Relaying denied\r\n554 5.5.1 No valid recipients`,
			smtpoauth.StageRcpt, "550 5.1.1 No such user", smtpoauth.ClassPermanentRecipient, true},
		{"Message", `250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 No such user\r\n552 5.3.4 Message size exceeds fixed limit`,
			smtpoauth.StageDataEnd, "552 5.3.4 Message size exceeds fixed limit", smtpoauth.ClassPermanentMessage, true},
		{"MessageForNow", `250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n451 4.3.0 Try again later`,
			smtpoauth.StageDataEnd, "451 4.3.0 Try again later", smtpoauth.ClassTransient, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t, scriptHelloChunking+chunkedBurst+"S: "+tc.replies+next)
			s := pipelinedSender(t, srv, new(strings.Builder))
			res, err := s.Send(t.Context(), chunkedMessage)
			requireSendError(t, err, tc.stage)
			var reply *smtp.SMTPError
			if !errors.As(err, &reply) || smtpoauth.FormatReply(reply) != tc.cause {
				t.Errorf("cause = %v, want %s", reply, tc.cause)
			}
			if c := smtpoauth.Classify(err); c.Class != tc.class {
				t.Errorf("Classify = %+v, want %v", c, tc.class)
			}
			if (res != nil) != tc.result {
				t.Errorf("Result = %+v, want one: %v", res, tc.result)
			}
			// The connection is kept, and reset before the next message.
			if _, err := s.Send(t.Context(), testMessage); err != nil {
				t.Fatalf("second Send: %v", err)
			}
			s.Close()
			srv.wait(t, 1)
		})
	}
}

func TestTranscriptChunkedConnectionLost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		replies string // before the connection is lost
		stage   smtpoauth.Stage
		class   smtpoauth.Class
	}{
		// The server may have taken the whole transaction and lost only
		// its replies: on a reused connection too, the message is not
		// sent again on a new one.
		{"BeforeAnyReply", "", smtpoauth.StageDataEnd, smtpoauth.ClassAmbiguous},
		{"BeforeARecipientsReply", `S: 250 2.1.0 OK\r\n550 5.1.1 No such user`, smtpoauth.StageDataEnd, smtpoauth.ClassAmbiguous},
		{"BeforeBDATsReply", `S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 No such user`, smtpoauth.StageDataEnd, smtpoauth.ClassAmbiguous},
		// Nothing can have been delivered.
		{"AfterMailWasRefused", `S: 451 4.3.0 Try again later`, smtpoauth.StageMail, smtpoauth.ClassTransient},
		{"AfterEveryRecipientWasRefused", `S: 250 2.1.0 OK\r\n550 5.1.1 No such user\r\n550 5.1.1 No such user`, smtpoauth.StageRcpt, smtpoauth.ClassPermanentRecipient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t, scriptHelloChunking+testMessageBurst+"S: 250 2.1.0 OK\\r\\n250 2.1.5 OK\\r\\n250 2.0.0 OK queued\n"+chunkedBurst+tc.replies+"\nCLOSE\n")
			s := pipelinedSender(t, srv, new(strings.Builder))
			defer s.Close()
			if _, err := s.Send(t.Context(), testMessage); err != nil {
				t.Fatalf("first Send: %v", err)
			}
			_, err := s.Send(t.Context(), chunkedMessage)
			requireSendError(t, err, tc.stage)
			if c := smtpoauth.Classify(err); c.Class != tc.class {
				t.Errorf("Classify(%v) = %+v, want %v", err, c, tc.class)
			}
			// One script: no second connection was opened.
			srv.wait(t, 1)
			if n := smtpoauth.IdleConns(s); n != 0 {
				t.Errorf("%d idle connections, want 0: the lost one is not pooled", n)
			}
		})
	}
}

func TestTranscriptChunkedIdleConnectionClosedByTheServer(t *testing.T) {
	t.Parallel()
	// The server closes the idle connection with a 421 after the first
	// message. The client sees it before sending the next one, which goes
	// in one write on a new connection.
	srv := startScriptServer(t, scriptHelloChunking+testMessageBurst+`
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK queued\r\n421 4.4.2 Idle timeout, closing connection
CLOSE
`, scriptHelloChunking+chunkedBurst+`
S: 250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK queued
C: QUIT
S: 221 2.0.0 closing connection
`)
	s := pipelinedSender(t, srv, new(strings.Builder))
	if _, err := s.Send(t.Context(), testMessage); err != nil {
		t.Fatalf("first Send: %v", err)
	}
	if _, err := s.Send(t.Context(), chunkedMessage); err != nil {
		t.Fatalf("second Send: %v", err)
	}
	s.Close()
	srv.wait(t, 2)
}
