package smtpoauthtest_test

import (
	"strings"
	"testing"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func TestAuthFaults(t *testing.T) {
	t.Parallel()

	t.Run("SMTPAuthDisabledForOneMailbox", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageAuth, Address: "Alice@Contoso.com", Code: 535, Enhanced: [3]int{5, 7, 139},
			Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.", Times: 1})

		// A valid token does not help: the reply comes at once.
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH", w.cmd("AUTH XOAUTH2 "+xoauth2IR("alice@contoso.com", b.srv.IssueAccessToken("alice@contoso.com"))),
			[]string{"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."})

		// Other mailboxes are not affected, and Times ran out.
		for _, user := range []string{"bob@contoso.com", "alice@contoso.com"} {
			w, _ := dialWireTLS(t, b.srv)
			w.cmd("EHLO client.example")
			equalLines(t, "AUTH "+user, w.cmd("AUTH XOAUTH2 "+xoauth2IR(user, b.srv.IssueAccessToken(user))),
				authOK)
		}
		if st := b.srv.Stats(); st.FailedLogins != 1 || st.Logins != 2 {
			t.Errorf("stats %+v, want 1 failed and 2 logins", st)
		}
	})

	t.Run("AnAuthFaultCannotDrop", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		defer func() {
			if r := recover(); r == nil || !strings.Contains(r.(string), "Fault.Drop") {
				t.Errorf("panic %v, want one about Fault.Drop", r)
			}
		}()
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageAuth, Drop: true})
	})
}
