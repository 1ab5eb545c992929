package smtpoauthtest_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/google"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// oauthConfig is an x/oauth2 config for the server's registered client.
func oauthConfig(srv *smtpoauthtest.Server, style oauth2.AuthStyle) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     "app",
		ClientSecret: "s3cret",
		Endpoint:     oauth2.Endpoint{TokenURL: srv.TokenURL, AuthStyle: style},
		Scopes:       []string{"https://mail.google.com/"},
	}
}

// refresh runs one refresh_token grant.
func refresh(t *testing.T, srv *smtpoauthtest.Server, conf *oauth2.Config, rt string) (*oauth2.Token, error) {
	t.Helper()
	return conf.TokenSource(testContext(t), &oauth2.Token{RefreshToken: rt}).Token()
}

// wantRetrieveError checks err is an *oauth2.RetrieveError with the status
// and error code.
func wantRetrieveError(t *testing.T, err error, status int, code, desc string) {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v, want *oauth2.RetrieveError", err)
	}
	gotCode, gotDesc := re.ErrorCode, re.ErrorDescription
	if gotCode == "" {
		// x/oauth2/jwt does not parse the error body.
		var body struct {
			Error            string `json:"error"`
			ErrorDescription string `json:"error_description"`
		}
		json.Unmarshal(re.Body, &body)
		gotCode, gotDesc = body.Error, body.ErrorDescription
	}
	if re.Response.StatusCode != status || gotCode != code || (desc != "" && gotDesc != desc) {
		t.Errorf("got %d %q %q, want %d %q %q", re.Response.StatusCode, gotCode, gotDesc, status, code, desc)
	}
}

func TestRefreshTokenGrant(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"

	for _, style := range []struct {
		name  string
		style oauth2.AuthStyle
	}{{"AutoDetect", oauth2.AuthStyleAutoDetect}, {"HTTPBasic", oauth2.AuthStyleInHeader}, {"FormBody", oauth2.AuthStyleInParams}} {
		t.Run("IssuesUsableTokenWithClientAuthIn"+style.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, smtpoauthtest.Config{AccessTokenLifetime: 30 * time.Minute})
			b.srv.AddClient("app", "s3cret")
			rt := b.srv.NewRefreshToken("app", user)
			before := time.Now()
			tok, err := refresh(t, b.srv, oauthConfig(b.srv, style.style), rt)
			if err != nil {
				t.Fatal(err)
			}
			if tok.TokenType != "Bearer" || tok.AccessToken == "" || tok.RefreshToken != rt {
				t.Errorf("token: type %q, refresh token kept %v", tok.TokenType, tok.RefreshToken == rt)
			}
			if d := tok.Expiry.Sub(before); d < 29*time.Minute || d > 31*time.Minute {
				t.Errorf("expiry in %v, want 30m", d)
			}
			if tok.ExpiresIn != 1800 {
				t.Errorf("expires_in = %d", tok.ExpiresIn)
			}
			if got := tok.Extra("scope"); got != "https://mail.google.com/" {
				t.Errorf("scope = %v", got)
			}
			// The token authenticates the user over SMTP.
			dialClient(t, b.srv, true, user, tok.AccessToken)
			if st := b.srv.Stats(); st.TokenGrants[smtpoauthtest.GrantRefreshToken] != 1 || st.TokenGrantsTotal != 1 || st.Logins != 1 {
				t.Errorf("stats: %+v", st)
			}
		})
	}

	t.Run("SubSecondLifetimeRoundsExpiresInUp", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{AccessTokenLifetime: 1500 * time.Millisecond})
		b.srv.AddClient("app", "s3cret")
		tok, err := refresh(t, b.srv, oauthConfig(b.srv, oauth2.AuthStyleInParams), b.srv.NewRefreshToken("app", user))
		if err != nil {
			t.Fatal(err)
		}
		if tok.ExpiresIn != 2 {
			t.Errorf("expires_in = %d, want 2", tok.ExpiresIn)
		}
	})

	t.Run("WrongSecretIsInvalidClient", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "other secret")
		_, err := refresh(t, b.srv, oauthConfig(b.srv, oauth2.AuthStyleInHeader), b.srv.NewRefreshToken("app", user))
		wantRetrieveError(t, err, 401, "invalid_client", "Unauthorized")
		_, err = refresh(t, b.srv, oauthConfig(b.srv, oauth2.AuthStyleInParams), b.srv.NewRefreshToken("app", user))
		wantRetrieveError(t, err, 401, "invalid_client", "Unauthorized")
		if st := b.srv.Stats(); st.TokenGrantsTotal != 0 || st.TokenErrors != 2 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("RawBasicCredentialsAreAccepted", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "a+b/c=")
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {b.srv.NewRefreshToken("app", user)}}
		req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, b.srv.TokenURL, strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("app", "a+b/c=") // not form-encoded
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("status %d", resp.StatusCode)
		}
		conf := oauthConfig(b.srv, oauth2.AuthStyleInHeader) // form-encoded by x/oauth2
		conf.ClientSecret = "a+b/c="
		if _, err := refresh(t, b.srv, conf, b.srv.NewRefreshToken("app", user)); err != nil {
			t.Errorf("x/oauth2 Basic: %v", err)
		}
	})

	t.Run("UnknownClientIsInvalidClient", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		_, err := refresh(t, b.srv, oauthConfig(b.srv, oauth2.AuthStyleInParams), b.srv.NewRefreshToken("app", user))
		wantRetrieveError(t, err, 401, "invalid_client", "The OAuth client was not found.")
	})

	t.Run("RefreshTokenOfAnotherClientIsRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		_, err := refresh(t, b.srv, oauthConfig(b.srv, oauth2.AuthStyleInParams), b.srv.NewRefreshToken("other-app", user))
		wantRetrieveError(t, err, 400, "unauthorized_client", "")
	})

	t.Run("RevokedRefreshTokenIsInvalidGrant", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		conf := oauthConfig(b.srv, oauth2.AuthStyleInParams)
		rt := b.srv.NewRefreshToken("app", user)
		tok, err := refresh(t, b.srv, conf, rt)
		if err != nil {
			t.Fatal(err)
		}
		b.srv.Revoke(rt)
		_, err = refresh(t, b.srv, conf, rt)
		wantRetrieveError(t, err, 400, "invalid_grant", "Token has been expired or revoked.")
		// Access tokens issued from the revoked grant die with it.
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH with revoked grant's token", w.cmd("AUTH XOAUTH2 "+xoauth2IR(user, tok.AccessToken)), []string{googleChallenge})
	})

	t.Run("MicrosoftRevokedRefreshTokenIsInvalidGrant", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddClient("app", "s3cret")
		rt := b.srv.NewRefreshToken("app", user)
		b.srv.Revoke(rt)
		_, err := refresh(t, b.srv, oauthConfig(b.srv, oauth2.AuthStyleInParams), rt)
		wantRetrieveError(t, err, 400, "invalid_grant", "")
	})

	t.Run("RotationKillsTheOldRefreshToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, RotateRefreshTokens: true})
		b.srv.AddClient("app", "s3cret")
		conf := oauthConfig(b.srv, oauth2.AuthStyleInParams)
		rt1 := b.srv.NewRefreshToken("app", user)
		tok, err := refresh(t, b.srv, conf, rt1)
		if err != nil {
			t.Fatal(err)
		}
		rt2 := tok.RefreshToken
		if rt2 == "" || rt2 == rt1 {
			t.Fatalf("refresh token not rotated")
		}
		if tok.Extra("ext_expires_in") == nil {
			t.Errorf("Microsoft answer lacks ext_expires_in")
		}
		_, err = refresh(t, b.srv, conf, rt1)
		wantRetrieveError(t, err, 400, "invalid_grant", "")
		tok3, err := refresh(t, b.srv, conf, rt2)
		if err != nil {
			t.Fatalf("refresh with the rotated token: %v", err)
		}
		if tok3.RefreshToken == rt2 {
			t.Errorf("second refresh did not rotate")
		}
		// Revoking the newest token of the chain kills every access token
		// issued along it.
		b.srv.Revoke(tok3.RefreshToken)
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH after revocation", w.cmd("AUTH XOAUTH2 "+xoauth2IR(user, tok.AccessToken)), microsoft535)
	})

	t.Run("GoogleDoesNotReturnARefreshTokenWithoutRotation", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		rt := b.srv.NewRefreshToken("app", user)
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"app"}, "client_secret": {"s3cret"}}
		var body map[string]any
		postForm(t, b.srv.TokenURL, form, http.StatusOK, &body)
		if _, ok := body["refresh_token"]; ok {
			t.Errorf("answer has a refresh_token: %v", body)
		}
		for _, k := range []string{"access_token", "token_type", "expires_in", "scope"} {
			if _, ok := body[k]; !ok {
				t.Errorf("answer lacks %s", k)
			}
		}
	})
}

// postForm posts a form and decodes the JSON answer.
func postForm(t *testing.T, u string, form url.Values, wantStatus int, v any) {
	t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, wantStatus, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, smtpoauthtest.Config{})
	for _, tt := range []struct {
		name   string
		form   url.Values
		status int
		code   string
	}{
		{"UnsupportedGrantType", url.Values{"grant_type": {"password"}}, 400, "unsupported_grant_type"},
		{"MissingGrantType", url.Values{}, 400, "invalid_request"},
		{"MissingAssertion", url.Values{"grant_type": {smtpoauthtest.GrantJWTBearer}}, 400, "invalid_request"},
		{"GarbageAssertion", url.Values{"grant_type": {smtpoauthtest.GrantJWTBearer}, "assertion": {"a.b.c"}}, 400, "invalid_grant"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var body struct{ Error, ErrorDescription string }
			postForm(t, b.srv.TokenURL, tt.form, tt.status, &body)
			if body.Error != tt.code {
				t.Errorf("error = %q, want %q", body.Error, tt.code)
			}
		})
	}
	t.Run("GETIsNotAllowed", func(t *testing.T) {
		resp, err := http.Get(b.srv.TokenURL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("status %d", resp.StatusCode)
		}
	})
}

func TestClientCredentialsGrant(t *testing.T) {
	t.Parallel()

	conf := func(srv *smtpoauthtest.Server) *clientcredentials.Config {
		return &clientcredentials.Config{
			ClientID: "daemon", ClientSecret: "s3cret", TokenURL: srv.TokenURL,
			Scopes: []string{smtpoauthtest.MicrosoftDefaultScope},
		}
	}

	t.Run("AppOnlyTokenSendsAsAnyMailbox", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddClient("daemon", "s3cret")
		tok, err := conf(b.srv).Token(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		if tok.RefreshToken != "" {
			t.Errorf("client_credentials returned a refresh token")
		}
		dialClient(t, b.srv, false, "alice@example.com", tok.AccessToken)
		dialClient(t, b.srv, true, "bob@example.com", tok.AccessToken)
		if st := b.srv.Stats(); st.TokenGrants[smtpoauthtest.GrantClientCredentials] != 1 || st.Logins != 2 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("SetClientMailboxesRestrictsAppOnlyTokens", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddClient("daemon", "s3cret")
		b.srv.SetClientMailboxes("daemon", "alice@example.com")
		tok, err := conf(b.srv).Token(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		dialClient(t, b.srv, true, "Alice@example.com", tok.AccessToken)
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "other mailbox", w.cmd("AUTH XOAUTH2 "+xoauth2IR("bob@example.com", tok.AccessToken)), microsoft535)
	})

	t.Run("WrongSecretIsInvalidClient", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddClient("daemon", "another")
		_, err := conf(b.srv).Token(testContext(t))
		wantRetrieveError(t, err, 401, "invalid_client", "")
	})
}

func TestJWTBearerGrant(t *testing.T) {
	t.Parallel()
	const sa = "mailer@sendq-test.iam.gserviceaccount.com"

	t.Run("ServiceAccountImpersonatesSubject", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{AccessTokenLifetime: 10 * time.Minute})
		key := b.srv.AddServiceAccount(sa)
		jc, err := google.JWTConfigFromJSON(key, smtpoauthtest.GoogleMailScope)
		if err != nil {
			t.Fatalf("JWTConfigFromJSON: %v", err)
		}
		if jc.TokenURL != b.srv.TokenURL || jc.Email != sa {
			t.Errorf("config: token URL %q, email %q", jc.TokenURL, jc.Email)
		}
		jc.Subject = "alice@example.com"
		tok, err := jc.TokenSource(testContext(t)).Token()
		if err != nil {
			t.Fatalf("Token: %v", err)
		}
		if d := time.Until(tok.Expiry); d < 9*time.Minute || d > 11*time.Minute {
			t.Errorf("expiry in %v", d)
		}
		dialClient(t, b.srv, true, "alice@example.com", tok.AccessToken)
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		equalLines(t, "AUTH as another user", w.cmd("AUTH XOAUTH2 "+xoauth2IR("bob@example.com", tok.AccessToken)), []string{googleChallenge})
		if st := b.srv.Stats(); st.TokenGrants[smtpoauthtest.GrantJWTBearer] != 1 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("KeyFileLooksLikeGoogles", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		var f map[string]string
		if err := json.Unmarshal(b.srv.AddServiceAccount(sa), &f); err != nil {
			t.Fatal(err)
		}
		if f["type"] != "service_account" || f["client_email"] != sa || f["token_uri"] != b.srv.TokenURL ||
			!strings.HasPrefix(f["private_key"], "-----BEGIN PRIVATE KEY-----\n") || len(f["private_key_id"]) != 40 {
			t.Errorf("key file: type %q email %q token_uri %q key id %q", f["type"], f["client_email"], f["token_uri"], f["private_key_id"])
		}
	})

	t.Run("ForeignKeyIsRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		other := setup(t, smtpoauthtest.Config{})
		b.srv.AddServiceAccount(sa)
		jc, err := google.JWTConfigFromJSON(other.srv.AddServiceAccount(sa))
		if err != nil {
			t.Fatal(err)
		}
		jc.TokenURL = b.srv.TokenURL // same account name, wrong key
		jc.Subject = "alice@example.com"
		_, err = jc.TokenSource(testContext(t)).Token()
		wantRetrieveError(t, err, 400, "invalid_grant", "Invalid JWT Signature.")
	})

	t.Run("UnknownAccountIsRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		other := setup(t, smtpoauthtest.Config{})
		jc, err := google.JWTConfigFromJSON(other.srv.AddServiceAccount(sa))
		if err != nil {
			t.Fatal(err)
		}
		jc.TokenURL = b.srv.TokenURL
		_, err = jc.TokenSource(testContext(t)).Token()
		wantRetrieveError(t, err, 400, "invalid_grant", "")
	})

	t.Run("AssertionWithoutScopeIsInvalidScope", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		jc, err := google.JWTConfigFromJSON(b.srv.AddServiceAccount(sa)) // no scope
		if err != nil {
			t.Fatal(err)
		}
		_, err = jc.TokenSource(testContext(t)).Token()
		wantRetrieveError(t, err, 400, "invalid_scope", "")
	})

	t.Run("SetServiceAccountSubjectsRestrictsDelegation", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		jc, err := google.JWTConfigFromJSON(b.srv.AddServiceAccount(sa), smtpoauthtest.GoogleMailScope)
		if err != nil {
			t.Fatal(err)
		}
		b.srv.SetServiceAccountSubjects(sa, "alice@example.com")
		jc.Subject = "bob@example.com"
		_, err = jc.TokenSource(testContext(t)).Token()
		wantRetrieveError(t, err, 401, "unauthorized_client", "")
		jc.Subject = "alice@example.com"
		if _, err := jc.TokenSource(testContext(t)).Token(); err != nil {
			t.Errorf("allowed subject: %v", err)
		}
	})
}
