package accounts_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

const serviceAccountEmail = "mailer@sendq-test.iam.gserviceaccount.com"

// providerBundle is an in-process provider and a directory holding an
// accounts file's companions (CA, secrets, keys) for it.
type providerBundle struct {
	srv *smtpoauthtest.Server
	dir string
	env map[string]string
}

func setupProvider(t *testing.T, cfg smtpoauthtest.Config) *providerBundle {
	t.Helper()
	srv := smtpoauthtest.NewServer(cfg)
	t.Cleanup(srv.Close)
	b := &providerBundle{srv: srv, dir: t.TempDir(), env: map[string]string{}}
	b.write(t, "ca.pem", string(srv.CACertPEM))
	return b
}

func (b *providerBundle) write(t *testing.T, name, data string) string {
	t.Helper()
	path := filepath.Join(b.dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (b *providerBundle) read(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// parse parses an accounts file whose text may use {{smtp}}, {{smtps}} and
// {{token_url}} for the provider's addresses.
func (b *providerBundle) parse(t *testing.T, text string) *accounts.File {
	t.Helper()
	smtpHost, smtpPort := splitHostPort(t, b.srv.SMTPAddr)
	_, smtpsPort := splitHostPort(t, b.srv.SMTPSAddr)
	text = strings.NewReplacer(
		"{{smtp}}", fmt.Sprintf("{host: %s, port: %s, ca_file: ca.pem}", smtpHost, smtpPort),
		"{{smtps}}", fmt.Sprintf("{host: %s, port: %s, tls: implicit, ca_file: ca.pem}", smtpHost, smtpsPort),
		"{{token_url}}", b.srv.TokenURL,
	).Replace(text)
	f, err := accounts.Parse([]byte(text), accounts.ParseOptions{
		Name:    "accounts.yaml",
		BaseDir: b.dir,
		Getenv:  func(k string) string { return b.env[k] },
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func splitHostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		t.Fatalf("bad address %q", addr)
	}
	return addr[:i], addr[i+1:]
}

func testMessage(from string) *smtpoauth.Message {
	return &smtpoauth.Message{
		From: from,
		To:   []string{"customer@example.net"},
		Data: []byte("From: " + from + "\r\nTo: customer@example.net\r\nSubject: hi\r\n\r\nhello\r\n"),
	}
}

// TestRegistrySendsWithEveryGrant goes from an accounts file to a message
// accepted by the provider, for each grant.
func TestRegistrySendsWithEveryGrant(t *testing.T) {
	t.Parallel()
	b := setupProvider(t, smtpoauthtest.Config{})
	b.srv.AddClient("web-app", "web-app-secret")
	b.srv.AddClient("daemon", "daemon-secret")
	b.env["SUPPORT_CLIENT_SECRET"] = "web-app-secret"
	b.write(t, "secrets/support.token", b.srv.NewRefreshToken("web-app", "support@example.com")+"\n")
	b.write(t, "secrets/daemon", "daemon-secret\n")
	b.write(t, "keys/robot.json", string(b.srv.AddServiceAccount(serviceAccountEmail)))

	f := b.parse(t, `
accounts:
  - id: support
    provider: google
    username: support@example.com
    smtp: {{smtp}}
    oauth:
      grant: refresh_token
      client_id: web-app
      client_secret_env: SUPPORT_CLIENT_SECRET
      refresh_token_file: secrets/support.token
      token_url: {{token_url}}
  - id: robot
    provider: google
    username: robot@example.com
    mechanism: OAUTHBEARER
    smtp: {{smtps}}
    oauth:
      grant: jwt
      service_account_key_file: keys/robot.json   # its token_uri is the provider's
  - id: billing
    provider: generic
    username: billing@example.com
    smtp: {{smtp}}
    oauth:
      grant: client_credentials
      client_id: daemon
      client_secret_file: secrets/daemon
      token_url: {{token_url}}
`)
	reg, err := accounts.NewRegistry(t.Context(), f, nil, accounts.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range f.Accounts() {
		s, err := reg.SenderFor(a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Send(t.Context(), testMessage(a.Username)); err != nil {
			t.Fatalf("%v: Send: %v", a, err)
		}
	}

	msgs, err := b.srv.WaitMessages(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, m := range msgs {
		users = append(users, m.Username)
	}
	slices.Sort(users)
	if want := []string{"billing@example.com", "robot@example.com", "support@example.com"}; !slices.Equal(users, want) {
		t.Errorf("messages authenticated as %q, want %q", users, want)
	}
	st := b.srv.Stats()
	for _, g := range []string{smtpoauthtest.GrantRefreshToken, smtpoauthtest.GrantJWTBearer, smtpoauthtest.GrantClientCredentials} {
		if st.TokenGrants[g] != 1 {
			t.Errorf("%s grants = %d, want 1", g, st.TokenGrants[g])
		}
	}
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	b := setupProvider(t, smtpoauthtest.Config{})
	b.srv.AddClient("web-app", "web-app-secret")
	b.env["WEB_SECRET"] = "web-app-secret"
	b.env["RT_ONE"] = b.srv.NewRefreshToken("web-app", "one@example.com")
	b.env["RT_TWO"] = b.srv.NewRefreshToken("web-app", "two@example.com")
	f := b.parse(t, `
accounts:
  - id: one
    provider: google
    username: one@example.com
    smtp: {{smtp}}
    oauth: {grant: refresh_token, client_id: web-app, client_secret_env: WEB_SECRET, refresh_token_env: RT_ONE, token_url: "{{token_url}}"}
  - id: two
    provider: google
    username: two@example.com
    smtp: {{smtp}}
    oauth: {grant: refresh_token, client_id: web-app, client_secret_env: WEB_SECRET, refresh_token_env: RT_TWO, token_url: "{{token_url}}"}
`)
	reg, err := accounts.NewRegistry(t.Context(), f, nil, accounts.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("UnknownAccount", func(t *testing.T) {
		t.Parallel()
		s, err := reg.SenderFor("three")
		if !errors.Is(err, accounts.ErrUnknownAccount) || s != nil {
			t.Errorf("SenderFor(three) = %v, %v; want nil, ErrUnknownAccount", s, err)
		}
		if err != nil && !strings.Contains(err.Error(), `"three"`) {
			t.Errorf("error %q does not name the account", err)
		}
	})

	t.Run("SameSenderEveryTime", func(t *testing.T) {
		t.Parallel()
		first, err := reg.SenderFor("one")
		if err != nil {
			t.Fatal(err)
		}
		const n = 20
		got := make([]*smtpoauth.Sender, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { got[i], _ = reg.SenderFor("one") })
		}
		wg.Wait()
		for i, s := range got {
			if s != first {
				t.Fatalf("call %d returned another sender", i)
			}
		}
		if other, _ := reg.SenderFor("two"); other == first {
			t.Error("two accounts share a sender")
		}
	})

	t.Run("ConcurrentSendsShareOneToken", func(t *testing.T) {
		t.Parallel()
		s, err := reg.SenderFor("two")
		if err != nil {
			t.Fatal(err)
		}
		const n = 5
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, err := s.Send(t.Context(), testMessage("two@example.com"))
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		// Account "one" may have fetched its own token in another subtest;
		// account "two" fetched exactly one.
		if got := b.srv.Stats().TokenGrants[smtpoauthtest.GrantRefreshToken]; got < 1 || got > 2 {
			t.Errorf("refresh grants = %d, want 1 for account two (+1 if one sent)", got)
		}
	})
}

func TestRegistryRejectsBadSenderConfig(t *testing.T) {
	t.Parallel()
	b := setupProvider(t, smtpoauthtest.Config{})
	b.env["RT"] = "unused"
	// The CA file vanishes between Parse and NewRegistry.
	f := b.parse(t, `
accounts:
  - id: one
    provider: google
    username: one@example.com
    smtp: {{smtp}}
    oauth: {grant: refresh_token, client_id: c, refresh_token_env: RT}
`)
	if err := os.Remove(filepath.Join(b.dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	_, err := accounts.NewRegistry(t.Context(), f, nil, accounts.RegistryOptions{})
	if err == nil || !strings.Contains(err.Error(), `account "one": smtp.ca_file:`) {
		t.Errorf("NewRegistry error = %v, want one naming the account and smtp.ca_file", err)
	}
}

// TestRotatedRefreshToken checks the Microsoft case: every refresh returns a
// new refresh token and kills the old one.
func TestRotatedRefreshToken(t *testing.T) {
	t.Parallel()
	const accountsFile = `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    smtp: {{smtp}}
    oauth:
      grant: refresh_token
      client_id: ms-app
      client_secret_env: MS_SECRET
      REFRESH_TOKEN_SOURCE
      token_url: {{token_url}}
`
	setup := func(t *testing.T) (*providerBundle, string) {
		b := setupProvider(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, RotateRefreshTokens: true})
		b.srv.AddClient("ms-app", "ms-secret")
		b.env["MS_SECRET"] = "ms-secret"
		return b, b.srv.NewRefreshToken("ms-app", "m@contoso.com")
	}

	t.Run("SavedToItsFile", func(t *testing.T) {
		t.Parallel()
		b, original := setup(t)
		b.write(t, "m.token", original+"\n")
		text := strings.Replace(accountsFile, "REFRESH_TOKEN_SOURCE", "refresh_token_file: m.token", 1)
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, nil))

		for round := range 3 {
			// A fresh parse and registry each round: a restart that must
			// pick up the token saved by the previous one.
			reg, err := accounts.NewRegistry(t.Context(), b.parse(t, text), logger, accounts.RegistryOptions{})
			if err != nil {
				t.Fatal(err)
			}
			before := b.read(t, "m.token")
			s, _ := reg.SenderFor("m")
			if _, err := s.Send(t.Context(), testMessage("m@contoso.com")); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			after := b.read(t, "m.token")
			if after == before || after == "" {
				t.Fatalf("round %d: refresh token file not updated", round)
			}
			if fi, err := os.Stat(filepath.Join(b.dir, "m.token")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("token file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
			}
		}
		if !strings.Contains(logs.String(), "saved rotated refresh token") {
			t.Errorf("no log of the rotation:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), b.read(t, "m.token")) || strings.Contains(logs.String(), original) {
			t.Errorf("log contains a refresh token:\n%s", logs.String())
		}
		if entries, _ := os.ReadDir(b.dir); len(entries) != 2 { // ca.pem, m.token
			t.Errorf("directory holds %d entries, want 2 (no temporary files left)", len(entries))
		}
	})

	t.Run("FromEnvKeptInMemory", func(t *testing.T) {
		t.Parallel()
		b, original := setup(t)
		b.env["MS_REFRESH"] = original
		text := strings.Replace(accountsFile, "REFRESH_TOKEN_SOURCE", "refresh_token_env: MS_REFRESH", 1)
		f := b.parse(t, text)
		a, _ := f.Account("m")
		ts, err := a.TokenSource(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		first, err := ts.Token()
		if err != nil {
			t.Fatal(err)
		}
		// The server rejects the token: the next Token refreshes with the
		// rotated refresh token, the original being dead by now.
		ts.(*smtpoauth.TokenCache).Invalidate(first)
		if _, err := ts.Token(); err != nil {
			t.Fatalf("second refresh: %v", err)
		}
		// A second token source from the same account starts from the
		// latest refresh token too.
		ts2, err := a.TokenSource(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ts2.Token(); err != nil {
			t.Fatalf("new token source after rotations: %v", err)
		}
		if got := b.srv.Stats().TokenGrants[smtpoauthtest.GrantRefreshToken]; got != 3 {
			t.Errorf("refresh grants = %d, want 3", got)
		}
	})
}

func TestTokenSourceRevoked(t *testing.T) {
	t.Parallel()
	b := setupProvider(t, smtpoauthtest.Config{})
	b.srv.AddClient("web-app", "web-app-secret")
	rt := b.srv.NewRefreshToken("web-app", "one@example.com")
	b.env["RT"] = rt
	b.env["WEB_SECRET"] = "web-app-secret"
	f := b.parse(t, `
accounts:
  - id: one
    provider: google
    username: one@example.com
    oauth: {grant: refresh_token, client_id: web-app, client_secret_env: WEB_SECRET, refresh_token_env: RT, token_url: "{{token_url}}"}
`)
	b.srv.Revoke(rt)
	a, _ := f.Account("one")
	ts, err := a.TokenSource(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.Token()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("Token error = %v, want an *oauth2.RetrieveError invalid_grant", err)
	}
	if strings.Contains(err.Error(), rt) {
		t.Errorf("error contains the refresh token: %v", err)
	}
}

func TestRegistryCloseEndsEveryAccountsConnections(t *testing.T) {
	t.Parallel()
	b := setupProvider(t, smtpoauthtest.Config{})
	b.srv.AddClient("web-app", "web-app-secret")
	b.env["WEB_SECRET"] = "web-app-secret"
	b.env["RT_ONE"] = b.srv.NewRefreshToken("web-app", "one@example.com")
	b.env["RT_TWO"] = b.srv.NewRefreshToken("web-app", "two@example.com")
	f := b.parse(t, `
accounts:
  - id: one
    provider: google
    username: one@example.com
    smtp: {{smtp}}
    oauth: {grant: refresh_token, client_id: web-app, client_secret_env: WEB_SECRET, refresh_token_env: RT_ONE, token_url: "{{token_url}}"}
  - id: two
    provider: google
    username: two@example.com
    smtp: {{smtp}}
    oauth: {grant: refresh_token, client_id: web-app, client_secret_env: WEB_SECRET, refresh_token_env: RT_TWO, token_url: "{{token_url}}"}
`)
	reg, err := accounts.NewRegistry(t.Context(), f, nil, accounts.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sendAll := func() {
		t.Helper()
		for _, id := range []string{"one", "two"} {
			s, err := reg.SenderFor(id)
			if err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if _, err := s.Send(t.Context(), testMessage(id+"@example.com")); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	wantLogins := func(n int) {
		t.Helper()
		got := b.srv.Stats().LoginsByUser
		if got["one@example.com"] != n || got["two@example.com"] != n {
			t.Errorf("logins by user %v, want %d each", got, n)
		}
	}
	sendAll()
	wantLogins(1) // two messages per login: the connection was reused
	if err := reg.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The pooled connections are closed; a Send after Close uses a
	// connection of its own.
	sendAll()
	wantLogins(3)
}
