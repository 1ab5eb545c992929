package smtpoauthtest_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// recv waits for a value from ch or fails the test when ctx ends.
func recv[T any](t *testing.T, ctx context.Context, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-ctx.Done():
		t.Fatalf("waiting: %v", ctx.Err())
		panic("unreachable")
	}
}

// startData opens an authenticated session and starts a transaction up to
// the message body, sent but for the final ".". Closing the returned
// writer sends the "." and waits for the reply.
func startData(t *testing.T, srv *smtpoauthtest.Server) io.WriteCloser {
	t.Helper()
	c := dialClient(t, srv, true, sender, srv.IssueAccessToken(sender))
	if err := c.Mail(sender, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@example.net", nil); err != nil {
		t.Fatal(err)
	}
	wc, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(wc, faultMsg); err != nil {
		t.Fatal(err)
	}
	return wc
}

// finishAsync closes wc (sends the final ".") in a goroutine.
func finishAsync(wc io.WriteCloser) <-chan error {
	done := make(chan error, 1)
	go func() { done <- wc.Close() }()
	return done
}

func TestFreeze(t *testing.T) {
	t.Parallel()

	t.Run("ThawKeepStoresTheMessageParkedBeforeStoring", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		ctx := testContext(t)
		wc := startData(t, b.srv)
		b.srv.Freeze()
		done := finishAsync(wc)
		if err := b.srv.WaitParked(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if n := len(b.srv.Messages()); n != 0 || b.srv.Parked() != 1 {
			t.Fatalf("while parked: %d messages, %d parked", n, b.srv.Parked())
		}
		b.srv.Thaw(false)
		if n := b.srv.Parked(); n != 0 {
			t.Errorf("Parked after Thaw = %d", n)
		}
		if err := recv(t, ctx, done); err != nil {
			t.Fatalf("final dot: %v", err)
		}
		if msgs := b.srv.Messages(); len(msgs) != 1 || string(msgs[0].Data) != faultMsg {
			t.Errorf("messages: %+v", msgs)
		}
	})

	t.Run("ThawDiscardDropsTheMessageParkedBeforeStoring", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		ctx := testContext(t)
		wc := startData(t, b.srv)
		b.srv.Freeze()
		done := finishAsync(wc)
		if err := b.srv.WaitParked(ctx, 1); err != nil {
			t.Fatal(err)
		}
		b.srv.Thaw(true)
		wantDropped(t, "final dot", recv(t, ctx, done))
		// Decided before the connection closed: not racy.
		if st := b.srv.Stats(); st.Messages != 0 || len(b.srv.Messages()) != 0 {
			t.Errorf("a discarded message was stored: %+v", st)
		}
	})

	t.Run("EverySessionParksAndThawReleasesThemAll", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		ctx := testContext(t)
		const n = 5
		var writers []io.WriteCloser
		for range n {
			writers = append(writers, startData(t, b.srv))
		}
		b.srv.Freeze()
		b.srv.Freeze() // no-op
		var dones []<-chan error
		for _, wc := range writers {
			dones = append(dones, finishAsync(wc))
		}
		if err := b.srv.WaitParked(ctx, n); err != nil {
			t.Fatal(err)
		}
		if got := len(b.srv.Messages()); got != 0 {
			t.Fatalf("%d messages stored while frozen", got)
		}
		b.srv.Thaw(false)
		b.srv.Thaw(false) // no-op
		for _, done := range dones {
			if err := recv(t, ctx, done); err != nil {
				t.Error(err)
			}
		}
		if got := len(b.srv.Messages()); got != n {
			t.Errorf("%d messages, want %d", got, n)
		}
	})

	t.Run("ARequestOfAnIdleSessionParksAtItsReply", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		ctx := testContext(t)
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(sender, b.srv.IssueAccessToken(sender)))
		b.srv.Freeze()
		if n := b.srv.Parked(); n != 0 {
			t.Fatalf("an idle session parked: %d", n)
		}
		reply := make(chan []string, 1)
		go func() {
			// Not w.cmd: it may not fail the test from this goroutine.
			w.conn.Write([]byte("MAIL FROM:<" + sender + ">\r\n"))
			line, _ := w.r.ReadString('\n')
			reply <- []string{strings.TrimSuffix(line, "\r\n")}
		}()
		if err := b.srv.WaitParked(ctx, 1); err != nil {
			t.Fatal(err)
		}
		b.srv.Thaw(false)
		equalLines(t, "MAIL", recv(t, ctx, reply), []string{"250 2.0.0 Roger, accepting mail from <" + sender + ">"})
	})

	for _, implicit := range []bool{false, true} {
		port, dial := "Submission", func(srv *smtpoauthtest.Server) (*smtp.Client, error) { return smtp.Dial(srv.SMTPAddr) }
		if implicit {
			port, dial = "ImplicitTLS", func(srv *smtpoauthtest.Server) (*smtp.Client, error) {
				return smtp.DialTLS(srv.SMTPSAddr, tlsConfig(srv))
			}
		}

		t.Run("NewSessionParksAtTheGreetingOn"+port, func(t *testing.T) {
			t.Parallel()
			b := setup(t, smtpoauthtest.Config{})
			ctx := testContext(t)
			b.srv.Freeze()
			dialed := make(chan error, 1)
			go func() {
				c, err := dial(b.srv)
				if err == nil {
					err = c.Hello("client.example")
					c.Close()
				}
				dialed <- err
			}()
			if err := b.srv.WaitParked(ctx, 1); err != nil {
				t.Fatal(err)
			}
			b.srv.Thaw(false)
			if err := recv(t, ctx, dialed); err != nil {
				t.Errorf("dial after Thaw: %v", err)
			}
		})

		t.Run("ThawDiscardClosesASessionParkedAtTheGreetingOn"+port, func(t *testing.T) {
			t.Parallel()
			b := setup(t, smtpoauthtest.Config{})
			ctx := testContext(t)
			b.srv.Freeze()
			dialed := make(chan error, 1)
			go func() {
				c, err := dial(b.srv)
				if err == nil {
					// go-smtp's client reads the greeting with the first command.
					err = c.Hello("client.example")
					c.Close()
				}
				dialed <- err
			}()
			if err := b.srv.WaitParked(ctx, 1); err != nil {
				t.Fatal(err)
			}
			b.srv.Thaw(true)
			if err := recv(t, ctx, dialed); err == nil {
				t.Error("dial succeeded, want the connection closed")
			}
		})
	}

	t.Run("CloseReleasesParkedSessions", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		ctx := testContext(t)
		wc := startData(t, b.srv)
		b.srv.Freeze()
		done := finishAsync(wc)
		if err := b.srv.WaitParked(ctx, 1); err != nil {
			t.Fatal(err)
		}
		b.srv.Close() // must not hang
		wantDropped(t, "final dot", recv(t, ctx, done))
		if n := len(b.srv.Messages()); n != 0 {
			t.Errorf("%d messages stored", n)
		}
		if err := b.srv.WaitParked(ctx, 2); !errors.Is(err, smtpoauthtest.ErrServerClosed) {
			t.Errorf("WaitParked after Close: %v", err)
		}
	})

	t.Run("WaitParkedEndsWithTheContext", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := b.srv.WaitParked(ctx, 1); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v", err)
		}
		if err := b.srv.WaitParked(ctx, 0); err != nil {
			t.Errorf("WaitParked(0) = %v", err)
		}
	})

	t.Run("TokenEndpointIsNotFrozen", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		b.srv.Freeze()
		defer b.srv.Thaw(false)
		if _, err := refresh(t, b.srv, oauthConfig(b.srv, 0), b.srv.NewRefreshToken("app", sender)); err != nil {
			t.Error(err)
		}
	})
}
