package smtpoauthtest_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// retrieveError returns err as an *oauth2.RetrieveError or fails the test.
func retrieveError(t *testing.T, err error) *oauth2.RetrieveError {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v, want *oauth2.RetrieveError", err)
	}
	return re
}

func TestAddTokenFault(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"

	// bundle registers the client "app" and a refresh token for user.
	bundle := func(t *testing.T) (*testBundle, *oauth2.Config, string) {
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		// An explicit auth style: AutoDetect sends a failed request twice.
		return b, oauthConfig(b.srv, oauth2.AuthStyleInHeader), b.srv.NewRefreshToken("app", user)
	}

	t.Run("ProxyStyle503WithRetryAfterThenRecovers", func(t *testing.T) {
		t.Parallel()
		b, conf, rt := bundle(t)
		b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 503, RetryAfter: 30 * time.Second, Times: 1})
		_, err := refresh(t, b.srv, conf, rt)
		re := retrieveError(t, err)
		if re.Response.StatusCode != 503 || re.ErrorCode != "" || string(re.Body) != "Service Unavailable\n" ||
			re.Response.Header.Get("Retry-After") != "30" || !strings.HasPrefix(re.Response.Header.Get("Content-Type"), "text/plain") {
			t.Errorf("got %d %q body %q, headers %v", re.Response.StatusCode, re.ErrorCode, re.Body, re.Response.Header)
		}
		if _, err := refresh(t, b.srv, conf, rt); err != nil {
			t.Errorf("after the fault: %v", err)
		}
		if st := b.srv.Stats(); st.TokenErrors != 1 || st.TokenGrantsTotal != 1 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("ThrottlingAsOAuthJSONError", func(t *testing.T) {
		t.Parallel()
		b, conf, rt := bundle(t)
		b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 429, Error: "temporarily_unavailable",
			Description: "Too many requests.", RetryAfter: 1500 * time.Millisecond})
		_, err := refresh(t, b.srv, conf, rt)
		wantRetrieveError(t, err, 429, "temporarily_unavailable", "Too many requests.")
		if got := retrieveError(t, err).Response.Header.Get("Retry-After"); got != "2" {
			t.Errorf("Retry-After = %q, want 2 (rounded up)", got)
		}
	})

	t.Run("HangHoldsTheRequestUntilTheClientGivesUp", func(t *testing.T) {
		t.Parallel()
		b, conf, rt := bundle(t)
		remove := b.srv.AddTokenFault(smtpoauthtest.TokenFault{Hang: true})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
			done <- err
		}()
		if err := b.srv.WaitTokenHangs(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			t.Fatalf("the hung request returned %v", err)
		default:
		}
		cancel() // the client gives up, as a killed process does
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("hung request: %v, want context.Canceled", err)
		}
		remove()
		if _, err := refresh(t, b.srv, conf, rt); err != nil {
			t.Errorf("after the fault: %v", err)
		}
		if st := b.srv.Stats(); st.TokenErrors != 0 || st.TokenGrantsTotal != 1 {
			t.Errorf("stats: %d errors, %d grants; want 0 and 1", st.TokenErrors, st.TokenGrantsTotal)
		}
	})

	t.Run("ErrorWithoutStatusIs400", func(t *testing.T) {
		t.Parallel()
		b, conf, rt := bundle(t)
		b.srv.AddTokenFault(smtpoauthtest.TokenFault{Error: "invalid_grant", Description: "Token has been expired or revoked."})
		_, err := refresh(t, b.srv, conf, rt)
		wantRetrieveError(t, err, 400, "invalid_grant", "Token has been expired or revoked.")
		if h := retrieveError(t, err).Response.Header.Get("Retry-After"); h != "" {
			t.Errorf("Retry-After = %q, want none", h)
		}
	})

	t.Run("ClientIDSelectsOneClient", func(t *testing.T) {
		t.Parallel()
		b, conf, rt := bundle(t)
		b.srv.AddClient("other", "s3cret")
		otherConf := *conf
		otherConf.ClientID = "other"
		otherRT := b.srv.NewRefreshToken("other", user)
		remove := b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 500, ClientID: "other"})
		if _, err := refresh(t, b.srv, conf, rt); err != nil {
			t.Errorf("app: %v", err)
		}
		_, err := refresh(t, b.srv, &otherConf, otherRT)
		wantRetrieveError(t, err, 500, "", "")
		// In the form body too.
		otherConf.Endpoint.AuthStyle = oauth2.AuthStyleInParams
		_, err = refresh(t, b.srv, &otherConf, otherRT)
		wantRetrieveError(t, err, 500, "", "")
		remove()
		if _, err := refresh(t, b.srv, &otherConf, otherRT); err != nil {
			t.Errorf("other after remove: %v", err)
		}
	})

	t.Run("ClientIDOfAServiceAccountIsItsEmail", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		const sa = "mailer@project.iam.gserviceaccount.com"
		jc, err := google.JWTConfigFromJSON(b.srv.AddServiceAccount(sa), smtpoauthtest.GoogleMailScope)
		if err != nil {
			t.Fatal(err)
		}
		jc.Subject = user
		b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 503, ClientID: sa, Times: 1})
		_, err = jc.TokenSource(testContext(t)).Token()
		wantRetrieveError(t, err, 503, "", "")
		if _, err := jc.TokenSource(testContext(t)).Token(); err != nil {
			t.Errorf("after the fault: %v", err)
		}
	})

	t.Run("AutoDetectSendsAFailedRequestTwice", func(t *testing.T) {
		t.Parallel()
		b, conf, rt := bundle(t)
		conf.Endpoint.AuthStyle = oauth2.AuthStyleAutoDetect
		b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 503, Times: 1})
		// The probe's second request gets through.
		if _, err := refresh(t, b.srv, conf, rt); err != nil {
			t.Errorf("refresh: %v", err)
		}
		if st := b.srv.Stats(); st.TokenErrors != 1 || st.TokenGrantsTotal != 1 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("TimesIsCountedOnceAcrossConcurrentRequests", func(t *testing.T) {
		t.Parallel()
		b, conf, rt := bundle(t)
		const requests, times = 16, 6
		b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 503, Times: times})
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			failed int
		)
		for range requests {
			wg.Go(func() {
				_, err := conf.TokenSource(t.Context(), &oauth2.Token{RefreshToken: rt}).Token()
				var re *oauth2.RetrieveError
				if err != nil && (!errors.As(err, &re) || re.Response.StatusCode != 503) {
					t.Errorf("refresh: %v", err)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed++
				}
			})
		}
		wg.Wait()
		if failed != times {
			t.Errorf("%d refreshes failed, want %d", failed, times)
		}
	})

	t.Run("InvalidTokenFaultsPanic", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		for name, f := range map[string]smtpoauthtest.TokenFault{
			"TokenFault.Status":      {},
			"TokenFault.Status: 200": {Status: 200, Error: "x"},
			"TokenFault.Times":       {Status: 503, Times: -1},
			"TokenFault.RetryAfter":  {Status: 503, RetryAfter: -time.Second},
		} {
			func() {
				defer func() {
					if r := recover(); r == nil || !strings.Contains(r.(string), name) {
						t.Errorf("%s: panic %v", name, r)
					}
				}()
				b.srv.AddTokenFault(f)
			}()
		}
	})
}

// TestReauthorization checks what a user's re-consent looks like: after a
// revocation the old refresh token stays dead and a new one (a new
// NewRefreshToken for the same client and user) works, with or without
// rotation.
func TestReauthorization(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"
	for _, tt := range []struct {
		name string
		cfg  smtpoauthtest.Config
	}{
		{"Google", smtpoauthtest.Config{}},
		{"MicrosoftRotating", smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, RotateRefreshTokens: true}},
	} {
		t.Run("RevokeThenNewRefreshTokenWorksAndTheOldStaysDead"+tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.cfg)
			b.srv.AddClient("app", "s3cret")
			conf := oauthConfig(b.srv, oauth2.AuthStyleInHeader)
			old := b.srv.NewRefreshToken("app", user)
			tok, err := refresh(t, b.srv, conf, old)
			if err != nil {
				t.Fatal(err)
			}
			// Revoking the latest refresh token of the chain kills the chain
			// and its access tokens.
			b.srv.Revoke(tok.RefreshToken)
			for _, rt := range []string{old, tok.RefreshToken} {
				_, err := refresh(t, b.srv, conf, rt)
				wantRetrieveError(t, err, 400, "invalid_grant", "")
			}
			if _, err := authClient(b.srv, true, user, tok.AccessToken); err == nil {
				t.Error("an access token of the revoked grant still authenticates")
			}

			// The user consents again.
			fresh := b.srv.NewRefreshToken("app", user)
			tok2, err := refresh(t, b.srv, conf, fresh)
			if err != nil {
				t.Fatalf("new refresh token: %v", err)
			}
			c := dialClient(t, b.srv, true, user, tok2.AccessToken)
			if err := send(c, user, "bob@example.net"); err != nil {
				t.Errorf("send with the new grant: %v", err)
			}
			_, err = refresh(t, b.srv, conf, old)
			wantRetrieveError(t, err, 400, "invalid_grant", "")
			// And the new chain keeps working (rotating, for Microsoft).
			if _, err := refresh(t, b.srv, conf, tok2.RefreshToken); err != nil {
				t.Errorf("second refresh of the new grant: %v", err)
			}
		})
	}
}
