package smtpoauth_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// poolTestBundle is a provider and a pooled Sender logged in to it as
// alice@example.com.
type poolTestBundle struct {
	*sendTestBundle
	s *smtpoauth.Sender
}

// setupPoolTest starts a provider and a Sender whose Config edit may
// change; the Sender is closed when the test ends.
func setupPoolTest(t *testing.T, edit func(cfg *smtpoauth.Config)) *poolTestBundle {
	t.Helper()
	b := setupSendTest(t, smtpoauthtest.Config{})
	cfg := b.cfg
	if edit != nil {
		edit(&cfg)
	}
	s := newSender(t, cfg)
	t.Cleanup(func() { s.Close() })
	return &poolTestBundle{sendTestBundle: b, s: s}
}

// poolMessage is the i-th message of a test, to a recipient of its own.
func poolMessage(i int) *smtpoauth.Message {
	return &smtpoauth.Message{
		From: "alice@example.com",
		To:   []string{fmt.Sprintf("r%d@example.net", i)},
		Data: fmt.Appendf(nil, "Subject: message %d\r\n\r\nHello.\r\n", i),
	}
}

// send sends poolMessage(i), failing the test on an error.
func (b *poolTestBundle) send(t *testing.T, i int) {
	t.Helper()
	if _, err := b.s.Send(t.Context(), poolMessage(i)); err != nil {
		t.Fatalf("Send %d: %v", i, err)
	}
}

// wantLogins checks the provider's count of successful logins and of
// messages accepted.
func (b *poolTestBundle) wantLogins(t *testing.T, logins, messages int) {
	t.Helper()
	if st := b.srv.Stats(); st.Logins != logins || st.Messages != messages {
		t.Errorf("provider saw %d logins and %d messages, want %d and %d", st.Logins, st.Messages, logins, messages)
	}
}

// wantEachOnce checks that the provider holds exactly one copy of each of
// poolMessage(0) to poolMessage(n-1).
func wantEachOnce(t *testing.T, srv *smtpoauthtest.Server, n int) {
	t.Helper()
	copies := make(map[string]int)
	for _, m := range srv.Messages() {
		for _, to := range m.To {
			copies[to]++
		}
	}
	for i := range n {
		if to := poolMessage(i).To[0]; copies[to] != 1 {
			t.Errorf("%s received %d copies, want 1", to, copies[to])
		}
	}
	if len(copies) != n {
		t.Errorf("%d recipients received mail, want %d", len(copies), n)
	}
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// waitSignal waits for ch; a test that passes never waits for the timeout.
func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestSenderPool(t *testing.T) {
	t.Parallel()

	t.Run("SequentialSendsLogInOnce", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, nil)
		const n = smtpoauth.DefaultMaxMessagesPerConn
		for i := range n {
			b.send(t, i)
		}
		b.wantLogins(t, 1, n)
		wantEachOnce(t, b.srv, n)
		// The connection has carried DefaultMaxMessagesPerConn messages.
		if idle := smtpoauth.IdleConns(b.s); idle != 0 {
			t.Errorf("%d idle connections after %d messages, want 0", idle, n)
		}
		b.send(t, n)
		b.wantLogins(t, 2, n+1)
	})

	t.Run("ConcurrentSendsShareAFewConnections", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name      string
			maxConns  int
			maxLogins int
		}{
			// Ten senders at once need ten connections at first; then
			// three stay idle between sends and the others are seldom
			// needed again.
			{name: "Unlimited", maxConns: 0, maxLogins: 20},
			{name: "MaxConns3", maxConns: 3, maxLogins: 3},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				b := setupPoolTest(t, func(cfg *smtpoauth.Config) {
					cfg.MaxIdleConns = 3
					cfg.MaxConns = tt.maxConns
					// Most recently used first: one connection may carry
					// most of the messages; it is not to retire here.
					cfg.MaxMessagesPerConn = 1000
				})
				const goroutines, each = 10, 20
				var wg sync.WaitGroup
				errs := make(chan error, goroutines*each)
				for g := range goroutines {
					wg.Go(func() {
						for j := range each {
							if _, err := b.s.Send(t.Context(), poolMessage(g*each+j)); err != nil {
								errs <- err
							}
						}
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
				st := b.srv.Stats()
				if st.Logins > tt.maxLogins || st.Messages != goroutines*each {
					t.Errorf("%d logins for %d messages, want at most %d logins for %d", st.Logins, st.Messages, tt.maxLogins, goroutines*each)
				}
				if peak := st.PeakSessions["alice@example.com"]; tt.maxConns > 0 && peak > tt.maxConns {
					t.Errorf("%d sessions at once, want at most MaxConns %d", peak, tt.maxConns)
				}
				if n := smtpoauth.IdleConns(b.s); n > 3 {
					t.Errorf("%d idle connections, want at most MaxIdleConns 3", n)
				}
				wantEachOnce(t, b.srv, goroutines*each)
				t.Logf("%d logins, peak %d sessions for %d messages", st.Logins, st.PeakSessions["alice@example.com"], st.Messages)
			})
		}
	})

	t.Run("MaxMessagesPerConnRetiresTheConnection", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.MaxMessagesPerConn = 10 })
		for i := range 100 {
			b.send(t, i)
		}
		b.wantLogins(t, 10, 100)
	})

	t.Run("IdleTimeoutExpiresTheConnection", func(t *testing.T) {
		t.Parallel()
		clock := newFakeClock()
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.IdleTimeout = time.Minute })
		smtpoauth.SetNowFunc(b.s, clock.Now)
		b.send(t, 0)
		clock.Advance(time.Minute - time.Second)
		b.send(t, 1)
		b.wantLogins(t, 1, 2)
		clock.Advance(time.Minute)
		b.send(t, 2)
		b.wantLogins(t, 2, 3)
	})

	t.Run("IdleTimerClosesTheConnection", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.IdleTimeout = time.Millisecond })
		reaped := make(chan struct{}, 1)
		smtpoauth.SetReapedFunc(b.s, func() { reaped <- struct{}{} })
		b.send(t, 0)
		waitSignal(t, reaped, "the idle timer")
		if n := smtpoauth.IdleConns(b.s); n != 0 {
			t.Errorf("%d idle connections after the idle timeout, want 0", n)
		}
		b.s.Close() // waits for the QUIT
		if n := smtpoauth.OpenConns(b.s); n != 0 {
			t.Errorf("%d connections open after Close, want 0", n)
		}
	})

	t.Run("ServerDroppingAnIdleConnectionIsRedialedTransparently", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, nil)
		b.send(t, 0)
		// The server closes the idle connection (421, then EOF): the
		// next message finds it closed before sending anything.
		if _, err := b.srv.TimeOutIdleConnections(t.Context()); err != nil {
			t.Fatal(err)
		}
		b.send(t, 1)
		b.send(t, 2)
		b.wantLogins(t, 2, 3)
		wantEachOnce(t, b.srv, 3)
	})

	t.Run("Reply421OnAReusedConnectionIsRedialedTransparently", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, nil)
		b.send(t, 0)
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 421, Enhanced: [3]int{4, 7, 0},
			Text: "Try again later, closing connection.", Times: 1})
		b.send(t, 1)
		b.wantLogins(t, 2, 2)
		wantEachOnce(t, b.srv, 2)
	})

	t.Run("NewConnectionIsNotRedialed", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, nil)
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 421, Times: 1})
		_, err := b.s.Send(t.Context(), poolMessage(0))
		requireSendError(t, err, smtpoauth.StageMail)
		b.wantLogins(t, 1, 0)
		if n := smtpoauth.IdleConns(b.s); n != 0 {
			t.Errorf("%d idle connections after a 421, want 0", n)
		}
	})

	t.Run("RedialsOnlyOnce", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, nil)
		b.send(t, 0)
		if _, err := b.srv.TimeOutIdleConnections(t.Context()); err != nil {
			t.Fatal(err)
		}
		// The new connection fails at MAIL too, as a reused one would.
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 421, Enhanced: [3]int{4, 7, 0}, Times: 1})
		_, err := b.s.Send(t.Context(), poolMessage(1))
		requireSendError(t, err, smtpoauth.StageMail)
		if smtpoauth.Classify(err).Class != smtpoauth.ClassTransient {
			t.Errorf("Classify(%v) = %v, want transient", err, smtpoauth.Classify(err))
		}
		b.wantLogins(t, 2, 1)
	})

	t.Run("FailedTransactionsAreResetAndTheConnectionReused", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, nil)
		b.srv.SetRcptReply("nobody@example.com", 550, [3]int{5, 1, 1}, "No such user")
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Code: 554, Enhanced: [3]int{5, 6, 0},
			Text: "Message rejected", Times: 1})
		rejected := &smtpoauth.Message{From: "alice@example.com", To: []string{"nobody@example.com"}, Data: []byte("x\r\n")}
		_, err := b.s.Send(t.Context(), rejected)
		requireSendError(t, err, smtpoauth.StageRcpt)
		_, err = b.s.Send(t.Context(), poolMessage(0))
		requireSendError(t, err, smtpoauth.StageDataEnd)
		b.send(t, 1)
		b.wantLogins(t, 1, 1)
	})

	t.Run("EndedContextLeavesTheIdleConnectionAlone", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, nil)
		b.send(t, 0)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := b.s.Send(ctx, poolMessage(1))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want errors.Is context.Canceled", err)
		}
		b.send(t, 2)
		b.wantLogins(t, 1, 2)
	})

	t.Run("CloseClosesTheIdleConnections", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.MaxIdleConns = 3 })
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Go(func() { b.send(t, i) })
		}
		wg.Wait()
		if err := b.s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if idle, open := smtpoauth.IdleConns(b.s), smtpoauth.OpenConns(b.s); idle != 0 || open != 0 {
			t.Errorf("after Close: %d idle and %d open connections, want none", idle, open)
		}
		logins := b.srv.Stats().Logins
		// A Send after Close works, on a connection of its own.
		b.send(t, 3)
		b.send(t, 4)
		b.wantLogins(t, logins+2, 5)
		if open := smtpoauth.OpenConns(b.s); open != 0 {
			t.Errorf("%d connections open after Sends following Close, want none", open)
		}
	})

	t.Run("DisablePoolingLogsInForEveryMessage", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.DisablePooling = true })
		for i := range 5 {
			b.send(t, i)
		}
		b.wantLogins(t, 5, 5)
		if n := smtpoauth.IdleConns(b.s); n != 0 {
			t.Errorf("%d idle connections, want 0", n)
		}
	})

	t.Run("WaitingForAConnectionHonoursTheContext", func(t *testing.T) {
		t.Parallel()
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.MaxConns = 1 })
		waiting := make(chan struct{}, 2)
		smtpoauth.SetWaitingFunc(b.s, func() { waiting <- struct{}{} })
		// The first Send holds the only connection: the server is frozen
		// before its greeting.
		b.srv.Freeze()
		first := make(chan error, 1)
		go func() {
			_, err := b.s.Send(t.Context(), poolMessage(0))
			first <- err
		}()
		parkCtx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := b.srv.WaitParked(parkCtx, 1); err != nil {
			t.Fatal(err)
		}

		ctx, cancelWait := context.WithCancel(t.Context())
		go func() {
			select {
			case <-waiting:
			case <-time.After(10 * time.Second):
			}
			cancelWait()
		}()
		_, err := b.s.Send(ctx, poolMessage(1))
		requireSendError(t, err, smtpoauth.StageConnect)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want errors.Is context.Canceled", err)
		}

		// A Send waiting when the connection is freed gets it.
		second := make(chan error, 1)
		go func() {
			_, err := b.s.Send(t.Context(), poolMessage(1))
			second <- err
		}()
		waitSignal(t, waiting, "the second Send to wait")
		b.srv.Thaw(false)
		for _, ch := range []chan error{first, second} {
			select {
			case err := <-ch:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Send did not return")
			}
		}
		b.wantLogins(t, 1, 2)
		if peak := b.srv.Stats().PeakSessions["alice@example.com"]; peak != 1 {
			t.Errorf("%d sessions at once, want 1", peak)
		}
	})
}

// scriptPooledSender is scriptSender with a clock for idle times.
func scriptPooledSender(t *testing.T, srv *scriptServer, ts *invalidatingSource, clock *fakeClock) *smtpoauth.Sender {
	t.Helper()
	s := scriptSender(t, srv, smtpoauth.MechXOAUTH2, ts)
	if clock != nil {
		smtpoauth.SetNowFunc(s, clock.Now)
	}
	return s
}

// secondMessage follows testMessage on a pooled connection in the
// transcripts.
var secondMessage = &smtpoauth.Message{
	From: "alice@example.com",
	To:   []string{"carol@example.com"},
	Data: []byte("Subject: 2\r\n\r\nTwo.\r\n"),
}

// The dialogue of testMessage and of secondMessage, after AUTH.
const (
	scriptFirstMessage = `
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
`
	scriptSecondMessage = `
C: MAIL FROM:<alice@example.com> SIZE=20
S: 250 2.1.0 OK
C: RCPT TO:<carol@example.com>
S: 250 2.1.5 OK
C: DATA
S: 354 Go ahead
C: Subject: 2
C:
C: Two.
C: .
S: 250 2.0.0 OK 1700000001 queued
`
	scriptGoodAuth = `
C: AUTH XOAUTH2 ` + irGoodToken + `
S: 235 2.7.0 Accepted
`
	scriptQuit = `
C: QUIT
S: 221 2.0.0 closing connection
`
)

// sendBoth sends testMessage then secondMessage, checking each reply.
func sendBoth(t *testing.T, s *smtpoauth.Sender, between func()) {
	t.Helper()
	for i, m := range []*smtpoauth.Message{testMessage, secondMessage} {
		if i == 1 && between != nil {
			between()
		}
		res, err := s.Send(t.Context(), m)
		if err != nil {
			t.Fatalf("Send %d: %v", i+1, err)
		}
		if want := fmt.Sprintf("250 2.0.0 OK 170000000%d queued", i); smtpoauth.FormatReply(res.Reply) != want {
			t.Errorf("Send %d: reply %q, want %q", i+1, smtpoauth.FormatReply(res.Reply), want)
		}
	}
}

// TestTranscriptPoolTwoMessagesOnOneConnection pins the reuse of a
// connection: after a completed transaction the next one starts with MAIL
// FROM (no RSET, no EHLO, no AUTH), and no QUIT is said until Close.
func TestTranscriptPoolTwoMessagesOnOneConnection(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHello+scriptGoodAuth+scriptFirstMessage+scriptSecondMessage+scriptQuit)
	s := scriptPooledSender(t, srv, &invalidatingSource{tokens: []string{"ya29.good-token"}}, nil)
	sendBoth(t, s, nil)
	s.Close()
	srv.wait(t, 1)
}

// TestTranscriptPoolResetsAfterAFailedTransaction pins the RSET that
// precedes the next transaction when the previous one did not complete.
func TestTranscriptPoolResetsAfterAFailedTransaction(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		failed string // the failed transaction's dialogue
		stage  smtpoauth.Stage
	}{
		{
			name: "EveryRecipientRejected",
			failed: `
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 550 5.1.1 No such user
`,
			stage: smtpoauth.StageRcpt,
		},
		{
			name: "MessageRefusedAfterTheFinalDot",
			failed: `
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
`,
			stage: smtpoauth.StageDataEnd,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t, scriptHello+scriptGoodAuth+tt.failed+`
C: RSET
S: 250 2.0.0 OK
`+scriptSecondMessage+scriptQuit)
			s := scriptPooledSender(t, srv, &invalidatingSource{tokens: []string{"ya29.good-token"}}, nil)
			_, err := s.Send(t.Context(), testMessage)
			requireSendError(t, err, tt.stage)
			res, err := s.Send(t.Context(), secondMessage)
			if err != nil {
				t.Fatalf("Send after the failure: %v", err)
			}
			if got := smtpoauth.FormatReply(res.Reply); got != "250 2.0.0 OK 1700000001 queued" {
				t.Errorf("reply %q", got)
			}
			s.Close()
			srv.wait(t, 1)
		})
	}
}

// TestTranscriptPoolTraceShowsTheReset checks that the RSET this package
// sends itself appears in the DebugWriter trace, in its place.
func TestTranscriptPoolTraceShowsTheReset(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t, scriptHello+scriptGoodAuth+`
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 550 5.1.1 No such user
C: RSET
S: 250 2.0.0 OK
`+scriptSecondMessage+scriptQuit)
	var trace strings.Builder
	s, err := smtpoauth.NewSender(smtpoauth.Config{
		Host:                  "127.0.0.1",
		Port:                  srv.port,
		TLS:                   smtpoauth.TLSNone,
		AllowInsecureLoopback: true,
		Username:              "alice@example.com",
		TokenSource:           staticToken("ya29.good-token"),
		DebugWriter:           &trace,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Send(t.Context(), testMessage)
	if _, err := s.Send(t.Context(), secondMessage); err != nil {
		t.Fatal(err)
	}
	s.Close()
	srv.wait(t, 1)
	const want = "RCPT TO:<bob@example.com>\r\n550 5.1.1 No such user\r\n" +
		"RSET\r\n250 2.0.0 OK\r\n" +
		"MAIL FROM:<alice@example.com> SIZE=20\r\n250 2.1.0 OK\r\n" +
		"RCPT TO:<carol@example.com>\r\n250 2.1.5 OK\r\n" +
		"DATA\r\n354 Go ahead\r\n[20 bytes of message content not shown]\r\n.\r\n250 2.0.0 OK 1700000001 queued\r\n" +
		"QUIT\r\n221 2.0.0 closing connection\r\n"
	if got := trace.String(); !strings.HasSuffix(got, want) {
		t.Errorf("trace ends\n%s\nwant it to end\n%s", got, want)
	}
}

// TestTranscriptPoolRedials pins the one transparent redial: the server
// closed the idle connection (or says 421 at its first command), and the
// message goes through a new session.
func TestTranscriptPoolRedials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// first is the first session after AUTH: a transaction, then
		// how the server ends the connection.
		first string
		// rejected is whether the first transaction fails (RSET comes
		// first on reuse).
		rejected bool
	}{
		{
			name:  "ClosedWhileIdle",
			first: scriptFirstMessage + "CLOSE\n",
		},
		{
			name: "Reply421ToMail",
			first: scriptFirstMessage + `
C: MAIL FROM:<alice@example.com> SIZE=20
S: 421 4.4.2 smtp.example.com Error: timeout exceeded
CLOSE
`,
		},
		{
			name: "Reply421ToRset",
			first: `
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
S: 550 5.1.1 No such user
C: RSET
S: 421 4.4.2 smtp.example.com Error: timeout exceeded
CLOSE
`,
			rejected: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startScriptServer(t,
				scriptHello+scriptGoodAuth+tt.first,
				scriptHello+scriptGoodAuth+scriptSecondMessage+scriptQuit)
			ts := &invalidatingSource{tokens: []string{"ya29.good-token"}}
			s := scriptPooledSender(t, srv, ts, nil)
			_, err := s.Send(t.Context(), testMessage)
			if tt.rejected {
				requireSendError(t, err, smtpoauth.StageRcpt)
			} else if err != nil {
				t.Fatalf("first Send: %v", err)
			}
			if tt.name == "ClosedWhileIdle" {
				srv.wait(t, 1) // the server has closed the connection
			}
			res, err := s.Send(t.Context(), secondMessage)
			if err != nil {
				t.Fatalf("Send on the closed connection: %v", err)
			}
			if got := smtpoauth.FormatReply(res.Reply); got != "250 2.0.0 OK 1700000001 queued" {
				t.Errorf("reply %q", got)
			}
			s.Close()
			if tt.name == "ClosedWhileIdle" {
				srv.wait(t, 1)
			} else {
				srv.wait(t, 2)
			}
			if ts.next != 2 {
				t.Errorf("%d tokens fetched, want 2 (one per connection)", ts.next)
			}
		})
	}
}

// TestTranscriptPoolExpiredConnectionGetsAFreshLogin checks the idle
// timeout against the wire: the expired connection is closed with QUIT,
// and the new session's login meets Microsoft's "token will expire soon",
// which is refreshed and retried as on any new connection.
func TestTranscriptPoolExpiredConnectionGetsAFreshLogin(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t,
		scriptHello+scriptGoodAuth+scriptFirstMessage+scriptQuit,
		scriptHello+`
C: AUTH XOAUTH2 `+irBadToken+`
S: 501 5.5.127 The access token will expire soon. Please refresh it.
C: *
S: 500 5.3.3 Unrecognized command
C: QUIT
S: 221 2.0.0 Service closing transmission channel
`,
		scriptHello+scriptGoodAuth+scriptSecondMessage+scriptQuit)
	clock := newFakeClock()
	ts := &invalidatingSource{tokens: []string{"ya29.good-token", "ya29.bad-token", "ya29.good-token"}}
	s := scriptPooledSender(t, srv, ts, clock)
	sendBoth(t, s, func() { clock.Advance(smtpoauth.DefaultIdleTimeout) })
	s.Close()
	srv.wait(t, 3)
	if len(ts.invalidated) != 1 || ts.invalidated[0] != "ya29.bad-token" {
		t.Errorf("invalidated %q, want the token that expires soon", ts.invalidated)
	}
}

// TestTranscriptPoolDoesNotReuseABrokenConnection checks that a
// connection lost mid-transaction is not pooled, and that the next message
// goes through a new session.
func TestTranscriptPoolDoesNotReuseABrokenConnection(t *testing.T) {
	t.Parallel()
	srv := startScriptServer(t,
		scriptHello+scriptGoodAuth+`
C: MAIL FROM:<alice@example.com> SIZE=23
S: 250 2.1.0 OK
C: RCPT TO:<bob@example.com>
CLOSE
`,
		scriptHello+scriptGoodAuth+scriptSecondMessage+scriptQuit)
	s := scriptPooledSender(t, srv, &invalidatingSource{tokens: []string{"ya29.good-token"}}, nil)
	_, err := s.Send(t.Context(), testMessage)
	requireSendError(t, err, smtpoauth.StageRcpt)
	var reply *smtp.SMTPError
	if errors.As(err, &reply) {
		t.Errorf("error = %v, want a network error", err)
	}
	if n := smtpoauth.IdleConns(s); n != 0 {
		t.Errorf("%d idle connections, want 0", n)
	}
	if _, err := s.Send(t.Context(), secondMessage); err != nil {
		t.Fatal(err)
	}
	s.Close()
	srv.wait(t, 2)
}

func benchmarkSend(b *testing.B, disablePooling bool) {
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	b.Cleanup(srv.Close)
	host, port := splitHostPort(b, srv.SMTPAddr)
	s, err := smtpoauth.NewSender(smtpoauth.Config{
		Host:           host,
		Port:           port,
		TLS:            smtpoauth.TLSStartTLS,
		RootCAs:        srv.CertPool(),
		Username:       "alice@example.com",
		TokenSource:    staticToken(srv.IssueAccessToken("alice@example.com")),
		DisablePooling: disablePooling,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	for b.Loop() {
		if _, err := s.Send(ctx, testMessage); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	s.Close()
	st := srv.Stats()
	b.ReportMetric(float64(st.Logins)/float64(st.Messages), "logins/msg")
}

func BenchmarkSendPooled(b *testing.B)   { benchmarkSend(b, false) }
func BenchmarkSendUnpooled(b *testing.B) { benchmarkSend(b, true) }
