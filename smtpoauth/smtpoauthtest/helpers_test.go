package smtpoauthtest_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// testBundle is what most tests need: a running server and its clock.
type testBundle struct {
	srv   *smtpoauthtest.Server
	clock *fakeClock
}

// setup starts a server with a fake clock and closes it when the test ends.
func setup(t *testing.T, cfg smtpoauthtest.Config) *testBundle {
	t.Helper()
	clock := &fakeClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	if cfg.NowFunc == nil {
		cfg.NowFunc = clock.Now
	}
	srv, err := smtpoauthtest.Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(srv.Close)
	return &testBundle{srv: srv, clock: clock}
}

// testContext is a context that ends with a generous timeout, so that a
// broken test fails instead of hanging.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// wire is a hand-driven SMTP connection for transcript tests: it sends
// raw lines and returns the raw reply lines (without CRLF).
type wire struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func tlsConfig(srv *smtpoauthtest.Server) *tls.Config {
	return &tls.Config{RootCAs: srv.CertPool(), ServerName: "localhost"}
}

// dialWire connects to the submission port and reads the greeting.
func dialWire(t *testing.T, srv *smtpoauthtest.Server) (*wire, []string) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.SMTPAddr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return newWire(t, conn)
}

// dialWireTLS connects to the implicit-TLS port and reads the greeting.
func dialWireTLS(t *testing.T, srv *smtpoauthtest.Server) (*wire, []string) {
	t.Helper()
	conn, err := tls.Dial("tcp", srv.SMTPSAddr, tlsConfig(srv))
	if err != nil {
		t.Fatalf("dial TLS: %v", err)
	}
	return newWire(t, conn)
}

func newWire(t *testing.T, conn net.Conn) (*wire, []string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { conn.Close() })
	w := &wire{t: t, conn: conn, r: bufio.NewReader(conn)}
	return w, w.reply()
}

// reply reads one (possibly multi-line) reply.
func (w *wire) reply() []string {
	w.t.Helper()
	var lines []string
	for {
		line, err := w.r.ReadString('\n')
		if err != nil {
			w.t.Fatalf("read reply (after %q): %v", lines, err)
		}
		if !strings.HasSuffix(line, "\r\n") {
			w.t.Fatalf("reply line %q does not end in CRLF", line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return lines
		}
	}
}

// cmd sends one line and returns the reply.
func (w *wire) cmd(line string) []string {
	w.t.Helper()
	if _, err := w.conn.Write([]byte(line + "\r\n")); err != nil {
		w.t.Fatalf("write %q: %v", line, err)
	}
	return w.reply()
}

// startTLS upgrades the connection with STARTTLS and says EHLO again.
func (w *wire) startTLS(srv *smtpoauthtest.Server) []string {
	w.t.Helper()
	w.cmd("EHLO client.example")
	if got := w.cmd("STARTTLS"); !strings.HasPrefix(got[0], "220 ") {
		w.t.Fatalf("STARTTLS: %q", got)
	}
	tc := tls.Client(w.conn, tlsConfig(srv))
	if err := tc.Handshake(); err != nil {
		w.t.Fatalf("TLS handshake: %v", err)
	}
	w.conn, w.r = tc, bufio.NewReader(tc)
	return w.cmd("EHLO client.example")
}

func xoauth2IR(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

func oauthBearerIR(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("n,a=" + user + ",\x01host=localhost\x01port=587\x01auth=Bearer " + token + "\x01\x01"))
}

// xoauth2Client is a minimal XOAUTH2 sasl.Client (the real one lives in
// smtpoauth, which these tests must not depend on).
type xoauth2Client struct{ user, token string }

func (a xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + a.user + "\x01auth=Bearer " + a.token + "\x01\x01"), nil
}

func (a xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }

// dialClient returns an authenticated go-smtp client over STARTTLS
// (implicit false) or implicit TLS.
func dialClient(t *testing.T, srv *smtpoauthtest.Server, implicit bool, user, token string) *smtp.Client {
	t.Helper()
	var (
		c   *smtp.Client
		err error
	)
	if implicit {
		c, err = smtp.DialTLS(srv.SMTPSAddr, tlsConfig(srv))
	} else {
		c, err = smtp.DialStartTLS(srv.SMTPAddr, tlsConfig(srv))
	}
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Auth(xoauth2Client{user, token}); err != nil {
		t.Fatalf("auth: %v", err)
	}
	return c
}

func equalLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

// authClient is dialClient for goroutines other than the test's: it
// returns errors instead of failing the test. The caller closes the client.
func authClient(srv *smtpoauthtest.Server, implicit bool, user, token string) (*smtp.Client, error) {
	var (
		c   *smtp.Client
		err error
	)
	if implicit {
		c, err = smtp.DialTLS(srv.SMTPSAddr, tlsConfig(srv))
	} else {
		c, err = smtp.DialStartTLS(srv.SMTPAddr, tlsConfig(srv))
	}
	if err != nil {
		return nil, err
	}
	if err := c.Auth(xoauth2Client{user, token}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
