package smtpoauth_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
)

// Transcript tests, in the manner of net/smtp's: a scripted server on a
// loopback listener plays one side of the dialogue and checks every byte the
// Sender writes. Script lines are
//
//	S: text  the server sends text + CRLF (a literal \r\n in text splits it
//	         into lines sent in one write)
//	C: text  the client must send exactly text + CRLF
//	HANG     the server signals Script.hung and waits for the client to go
//	CLOSE    the server closes the connection at once
//
// After the last line the server expects the client to close the
// connection without sending anything more. A Sender keeps a connection
// that can carry another message: the tests Close it before waiting for
// the scripts, so that such a connection ends with QUIT.

// scriptServer serves one script per accepted connection, in order.
type scriptServer struct {
	addr string
	port int
	hung chan struct{} // receives when a script reaches HANG
	errs chan error    // one result per script
}

func startScriptServer(t *testing.T, scripts ...string) *scriptServer {
	t.Helper()
	return startScriptServerFunc(t, func(int) []string { return scripts })
}

// startScriptServerFunc is startScriptServer for scripts that depend on the
// listener's port.
func startScriptServerFunc(t *testing.T, scripts func(port int) []string) *scriptServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ss := scripts(port)
	srv := &scriptServer{
		addr: ln.Addr().String(),
		port: port,
		hung: make(chan struct{}, len(ss)),
		errs: make(chan error, len(ss)),
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for i, script := range ss {
			conn, err := ln.Accept()
			if err != nil {
				srv.errs <- fmt.Errorf("script %d: accept: %w", i, err)
				return
			}
			srv.errs <- srv.play(conn, script)
		}
	})
	return srv
}

// play runs script on conn. The deadline only keeps a broken test from
// hanging; a passing test never waits for it.
func (srv *scriptServer) play(conn net.Conn, script string) error {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	for n, line := range strings.Split(strings.TrimSpace(script), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		dir, text, _ := strings.Cut(line, ":")
		text = strings.TrimPrefix(text, " ")
		switch dir {
		case "S":
			if _, err := io.WriteString(conn, strings.ReplaceAll(text, `\r\n`, "\r\n")+"\r\n"); err != nil {
				return fmt.Errorf("line %d: %w", n+1, err)
			}
		case "C":
			got, err := br.ReadString('\n')
			if want := text + "\r\n"; got != want {
				return fmt.Errorf("line %d: client sent %q (%v), want %q", n+1, got, err, want)
			}
		case "HANG":
			srv.hung <- struct{}{}
			io.Copy(io.Discard, br)
			return nil
		case "CLOSE":
			return nil
		default:
			return fmt.Errorf("line %d: bad script line %q", n+1, line)
		}
	}
	if rest, err := io.ReadAll(br); len(rest) > 0 {
		return fmt.Errorf("client sent %q after the script (%v)", rest, err)
	}
	return nil
}

// wait returns the results of n scripts.
func (srv *scriptServer) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case err := <-srv.errs:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("script server did not finish")
		}
	}
}

// scriptSender is a Sender speaking plaintext to srv, as to a loopback test
// server.
func scriptSender(t *testing.T, srv *scriptServer, mech string, ts oauth2.TokenSource) *smtpoauth.Sender {
	t.Helper()
	s, err := smtpoauth.NewSender(smtpoauth.Config{
		Host:                  "127.0.0.1",
		Port:                  srv.port,
		TLS:                   smtpoauth.TLSNone,
		AllowInsecureLoopback: true,
		Username:              "alice@example.com",
		Mechanism:             mech,
		TokenSource:           ts,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func staticToken(tok string) oauth2.TokenSource {
	return oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok})
}

// invalidatingSource hands out its tokens in order and records Invalidate.
type invalidatingSource struct {
	mu          sync.Mutex
	tokens      []string
	next        int
	invalidated []string
}

func (s *invalidatingSource) Token() (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok := s.tokens[min(s.next, len(s.tokens)-1)]
	s.next++
	return &oauth2.Token{AccessToken: tok}, nil
}

func (s *invalidatingSource) Invalidate(tok *oauth2.Token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated = append(s.invalidated, tok.AccessToken)
}

var testMessage = &smtpoauth.Message{
	From: "alice@example.com",
	To:   []string{"bob@example.com"},
	Data: []byte("Subject: hi\r\n\r\nHello.\r\n"),
}

const (
	// base64 of "user=alice@example.com\x01auth=Bearer ya29.bad-token\x01\x01"
	irBadToken = "dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LmJhZC10b2tlbgEB"
	// base64 of "user=alice@example.com\x01auth=Bearer ya29.good-token\x01\x01"
	irGoodToken = "dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5Lmdvb2QtdG9rZW4BAQ=="
	// base64 of {"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}
	challenge400 = "eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ=="
	// base64 of {"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}
	challenge401 = "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ=="
)

const scriptHello = `
S: 220 smtp.example.com ESMTP ready
C: EHLO localhost
S: 250-smtp.example.com at your service
S: 250-SIZE 35882577
S: 250-AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER
S: 250 ENHANCEDSTATUSCODES
`

// scriptGoogleRejects is Gmail's answer to a stale token.
const scriptGoogleRejects = scriptHello + `
C: AUTH XOAUTH2 ` + irBadToken + `
S: 334 ` + challenge400 + `
C:
S: 535-5.7.8 Username and Password not accepted. For more information, go to
S: 535 5.7.8  https://support.google.com/mail/?p=BadCredentials
C: *
S: 502 5.5.1 Unrecognized command.
C: QUIT
S: 221 2.0.0 closing connection
`

// scriptAccepts authenticates the good token and takes testMessage.
const scriptAccepts = scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 OK
C: DATA
S: 354 Go ahead
C: Subject: hi
C:
C: Hello.
C: .
S: 250 2.0.0 OK 1700000000 queued
C: QUIT
S: 221 2.0.0 closing connection
`

func requireSendError(t *testing.T, err error, stage smtpoauth.Stage) *smtpoauth.SendError {
	t.Helper()
	var se *smtpoauth.SendError
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not a *SendError", err, err)
	}
	if se.Stage != stage {
		t.Fatalf("stage = %q, want %q (error: %v)", se.Stage, stage, err)
	}
	return se
}

func requireAuthError(t *testing.T, err error, status string, code int, enhanced smtp.EnhancedCode) *smtpoauth.AuthError {
	t.Helper()
	requireSendError(t, err, smtpoauth.StageAuth)
	var ae *smtpoauth.AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an *AuthError", err)
	}
	if ae.Status != status {
		t.Errorf("Status = %q, want %q", ae.Status, status)
	}
	if ae.Reply == nil || ae.Reply.Code != code || ae.Reply.EnhancedCode != enhanced {
		t.Errorf("Reply = %+v, want %d %v", ae.Reply, code, enhanced)
	}
	return ae
}

func TestTranscriptXOAUTH2GoogleRejection(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptGoogleRejects)
	s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.bad-token"))

	res, err := s.Send(t.Context(), testMessage)
	s.Close()
	srv.wait(t, 1)
	if res != nil {
		t.Errorf("Result = %+v, want nil", res)
	}
	ae := requireAuthError(t, err, "400", 535, smtp.EnhancedCode{5, 7, 8})
	if ae.Mechanism != smtpoauth.MechXOAUTH2 || ae.Schemes != "Bearer" || ae.Scope != "https://mail.google.com/" {
		t.Errorf("AuthError = %+v", ae)
	}
	const wantMsg = "smtp auth: XOAUTH2 authentication rejected: 535 5.7.8 Username and Password not accepted. " +
		"For more information, go to https://support.google.com/mail/?p=BadCredentials (challenge status 400)"
	if err.Error() != wantMsg {
		t.Errorf("error = %q\nwant    %q", err, wantMsg)
	}
	var reply *smtp.SMTPError
	if !errors.As(err, &reply) || reply.Code != 535 {
		t.Errorf("errors.As(*smtp.SMTPError) = %v", reply)
	}
}

func TestTranscriptXOAUTH2Status401(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHello+`
C: AUTH XOAUTH2 `+irBadToken+`
S: 334 `+challenge401+`
C:
S: 535 5.7.8 Username and Password not accepted.
C: *
S: 502 5.5.1 Unrecognized command.
C: QUIT
S: 221 2.0.0 closing connection
`)
	s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.bad-token"))
	_, err := s.Send(t.Context(), testMessage)
	s.Close()
	srv.wait(t, 1)
	requireAuthError(t, err, "401", 535, smtp.EnhancedCode{5, 7, 8})
}

func TestTranscriptXOAUTH2MicrosoftRejection(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHello+`
C: AUTH XOAUTH2 `+irBadToken+`
S: 535 5.7.3 Authentication unsuccessful [SN4PR0401CA0012.namprd04.prod.outlook.com]
C: *
S: 500 5.3.3 Unrecognized command
C: QUIT
S: 221 2.0.0 Service closing transmission channel
`)
	s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.bad-token"))
	_, err := s.Send(t.Context(), testMessage)
	s.Close()
	srv.wait(t, 1)
	ae := requireAuthError(t, err, "", 535, smtp.EnhancedCode{5, 7, 3})
	if ae.Reply.Message != "Authentication unsuccessful [SN4PR0401CA0012.namprd04.prod.outlook.com]" {
		t.Errorf("reply text = %q", ae.Reply.Message)
	}
}

func TestTranscriptOAuthBearerRejection(t *testing.T) {
	t.Parallel()
	// The initial response names the port, known once the server listens.
	srv := startScriptServerFunc(t, func(port int) []string {
		ir := base64.StdEncoding.EncodeToString([]byte(
			"n,a=alice@example.com,\x01host=127.0.0.1\x01port=" + strconv.Itoa(port) + "\x01auth=Bearer ya29.bad-token\x01\x01"))
		return []string{scriptHello + `
C: AUTH OAUTHBEARER ` + ir + `
S: 334 ` + challenge400 + `
C: AQ==
S: 535-5.7.8 Username and Password not accepted. For more information, go to
S: 535 5.7.8  https://support.google.com/mail/?p=BadCredentials
C: *
S: 502 5.5.1 Unrecognized command.
C: QUIT
S: 221 2.0.0 closing connection
`}
	})
	s := scriptSender(t, srv, smtpoauth.MechOAuthBearer, staticToken("ya29.bad-token"))
	_, err := s.Send(t.Context(), testMessage)
	s.Close()
	srv.wait(t, 1)
	ae := requireAuthError(t, err, "400", 535, smtp.EnhancedCode{5, 7, 8})
	if ae.Mechanism != smtpoauth.MechOAuthBearer {
		t.Errorf("Mechanism = %q", ae.Mechanism)
	}
}

func TestTranscriptRetriesOnceWithFreshToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		rejected string // the first session's script
	}{
		{name: "GoogleErrorChallenge", rejected: scriptGoogleRejects},
		{
			name: "MicrosoftTokenExpiresSoon",
			rejected: scriptHello + `
C: AUTH XOAUTH2 ` + irBadToken + `
S: 501 5.5.127 The access token will expire soon. Please refresh it.
C: *
S: 500 5.3.3 Unrecognized command
C: QUIT
S: 221 2.0.0 Service closing transmission channel
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t, tt.rejected, scriptAccepts)
			ts := &invalidatingSource{tokens: []string{"ya29.bad-token", "ya29.good-token"}}
			s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, ts)

			res, err := s.Send(t.Context(), testMessage)
			s.Close()
			srv.wait(t, 2)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if got := ts.invalidated; len(got) != 1 || got[0] != "ya29.bad-token" {
				t.Errorf("invalidated %q, want the rejected token once", got)
			}
			if res.Reply == nil || res.Reply.Code != 250 || res.Reply.EnhancedCode != (smtp.EnhancedCode{2, 0, 0}) ||
				res.Reply.Message != "OK 1700000000 queued" {
				t.Errorf("Reply = %+v", res.Reply)
			}
		})
	}
}

func TestTranscriptRetriesOnlyOnce(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptGoogleRejects, scriptGoogleRejects)
	ts := &invalidatingSource{tokens: []string{"ya29.bad-token"}}
	s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, ts)

	_, err := s.Send(t.Context(), testMessage)
	s.Close()
	srv.wait(t, 2)
	requireAuthError(t, err, "400", 535, smtp.EnhancedCode{5, 7, 8})
	if len(ts.invalidated) != 1 {
		t.Errorf("invalidated %d times, want once (before the one retry)", len(ts.invalidated))
	}
}

func TestTranscriptDoesNotRetryWhenAFreshTokenCannotHelp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		reply    string
		code     int
		enhanced smtp.EnhancedCode
	}{
		{
			// Microsoft: only an administrator can fix it.
			name:     "SMTPAuthDisabledForTheMailbox",
			reply:    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
			code:     535,
			enhanced: smtp.EnhancedCode{5, 7, 139},
		},
		{
			name:     "TooManyLoginAttempts",
			reply:    "454 4.7.0 Too many login attempts, please try again later.",
			code:     454,
			enhanced: smtp.EnhancedCode{4, 7, 0},
		},
		{
			name:     "MechanismRefused",
			reply:    "504 5.7.4 Unrecognized authentication type",
			code:     504,
			enhanced: smtp.EnhancedCode{5, 7, 4},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t, scriptHello+`
C: AUTH XOAUTH2 `+irBadToken+`
S: `+tt.reply+`
C: *
S: 500 5.3.3 Unrecognized command
C: QUIT
S: 221 2.0.0 Service closing transmission channel
`)
			ts := &invalidatingSource{tokens: []string{"ya29.bad-token"}}
			s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, ts)
			_, err := s.Send(t.Context(), testMessage)
			s.Close()
			srv.wait(t, 1)
			requireAuthError(t, err, "", tt.code, tt.enhanced)
			if len(ts.invalidated) != 0 {
				t.Errorf("invalidated %q", ts.invalidated)
			}
		})
	}
}

func TestTranscriptRecordsEachRecipient(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHello+`
C: AUTH XOAUTH2 `+irGoodToken+`
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=28
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 OK
C: RCPT TO:<nobody@example.com>
S: 550-5.1.1 The email account that you tried to reach does not exist.
S: 550 5.1.1 Please try double-checking the recipient's email address.
C: RCPT TO:<carol@example.com>
S: 452 4.5.3 Too many recipients
C: RCPT TO:<dave@example.com>
S: 250 2.1.5 OK
C: DATA
S: 354 Go ahead
C: Subject: hi
C:
C: ..dot-stuffed
C: .
S: 250 2.0.0 OK queued as 12345
C: QUIT
S: 221 2.0.0 closing connection
`)
	s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.good-token"))
	m := &smtpoauth.Message{
		From: "alice@example.com",
		To:   []string{"bob@example.com", "nobody@example.com", "carol@example.com", "dave@example.com"},
		// A bare LF is sent as CRLF, a leading dot is doubled.
		Data: []byte("Subject: hi\r\n\r\n.dot-stuffed\n"),
	}
	res, err := s.Send(t.Context(), m)
	s.Close()
	srv.wait(t, 1)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	type rcpt struct {
		addr     string
		accepted bool
		code     int
		enhanced smtp.EnhancedCode
	}
	want := []rcpt{
		{"bob@example.com", true, 250, smtp.EnhancedCode{}},
		{"nobody@example.com", false, 550, smtp.EnhancedCode{5, 1, 1}},
		{"carol@example.com", false, 452, smtp.EnhancedCode{4, 5, 3}},
		{"dave@example.com", true, 250, smtp.EnhancedCode{}},
	}
	if len(res.Recipients) != len(want) {
		t.Fatalf("Recipients = %+v", res.Recipients)
	}
	for i, w := range want {
		got := res.Recipients[i]
		if got.Address != w.addr || got.Accepted != w.accepted || got.Reply == nil ||
			got.Reply.Code != w.code || got.Reply.EnhancedCode != w.enhanced {
			t.Errorf("Recipients[%d] = %+v %+v, want %+v", i, got, got.Reply, w)
		}
	}
	if r := res.Recipients[1].Reply.Message; r != "The email account that you tried to reach does not exist.\nPlease try double-checking the recipient's email address." {
		t.Errorf("multi-line rejection text = %q", r)
	}
	if got := res.Accepted(); len(got) != 2 {
		t.Errorf("Accepted = %q", got)
	}
	if res.Reply == nil || smtpoauth.FormatReply(res.Reply) != "250 2.0.0 OK queued as 12345" {
		t.Errorf("Reply = %+v", res.Reply)
	}
}

func TestTranscriptAllRecipientsRejected(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHello+`
C: AUTH XOAUTH2 `+irGoodToken+`
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<nobody@example.com>
S: 550 5.1.1 No such user
C: RCPT TO:<blocked@example.com>
S: 550 5.7.1 Relaying denied
C: QUIT
S: 221 2.0.0 closing connection
`)
	s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.good-token"))
	m := *testMessage
	m.To = []string{"nobody@example.com", "blocked@example.com"}
	res, err := s.Send(t.Context(), &m)
	s.Close()
	srv.wait(t, 1)
	requireSendError(t, err, smtpoauth.StageRcpt)
	var reply *smtp.SMTPError
	if !errors.As(err, &reply) || reply.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Errorf("cause = %+v, want the first rejection", reply)
	}
	if res == nil || len(res.Rejected()) != 2 || res.Reply != nil {
		t.Fatalf("Result = %+v, want both recipients rejected and no DATA reply", res)
	}
}

func TestTranscriptProtocolViolations(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script string
		msg    *smtpoauth.Message // default testMessage
		stage  smtpoauth.Stage
		check  func(t *testing.T, err error)
	}{
		{
			name: "SecondChallengeAbortsWithoutSuccess",
			script: scriptHello + `
C: AUTH XOAUTH2 ` + irBadToken + `
S: 334 ` + challenge400 + `
C:
S: 334 ` + challenge401 + `
C: *
S: 501 5.0.0 Negotiation cancelled
`,
			stage: smtpoauth.StageAuth,
			check: func(t *testing.T, err error) {
				var ae *smtpoauth.AuthError
				if errors.As(err, &ae) {
					t.Errorf("got an *AuthError %v for a protocol violation", ae)
				}
				if !strings.Contains(err.Error(), "second challenge") {
					t.Errorf("error = %v", err)
				}
			},
		},
		{
			name: "ChallengeThatIsNotBase64",
			script: scriptHello + `
C: AUTH XOAUTH2 ` + irBadToken + `
S: 334 {"status":"400"}
C: *
S: 501 5.0.0 Negotiation cancelled
`,
			stage: smtpoauth.StageAuth,
			check: func(t *testing.T, err error) {
				var b64 base64.CorruptInputError
				if !errors.As(err, &b64) {
					t.Errorf("error = %v, want a base64 error", err)
				}
			},
		},
		{
			name: "MechanismNotOffered",
			script: `
S: 220 smtp.example.com ESMTP ready
C: EHLO localhost
S: 250-smtp.example.com
S: 250 AUTH LOGIN PLAIN
`,
			stage: smtpoauth.StageAuth,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, smtpoauth.ErrMechanismNotOffered) {
					t.Errorf("error = %v, want ErrMechanismNotOffered", err)
				}
			},
		},
		{
			name: "GreetingRefused",
			script: `
S: 554 5.7.1 Go away
`,
			stage: smtpoauth.StageConnect,
			check: func(t *testing.T, err error) {
				var reply *smtp.SMTPError
				if !errors.As(err, &reply) || reply.Code != 554 {
					t.Errorf("error = %v, want the 554 reply", err)
				}
			},
		},
		{
			name: "MalformedGreeting",
			script: `
S: hello there
`,
			stage: smtpoauth.StageConnect,
			check: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "malformed reply") {
					t.Errorf("error = %v", err)
				}
			},
		},
		{
			name: "ConnectionLostAfterTheFinalDot",
			script: scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 OK
C: DATA
S: 354 Go ahead
C: Subject: hi
C:
C: Hello.
C: .
CLOSE
`,
			stage: smtpoauth.StageDataEnd,
			check: func(t *testing.T, err error) {
				var reply *smtp.SMTPError
				if errors.As(err, &reply) {
					t.Errorf("error = %v, want a network error", err)
				}
			},
		},
		{
			name: "MessageRefusedAfterTheFinalDot",
			script: scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 OK
C: DATA
S: 354 Go ahead
C: Subject: hi
C:
C: Hello.
C: .
S: 554 5.6.0 Message rejected
C: QUIT
S: 221 2.0.0 closing connection
`,
			stage: smtpoauth.StageDataEnd,
			check: func(t *testing.T, err error) {
				var reply *smtp.SMTPError
				if !errors.As(err, &reply) || reply.Code != 554 {
					t.Errorf("error = %v, want the 554 reply", err)
				}
			},
		},
		{
			name: "DataCommandRefused",
			script: scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 OK
C: DATA
S: 451 4.3.0 Mail server temporarily rejected message
C: QUIT
S: 221 2.0.0 closing connection
`,
			stage: smtpoauth.StageData,
			check: func(t *testing.T, err error) {
				var reply *smtp.SMTPError
				if !errors.As(err, &reply) || reply.Code != 451 {
					t.Errorf("error = %v, want the 451 reply", err)
				}
			},
		},
		{
			name: "NonASCIIAddressWithoutSMTPUTF8",
			script: scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
C: QUIT
S: 221 2.0.0 closing connection
`,
			msg:   &smtpoauth.Message{From: "alice@example.com", To: []string{"jörg@example.de"}, Data: []byte("x\r\n")},
			stage: smtpoauth.StageMail,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, smtpoauth.ErrInvalidMessage) {
					t.Errorf("error = %v, want ErrInvalidMessage", err)
				}
			},
		},
		{
			name: "SenderRefused",
			script: scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=23
S: 550 5.7.60 SMTP; Client does not have permissions to send as this sender
C: QUIT
S: 221 2.0.0 closing connection
`,
			stage: smtpoauth.StageMail,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t, tt.script)
			tok := "ya29.good-token"
			if strings.Contains(tt.script, irBadToken) {
				tok = "ya29.bad-token"
			}
			s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken(tok))
			m := testMessage
			if tt.msg != nil {
				m = tt.msg
			}
			res, err := s.Send(t.Context(), m)
			s.Close()
			srv.wait(t, 1)
			requireSendError(t, err, tt.stage)
			if tt.check != nil {
				tt.check(t, err)
			}
			if tt.stage == smtpoauth.StageDataEnd && (res == nil || len(res.Accepted()) != 1) {
				t.Errorf("Result = %+v, want the recipients' replies", res)
			}
			if strings.Contains(err.Error(), tok) {
				t.Errorf("error %q contains the token", err)
			}
		})
	}
}

func TestTranscriptSTARTTLS(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script string
		check  func(t *testing.T, err error)
	}{
		{
			name: "RefusedWhenNotOffered",
			script: `
S: 220 smtp.example.com ESMTP ready
C: EHLO client.example.com
S: 250-smtp.example.com
S: 250 AUTH XOAUTH2
`,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, smtpoauth.ErrInsecureTransport) {
					t.Errorf("error = %v, want ErrInsecureTransport", err)
				}
			},
		},
		{
			name: "RefusedWhenTheServerDeclines",
			script: `
S: 220 smtp.example.com ESMTP ready
C: EHLO client.example.com
S: 250-smtp.example.com
S: 250 STARTTLS
C: STARTTLS
S: 454 4.7.0 TLS not available due to temporary reason
`,
			check: func(t *testing.T, err error) {
				var reply *smtp.SMTPError
				if !errors.As(err, &reply) || reply.Code != 454 {
					t.Errorf("error = %v, want the 454 reply", err)
				}
			},
		},
		{
			// Plaintext pipelined behind the 220 must not be taken for
			// something said under TLS.
			name: "RefusesDataInjectedAfterTheReply",
			script: `
S: 220 smtp.example.com ESMTP ready
C: EHLO client.example.com
S: 250-smtp.example.com
S: 250 STARTTLS
C: STARTTLS
S: 220 2.0.0 Ready to start TLS\r\n250-injected\r\n250 AUTH PLAIN
`,
			check: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "data after its STARTTLS reply") {
					t.Errorf("error = %v", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t, tt.script)
			s, err := smtpoauth.NewSender(smtpoauth.Config{
				Host:        "127.0.0.1",
				Port:        srv.port,
				TLS:         smtpoauth.TLSStartTLS,
				LocalName:   "client.example.com",
				Username:    "alice@example.com",
				TokenSource: staticToken("ya29.good-token"),
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Send(t.Context(), testMessage)
			s.Close()
			srv.wait(t, 1)
			requireSendError(t, err, smtpoauth.StageTLS)
			tt.check(t, err)
		})
	}
}

func TestTranscriptContext(t *testing.T) {
	t.Parallel()
	hangAtAuth := scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
HANG
`
	hangAfterDot := scriptHello + `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 OK
C: DATA
S: 354 Go ahead
C: Subject: hi
C:
C: Hello.
C: .
HANG
`
	t.Run("CancelDuringAuth", func(t *testing.T) {
		t.Parallel()
		srv := startScriptServer(t, hangAtAuth)
		s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.good-token"))
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-srv.hung
			cancel()
		}()
		_, err := s.Send(ctx, testMessage)
		s.Close()
		srv.wait(t, 1)
		requireSendError(t, err, smtpoauth.StageAuth)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want errors.Is context.Canceled", err)
		}
	})

	t.Run("DeadlineAfterTheFinalDotIsAmbiguous", func(t *testing.T) {
		t.Parallel()
		srv := startScriptServer(t, hangAfterDot)
		s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.good-token"))
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		res, err := s.Send(ctx, testMessage)
		s.Close()
		srv.wait(t, 1)
		requireSendError(t, err, smtpoauth.StageDataEnd)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error = %v, want errors.Is context.DeadlineExceeded", err)
		}
		if res == nil || len(res.Accepted()) != 1 {
			t.Errorf("Result = %+v", res)
		}
	})

	t.Run("CancelledBeforeStart", func(t *testing.T) {
		t.Parallel()
		srv := startScriptServer(t)
		s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, staticToken("ya29.good-token"))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := s.Send(ctx, testMessage)
		requireSendError(t, err, smtpoauth.StageToken)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want errors.Is context.Canceled", err)
		}
	})

	t.Run("TokenSourceThatBlocks", func(t *testing.T) {
		t.Parallel()
		srv := startScriptServer(t)
		release := make(chan struct{})
		defer close(release)
		entered := make(chan struct{})
		ts := tokenFunc(func() (*oauth2.Token, error) {
			close(entered)
			<-release
			return nil, errors.New("released")
		})
		s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, ts)
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-entered
			cancel()
		}()
		_, err := s.Send(ctx, testMessage)
		requireSendError(t, err, smtpoauth.StageToken)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want errors.Is context.Canceled", err)
		}
	})
}

type tokenFunc func() (*oauth2.Token, error)

func (f tokenFunc) Token() (*oauth2.Token, error) { return f() }

func TestTranscriptDebugWriterRedacts(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptGoogleRejects, scriptAccepts)
	var trace strings.Builder
	s, err := smtpoauth.NewSender(smtpoauth.Config{
		Host:                  "127.0.0.1",
		Port:                  srv.port,
		TLS:                   smtpoauth.TLSNone,
		AllowInsecureLoopback: true,
		Username:              "alice@example.com",
		TokenSource:           &invalidatingSource{tokens: []string{"ya29.bad-token", "ya29.good-token"}},
		DebugWriter:           &trace,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Send(t.Context(), testMessage); err != nil {
		t.Fatal(err)
	}
	s.Close()
	srv.wait(t, 2)
	got := trace.String()
	for _, secret := range []string{irBadToken, irGoodToken, "ya29", challenge400, "Hello."} {
		if strings.Contains(got, secret) {
			t.Errorf("trace contains %q:\n%s", secret, got)
		}
	}
	for _, want := range []string{
		"220 smtp.example.com ESMTP ready\r\nEHLO localhost\r\n",
		"AUTH XOAUTH2 [redacted]\r\n334 [redacted]\r\n[redacted]\r\n535-5.7.8 ",
		"AUTH XOAUTH2 [redacted]\r\n235 2.7.0 Accepted\r\n",
		"354 Go ahead\r\n[23 bytes of message content not shown]\r\n.\r\n250 2.0.0 OK 1700000000 queued\r\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("trace lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "220 smtp.example.com ESMTP ready"); n != 2 {
		t.Errorf("the greeting appears %d times in the trace of 2 sessions, want 2:\n%s", n, got)
	}
}
