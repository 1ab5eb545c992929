package smtpoauthtest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// TestCloseLeavesNothingRunning is not parallel: it counts goroutines.
// Parallel tests only start once the sequential ones are done.
func TestCloseLeavesNothingRunning(t *testing.T) {
	before := runtime.NumGoroutine()
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})

	// An authenticated session, idle.
	w1, _ := dialWireTLS(t, srv)
	w1.cmd("EHLO client.example")
	w1.cmd("AUTH XOAUTH2 " + xoauth2IR("a@example.com", srv.IssueAccessToken("a@example.com")))
	// A plaintext session, idle after the greeting.
	w2, _ := dialWire(t, srv)
	// A connection stuck before its TLS handshake.
	raw, err := net.Dial("tcp", srv.SMTPSAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// A token endpoint connection.
	hc, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()

	srv.Close()
	srv.Close() // idempotent

	for name, c := range map[string]net.Conn{"authenticated": w1.conn, "plaintext": w2.conn, "handshake": raw, "http": hc} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Errorf("%s connection: read after Close: %v (want EOF)", name, err)
		}
	}
	// Close waited for every goroutine to signal it is done (WaitGroup,
	// http.StateClosed hook), but a goroutine signals a few instructions
	// before it returns and nothing can be awaited for that last step:
	// yield (no sleeping) for at most a second until they have run.
	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(time.Second); after > before && time.Now().Before(deadline); {
		runtime.Gosched()
		after = runtime.NumGoroutine()
	}
	if after > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines before Start, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

func TestStart(t *testing.T) {
	t.Parallel()

	t.Run("UnknownFlavorIsAnError", func(t *testing.T) {
		t.Parallel()
		_, err := smtpoauthtest.Start(smtpoauthtest.Config{Flavor: "yahoo"})
		if err == nil || !strings.Contains(err.Error(), "Config.Flavor") {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("NegativeLifetimeIsAnError", func(t *testing.T) {
		t.Parallel()
		_, err := smtpoauthtest.Start(smtpoauthtest.Config{AccessTokenLifetime: -time.Second})
		if err == nil || !strings.Contains(err.Error(), "Config.AccessTokenLifetime") {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("NewServerPanicsOnError", func(t *testing.T) {
		t.Parallel()
		defer func() {
			if recover() == nil {
				t.Error("no panic")
			}
		}()
		smtpoauthtest.NewServer(smtpoauthtest.Config{Flavor: "yahoo"})
	})

	t.Run("CertificateCoversHostnameAndLoopback", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Hostname: "smtp.example.test"})
		block, _ := pem.Decode(b.srv.CACertPEM)
		if block == nil || block.Type != "CERTIFICATE" {
			t.Fatalf("CACertPEM is not a PEM certificate")
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil || !ca.IsCA {
			t.Fatalf("CA: %v", err)
		}
		for _, name := range []string{"smtp.example.test", "localhost", "127.0.0.1"} {
			conn, err := tls.Dial("tcp", b.srv.SMTPSAddr, &tls.Config{RootCAs: b.srv.CertPool(), ServerName: name})
			if err != nil {
				t.Errorf("TLS as %s: %v", name, err)
				continue
			}
			conn.Close()
		}
		_, err = tls.Dial("tcp", b.srv.SMTPSAddr, &tls.Config{ServerName: "localhost"})
		if err == nil {
			t.Errorf("system roots trust the generated CA")
		}
	})

	t.Run("AddressesAreLoopback", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		for _, a := range []string{b.srv.SMTPAddr, b.srv.SMTPSAddr, strings.TrimPrefix(b.srv.URL, "http://")} {
			if !strings.HasPrefix(a, "127.0.0.1:") {
				t.Errorf("address %q", a)
			}
		}
		if b.srv.TokenURL != b.srv.URL+"/token" {
			t.Errorf("TokenURL %q", b.srv.TokenURL)
		}
	})
}

func TestWaitMessages(t *testing.T) {
	t.Parallel()

	t.Run("ReturnsAtOnceWhenEnough", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		msgs, err := b.srv.WaitMessages(testContext(t), 0)
		if err != nil || len(msgs) != 0 {
			t.Errorf("got %d, %v", len(msgs), err)
		}
	})

	t.Run("StopsWhenContextEnds", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := b.srv.WaitMessages(ctx, 1)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("StopsWhenServerCloses", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		errc := make(chan error, 1)
		go func() {
			_, err := b.srv.WaitMessages(t.Context(), 1)
			errc <- err
		}()
		b.srv.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, smtpoauthtest.ErrServerClosed) {
				t.Errorf("err = %v", err)
			}
		case <-testContext(t).Done():
			t.Fatal("WaitMessages did not return")
		}
	})

	t.Run("WakesUpOnDelivery", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		type result struct {
			n   int
			err error
		}
		res := make(chan result, 1)
		go func() {
			msgs, err := b.srv.WaitMessages(testContext(t), 2)
			res <- result{len(msgs), err}
		}()
		c := dialClient(t, b.srv, true, "a@example.com", b.srv.IssueAccessToken("a@example.com"))
		for range 2 {
			if err := c.SendMail("a@example.com", []string{"b@example.com"}, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
				t.Fatal(err)
			}
		}
		r := <-res
		if r.err != nil || r.n != 2 {
			t.Errorf("got %d, %v", r.n, r.err)
		}
		b.srv.ResetMessages()
		if n := len(b.srv.Messages()); n != 0 || b.srv.Stats().Messages != 2 {
			t.Errorf("after ResetMessages: %d messages, stats %+v", n, b.srv.Stats())
		}
	})
}
