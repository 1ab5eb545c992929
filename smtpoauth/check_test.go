package smtpoauth_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func TestSenderCheck(t *testing.T) {
	t.Parallel()

	t.Run("LogsInAndSendsNothing", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		if err := newSender(t, b.cfg).Check(t.Context()); err != nil {
			t.Fatal(err)
		}
		if st := b.srv.Stats(); st.Logins != 1 || st.Messages != 0 {
			t.Errorf("stats %+v, want one login and no message", st)
		}
	})

	t.Run("LogsInAgainBesideAPooledConnection", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		s := newSender(t, b.cfg)
		t.Cleanup(func() { s.Close() })
		if _, err := s.Send(t.Context(), testMessage); err != nil {
			t.Fatal(err)
		}
		if err := s.Check(t.Context()); err != nil {
			t.Fatal(err)
		}
		if st := b.srv.Stats(); st.Logins != 2 {
			t.Errorf("%d logins, want 2: Check must not reuse the idle connection", st.Logins)
		}
		if n := smtpoauth.IdleConns(s); n != 1 {
			t.Errorf("%d idle connections, want the pooled one only", n)
		}
	})

	t.Run("SMTPAuthDisabledNeedsAHuman", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageAuth, Address: "alice@example.com", Code: 535,
			Enhanced: [3]int{5, 7, 139}, Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."})
		ts := &invalidatingSource{tokens: []string{b.srv.IssueAccessToken("alice@example.com"), b.srv.IssueAccessToken("alice@example.com")}}
		cfg := b.cfg
		cfg.TokenSource = ts
		err := newSender(t, cfg).Check(t.Context())
		requireAuthError(t, err, "", 535, smtp.EnhancedCode{5, 7, 139})
		if c := smtpoauth.Classify(err); c.Class != smtpoauth.ClassNeedsHuman || c.Hold != smtpoauth.HoldConfiguration {
			t.Errorf("classified %+v, want needs-human, configuration", c)
		}
		if len(ts.invalidated) != 0 {
			t.Errorf("invalidated %d tokens: a fresh token cannot help", len(ts.invalidated))
		}
	})

	t.Run("ARejectedTokenIsReplacedOnce", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		ts := &invalidatingSource{tokens: []string{"ya29.stale", b.srv.IssueAccessToken("alice@example.com")}}
		cfg := b.cfg
		cfg.TokenSource = ts
		if err := newSender(t, cfg).Check(t.Context()); err != nil {
			t.Fatal(err)
		}
		if st := b.srv.Stats(); st.FailedLogins != 1 || st.Logins != 1 {
			t.Errorf("stats %+v, want a failed login then a login", st)
		}
	})

	t.Run("ATokenForAnotherMailboxFails", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		cfg := b.cfg
		cfg.TokenSource = staticToken(b.srv.IssueAccessToken("mallory@example.com"))
		err := newSender(t, cfg).Check(t.Context())
		requireAuthError(t, err, "400", 535, smtp.EnhancedCode{5, 7, 8})
		if c := smtpoauth.Classify(err); c.Class != smtpoauth.ClassAuth {
			t.Errorf("classified %+v, want auth", c)
		}
	})

	t.Run("TokenSourceFailure", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		cfg := b.cfg
		cfg.TokenSource = failingSource{errors.New("token endpoint down")}
		requireSendError(t, newSender(t, cfg).Check(t.Context()), smtpoauth.StageToken)
		if st := b.srv.Stats(); st.Logins+st.FailedLogins != 0 {
			t.Errorf("stats %+v: connected without a token", st)
		}
	})
}

type failingSource struct{ err error }

func (s failingSource) Token() (*oauth2.Token, error) { return nil, s.err }

func ExampleSender_Check() {
	// An in-process stand-in for smtp.office365.com, where SMTP AUTH is
	// disabled for the mailbox.
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
	defer srv.Close()
	srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageAuth, Address: "alice@contoso.com", Code: 535,
		Enhanced: [3]int{5, 7, 139}, Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."})

	host, port, _ := net.SplitHostPort(srv.SMTPAddr)
	portNum, _ := strconv.Atoi(port)
	for _, user := range []string{"bob@contoso.com", "alice@contoso.com"} {
		sender, _ := smtpoauth.NewSender(smtpoauth.Config{
			Host:        host,
			Port:        portNum,
			RootCAs:     srv.CertPool(),
			Username:    user,
			TokenSource: staticToken(srv.IssueAccessToken(user)),
		})
		if err := sender.Check(context.Background()); err != nil {
			c := smtpoauth.Classify(err)
			fmt.Printf("%s: %s, hold %s: %d %v\n", user, c.Class, c.Hold, c.Code, c.EnhancedCode)
			continue
		}
		fmt.Printf("%s: logged in\n", user)
	}
	// Output:
	// bob@contoso.com: logged in
	// alice@contoso.com: needs-human, hold configuration: 535 [5 7 139]
}
