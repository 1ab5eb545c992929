package accounts_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// parseText parses an accounts file whose secrets come from env.
func parseText(text string, env map[string]string) (*accounts.File, error) {
	return accounts.Parse([]byte(text), accounts.ParseOptions{
		Name:    "accounts.yaml",
		BaseDir: "/etc/sendq",
		Getenv:  func(k string) string { return env[k] },
	})
}

func TestConsentConfig(t *testing.T) {
	t.Parallel()
	env := map[string]string{"SECRET": "s3cret", "REFRESH": "1//rt"}
	tests := []struct {
		name    string
		account string
		want    oauth2.Config // ClientSecret, Endpoint and Scopes compared
		wantErr error
	}{
		{"GooglePreset", `{id: a, provider: google, username: a@example.com,
      oauth: {grant: refresh_token, client_id: c, client_secret_env: SECRET, refresh_token_in_store: true}}`,
			oauth2.Config{ClientSecret: "s3cret", Scopes: []string{"https://mail.google.com/"}, Endpoint: oauth2.Endpoint{
				AuthURL:       "https://accounts.google.com/o/oauth2/auth",
				DeviceAuthURL: "https://oauth2.googleapis.com/device/code",
				TokenURL:      "https://oauth2.googleapis.com/token",
			}}, nil},
		{"MicrosoftPresetOfATenant", `{id: a, provider: microsoft, username: a@contoso.com,
      oauth: {grant: refresh_token, tenant: contoso.com, client_id: c, refresh_token_env: REFRESH}}`,
			oauth2.Config{Scopes: []string{"https://outlook.office.com/SMTP.Send", "offline_access"}, Endpoint: oauth2.Endpoint{
				AuthURL:       "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/authorize",
				DeviceAuthURL: "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/devicecode",
				TokenURL:      "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token",
			}}, nil},
		{"Overrides", `{id: a, provider: google, username: a@example.com,
      oauth: {grant: refresh_token, client_id: c, refresh_token_in_store: true, auth_url: "http://127.0.0.1:8080/authorize",
        device_url: "https://idp.example.com/device", token_url: "http://127.0.0.1:8080/token"}}`,
			oauth2.Config{Scopes: []string{"https://mail.google.com/"}, Endpoint: oauth2.Endpoint{
				AuthURL:       "http://127.0.0.1:8080/authorize",
				DeviceAuthURL: "https://idp.example.com/device",
				TokenURL:      "http://127.0.0.1:8080/token",
			}}, nil},
		{"ClientCredentialsNeedNoConsent", `{id: a, provider: microsoft, username: a@contoso.com,
      oauth: {grant: client_credentials, tenant: contoso.com, client_id: c, client_secret_env: SECRET}}`,
			oauth2.Config{}, accounts.ErrNoConsent},
		{"GenericWithoutAuthURL", `{id: a, provider: generic, username: a@example.com, smtp: {host: mail.example.com, port: 587},
      oauth: {grant: refresh_token, client_id: c, refresh_token_env: REFRESH, token_url: "https://idp.example.com/token"}}`,
			oauth2.Config{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := parseText("accounts:\n  - "+tt.account+"\n", env)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := f.Accounts()[0].ConsentConfig()
			switch {
			case tt.wantErr != nil || tt.want.Endpoint.AuthURL == "":
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("err = %v, want %v", err, cmpOr(tt.wantErr, "an error"))
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if cfg.ClientID != "c" || cfg.ClientSecret != tt.want.ClientSecret || cfg.Endpoint != tt.want.Endpoint || !slices.Equal(cfg.Scopes, tt.want.Scopes) {
				t.Errorf("config\n  %+v\nwant\n  %+v", *cfg, tt.want)
			}
		})
	}
}

func cmpOr(err error, s string) any {
	if err != nil {
		return err
	}
	return s
}

func TestConsentOptions(t *testing.T) {
	t.Parallel()
	f, err := parseText(`
accounts:
  - {id: g, provider: google, username: g@example.com, oauth: {grant: refresh_token, client_id: c, refresh_token_in_store: true}}
  - {id: m, provider: microsoft, username: m@contoso.com, oauth: {grant: refresh_token, client_id: c, refresh_token_in_store: true}}
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]url.Values{
		"g": {"access_type": {"offline"}, "prompt": {"consent"}, "login_hint": {"g@example.com"}},
		"m": {"login_hint": {"m@contoso.com"}},
	} {
		a, _ := f.Account(id)
		cfg, err := a.ConsentConfig()
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(cfg.AuthCodeURL("state", a.ConsentOptions()...))
		if err != nil {
			t.Fatal(err)
		}
		got := u.Query()
		for _, k := range []string{"client_id", "response_type", "scope", "state"} {
			got.Del(k)
		}
		if got.Encode() != want.Encode() {
			t.Errorf("account %s: extra parameters %s, want %s", id, got.Encode(), want.Encode())
		}
	}
}

func TestParseConsentFields(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, oauth, wantErr string
	}{
		{"RefreshTokenInStoreNeedsNoSecret", `{grant: refresh_token, client_id: c, refresh_token_in_store: true}`, ""},
		{"RefreshTokenInStoreWithASeed", `{grant: refresh_token, client_id: c, refresh_token_in_store: true, refresh_token_env: REFRESH}`, ""},
		{"NeitherInStoreNorASecret", `{grant: refresh_token, client_id: c}`,
			`accounts.yaml: account "a": oauth.refresh_token_env: refresh_token_env or refresh_token_file is required for grant refresh_token`},
		{"InStoreOfAnotherGrant", `{grant: jwt, refresh_token_in_store: true, service_account_key_env: KEY}`,
			`accounts.yaml: account "a": oauth.refresh_token_in_store: not used by grant jwt`},
		{"DeviceURLMustBeHTTPS", `{grant: refresh_token, client_id: c, refresh_token_in_store: true, device_url: "http://idp.example.com/device"}`,
			`accounts.yaml: account "a": oauth.device_url: http://idp.example.com/device must use https (http is allowed only to a loopback host)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseText("accounts:\n  - {id: a, provider: google, username: a@example.com, oauth: "+tc.oauth+"}\n",
				map[string]string{"REFRESH": "1//rt", "KEY": "{}"})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want %s", err, tc.wantErr)
			}
		})
	}
}

func TestRegistryRefresh(t *testing.T) {
	t.Parallel()

	t.Run("DropsTheSharedTokenAndAsksTheEndpoint", func(t *testing.T) {
		t.Parallel()
		b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
		worker, _ := b.process(t, nil, accounts.RegistryOptions{}).TokenSource("m")
		cached, err := worker.Token()
		if err != nil {
			t.Fatal(err)
		}
		check := b.process(t, nil, accounts.RegistryOptions{})
		tok, err := check.Refresh(t.Context(), "m")
		if err != nil {
			t.Fatal(err)
		}
		if b.grants() != 2 || tok.AccessToken == cached.AccessToken {
			t.Errorf("%d grants, token reused %t: want a second grant and a new token", b.grants(), tok.AccessToken == cached.AccessToken)
		}
		// The account's sender in that process uses the new token.
		ts, _ := check.TokenSource("m")
		if next, err := ts.Token(); err != nil || next.AccessToken != tok.AccessToken {
			t.Errorf("next token %v, %v: want the refreshed one", next, err)
		}
		// The rotated refresh token was stored: the worker's next refresh
		// works.
		if stored, _ := b.storedRefreshToken(t); stored == "" || stored == b.seed {
			t.Error("the rotated refresh token was not stored")
		}
	})

	t.Run("NoRefreshTokenYet", func(t *testing.T) {
		t.Parallel()
		b := setupShared(t, smtpoauthtest.Config{})
		text := strings.Replace(sharedAccountsFile, "refresh_token_env: MS_REFRESH", "refresh_token_in_store: true", 1)
		reg, err := accounts.NewRegistry(t.Context(), b.parse(t, text), nil, accounts.RegistryOptions{Tokens: b.admin})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Refresh(t.Context(), "m"); !errors.Is(err, accounts.ErrNoRefreshToken) {
			t.Fatalf("err = %v, want ErrNoRefreshToken", err)
		}
		if b.grants() != 0 {
			t.Error("asked the token endpoint without a refresh token")
		}
		// authorize stores one: the account works.
		if _, err := b.admin.SetRefreshToken(context.Background(), "m", b.seed); err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Refresh(t.Context(), "m"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("UnknownAccount", func(t *testing.T) {
		t.Parallel()
		b := setupShared(t, smtpoauthtest.Config{})
		if _, err := b.process(t, nil, accounts.RegistryOptions{}).Refresh(t.Context(), "nope"); !errors.Is(err, accounts.ErrUnknownAccount) {
			t.Fatalf("err = %v, want ErrUnknownAccount", err)
		}
	})

	t.Run("WithoutATokenStore", func(t *testing.T) {
		t.Parallel()
		b := setupShared(t, smtpoauthtest.Config{})
		reg, err := accounts.NewRegistry(t.Context(), b.parse(t, sharedAccountsFile), nil, accounts.RegistryOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Refresh(t.Context(), "m"); err != nil || b.grants() != 1 {
			t.Fatalf("err = %v after %d grants, want one grant", err, b.grants())
		}
	})
}

func ExampleAccount_ConsentOptions() {
	f, err := accounts.Parse([]byte(`
accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth:
      grant: refresh_token
      client_id: 1234.apps.googleusercontent.com
      client_secret_env: SUPPORT_CLIENT_SECRET
      refresh_token_in_store: true   # cmd/authorize puts it in Redis
`), accounts.ParseOptions{Getenv: func(string) string { return "s3cret" }})
	if err != nil {
		fmt.Println(err)
		return
	}
	a, _ := f.Account("support")
	cfg, _ := a.ConsentConfig()
	cfg.RedirectURL = "http://127.0.0.1:8085"
	// cmd/authorize adds a PKCE challenge and a random state.
	fmt.Println(cfg.AuthCodeURL("state", a.ConsentOptions()...))
	// Output:
	// https://accounts.google.com/o/oauth2/auth?access_type=offline&client_id=1234.apps.googleusercontent.com&login_hint=support%40example.com&prompt=consent&redirect_uri=http%3A%2F%2F127.0.0.1%3A8085&response_type=code&scope=https%3A%2F%2Fmail.google.com%2F&state=state
}
