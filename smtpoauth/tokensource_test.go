package smtpoauth_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/google"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

const (
	testClientID     = "test-client"
	testClientSecret = "test-client-secret-XYZ"
	testMailbox      = "alice@example.com"
)

type grantBundle struct {
	srv *smtpoauthtest.Server
	cfg *oauth2.Config
	rt  string // a refresh token for testMailbox
}

// setupGrant starts a provider with a registered client and a consented
// refresh token.
func setupGrant(t *testing.T, cfg smtpoauthtest.Config) *grantBundle {
	t.Helper()
	srv := smtpoauthtest.NewServer(cfg)
	t.Cleanup(srv.Close)
	srv.AddClient(testClientID, testClientSecret)
	return &grantBundle{
		srv: srv,
		cfg: &oauth2.Config{
			ClientID:     testClientID,
			ClientSecret: testClientSecret,
			Endpoint:     oauth2.Endpoint{TokenURL: srv.TokenURL},
			Scopes:       []string{"https://mail.google.com/"},
		},
		rt: srv.NewRefreshToken(testClientID, testMailbox),
	}
}

// assertNoSecrets fails if err's message contains any of the secrets.
func assertNoSecrets(t *testing.T, err error, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error contains a secret: %v", err)
		}
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && strings.Contains(re.Error(), s) {
			t.Errorf("*oauth2.RetrieveError contains a secret: %v", re)
		}
	}
}

// requireRetrieveError returns the *oauth2.RetrieveError in err and checks
// its code.
func requireRetrieveError(t *testing.T, err error, code string) *oauth2.RetrieveError {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not an *oauth2.RetrieveError", err, err)
	}
	if re.ErrorCode != code {
		t.Fatalf("ErrorCode = %q, want %q (error: %v)", re.ErrorCode, code, err)
	}
	return re
}

func TestRefreshTokenSource(t *testing.T) {
	t.Parallel()
	ctx := t.Context()

	t.Run("RefreshesOnEveryCall", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{})
		src := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, b.rt, nil)
		start := time.Now()
		first, err := src.Token()
		if err != nil {
			t.Fatal(err)
		}
		second, err := src.Token()
		if err != nil {
			t.Fatal(err)
		}
		if first.AccessToken == "" || first.AccessToken == second.AccessToken {
			t.Errorf("access tokens %q then %q: want two distinct new tokens", first.AccessToken, second.AccessToken)
		}
		if first.RefreshToken != "" {
			t.Error("returned token carries the refresh token")
		}
		if first.TokenType != "Bearer" {
			t.Errorf("TokenType = %q, want Bearer", first.TokenType)
		}
		if d := first.Expiry.Sub(start); d < 59*time.Minute || d > 61*time.Minute {
			t.Errorf("token expires in %v, want about 1h", d)
		}
		if got := b.srv.Stats().TokenGrants[smtpoauthtest.GrantRefreshToken]; got != 2 {
			t.Errorf("refresh_token grants = %d, want 2", got)
		}
	})

	t.Run("KeepsRotatedTokensAndReportsEach", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, RotateRefreshTokens: true})
		var rotated []string
		src := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, b.rt, func(rt string) { rotated = append(rotated, rt) })
		const n = 5
		for i := range n {
			if _, err := src.Token(); err != nil {
				t.Fatalf("refresh %d: %v", i+1, err)
			}
		}
		if len(rotated) != n {
			t.Fatalf("onRotate called %d times, want %d", len(rotated), n)
		}
		seen := map[string]bool{b.rt: true}
		for i, rt := range rotated {
			if rt == "" || seen[rt] {
				t.Fatalf("rotation %d returned an empty or repeated refresh token", i+1)
			}
			seen[rt] = true
		}
		// The original token died at the first rotation; the last one lives.
		_, err := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, b.rt, nil).Token()
		requireRetrieveError(t, err, "invalid_grant")
		if _, err := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, rotated[n-1], nil).Token(); err != nil {
			t.Errorf("latest rotated refresh token: %v", err)
		}
	})

	t.Run("UnchangedRefreshTokenIsNotARotation", func(t *testing.T) {
		t.Parallel()
		// Microsoft-flavored without rotation echoes the same refresh token.
		b := setupGrant(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		calls := 0
		src := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, b.rt, func(string) { calls++ })
		for range 2 {
			if _, err := src.Token(); err != nil {
				t.Fatal(err)
			}
		}
		if calls != 0 {
			t.Errorf("onRotate called %d times, want 0", calls)
		}
	})

	t.Run("ConcurrentCallersNeverSpendATokenTwice", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{RotateRefreshTokens: true})
		var mu sync.Mutex
		rotations := 0
		src := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, b.rt, func(string) {
			mu.Lock()
			rotations++
			mu.Unlock()
		})
		const n = 10
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, err := src.Token()
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("concurrent refresh: %v", err)
			}
		}
		if rotations != n {
			t.Errorf("rotations = %d, want %d", rotations, n)
		}
	})

	t.Run("RevokedTokenIsInvalidGrant", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{})
		b.srv.Revoke(b.rt)
		_, err := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, b.rt, nil).Token()
		requireRetrieveError(t, err, "invalid_grant")
		assertNoSecrets(t, err, b.rt, testClientSecret)
	})

	t.Run("WrongClientSecretIsInvalidClient", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{})
		cfg := *b.cfg
		cfg.ClientSecret = "wrong-secret-ABC"
		_, err := smtpoauth.NewRefreshTokenSource(ctx, &cfg, b.rt, nil).Token()
		requireRetrieveError(t, err, "invalid_client")
		assertNoSecrets(t, err, b.rt, cfg.ClientSecret)
	})

	t.Run("EmptyRefreshTokenFailsWithoutARequest", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{})
		if _, err := smtpoauth.NewRefreshTokenSource(ctx, b.cfg, "", nil).Token(); err == nil {
			t.Fatal("Token with no refresh token succeeded")
		}
		if got := b.srv.Stats(); got.TokenGrantsTotal+got.TokenErrors != 0 {
			t.Errorf("token endpoint was called: %+v", got)
		}
	})
}

// TestRefreshTokenSourceRedactsEchoedSecrets uses a hostile token endpoint
// that quotes the request back in its error: the refresh token and the
// client secret must not reach the error message.
func TestRefreshTokenSourceRedactsEchoedSecrets(t *testing.T) {
	t.Parallel()
	const rt = "1//refresh-token-that-must-not-leak"

	tests := []struct {
		name     string
		status   int
		body     func(rt, secret string) string
		wantCode string
	}{
		{"InErrorDescription", http.StatusBadRequest, func(rt, secret string) string {
			return fmt.Sprintf(`{"error":"invalid_grant","error_description":"refresh token %s is revoked (client secret %s)"}`, rt, secret)
		}, "invalid_grant"},
		{"InErrorURI", http.StatusBadRequest, func(rt, _ string) string {
			return fmt.Sprintf(`{"error":"invalid_grant","error_uri":"https://example.com/help?token=%s"}`, rt)
		}, "invalid_grant"},
		{"InPlainTextBody", http.StatusInternalServerError, func(rt, secret string) string {
			return "internal error handling refresh_token=" + rt + "&client_secret=" + secret
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				_, secret, _ := r.BasicAuth()
				if strings.HasPrefix(tt.body("", ""), "{") {
					w.Header().Set("Content-Type", "application/json")
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body(r.PostForm.Get("refresh_token"), secret))
			}))
			t.Cleanup(srv.Close)
			cfg := &oauth2.Config{
				ClientID:     "c",
				ClientSecret: testClientSecret,
				Endpoint:     oauth2.Endpoint{TokenURL: srv.URL, AuthStyle: oauth2.AuthStyleInHeader},
			}
			_, err := smtpoauth.NewRefreshTokenSource(t.Context(), cfg, rt, nil).Token()
			if err == nil {
				t.Fatal("Token succeeded")
			}
			re := requireRetrieveError(t, err, tt.wantCode)
			assertNoSecrets(t, err, rt, testClientSecret)
			if strings.Contains(string(re.Body), rt) {
				t.Errorf("RetrieveError.Body contains the refresh token: %s", re.Body)
			}
			if !strings.Contains(err.Error(), "[redacted]") {
				t.Errorf("error does not show where the secret was removed: %v", err)
			}
		})
	}
}

func TestClientCredentialsSource(t *testing.T) {
	t.Parallel()
	ctx := t.Context()

	t.Run("FetchesAppOnlyTokenOnEveryCall", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		src := smtpoauth.NewClientCredentialsSource(ctx, &clientcredentials.Config{
			ClientID:     testClientID,
			ClientSecret: testClientSecret,
			TokenURL:     b.srv.TokenURL,
			Scopes:       []string{"https://outlook.office365.com/.default"},
		})
		for range 2 {
			tok, err := src.Token()
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken == "" || tok.Expiry.IsZero() {
				t.Errorf("token = %+v, want an access token with an expiry", tok)
			}
		}
		if got := b.srv.Stats().TokenGrants[smtpoauthtest.GrantClientCredentials]; got != 2 {
			t.Errorf("client_credentials grants = %d, want 2", got)
		}
	})

	t.Run("WrongSecretIsInvalidClient", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		const wrong = "wrong-secret-DEF"
		_, err := smtpoauth.NewClientCredentialsSource(ctx, &clientcredentials.Config{
			ClientID: testClientID, ClientSecret: wrong, TokenURL: b.srv.TokenURL,
		}).Token()
		requireRetrieveError(t, err, "invalid_client")
		assertNoSecrets(t, err, wrong)
	})
}

func TestJWTSource(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const serviceAccount = "mailer@sendq-test.iam.gserviceaccount.com"

	t.Run("ActsAsSubject", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{})
		cfg, err := google.JWTConfigFromJSON(b.srv.AddServiceAccount(serviceAccount), "https://mail.google.com/")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Subject = testMailbox
		src := smtpoauth.NewJWTSource(ctx, cfg)
		for range 2 {
			tok, err := src.Token()
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken == "" || tok.Expiry.IsZero() {
				t.Errorf("token = %+v, want an access token with an expiry", tok)
			}
		}
		if got := b.srv.Stats().TokenGrants[smtpoauthtest.GrantJWTBearer]; got != 2 {
			t.Errorf("jwt-bearer grants = %d, want 2", got)
		}
	})

	t.Run("UnknownServiceAccountIsInvalidGrant", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{})
		other := setupGrant(t, smtpoauthtest.Config{}) // never heard of the account
		cfg, err := google.JWTConfigFromJSON(b.srv.AddServiceAccount(serviceAccount), "https://mail.google.com/")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Subject = testMailbox
		cfg.TokenURL = other.srv.TokenURL
		_, err = smtpoauth.NewJWTSource(ctx, cfg).Token()
		requireRetrieveError(t, err, "invalid_grant")
	})

	t.Run("SubjectOutsideDelegationIsRefused", func(t *testing.T) {
		t.Parallel()
		b := setupGrant(t, smtpoauthtest.Config{})
		cfg, err := google.JWTConfigFromJSON(b.srv.AddServiceAccount(serviceAccount), "https://mail.google.com/")
		if err != nil {
			t.Fatal(err)
		}
		b.srv.SetServiceAccountSubjects(serviceAccount, "bob@example.com")
		cfg.Subject = testMailbox
		_, err = smtpoauth.NewJWTSource(ctx, cfg).Token()
		requireRetrieveError(t, err, "unauthorized_client")
	})
}

// TestTokenCacheOverRefreshTokenSource checks the stack the sender uses:
// many concurrent callers cost one grant.
func TestTokenCacheOverRefreshTokenSource(t *testing.T) {
	t.Parallel()
	b := setupGrant(t, smtpoauthtest.Config{RotateRefreshTokens: true})
	cache := smtpoauth.NewTokenCache(smtpoauth.NewRefreshTokenSource(t.Context(), b.cfg, b.rt, nil), 0)

	const n = 20
	toks := make([]*oauth2.Token, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { toks[i], errs[i] = cache.Token() })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if toks[i].AccessToken != toks[0].AccessToken {
			t.Fatalf("callers got different tokens")
		}
	}
	if got := b.srv.Stats().TokenGrantsTotal; got != 1 {
		t.Errorf("token grants = %d, want 1", got)
	}

	cache.Invalidate(toks[0])
	tok, err := cache.Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == toks[0].AccessToken {
		t.Error("Token after Invalidate returned the invalidated token")
	}
	if got := b.srv.Stats().TokenGrantsTotal; got != 2 {
		t.Errorf("token grants = %d, want 2", got)
	}
}
