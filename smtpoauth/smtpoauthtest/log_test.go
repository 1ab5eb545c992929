package smtpoauthtest_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLogging(t *testing.T) {
	t.Parallel()

	t.Run("LogsWhatItSawButNeverSecretsOrBodies", func(t *testing.T) {
		t.Parallel()
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		b := setup(t, smtpoauthtest.Config{Logger: logger})
		const (
			user   = "alice@example.com"
			secret = "client-secret-XYZ"
			body   = "Subject: private\r\n\r\nThe secret body.\r\n"
		)
		b.srv.AddClient("app", secret)
		rt := b.srv.NewRefreshToken("app", user)
		conf := oauthConfig(b.srv, oauth2.AuthStyleAutoDetect)
		conf.ClientSecret = secret
		tok, err := refresh(t, b.srv, conf, rt)
		if err != nil {
			t.Fatal(err)
		}
		// A failed and a successful login, then a message.
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(user, "bad-token-ABC"))
		w.cmd("")
		c := dialClient(t, b.srv, true, user, tok.AccessToken)
		if err := c.SendMail(user, []string{"bob@example.net"}, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := b.srv.WaitMessages(testContext(t), 1); err != nil {
			t.Fatal(err)
		}
		b.srv.Revoke(rt)

		out := buf.String()
		for _, secret := range []string{secret, rt, tok.AccessToken, "bad-token-ABC", "The secret body", "private",
			xoauth2IR(user, tok.AccessToken)} {
			if strings.Contains(out, secret) {
				t.Errorf("log contains %q:\n%s", secret, out)
			}
		}
		for _, want := range []string{"username=alice@example.com", "recipients=1", "size=", "grant_type=refresh_token", "smtp auth rejected"} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %q:\n%s", want, out)
			}
		}
	})
}
