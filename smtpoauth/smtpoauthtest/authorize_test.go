package smtpoauthtest_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// consentConfig is an x/oauth2 config for the consent flows of the server's
// client "app", redirecting to a loopback address nobody listens on (the
// tests read the redirect instead of following it).
func consentConfig(srv *smtpoauthtest.Server, scopes ...string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     "app",
		ClientSecret: "s3cret",
		Endpoint: oauth2.Endpoint{
			AuthURL:       srv.AuthURL,
			DeviceAuthURL: srv.DeviceAuthURL,
			TokenURL:      srv.TokenURL,
			AuthStyle:     oauth2.AuthStyleInParams,
		},
		RedirectURL: "http://127.0.0.1:9/callback",
		Scopes:      scopes,
	}
}

// authorize opens the authorization URL as a browser would, without
// following the redirect, and returns the status and the redirect's query.
func authorize(t *testing.T, authURL string) (int, url.Values) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(testContext(t), http.MethodGet, authURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != "http://127.0.0.1:9/callback" {
		t.Errorf("redirected to %s, want the redirect_uri", got)
	}
	return resp.StatusCode, loc.Query()
}

// consent runs the authorization-code flow with PKCE up to the code and
// exchanges it.
func consent(t *testing.T, conf *oauth2.Config, opts ...oauth2.AuthCodeOption) (*oauth2.Token, error) {
	t.Helper()
	verifier := oauth2.GenerateVerifier()
	_, q := authorize(t, conf.AuthCodeURL("st4te", append(opts, oauth2.S256ChallengeOption(verifier))...))
	if q.Get("state") != "st4te" || q.Get("code") == "" {
		t.Fatalf("redirect query %v, want a code and the state", q)
	}
	return conf.Exchange(testContext(t), q.Get("code"), oauth2.VerifierOption(verifier))
}

var (
	offline    = oauth2.AccessTypeOffline
	promptNew  = oauth2.SetAuthURLParam("prompt", "consent")
	aliceLogin = oauth2.SetAuthURLParam("login_hint", "alice@example.com")
)

func TestAuthorizationCodeFlow(t *testing.T) {
	t.Parallel()

	t.Run("GoogleIssuesARefreshTokenForOfflineAccess", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		conf := consentConfig(b.srv, "https://mail.google.com/")
		tok, err := consent(t, conf, offline, promptNew, aliceLogin)
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken == "" || tok.RefreshToken == "" {
			t.Fatalf("token %+v, want an access and a refresh token", tok)
		}
		// The access token logs in as the user who consented, and the
		// refresh token works.
		dialClient(t, b.srv, true, "alice@example.com", tok.AccessToken)
		if _, err := refresh(t, b.srv, conf, tok.RefreshToken); err != nil {
			t.Errorf("refresh: %v", err)
		}
		if st := b.srv.Stats(); st.TokenGrants[smtpoauthtest.GrantAuthorizationCode] != 1 {
			t.Errorf("stats %+v, want one authorization_code grant", st)
		}
	})

	t.Run("GoogleGivesARepeatConsentARefreshTokenOnlyWithPromptConsent", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		conf := consentConfig(b.srv)
		for i, tc := range []struct {
			opts        []oauth2.AuthCodeOption
			wantRefresh bool
		}{
			{[]oauth2.AuthCodeOption{aliceLogin}, false},                    // online access
			{[]oauth2.AuthCodeOption{aliceLogin, offline}, false},           // consented before
			{[]oauth2.AuthCodeOption{aliceLogin, offline, promptNew}, true}, // asked again
		} {
			tok, err := consent(t, conf, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.RefreshToken != ""; got != tc.wantRefresh {
				t.Errorf("consent %d: refresh token %t, want %t", i, got, tc.wantRefresh)
			}
		}
	})

	t.Run("MicrosoftIssuesARefreshTokenForTheOfflineAccessScope", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddClient("app", "") // a public client: no secret
		for _, tc := range []struct {
			scopes      []string
			wantRefresh bool
		}{
			{[]string{"https://outlook.office.com/SMTP.Send"}, false},
			{[]string{"https://outlook.office.com/SMTP.Send", "offline_access"}, true},
		} {
			conf := consentConfig(b.srv, tc.scopes...)
			conf.ClientSecret = ""
			tok, err := consent(t, conf, aliceLogin)
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.RefreshToken != ""; got != tc.wantRefresh {
				t.Errorf("scopes %q: refresh token %t, want %t", tc.scopes, got, tc.wantRefresh)
			}
		}
	})

	t.Run("ConsentUsernameComesBeforeTheLoginHint", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		b.srv.SetConsent(smtpoauthtest.Consent{Username: "bob@example.com"})
		tok, err := consent(t, consentConfig(b.srv), aliceLogin)
		if err != nil {
			t.Fatal(err)
		}
		dialClient(t, b.srv, true, "bob@example.com", tok.AccessToken)
	})

	t.Run("TheExchangeChecksTheCode", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		b.srv.AddClient("other", "s3cret")
		conf := consentConfig(b.srv)
		verifier := oauth2.GenerateVerifier()
		code := func() string {
			t.Helper()
			_, q := authorize(t, conf.AuthCodeURL("s", aliceLogin, oauth2.S256ChallengeOption(verifier)))
			return q.Get("code")
		}
		ctx := testContext(t)
		for _, tc := range []struct {
			name     string
			exchange func() error
			desc     string
		}{
			{"WrongVerifier", func() error {
				_, err := conf.Exchange(ctx, code(), oauth2.VerifierOption(oauth2.GenerateVerifier()))
				return err
			}, "Invalid code verifier."},
			{"NoVerifier", func() error { _, err := conf.Exchange(ctx, code()); return err }, "Missing code verifier."},
			{"OtherRedirectURI", func() error {
				c := *conf
				c.RedirectURL = "http://127.0.0.1:9/elsewhere"
				_, err := c.Exchange(ctx, code(), oauth2.VerifierOption(verifier))
				return err
			}, "redirect_uri does not match the authorization request."},
			{"OtherClient", func() error {
				c := *conf
				c.ClientID = "other"
				_, err := c.Exchange(ctx, code(), oauth2.VerifierOption(verifier))
				return err
			}, "The authorization code was issued to another client."},
			{"UsedTwice", func() error {
				c := code()
				if _, err := conf.Exchange(ctx, c, oauth2.VerifierOption(verifier)); err != nil {
					return err
				}
				_, err := conf.Exchange(ctx, c, oauth2.VerifierOption(verifier))
				return err
			}, "Malformed auth code."},
			{"Expired", func() error {
				c := code()
				b.clock.Advance(smtpoauthtest.AuthCodeLifetime)
				_, err := conf.Exchange(ctx, c, oauth2.VerifierOption(verifier))
				return err
			}, "The authorization code has expired."},
		} {
			wantRetrieveError(t, tc.exchange(), http.StatusBadRequest, "invalid_grant", tc.desc)
		}
	})

	t.Run("TheEndpointRedirectsItsRefusals", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		conf := consentConfig(b.srv)
		challenge := oauth2.S256ChallengeOption(oauth2.GenerateVerifier())
		for _, tc := range []struct {
			name      string
			consent   smtpoauthtest.Consent
			opts      []oauth2.AuthCodeOption
			wantError string
		}{
			{"NoPKCE", smtpoauthtest.Consent{}, []oauth2.AuthCodeOption{aliceLogin}, "invalid_request"},
			{"PlainPKCE", smtpoauthtest.Consent{}, []oauth2.AuthCodeOption{aliceLogin,
				oauth2.SetAuthURLParam("code_challenge", "abc"), oauth2.SetAuthURLParam("code_challenge_method", "plain")}, "invalid_request"},
			{"NobodySignsIn", smtpoauthtest.Consent{}, []oauth2.AuthCodeOption{challenge}, "access_denied"},
			{"UserDenies", smtpoauthtest.Consent{Deny: true}, []oauth2.AuthCodeOption{aliceLogin, challenge}, "access_denied"},
			{"NotACode", smtpoauthtest.Consent{}, []oauth2.AuthCodeOption{aliceLogin, challenge,
				oauth2.SetAuthURLParam("response_type", "token")}, "unsupported_response_type"},
		} {
			b.srv.SetConsent(tc.consent)
			status, q := authorize(t, conf.AuthCodeURL("st4te", tc.opts...))
			if status != http.StatusFound || q.Get("error") != tc.wantError || q.Get("state") != "st4te" || q.Get("code") != "" {
				t.Errorf("%s: %d %v, want a redirect with error %s and the state", tc.name, status, q, tc.wantError)
			}
		}
	})

	t.Run("AnUnknownClientOrRedirectGetsAPageNotARedirect", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		unknown := consentConfig(b.srv)
		unknown.ClientID = "nobody"
		remote := consentConfig(b.srv)
		remote.RedirectURL = "http://attacker.example/callback"
		for _, conf := range []*oauth2.Config{unknown, remote} {
			if status, _ := authorize(t, conf.AuthCodeURL("s", aliceLogin)); status != http.StatusBadRequest {
				t.Errorf("client %s, redirect %s: status %d, want 400", conf.ClientID, conf.RedirectURL, status)
			}
		}
	})
}

func ExampleServer_SetConsent() {
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	defer srv.Close()
	srv.AddClient("desktop-app", "s3cret")
	srv.SetConsent(smtpoauthtest.Consent{Username: "alice@example.com"})

	conf := &oauth2.Config{
		ClientID:     "desktop-app",
		ClientSecret: "s3cret",
		Endpoint:     oauth2.Endpoint{AuthURL: srv.AuthURL, TokenURL: srv.TokenURL},
		RedirectURL:  "http://127.0.0.1:8085",
		Scopes:       []string{"https://mail.google.com/"},
	}
	verifier := oauth2.GenerateVerifier()
	authURL := conf.AuthCodeURL("state", oauth2.AccessTypeOffline, oauth2.S256ChallengeOption(verifier))

	// The "browser": the consent screen approves at once and redirects to
	// the loopback redirect_uri with the code.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(authURL)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	back, _ := url.Parse(resp.Header.Get("Location"))
	fmt.Println(resp.StatusCode, back.Host, back.Query().Get("state"))

	tok, err := conf.Exchange(context.Background(), back.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("refresh token:", tok.RefreshToken != "")
	// Output:
	// 302 127.0.0.1:8085 state
	// refresh token: true
}
