package smtpoauthtest_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// pollDevice asks the token endpoint once for the tokens of a device code,
// as x/oauth2's DeviceAccessToken does on each tick, without its wait.
func pollDevice(t *testing.T, srv *smtpoauthtest.Server, deviceCode string) (*oauth2.Token, error) {
	t.Helper()
	conf := consentConfig(srv)
	// x/oauth2 sends a device-code poll as a token request; Exchange with
	// the grant's parameters makes exactly that request.
	return conf.Exchange(testContext(t), "",
		oauth2.SetAuthURLParam("grant_type", smtpoauthtest.GrantDeviceCode),
		oauth2.SetAuthURLParam("device_code", deviceCode))
}

var userCodeFormat = regexp.MustCompile(`^[A-Z]{4}-[A-Z]{4}$`)

func TestDeviceFlow(t *testing.T) {
	t.Parallel()

	t.Run("PendingThenTokens", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddClient("app", "s3cret")
		b.srv.SetConsent(smtpoauthtest.Consent{Username: "alice@example.com", PendingPolls: 1})
		conf := consentConfig(b.srv, "https://mail.google.com/")
		da, err := conf.DeviceAuth(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		if !userCodeFormat.MatchString(da.UserCode) || da.VerificationURI != b.srv.URL+"/device" || da.Interval != 1 || da.Expiry.IsZero() {
			t.Errorf("device authorization %+v", da)
		}
		// x/oauth2 polls once a second: authorization_pending, then the
		// tokens.
		tok, err := conf.DeviceAccessToken(testContext(t), da)
		if err != nil {
			t.Fatal(err)
		}
		if tok.RefreshToken == "" {
			t.Errorf("token %+v, want a refresh token", tok)
		}
		dialClient(t, b.srv, false, "alice@example.com", tok.AccessToken)
		st := b.srv.Stats()
		if st.TokenGrants[smtpoauthtest.GrantDeviceCode] != 1 || st.TokenErrors != 1 {
			t.Errorf("stats %+v, want one device_code grant after one authorization_pending", st)
		}
		// The device code is spent.
		_, err = pollDevice(t, b.srv, da.DeviceCode)
		wantRetrieveError(t, err, http.StatusBadRequest, "invalid_grant", "Unknown device code.")
	})

	t.Run("MicrosoftSaysVerificationURIAndNeedsOfflineAccess", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft})
		b.srv.AddClient("app", "s3cret")
		b.srv.SetConsent(smtpoauthtest.Consent{Username: "alice@contoso.com"})
		// The raw answer: Microsoft's member names.
		resp, err := http.PostForm(b.srv.DeviceAuthURL, url.Values{"client_id": {"app"}, "scope": {"https://outlook.office.com/SMTP.Send"}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		code, _ := body["device_code"].(string)
		msg, _ := body["message"].(string)
		if body["verification_uri"] != b.srv.URL+"/device" || !strings.Contains(msg, body["user_code"].(string)) {
			t.Errorf("device authorization %v", body)
		}
		tok, err := pollDevice(t, b.srv, code)
		if err != nil {
			t.Fatal(err)
		}
		if tok.RefreshToken != "" {
			t.Error("a refresh token without offline_access")
		}
	})

	t.Run("Refusals", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name    string
			consent smtpoauthtest.Consent
			expire  bool
			code    string
		}{
			{"Pending", smtpoauthtest.Consent{Username: "alice@example.com", PendingPolls: 5}, false, "authorization_pending"},
			{"UserDenies", smtpoauthtest.Consent{Username: "alice@example.com", Deny: true}, false, "access_denied"},
			{"NobodySignsIn", smtpoauthtest.Consent{}, false, "access_denied"},
			{"Expired", smtpoauthtest.Consent{Username: "alice@example.com"}, true, "expired_token"},
		} {
			b := setup(t, smtpoauthtest.Config{})
			b.srv.AddClient("app", "s3cret")
			b.srv.SetConsent(tc.consent)
			da, err := consentConfig(b.srv).DeviceAuth(testContext(t))
			if err != nil {
				t.Fatal(err)
			}
			if tc.expire {
				b.clock.Advance(smtpoauthtest.DeviceCodeLifetime)
			}
			_, err = pollDevice(t, b.srv, da.DeviceCode)
			wantRetrieveError(t, err, http.StatusBadRequest, tc.code, "")
		}
	})

	t.Run("UnknownClient", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		_, err := consentConfig(b.srv).DeviceAuth(testContext(t))
		wantRetrieveError(t, err, http.StatusUnauthorized, "invalid_client", "")
	})
}
