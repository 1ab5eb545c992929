package smtpoauth_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// sendTestBundle is a provider from smtpoauthtest and a Config that reaches
// its STARTTLS port as alice@example.com.
type sendTestBundle struct {
	srv *smtpoauthtest.Server
	cfg smtpoauth.Config
}

func setupSendTest(t *testing.T, pcfg smtpoauthtest.Config) *sendTestBundle {
	t.Helper()
	srv := smtpoauthtest.NewServer(pcfg)
	t.Cleanup(srv.Close)
	host, port := splitHostPort(t, srv.SMTPAddr)
	return &sendTestBundle{
		srv: srv,
		cfg: smtpoauth.Config{
			Host:        host,
			Port:        port,
			TLS:         smtpoauth.TLSStartTLS,
			RootCAs:     srv.CertPool(),
			Username:    "alice@example.com",
			TokenSource: staticToken(srv.IssueAccessToken("alice@example.com")),
		},
	}
}

func splitHostPort(t testing.TB, addr string) (string, int) {
	t.Helper()
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

func newSender(t *testing.T, cfg smtpoauth.Config) *smtpoauth.Sender {
	t.Helper()
	s, err := smtpoauth.NewSender(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitMessages waits for n messages at srv; a test that passes never waits
// for the timeout.
func waitMessages(t *testing.T, srv *smtpoauthtest.Server, n int) []smtpoauthtest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	msgs, err := srv.WaitMessages(ctx, n)
	if err != nil {
		t.Fatalf("waiting for %d messages: %v (got %d)", n, err, len(msgs))
	}
	return msgs
}

func TestSenderDelivers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		edit func(t *testing.T, b *sendTestBundle, cfg *smtpoauth.Config)
		mech string
	}{
		{
			name: "STARTTLSWithXOAUTH2",
			mech: smtpoauth.MechXOAUTH2,
		},
		{
			name: "ImplicitTLS",
			edit: func(t *testing.T, b *sendTestBundle, cfg *smtpoauth.Config) {
				cfg.Host, cfg.Port = splitHostPort(t, b.srv.SMTPSAddr)
				cfg.TLS = smtpoauth.TLSImplicit
			},
			mech: smtpoauth.MechXOAUTH2,
		},
		{
			name: "STARTTLSWithOAUTHBEARER",
			edit: func(_ *testing.T, _ *sendTestBundle, cfg *smtpoauth.Config) {
				cfg.Mechanism = smtpoauth.MechOAuthBearer
			},
			mech: smtpoauth.MechOAuthBearer,
		},
		{
			name: "ImplicitTLSWithOAUTHBEARER",
			edit: func(t *testing.T, b *sendTestBundle, cfg *smtpoauth.Config) {
				cfg.Host, cfg.Port = splitHostPort(t, b.srv.SMTPSAddr)
				cfg.TLS = smtpoauth.TLSImplicit
				cfg.Mechanism = smtpoauth.MechOAuthBearer
			},
			mech: smtpoauth.MechOAuthBearer,
		},
		{
			name: "ServerNameLocalhost",
			edit: func(_ *testing.T, _ *sendTestBundle, cfg *smtpoauth.Config) { cfg.ServerName = "localhost" },
			mech: smtpoauth.MechXOAUTH2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupSendTest(t, smtpoauthtest.Config{})
			cfg := b.cfg
			if tt.edit != nil {
				tt.edit(t, b, &cfg)
			}
			m := &smtpoauth.Message{
				From: "alice@example.com",
				To:   []string{"bob@example.net", "carol@example.org"},
				Data: []byte("Subject: hello\r\n\r\nHi Bob.\r\n.leading dot\r\n"),
			}
			res, err := newSender(t, cfg).Send(t.Context(), m)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if got := res.Accepted(); !slices.Equal(got, m.To) {
				t.Errorf("Accepted = %q, want %q", got, m.To)
			}
			if res.Reply == nil || res.Reply.Code != 250 {
				t.Errorf("Reply = %+v, want 250", res.Reply)
			}
			got := waitMessages(t, b.srv, 1)[0]
			if got.Username != "alice@example.com" || got.Mechanism != tt.mech || got.From != m.From ||
				!slices.Equal(got.To, m.To) || !bytes.Equal(got.Data, m.Data) {
				t.Errorf("server received %+v (data %q)", got, got.Data)
			}
		})
	}
}

func TestSenderRecipients(t *testing.T) {
	t.Parallel()

	t.Run("RecordsARejectedRecipientAndDeliversToTheOthers", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		b.srv.SetRcptReply("nobody@example.com", 550, [3]int{5, 1, 1}, "The email account that you tried to reach does not exist.")
		m := &smtpoauth.Message{
			From: "alice@example.com",
			To:   []string{"bob@example.net", "nobody@example.com", "carol@example.org"},
			Data: []byte("Subject: hi\r\n\r\nHi.\r\n"),
		}
		res, err := newSender(t, b.cfg).Send(t.Context(), m)
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		rejected := res.Rejected()
		if len(rejected) != 1 || rejected[0].Address != "nobody@example.com" ||
			rejected[0].Reply.Code != 550 || rejected[0].Reply.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
			t.Errorf("Rejected = %+v", rejected)
		}
		if got := res.Accepted(); !slices.Equal(got, []string{"bob@example.net", "carol@example.org"}) {
			t.Errorf("Accepted = %q", got)
		}
		if got := waitMessages(t, b.srv, 1)[0].To; !slices.Equal(got, []string{"bob@example.net", "carol@example.org"}) {
			t.Errorf("server delivered to %q", got)
		}
	})

	t.Run("AllRejectedIsAnErrorWithTheResult", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		b.srv.SetRcptReply("nobody@example.com", 550, [3]int{5, 1, 1}, "No such user")
		b.srv.SetRcptReply("full@example.com", 452, [3]int{4, 2, 2}, "Mailbox full")
		m := &smtpoauth.Message{
			From: "alice@example.com",
			To:   []string{"nobody@example.com", "full@example.com"},
			Data: []byte("Subject: hi\r\n\r\nHi.\r\n"),
		}
		res, err := newSender(t, b.cfg).Send(t.Context(), m)
		requireSendError(t, err, smtpoauth.StageRcpt)
		var reply *smtp.SMTPError
		if !errors.As(err, &reply) || reply.Code != 550 {
			t.Errorf("cause = %v, want the first rejection", err)
		}
		if res == nil || len(res.Rejected()) != 2 || res.Reply != nil {
			t.Fatalf("Result = %+v", res)
		}
		if res.Recipients[1].Reply.Code != 452 {
			t.Errorf("second recipient's reply = %+v", res.Recipients[1].Reply)
		}
		if n := b.srv.Stats().Messages; n != 0 {
			t.Errorf("server accepted %d messages", n)
		}
	})
}

func TestSenderAuthentication(t *testing.T) {
	t.Parallel()

	t.Run("GoogleRejectsAnUnknownToken", func(t *testing.T) {
		t.Parallel()
		for _, mech := range []string{smtpoauth.MechXOAUTH2, smtpoauth.MechOAuthBearer} {
			b := setupSendTest(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorGoogle})
			cfg := b.cfg
			cfg.Mechanism = mech
			cfg.TokenSource = staticToken("ya29.not-issued-here")
			_, err := newSender(t, cfg).Send(t.Context(), testMessage)
			ae := requireAuthError(t, err, "400", 535, smtp.EnhancedCode{5, 7, 8})
			if ae.Mechanism != mech || ae.Scope != "https://mail.google.com/" {
				t.Errorf("%s: AuthError = %+v", mech, ae)
			}
			if strings.Contains(err.Error(), "ya29") {
				t.Errorf("%s: error %q contains the token", mech, err)
			}
			if st := b.srv.Stats(); st.FailedLogins != 1 || st.Logins != 0 {
				t.Errorf("%s: stats %+v, want one failed login", mech, st)
			}
		}
	})

	t.Run("MicrosoftRejectsAnUnknownToken", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		cfg := b.cfg
		cfg.TokenSource = staticToken("EwB.not-issued-here")
		_, err := newSender(t, cfg).Send(t.Context(), testMessage)
		requireAuthError(t, err, "", 535, smtp.EnhancedCode{5, 7, 3})
	})

	t.Run("MicrosoftDoesNotOfferOAUTHBEARER", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		cfg := b.cfg
		cfg.Mechanism = smtpoauth.MechOAuthBearer
		_, err := newSender(t, cfg).Send(t.Context(), testMessage)
		requireSendError(t, err, smtpoauth.StageAuth)
		if !errors.Is(err, smtpoauth.ErrMechanismNotOffered) {
			t.Errorf("error = %v, want ErrMechanismNotOffered", err)
		}
		if st := b.srv.Stats(); st.FailedLogins != 0 {
			t.Errorf("a token was sent: %+v", st)
		}
	})

	t.Run("TokenForAnotherMailboxIsRejected", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		cfg := b.cfg
		cfg.TokenSource = staticToken(b.srv.IssueAccessToken("mallory@example.com"))
		_, err := newSender(t, cfg).Send(t.Context(), testMessage)
		requireAuthError(t, err, "400", 535, smtp.EnhancedCode{5, 7, 8})
	})

	t.Run("RetriesOnceWithAFreshTokenFromTheCache", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		revoked := b.srv.IssueAccessToken("alice@example.com")
		b.srv.Revoke(revoked)
		fresh := b.srv.IssueAccessToken("alice@example.com")
		var calls int
		src := tokenFunc(func() (*oauth2.Token, error) {
			calls++
			tok := revoked
			if calls > 1 {
				tok = fresh
			}
			return &oauth2.Token{AccessToken: tok, Expiry: time.Now().Add(time.Hour)}, nil
		})
		cfg := b.cfg
		cfg.TokenSource = smtpoauth.NewTokenCache(src, 0)
		if _, err := newSender(t, cfg).Send(t.Context(), testMessage); err != nil {
			t.Fatalf("Send: %v", err)
		}
		if st := b.srv.Stats(); st.FailedLogins != 1 || st.Logins != 1 || st.Messages != 1 {
			t.Errorf("stats %+v, want one failed and one good login", st)
		}
		if calls != 2 {
			t.Errorf("source called %d times, want 2", calls)
		}
	})

	t.Run("WithoutInvalidateThereIsNoRetry", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		cfg := b.cfg
		cfg.TokenSource = staticToken("ya29.not-issued-here")
		newSender(t, cfg).Send(t.Context(), testMessage)
		if st := b.srv.Stats(); st.FailedLogins != 1 {
			t.Errorf("stats %+v, want exactly one attempt", st)
		}
	})

	t.Run("RefreshTokenEndToEnd", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		b.srv.AddClient("sendq", "s3cret")
		rt := b.srv.NewRefreshToken("sendq", "alice@example.com")
		oc := &oauth2.Config{ClientID: "sendq", ClientSecret: "s3cret", Endpoint: oauth2.Endpoint{TokenURL: b.srv.TokenURL}}
		cfg := b.cfg
		cfg.TokenSource = smtpoauth.NewTokenCache(smtpoauth.NewRefreshTokenSource(context.Background(), oc, rt, nil), 0)
		s := newSender(t, cfg)
		for range 2 {
			if _, err := s.Send(t.Context(), testMessage); err != nil {
				t.Fatalf("Send: %v", err)
			}
		}
		if st := b.srv.Stats(); st.TokenGrants[smtpoauthtest.GrantRefreshToken] != 1 || st.Logins != 1 || st.Messages != 2 {
			t.Errorf("stats %+v, want one refresh and one login for two messages", st)
		}
	})

	t.Run("TokenEndpointFailureKeepsTheRetrieveError", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		b.srv.AddClient("sendq", "s3cret")
		rt := b.srv.NewRefreshToken("sendq", "alice@example.com")
		b.srv.Revoke(rt)
		oc := &oauth2.Config{ClientID: "sendq", ClientSecret: "s3cret", Endpoint: oauth2.Endpoint{TokenURL: b.srv.TokenURL}}
		cfg := b.cfg
		cfg.TokenSource = smtpoauth.NewRefreshTokenSource(context.Background(), oc, rt, nil)
		_, err := newSender(t, cfg).Send(t.Context(), testMessage)
		requireSendError(t, err, smtpoauth.StageToken)
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
			t.Errorf("error = %v, want an invalid_grant *oauth2.RetrieveError", err)
		}
	})
}

func TestSenderTLS(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		edit  func(t *testing.T, b *sendTestBundle, cfg *smtpoauth.Config)
		stage smtpoauth.Stage
		check func(t *testing.T, err error)
	}{
		{
			name:  "UntrustedCertificate",
			edit:  func(_ *testing.T, _ *sendTestBundle, cfg *smtpoauth.Config) { cfg.RootCAs = nil },
			stage: smtpoauth.StageTLS,
			check: requireCertificateError,
		},
		{
			name: "UntrustedCertificateImplicit",
			edit: func(t *testing.T, b *sendTestBundle, cfg *smtpoauth.Config) {
				cfg.Host, cfg.Port = splitHostPort(t, b.srv.SMTPSAddr)
				cfg.TLS = smtpoauth.TLSImplicit
				cfg.RootCAs = nil
			},
			stage: smtpoauth.StageTLS,
			check: requireCertificateError,
		},
		{
			name:  "CertificateForAnotherName",
			edit:  func(_ *testing.T, _ *sendTestBundle, cfg *smtpoauth.Config) { cfg.ServerName = "smtp.gmail.com" },
			stage: smtpoauth.StageTLS,
			check: requireCertificateError,
		},
		{
			// The server offers no AUTH before TLS, so no token leaves.
			name: "PlaintextToLoopbackWhenAllowed",
			edit: func(_ *testing.T, _ *sendTestBundle, cfg *smtpoauth.Config) {
				cfg.TLS = smtpoauth.TLSNone
				cfg.AllowInsecureLoopback = true
			},
			stage: smtpoauth.StageAuth,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, smtpoauth.ErrMechanismNotOffered) {
					t.Errorf("error = %v, want ErrMechanismNotOffered", err)
				}
			},
		},
		{
			name: "ImplicitTLSToTheSTARTTLSPort",
			edit: func(_ *testing.T, _ *sendTestBundle, cfg *smtpoauth.Config) {
				cfg.TLS = smtpoauth.TLSImplicit
				cfg.CommandTimeout = 2 * time.Second
			},
			stage: smtpoauth.StageTLS,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupSendTest(t, smtpoauthtest.Config{})
			cfg := b.cfg
			tt.edit(t, b, &cfg)
			_, err := newSender(t, cfg).Send(t.Context(), testMessage)
			requireSendError(t, err, tt.stage)
			if tt.check != nil {
				tt.check(t, err)
			}
			if st := b.srv.Stats(); st.Logins+st.FailedLogins != 0 {
				t.Errorf("a token was sent: %+v", st)
			}
		})
	}
}

func requireCertificateError(t *testing.T, err error) {
	t.Helper()
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) {
		t.Errorf("error = %v, want a *tls.CertificateVerificationError", err)
	}
}

func TestSenderConcurrentSendsShareTheDebugWriterSafely(t *testing.T) {
	t.Parallel()
	b := setupSendTest(t, smtpoauthtest.Config{})
	token := b.srv.IssueAccessToken("alice@example.com")
	var trace bytes.Buffer
	var logs bytes.Buffer
	var logsMu sync.Mutex
	cfg := b.cfg
	cfg.TokenSource = staticToken(token)
	cfg.DebugWriter = &trace
	cfg.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logsMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.DisablePooling = true // one session per Send, however they overlap
	s := newSender(t, cfg)

	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			m := &smtpoauth.Message{
				From: "alice@example.com",
				To:   []string{fmt.Sprintf("rcpt%d@example.net", i)},
				Data: []byte("Subject: secret plans\r\n\r\nThe body.\r\n"),
			}
			_, err := s.Send(t.Context(), m)
			errs <- err
		})
	}
	wg.Wait()
	s.Close() // waits for the QUITs, which the trace records
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	waitMessages(t, b.srv, n)

	got := trace.String()
	// Whole lines: two sessions' STARTTLS may follow one another.
	lines := map[string]int{}
	for _, line := range strings.SplitAfter(got, "\r\n") {
		lines[line]++
	}
	if lines["AUTH XOAUTH2 [redacted]\r\n"] != n || lines["STARTTLS\r\n"] != n {
		t.Errorf("trace lacks the %d sessions:\n%s", n, got)
	}
	for _, line := range strings.SplitAfter(got, "\r\n") {
		if line != "" && !strings.HasSuffix(line, "\r\n") {
			t.Errorf("torn trace line %q", line)
		}
	}
	logsMu.Lock()
	defer logsMu.Unlock()
	for _, secret := range []string{token, "secret plans", "The body"} {
		if strings.Contains(got, secret) || strings.Contains(logs.String(), secret) {
			t.Errorf("trace or log contains %q", secret)
		}
	}
	if !strings.Contains(logs.String(), "smtp_code=250") {
		t.Errorf("log lacks the reply code:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func TestSenderLogsTheRetryWithoutTheToken(t *testing.T) {
	t.Parallel()
	b := setupSendTest(t, smtpoauthtest.Config{})
	var logs bytes.Buffer
	cfg := b.cfg
	cfg.TokenSource = &invalidatingSource{tokens: []string{"ya29.bad-token", b.srv.IssueAccessToken("alice@example.com")}}
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if _, err := newSender(t, cfg).Send(t.Context(), testMessage); err != nil {
		t.Fatal(err)
	}
	got := logs.String()
	if !strings.Contains(got, "level=WARN") || !strings.Contains(got, "smtp_code=535") || !strings.Contains(got, "enhanced_code=5.7.8") {
		t.Errorf("log = %q", got)
	}
	if strings.Contains(got, "ya29") {
		t.Errorf("log contains the token: %q", got)
	}
}

func TestNewSenderValidates(t *testing.T) {
	t.Parallel()
	valid := smtpoauth.Config{
		Host:        "smtp.gmail.com",
		Port:        587,
		Username:    "alice@example.com",
		TokenSource: staticToken("tok"),
	}
	tests := []struct {
		name         string
		edit         func(c *smtpoauth.Config)
		wantField    string // "" for a valid config
		wantInsecure bool
	}{
		{name: "Valid", edit: func(*smtpoauth.Config) {}},
		{name: "NoHost", edit: func(c *smtpoauth.Config) { c.Host = "" }, wantField: "Host"},
		{name: "HostWithSpace", edit: func(c *smtpoauth.Config) { c.Host = "smtp gmail" }, wantField: "Host"},
		{name: "HostWithPort", edit: func(c *smtpoauth.Config) { c.Host = "smtp.gmail.com:587" }, wantField: "Host"},
		{name: "IPv6Host", edit: func(c *smtpoauth.Config) { c.Host = "2001:db8::25" }},
		{name: "NoPort", edit: func(c *smtpoauth.Config) { c.Port = 0 }, wantField: "Port"},
		{name: "PortTooLarge", edit: func(c *smtpoauth.Config) { c.Port = 70000 }, wantField: "Port"},
		{name: "NoUsername", edit: func(c *smtpoauth.Config) { c.Username = "" }, wantField: "Username"},
		{name: "NoTokenSource", edit: func(c *smtpoauth.Config) { c.TokenSource = nil }, wantField: "TokenSource"},
		{name: "UnknownMechanism", edit: func(c *smtpoauth.Config) { c.Mechanism = "PLAIN" }, wantField: "Mechanism"},
		{name: "UnknownTLSMode", edit: func(c *smtpoauth.Config) { c.TLS = "ssl" }, wantField: "TLS"},
		{name: "LocalNameWithSpace", edit: func(c *smtpoauth.Config) { c.LocalName = "a b" }, wantField: "LocalName"},
		{name: "NegativeDialTimeout", edit: func(c *smtpoauth.Config) { c.DialTimeout = -1 }, wantField: "DialTimeout"},
		{name: "NegativeCommandTimeout", edit: func(c *smtpoauth.Config) { c.CommandTimeout = -1 }, wantField: "CommandTimeout"},
		{name: "NegativeSubmissionTimeout", edit: func(c *smtpoauth.Config) { c.SubmissionTimeout = -1 }, wantField: "SubmissionTimeout"},
		{name: "NegativeMaxConns", edit: func(c *smtpoauth.Config) { c.MaxConns = -1 }, wantField: "MaxConns"},
		{name: "NegativeMaxIdleConns", edit: func(c *smtpoauth.Config) { c.MaxIdleConns = -1 }, wantField: "MaxIdleConns"},
		{name: "NegativeMaxMessagesPerConn", edit: func(c *smtpoauth.Config) { c.MaxMessagesPerConn = -1 }, wantField: "MaxMessagesPerConn"},
		{name: "NegativeIdleTimeout", edit: func(c *smtpoauth.Config) { c.IdleTimeout = -1 }, wantField: "IdleTimeout"},
		{name: "PoolingDisabled", edit: func(c *smtpoauth.Config) { c.DisablePooling = true }},
		{name: "MaxConns", edit: func(c *smtpoauth.Config) { c.MaxConns = 3 }},
		{
			name:         "PlaintextWithoutPermission",
			edit:         func(c *smtpoauth.Config) { c.Host, c.TLS = "127.0.0.1", smtpoauth.TLSNone },
			wantField:    "AllowInsecureLoopback",
			wantInsecure: true,
		},
		{
			name: "PlaintextToANonLoopbackAddress",
			edit: func(c *smtpoauth.Config) {
				c.Host, c.TLS, c.AllowInsecureLoopback = "192.0.2.1", smtpoauth.TLSNone, true
			},
			wantField:    "Host",
			wantInsecure: true,
		},
		{
			name: "PlaintextToLoopbackWhenAllowed",
			edit: func(c *smtpoauth.Config) {
				c.Host, c.TLS, c.AllowInsecureLoopback = "::1", smtpoauth.TLSNone, true
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := valid
			tt.edit(&cfg)
			s, err := smtpoauth.NewSender(cfg)
			if tt.wantField == "" {
				if err != nil || s == nil {
					t.Fatalf("NewSender: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewSender succeeded")
			}
			if !strings.Contains(err.Error(), "Config."+tt.wantField) {
				t.Errorf("error %q does not name Config.%s", err, tt.wantField)
			}
			if errors.Is(err, smtpoauth.ErrInsecureTransport) != tt.wantInsecure {
				t.Errorf("errors.Is(%v, ErrInsecureTransport) = %t", err, !tt.wantInsecure)
			}
		})
	}
}

func TestConfigWithDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   smtpoauth.Config
		tls  smtpoauth.TLSMode
	}{
		{name: "Port587IsSTARTTLS", in: smtpoauth.Config{Host: "h", Port: 587}, tls: smtpoauth.TLSStartTLS},
		{name: "Port465IsImplicit", in: smtpoauth.Config{Host: "h", Port: 465}, tls: smtpoauth.TLSImplicit},
		{name: "Port25IsSTARTTLS", in: smtpoauth.Config{Host: "h", Port: 25}, tls: smtpoauth.TLSStartTLS},
		{name: "ExplicitModeIsKept", in: smtpoauth.Config{Host: "h", Port: 465, TLS: smtpoauth.TLSStartTLS}, tls: smtpoauth.TLSStartTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := tt.in.WithDefaults()
			if c.TLS != tt.tls {
				t.Errorf("TLS = %q, want %q", c.TLS, tt.tls)
			}
			if c.ServerName != "h" || c.Mechanism != smtpoauth.MechXOAUTH2 || c.LocalName != smtpoauth.DefaultLocalName ||
				c.DialTimeout != smtpoauth.DefaultDialTimeout || c.CommandTimeout != smtpoauth.DefaultCommandTimeout ||
				c.SubmissionTimeout != smtpoauth.DefaultSubmissionTimeout {
				t.Errorf("defaults = %+v", c)
			}
			if c.MaxConns != 0 || c.MaxIdleConns != smtpoauth.DefaultMaxIdleConns || c.MaxMessagesPerConn != smtpoauth.DefaultMaxMessagesPerConn ||
				c.IdleTimeout != smtpoauth.DefaultIdleTimeout || c.DisablePooling {
				t.Errorf("pool defaults = %+v", c)
			}
		})
	}
}

func TestSendRejectsAnInvalidMessageBeforeConnecting(t *testing.T) {
	t.Parallel()
	ts := &invalidatingSource{tokens: []string{"tok"}}
	s := newSender(t, smtpoauth.Config{Host: "192.0.2.1", Port: 587, Username: "alice@example.com", TokenSource: ts})
	for _, m := range []*smtpoauth.Message{
		nil,
		{From: "alice@example.com", Data: []byte("x")},
		{From: "alice@example.com", To: []string{"bob@example.com\r\nRCPT TO:<eve@example.com>"}},
		{From: "alice@example.com\r\n", To: []string{"bob@example.com"}},
		{From: "alice@example.com", To: []string{""}},
	} {
		if _, err := s.Send(t.Context(), m); !errors.Is(err, smtpoauth.ErrInvalidMessage) {
			t.Errorf("Send(%+v) = %v, want ErrInvalidMessage", m, err)
		}
	}
	if ts.next != 0 {
		t.Error("a token was fetched")
	}
}

func TestLoadCertPool(t *testing.T) {
	t.Parallel()

	t.Run("TrustsTheFile", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		path := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(path, b.srv.CACertPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		pool, err := smtpoauth.LoadCertPool(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg := b.cfg
		cfg.RootCAs = pool
		if _, err := newSender(t, cfg).Send(t.Context(), testMessage); err != nil {
			t.Fatalf("Send with the loaded pool: %v", err)
		}
	})

	t.Run("MissingFile", func(t *testing.T) {
		t.Parallel()
		_, err := smtpoauth.LoadCertPool(filepath.Join(t.TempDir(), "nope.pem"))
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("err = %v, want os.ErrNotExist", err)
		}
	})

	t.Run("NoCertificateInFile", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "empty.pem")
		os.WriteFile(path, []byte("not a certificate\n"), 0o600)
		if _, err := smtpoauth.LoadCertPool(path); err == nil {
			t.Error("LoadCertPool succeeded")
		}
	})
}
