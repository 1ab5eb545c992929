package smtpoauthtest_test

import (
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

var (
	googleChallenge = "334 " + base64.StdEncoding.EncodeToString([]byte(smtpoauthtest.GoogleErrorChallenge))
	google535       = []string{
		"535-5.7.8 Username and Password not accepted. For more information, go to",
		"535 5.7.8  https://support.google.com/mail/?p=BadCredentials",
	}
	microsoft535 = []string{"535 5.7.3 Authentication unsuccessful"}
)

func TestGreeting(t *testing.T) {
	t.Parallel()

	t.Run("PlaintextEHLOOffersSTARTTLSButNoAUTH", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, greeting := dialWire(t, b.srv)
		equalLines(t, "greeting", greeting, []string{"220 localhost ESMTP Service Ready"})
		ehlo := w.cmd("EHLO client.example")
		if !slices.Contains(ehlo, "250-STARTTLS") {
			t.Errorf("EHLO does not offer STARTTLS: %q", ehlo)
		}
		for _, l := range ehlo {
			if strings.Contains(l, "AUTH") {
				t.Errorf("EHLO offers AUTH before TLS: %q", l)
			}
		}
	})

	t.Run("EHLOAfterSTARTTLSOffersBothMechanisms", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWire(t, b.srv)
		ehlo := w.startTLS(b.srv)
		for _, want := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "AUTH XOAUTH2 OAUTHBEARER", "SIZE 35882577"} {
			if !slices.ContainsFunc(ehlo, func(l string) bool { return l[4:] == want }) {
				t.Errorf("EHLO lacks %q: %q", want, ehlo)
			}
		}
		if slices.ContainsFunc(ehlo, func(l string) bool { return strings.Contains(l, "STARTTLS") }) {
			t.Errorf("EHLO offers STARTTLS again: %q", ehlo)
		}
	})

	t.Run("MicrosoftOffersOnlyXOAUTH2OverImplicitTLS", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, Hostname: "smtp.office365.test"})
		w, greeting := dialWireTLS(t, b.srv)
		equalLines(t, "greeting", greeting, []string{"220 smtp.office365.test ESMTP Service Ready"})
		ehlo := w.cmd("EHLO client.example")
		if !slices.Contains(ehlo, "250-AUTH XOAUTH2") || !slices.Contains(ehlo, "250 SIZE 157286400") {
			t.Errorf("EHLO: %q", ehlo)
		}
		got := w.cmd("AUTH OAUTHBEARER " + oauthBearerIR("a@example.com", "x"))
		equalLines(t, "AUTH OAUTHBEARER", got, []string{"504 5.7.4 Unrecognized authentication type"})
	})
}

func TestAuthRequiresTLS(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		flavor   smtpoauthtest.Flavor
		wantAuth []string
		wantMail []string
	}{
		{smtpoauthtest.FlavorGoogle,
			[]string{"530 5.7.0 Must issue a STARTTLS command first."},
			[]string{"530 5.7.0 Must issue a STARTTLS command first."}},
		{smtpoauthtest.FlavorMicrosoft,
			[]string{"504 5.7.4 Unrecognized authentication type"},
			[]string{"530 5.7.57 Client not authenticated to send mail."}},
	} {
		t.Run(string(tt.flavor), func(t *testing.T) {
			t.Parallel()
			b := setup(t, smtpoauthtest.Config{Flavor: tt.flavor})
			tok := b.srv.IssueAccessToken("alice@example.com")
			w, _ := dialWire(t, b.srv)
			w.cmd("EHLO client.example")
			equalLines(t, "AUTH before TLS", w.cmd("AUTH XOAUTH2 "+xoauth2IR("alice@example.com", tok)), tt.wantAuth)
			equalLines(t, "MAIL before TLS", w.cmd("MAIL FROM:<alice@example.com>"), tt.wantMail)
			if st := b.srv.Stats(); st.Logins != 0 || st.FailedLogins != 0 {
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

func TestAuthTranscripts(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"

	t.Run("GoogleXOAUTH2FailureSendsJSONChallengeThen535", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH", w.cmd("AUTH XOAUTH2 "+xoauth2IR(user, "not-a-token")), []string{googleChallenge})
		equalLines(t, "empty response", w.cmd(""), google535)
		// The session is still usable, unauthenticated.
		equalLines(t, "MAIL", w.cmd("MAIL FROM:<alice@example.com>"), []string{
			"530-5.7.0 Authentication Required. For more information, go to",
			"530 5.7.0  https://support.google.com/mail/?p=WantAuthError",
		})
		if st := b.srv.Stats(); st.FailedLogins != 1 || st.Logins != 0 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("GoogleOAUTHBEARERFailureSendsJSONChallengeThen535", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH", w.cmd("AUTH OAUTHBEARER "+oauthBearerIR(user, "not-a-token")), []string{googleChallenge})
		equalLines(t, "0x01 response", w.cmd("AQ=="), google535)
	})

	t.Run("MicrosoftXOAUTH2FailureIs535AtOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH", w.cmd("AUTH XOAUTH2 "+xoauth2IR(user, "not-a-token")), microsoft535)
		equalLines(t, "MAIL", w.cmd("MAIL FROM:<alice@example.com>"), []string{"530 5.7.57 Client not authenticated to send mail."})
	})

	t.Run("XOAUTH2Succeeds", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH", w.cmd("AUTH XOAUTH2 "+xoauth2IR(user, b.srv.IssueAccessToken(user))), []string{"235 2.0.0 Authentication succeeded"})
		equalLines(t, "second AUTH", w.cmd("AUTH XOAUTH2 "+xoauth2IR(user, "x")), []string{"503 5.5.1 Already authenticated"})
		if st := b.srv.Stats(); st.Logins != 1 || st.FailedLogins != 0 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("TwoStepXOAUTH2AsMicrosoftAccepts", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH", w.cmd("AUTH XOAUTH2"), []string{"334 "})
		equalLines(t, "response", w.cmd(xoauth2IR(user, b.srv.IssueAccessToken(user))), []string{"235 2.0.0 Authentication succeeded"})
	})

	t.Run("TwoStepFailureGetsChallenge", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH", w.cmd("AUTH XOAUTH2"), []string{"334 "})
		equalLines(t, "response", w.cmd(xoauth2IR(user, "nope")), []string{googleChallenge})
		equalLines(t, "empty response", w.cmd(""), google535)
	})

	t.Run("OAUTHBEARERSucceedsWithGoSASLClient", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		c, err := smtp.DialTLS(b.srv.SMTPSAddr, tlsConfig(b.srv))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Auth(sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{
			Username: user, Token: b.srv.IssueAccessToken(user), Host: "localhost", Port: 465,
		}))
		if err != nil {
			t.Fatalf("auth: %v", err)
		}
	})

	t.Run("MalformedResponseFailsLikeABadToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		bad := base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Basic xyz\x01\x01"))
		equalLines(t, "AUTH", w.cmd("AUTH XOAUTH2 "+bad), []string{googleChallenge})
		equalLines(t, "empty response", w.cmd(""), google535)
	})

	t.Run("AbortAfterChallenge", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(user, "nope"))
		equalLines(t, "abort", w.cmd("*"), []string{"501 5.0.0 Negotiation cancelled"})
	})

	t.Run("UnknownMechanism", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH PLAIN", w.cmd("AUTH PLAIN AGFsaWNlAHB3"), []string{"504 5.7.4 Unrecognized Authentication Type."})
	})
}

func TestTokenChecks(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"

	// authOnce runs one XOAUTH2 exchange over implicit TLS and returns the
	// final reply.
	authOnce := func(t *testing.T, srv *smtpoauthtest.Server, mech, user, token string) []string {
		t.Helper()
		w, _ := dialWireTLS(t, srv)
		w.cmd("EHLO client.example")
		ir := xoauth2IR(user, token)
		if mech == smtpoauthtest.MechOAuthBearer {
			ir = oauthBearerIR(user, token)
		}
		got := w.cmd("AUTH " + mech + " " + ir)
		if strings.HasPrefix(got[0], "334 ") {
			return w.cmd("AQ==")
		}
		return got
	}

	t.Run("ExpiredTokenIsRejected", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{AccessTokenLifetime: time.Minute})
		tok := b.srv.IssueAccessToken(user)
		b.clock.Advance(59 * time.Second)
		equalLines(t, "before expiry", authOnce(t, b.srv, smtpoauthtest.MechXOAUTH2, user, tok), []string{"235 2.0.0 Authentication succeeded"})
		b.clock.Advance(time.Second)
		equalLines(t, "at expiry", authOnce(t, b.srv, smtpoauthtest.MechXOAUTH2, user, tok), google535)
		equalLines(t, "at expiry, OAUTHBEARER", authOnce(t, b.srv, smtpoauthtest.MechOAuthBearer, user, tok), google535)
	})

	t.Run("AdvanceExpiresTokens", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		tok := b.srv.IssueAccessToken(user)
		b.srv.Advance(smtpoauthtest.DefaultAccessTokenLifetime)
		equalLines(t, "after Advance", authOnce(t, b.srv, smtpoauthtest.MechXOAUTH2, user, tok), microsoft535)
	})

	t.Run("TokenOfAnotherUserIsRejected", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		tok := b.srv.IssueAccessToken("bob@example.com")
		equalLines(t, "XOAUTH2", authOnce(t, b.srv, smtpoauthtest.MechXOAUTH2, user, tok), google535)
		equalLines(t, "OAUTHBEARER", authOnce(t, b.srv, smtpoauthtest.MechOAuthBearer, user, tok), google535)
		equalLines(t, "user compared case-insensitively", authOnce(t, b.srv, smtpoauthtest.MechXOAUTH2, "Bob@Example.com", tok), []string{"235 2.0.0 Authentication succeeded"})
		if st := b.srv.Stats(); st.FailedLogins != 2 || st.Logins != 1 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("RevokedAccessTokenIsRejected", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		tok := b.srv.IssueAccessToken(user)
		b.srv.Revoke(tok)
		equalLines(t, "revoked", authOnce(t, b.srv, smtpoauthtest.MechXOAUTH2, user, tok), google535)
	})

	t.Run("TokenFromAnotherServerIsRejected", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		other := setup(t, smtpoauthtest.Config{})
		equalLines(t, "foreign token", authOnce(t, b.srv, smtpoauthtest.MechXOAUTH2, user, other.srv.IssueAccessToken(user)), google535)
	})
}

func TestSubmission(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"
	body := "From: alice@example.com\r\nSubject: hi\r\n\r\n.leading dot\r\nbye\r\n"

	for _, implicit := range []bool{false, true} {
		name := "STARTTLS"
		if implicit {
			name = "ImplicitTLS"
		}
		t.Run(name+"DeliversAndCaptures", func(t *testing.T) {
			t.Parallel()
			b := setup(t, smtpoauthtest.Config{})
			c := dialClient(t, b.srv, implicit, user, b.srv.IssueAccessToken(user))
			if err := c.SendMail(user, []string{"bob@example.net", "carol@example.org"}, strings.NewReader(body)); err != nil {
				t.Fatalf("SendMail: %v", err)
			}
			msgs, err := b.srv.WaitMessages(testContext(t), 1)
			if err != nil {
				t.Fatal(err)
			}
			m := msgs[0]
			if m.Username != user || m.From != user || m.Mechanism != smtpoauthtest.MechXOAUTH2 ||
				!slices.Equal(m.To, []string{"bob@example.net", "carol@example.org"}) ||
				string(m.Data) != body || !m.ReceivedAt.Equal(b.clock.Now()) {
				t.Errorf("captured %+v", m)
			}
			// Messages returns copies.
			msgs[0].To[0] = "changed"
			if got := b.srv.Messages()[0].To[0]; got != "bob@example.net" {
				t.Errorf("Messages shares memory: %q", got)
			}
		})
	}

	t.Run("MAILBeforeAUTHIsRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		c, err := smtp.DialStartTLS(b.srv.SMTPAddr, tlsConfig(b.srv))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Mail(user, nil)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 530 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 57}) {
			t.Errorf("MAIL before AUTH: %v", err)
		}
	})

	t.Run("SetRcptReplyRejectsOneRecipient", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.SetRcptReply("Nobody@Example.net", 550, [3]int{5, 1, 1}, "The email account that you tried to reach does not exist.")
		c := dialClient(t, b.srv, true, user, b.srv.IssueAccessToken(user))
		if err := c.Mail(user, nil); err != nil {
			t.Fatal(err)
		}
		err := c.Rcpt("nobody@example.net", nil)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) ||
			se.Message != "The email account that you tried to reach does not exist." {
			t.Fatalf("RCPT nobody: %v", err)
		}
		if err := c.Rcpt("bob@example.net", nil); err != nil {
			t.Fatalf("RCPT bob: %v", err)
		}
		wc, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		wc.Write([]byte(body))
		if err := wc.Close(); err != nil {
			t.Fatal(err)
		}
		msgs, err := b.srv.WaitMessages(testContext(t), 1)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(msgs[0].To, []string{"bob@example.net"}) {
			t.Errorf("To = %q", msgs[0].To)
		}

		// Code 0 removes the scripted reply.
		b.srv.SetRcptReply("nobody@example.net", 0, [3]int{}, "")
		if err := c.Mail(user, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("nobody@example.net", nil); err != nil {
			t.Errorf("RCPT after clearing: %v", err)
		}
	})

	t.Run("SetRcptReplyMultiLineOnTheWire", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.SetRcptReply("nobody@example.net", 550, [3]int{5, 1, 1}, "The email account that you tried to reach does not exist. Please try\n https://support.google.com/mail/?p=NoSuchUser")
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(user, b.srv.IssueAccessToken(user)))
		w.cmd("MAIL FROM:<" + user + ">")
		equalLines(t, "RCPT", w.cmd("RCPT TO:<nobody@example.net>"), []string{
			"550-5.1.1 The email account that you tried to reach does not exist. Please try",
			"550 5.1.1  https://support.google.com/mail/?p=NoSuchUser",
		})
	})

	t.Run("ConcurrentSubmissions", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		const n = 8
		errs := make(chan error, n)
		for i := range n {
			go func() {
				c, err := smtp.DialTLS(b.srv.SMTPSAddr, tlsConfig(b.srv))
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				u := string(rune('a'+i)) + "@example.com"
				if err := c.Auth(xoauth2Client{u, b.srv.IssueAccessToken(u)}); err != nil {
					errs <- err
					return
				}
				errs <- c.SendMail(u, []string{"bob@example.net"}, strings.NewReader(body))
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		msgs, err := b.srv.WaitMessages(testContext(t), n)
		if err != nil || len(msgs) != n {
			t.Fatalf("WaitMessages: %d messages, %v", len(msgs), err)
		}
		if st := b.srv.Stats(); st.Logins != n || st.Messages != n {
			t.Errorf("stats: %+v", st)
		}
	})
}
