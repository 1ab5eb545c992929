package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// delegatedAccount is a refresh_token account whose refresh token is in
// the token store; {{provider}}, {{user}} and {{token_url}} vary.
const delegatedAccount = `accounts:
  - id: support
    provider: {{provider}}
    username: {{user}}
    smtp: {{smtp}}
    oauth:
      grant: refresh_token
      client_id: desktop-app
      client_secret_env: SUPPORT_CLIENT_SECRET
      refresh_token_in_store: true
      token_url: {{token_url}}
`

// Every failure class -check can meet, and success, for each grant.
func TestCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		class  smtpoauth.Class // the class the check must report; 0: success
		server smtpoauthtest.Config
		// account is the accounts file; "" means delegatedAccount.
		account string
		user    string
		// prepare sets up the provider and the store; rt is the refresh
		// token to store ("" stores none).
		prepare func(t *testing.T, b *testBundle) (rt string)
		want    []string // in the output
	}{
		{
			name: "DelegatedAccountWorks",
			prepare: func(t *testing.T, b *testBundle) string {
				return b.srv.NewRefreshToken("desktop-app", "alice@example.com")
			},
			want: []string{`Checking account "support": alice@example.com, grant refresh_token`,
				"OK: obtained an access token and logged in to 127.0.0.1:", "as alice@example.com; no mail was sent."},
		},
		{
			name:   "MicrosoftAppOnlyWorks",
			server: smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft},
			account: `accounts:
  - id: support
    provider: microsoft
    username: alice@contoso.com
    smtp: {{smtp}}
    oauth: {grant: client_credentials, tenant: contoso.com, client_id: daemon-app, client_secret_env: DAEMON_SECRET, token_url: {{token_url}}}
`,
			prepare: func(t *testing.T, b *testBundle) string {
				b.srv.AddClient("daemon-app", "daemon-secret")
				b.srv.SetClientMailboxes("daemon-app", "alice@contoso.com")
				b.env["DAEMON_SECRET"] = "daemon-secret"
				return ""
			},
			want: []string{"grant client_credentials", "OK: obtained an access token and logged in"},
		},
		{
			name: "GoogleServiceAccountWorks",
			account: `accounts:
  - id: support
    provider: google
    username: alice@example.com
    smtp: {{smtp}}
    oauth: {grant: jwt, service_account_key_file: sa.json}
`,
			prepare: func(t *testing.T, b *testBundle) string {
				key := b.srv.AddServiceAccount("mailer@project.iam.gserviceaccount.com")
				if err := os.WriteFile(filepath.Join(b.dir, "sa.json"), key, 0o600); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			want: []string{"grant jwt", "OK: obtained an access token and logged in"},
		},
		{
			name:    "NotAuthorizedYet",
			class:   smtpoauth.ClassNeedsHuman,
			prepare: func(t *testing.T, b *testBundle) string { return "" },
			want: []string{"FAILED (needs-human): no refresh token: none is stored in Redis",
				"— run authorize -account support (without -check) to obtain one"},
		},
		{
			name:  "RefreshTokenRevoked",
			class: smtpoauth.ClassAuth,
			prepare: func(t *testing.T, b *testBundle) string {
				rt := b.srv.NewRefreshToken("desktop-app", "alice@example.com")
				b.srv.Revoke(rt)
				return rt
			},
			want: []string{"FAILED (auth): the token endpoint refused the refresh token: invalid_grant (Token has been expired or revoked.)",
				"— run authorize -account support again"},
		},
		{
			name:  "WrongClientSecret",
			class: smtpoauth.ClassNeedsHuman,
			prepare: func(t *testing.T, b *testBundle) string {
				b.env["SUPPORT_CLIENT_SECRET"] = "stale-secret"
				return b.srv.NewRefreshToken("desktop-app", "alice@example.com")
			},
			want: []string{"FAILED (needs-human): the token endpoint does not know the client or its secret: invalid_client",
				"— check oauth.client_id and the client secret"},
		},
		{
			name:    "TokenEndpointUnreachable",
			class:   smtpoauth.ClassTransient,
			account: strings.Replace(delegatedAccount, "{{token_url}}", "{{closed_url}}", 1),
			prepare: func(t *testing.T, b *testBundle) string {
				return b.srv.NewRefreshToken("desktop-app", "alice@example.com")
			},
			want: []string{"FAILED (transient): cannot get an access token from http://127.0.0.1:", "connection refused",
				"— check the network (proxy, firewall) and oauth.token_url, then try again"},
		},
		{
			name:  "TokenForAnotherMailbox",
			class: smtpoauth.ClassAuth,
			prepare: func(t *testing.T, b *testBundle) string {
				// Consent was given by bob, not by the account's mailbox.
				return b.srv.NewRefreshToken("desktop-app", "bob@example.com")
			},
			want: []string{"FAILED (auth): the server refused the access token: 535 5.7.8 Username and Password not accepted.",
				"— run authorize again and sign in as alice@example.com"},
		},
		{
			name:   "SMTPAuthDisabled",
			class:  smtpoauth.ClassNeedsHuman,
			server: smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft},
			user:   "alice@contoso.com",
			prepare: func(t *testing.T, b *testBundle) string {
				b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageAuth, Address: "alice@contoso.com", Code: 535, Enhanced: [3]int{5, 7, 139},
					Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."})
				return b.srv.NewRefreshToken("desktop-app", "alice@contoso.com")
			},
			want: []string{"FAILED (needs-human): SMTP AUTH disabled for this mailbox: 535 5.7.139 Authentication unsuccessful",
				"— enable it in the Microsoft 365 admin center", "Set-CASMailbox -Identity alice@contoso.com -SmtpClientAuthenticationDisabled $false"},
		},
		{
			name:    "SMTPServerUnreachable",
			class:   smtpoauth.ClassTransient,
			account: strings.Replace(delegatedAccount, "{{smtp}}", "{{closed_smtp}}", 1),
			prepare: func(t *testing.T, b *testBundle) string {
				return b.srv.NewRefreshToken("desktop-app", "alice@example.com")
			},
			want: []string{"FAILED (transient): cannot talk to 127.0.0.1:", "connection refused", "— check smtp.host, smtp.port"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.server)
			b.srv.AddClient("desktop-app", "desktop-secret")
			b.env["SUPPORT_CLIENT_SECRET"] = "desktop-secret"
			user := tc.user
			if user == "" {
				user = "alice@example.com"
			}
			provider := "google"
			if tc.server.Flavor == smtpoauthtest.FlavorMicrosoft {
				provider = "microsoft"
			}
			closed := closedPort(t)
			text := strings.NewReplacer(
				"{{provider}}", provider, "{{user}}", user,
				"{{closed_url}}", "http://"+closed+"/token",
				"{{closed_smtp}}", "{host: 127.0.0.1, port: "+closed[strings.LastIndex(closed, ":")+1:]+"}",
			).Replace(cmpOr(tc.account, delegatedAccount))
			path := b.writeAccounts(t, text)
			if rt := tc.prepare(t, b); rt != "" {
				if _, err := b.admin.SetRefreshToken(context.Background(), "support", rt); err != nil {
					t.Fatal(err)
				}
			}

			out, err := b.run(t, "-accounts", path, "-account", "support", "-check")
			t.Logf("output:\n%s", out)
			if tc.class == 0 {
				if err != nil {
					t.Fatalf("check: %v\n%s", err, out)
				}
			} else if err == nil || !strings.Contains(err.Error(), `check of account "support" failed (`+tc.class.String()+")") {
				t.Errorf("err = %v, want a failed check of class %s", err, tc.class)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if st := b.srv.Stats(); st.Messages != 0 {
				t.Errorf("%d messages sent by a check", st.Messages)
			}
		})
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func cmpOr(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func TestCheckOfAHeldAccountSaysHowToResumeIt(t *testing.T) {
	t.Parallel()
	b := setup(t, smtpoauthtest.Config{})
	b.srv.AddClient("desktop-app", "desktop-secret")
	b.env["SUPPORT_CLIENT_SECRET"] = "desktop-secret"
	path := b.writeAccounts(t, strings.NewReplacer("{{provider}}", "google", "{{user}}", "alice@example.com").Replace(delegatedAccount))
	ctx := context.Background()
	if _, err := b.admin.SetRefreshToken(ctx, "support", b.srv.NewRefreshToken("desktop-app", "alice@example.com")); err != nil {
		t.Fatal(err)
	}
	if err := b.admin.Hold(ctx, "support", "configuration", "SMTP AUTH disabled"); err != nil {
		t.Fatal(err)
	}
	out, err := b.run(t, "-accounts", path, "-check")
	if err != nil || !strings.Contains(out, "OK: ") || !strings.Contains(out, "enqueue account resume support") {
		t.Errorf("err %v, output:\n%s", err, out)
	}
}

func TestAuthorizeExplainsWhatIsMissing(t *testing.T) {
	t.Parallel()
	b := setup(t, smtpoauthtest.Config{})
	b.srv.AddClient("desktop-app", "desktop-secret")
	b.env["SUPPORT_CLIENT_SECRET"] = "desktop-secret"
	for _, tc := range []struct {
		name    string
		account string
		args    []string
		consent smtpoauthtest.Consent
		wantErr string
		flavor  smtpoauthtest.Flavor // "": the shared Google server
	}{
		{"AppOnlyNeedsNoConsent", `{id: support, provider: microsoft, username: a@contoso.com,
      oauth: {grant: client_credentials, tenant: contoso.com, client_id: c, client_secret_env: SUPPORT_CLIENT_SECRET}}`,
			nil, smtpoauthtest.Consent{}, "uses grant client_credentials, which needs no consent: test it with authorize -check", ""},
		{"GenericWithoutEndpoints", `{id: support, provider: generic, username: a@example.com, smtp: {{smtp}},
      oauth: {grant: refresh_token, client_id: desktop-app, refresh_token_in_store: true, token_url: {{token_url}}}}`,
			nil, smtpoauthtest.Consent{}, "oauth.auth_url: required to obtain a refresh token by consent", ""},
		{"UserDeniesOnTheDevice", `{id: support, provider: google, username: a@example.com, smtp: {{smtp}},
      oauth: {grant: refresh_token, client_id: desktop-app, client_secret_env: SUPPORT_CLIENT_SECRET, refresh_token_in_store: true,
        token_url: {{token_url}}, device_url: {{device_url}}}}`,
			[]string{"-device"}, smtpoauthtest.Consent{Username: "a@example.com", Deny: true}, "the sign-in was refused (access_denied)", ""},
		{"MicrosoftWithoutOfflineAccess", `{id: support, provider: microsoft, username: a@contoso.com, smtp: {{smtp}},
      oauth: {grant: refresh_token, client_id: desktop-app, client_secret_env: SUPPORT_CLIENT_SECRET, refresh_token_in_store: true,
        scopes: [https://outlook.office.com/SMTP.Send], token_url: {{token_url}}, device_url: {{device_url}}}}`,
			[]string{"-device"}, smtpoauthtest.Consent{Username: "a@contoso.com"}, "no refresh token: Microsoft returns one for the offline_access scope",
			smtpoauthtest.FlavorMicrosoft},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Not parallel: the subtests share the server's consent.
			b := b
			if tc.flavor != "" {
				b = setup(t, smtpoauthtest.Config{Flavor: tc.flavor})
				b.srv.AddClient("desktop-app", "desktop-secret")
				b.env["SUPPORT_CLIENT_SECRET"] = "desktop-secret"
			}
			path := filepath.Join(b.dir, tc.name+".yaml")
			text := b.writeAccounts(t, "accounts:\n  - "+tc.account+"\n")
			if err := os.Rename(text, path); err != nil {
				t.Fatal(err)
			}
			b.srv.SetConsent(tc.consent)
			_, err := b.run(t, append([]string{"-accounts", path}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
			var ce *smtpoauth.SendError
			if errors.As(err, &ce) {
				t.Errorf("a consent error is not a send error: %v", err)
			}
		})
	}
}
