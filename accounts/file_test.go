package accounts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
)

// staticTokenSource is a TokenSource for tests that never reach a server.
type staticTokenSource struct{}

func (staticTokenSource) Token() (*oauth2.Token, error) {
	return &oauth2.Token{AccessToken: "static", TokenType: "Bearer"}, nil
}

// Secret values the tests hand out; no error message may contain them.
const (
	secretClient  = "client-secret-value-111"
	secretRefresh = "refresh-token-value-222"
	secretInline  = "inline-secret-value-333"
)

const baseDir = "/etc/sendq"

// testEnv is the environment and file system of a parse.
type testEnv struct {
	env   map[string]string
	files map[string]string // by absolute path
}

func defaultTestEnv(t *testing.T) testEnv {
	return testEnv{
		env: map[string]string{
			"SUPPORT_CLIENT_SECRET": secretClient,
			"SUPPORT_REFRESH_TOKEN": secretRefresh,
		},
		files: map[string]string{
			"/etc/sendq/secrets/client":  secretClient + "\n",
			"/etc/sendq/secrets/refresh": "  " + secretRefresh + "\n\n",
			"/etc/sendq/secrets/empty":   "\n",
			"/etc/sendq/ca.pem":          string(testCAPEM(t)),
			"/etc/sendq/not-a-ca.pem":    "hello",
			"/etc/sendq/sa.json":         string(testServiceAccountKey(t, "")),
			"/etc/sendq/sa-no-uri.json":  string(testServiceAccountKey(t, "-")),
			"/etc/sendq/user-creds.json": `{"type":"authorized_user","client_id":"x","client_secret":"y","refresh_token":"z"}`,
		},
	}
}

func (e testEnv) options() ParseOptions {
	return ParseOptions{
		Name:    "accounts.yaml",
		BaseDir: baseDir,
		Getenv:  func(k string) string { return e.env[k] },
		ReadFile: func(name string) ([]byte, error) {
			if v, ok := e.files[name]; ok {
				return []byte(v), nil
			}
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		},
	}
}

// testCAPEM returns a self-signed CA certificate in PEM.
func testCAPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sendq test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// testServiceAccountKey returns a Google service-account JSON key. tokenURI
// "" means https://sa.example.com/token; "-" leaves token_uri out.
func testServiceAccountKey(t *testing.T, tokenURI string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := strings.ReplaceAll(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "\n", `\n`)
	uri := `,"token_uri":"https://sa.example.com/token"`
	switch tokenURI {
	case "-":
		uri = ""
	case "":
	default:
		uri = `,"token_uri":"` + tokenURI + `"`
	}
	return []byte(`{"type":"service_account","client_email":"mailer@proj.iam.gserviceaccount.com",` +
		`"private_key_id":"k1","private_key":"` + pemKey + `"` + uri + `}`)
}

// googleAccount is a valid Google account, to be extended by the tests.
const googleAccount = `
accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth:
      grant: refresh_token
      client_id: app.apps.googleusercontent.com
      client_secret_env: SUPPORT_CLIENT_SECRET
      refresh_token_env: SUPPORT_REFRESH_TOKEN
`

func TestParseRejects(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		yaml string
		// want are full error lines (one per problem found) that the
		// joined error must contain.
		want []string
	}{
		{"EmptyFile", ``, []string{
			`accounts.yaml: file is empty`}},
		{"SyntaxError", "accounts:\n  - id: [unclosed\n", []string{
			`accounts.yaml: yaml: line `}},
		{"NoAccounts", "accounts: []\n", []string{
			`accounts.yaml: accounts: at least one account is required`}},
		{"SecondDocument", googleAccount + "---\naccounts: []\n", []string{
			`accounts.yaml: only one YAML document is allowed`}},
		{"UnknownTopLevelField", "acounts: []\n", []string{
			`accounts.yaml: acounts: unknown field (line 1)`}},
		{"UnknownTopLevelFieldAfterAccounts", googleAccount + "defaults: {}\n", []string{
			`accounts.yaml: defaults: unknown field (line 11)`}},
		{"UnknownAccountField", strings.Replace(googleAccount, "    username:", "    usrname: x\n    username:", 1), []string{
			`accounts.yaml: account "support": usrname: unknown field (line 5)`}},
		{"UnknownNestedField", strings.Replace(googleAccount, "      grant:", "      clientid: x\n      grant:", 1), []string{
			`accounts.yaml: account "support": oauth.clientid: unknown field (line 7)`}},
		{"UnknownFieldInFlowMapping", strings.Replace(googleAccount, "    oauth:", "    smtp: {hots: x}\n    oauth:", 1), []string{
			`accounts.yaml: account "support": smtp.hots: unknown field (line 6)`}},
		{"WrongType", strings.Replace(googleAccount, "    oauth:", "    smtp:\n      port: abc\n    oauth:", 1), []string{
			"accounts.yaml: account \"support\": smtp.port: cannot unmarshal !!str `abc` into int (line 7)"}},
		{"MissingID", strings.Replace(googleAccount, "  - id: support\n    provider", "  - provider", 1), []string{
			`accounts.yaml: account #1: id: required`}},
		{"BadID", strings.Replace(googleAccount, "id: support", "id: Support Desk", 1), []string{
			`accounts.yaml: account "Support Desk": id: "Support Desk" must be 1 to 64 of a-z, 0-9, '.', '_' and '-'`}},
		{"DuplicateID", googleAccount + strings.TrimPrefix(googleAccount, "\naccounts:\n"), []string{
			`accounts.yaml: account "support": id: duplicate account id "support"`}},
		{"MissingProvider", strings.Replace(googleAccount, "    provider: google\n", "", 1), []string{
			`accounts.yaml: account "support": provider: required: google, microsoft or generic`}},
		{"UnknownProvider", strings.Replace(googleAccount, "provider: google", "provider: gmail", 1), []string{
			`accounts.yaml: account "support": provider: unknown provider "gmail": want google, microsoft or generic`}},
		{"MissingUsername", strings.Replace(googleAccount, "    username: support@example.com\n", "", 1), []string{
			`accounts.yaml: account "support": username: required: the mailbox to send as`}},
		{"UsernameWithSpace", strings.Replace(googleAccount, "support@example.com", `"support @example.com"`, 1), []string{
			`accounts.yaml: account "support": username: must not contain spaces or control characters`}},
		{"UnknownMechanism", strings.Replace(googleAccount, "    oauth:", "    mechanism: PLAIN\n    oauth:", 1), []string{
			`accounts.yaml: account "support": mechanism: unknown mechanism "PLAIN": want XOAUTH2 or OAUTHBEARER`}},
		{"OAuthBearerAtMicrosoft", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    mechanism: OAUTHBEARER
    oauth: {grant: refresh_token, client_id: c, refresh_token_env: SUPPORT_REFRESH_TOKEN}
`, []string{
			`accounts.yaml: account "m": mechanism: provider microsoft does not accept OAUTHBEARER`}},
		{"GenericNeedsHostPortTokenURL", `
accounts:
  - id: g
    provider: generic
    username: g@example.com
    oauth: {grant: client_credentials, client_id: c, client_secret_env: SUPPORT_CLIENT_SECRET}
`, []string{
			`accounts.yaml: account "g": smtp.host: required for provider generic`,
			`accounts.yaml: account "g": smtp.port: required for provider generic`,
			`accounts.yaml: account "g": oauth.token_url: required for provider generic`}},
		{"PortOutOfRange", strings.Replace(googleAccount, "    oauth:", "    smtp: {port: 70000}\n    oauth:", 1), []string{
			`accounts.yaml: account "support": smtp.port: 70000 is out of range 1-65535`}},
		{"UnknownTLSMode", strings.Replace(googleAccount, "    oauth:", "    smtp: {tls: ssl}\n    oauth:", 1), []string{
			`accounts.yaml: account "support": smtp.tls: unknown mode "ssl": want starttls, implicit or none`}},
		{"TLSNoneNeedsLoopbackFlag", strings.Replace(googleAccount, "    oauth:", "    smtp: {host: 127.0.0.1, port: 2525, tls: none}\n    oauth:", 1), []string{
			`accounts.yaml: account "support": smtp.tls: none would send the bearer token in clear text; it needs allow_insecure_loopback and a loopback host`}},
		{"CAFileMissing", strings.Replace(googleAccount, "    oauth:", "    smtp: {ca_file: missing.pem}\n    oauth:", 1), []string{
			`accounts.yaml: account "support": smtp.ca_file: open /etc/sendq/missing.pem: file does not exist`}},
		{"CAFileNotPEM", strings.Replace(googleAccount, "    oauth:", "    smtp: {ca_file: not-a-ca.pem}\n    oauth:", 1), []string{
			`accounts.yaml: account "support": smtp.ca_file: no PEM certificate in /etc/sendq/not-a-ca.pem`}},
		{"MissingGrant", strings.Replace(googleAccount, "      grant: refresh_token\n", "", 1), []string{
			`accounts.yaml: account "support": oauth.grant: required: refresh_token, client_credentials or jwt`}},
		{"UnknownGrant", strings.Replace(googleAccount, "grant: refresh_token", "grant: password", 1), []string{
			`accounts.yaml: account "support": oauth.grant: unknown grant "password": want refresh_token, client_credentials or jwt`}},
		{"GoogleHasNoClientCredentials", `
accounts:
  - id: g
    provider: google
    username: g@example.com
    oauth: {grant: client_credentials, client_id: c, client_secret_env: SUPPORT_CLIENT_SECRET}
`, []string{
			`accounts.yaml: account "g": oauth.grant: provider google does not support grant client_credentials`}},
		{"MicrosoftHasNoJWT", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth: {grant: jwt, service_account_key_file: sa.json}
`, []string{
			`accounts.yaml: account "m": oauth.grant: provider microsoft does not support grant jwt`}},
		{"MissingClientID", strings.Replace(googleAccount, "      client_id: app.apps.googleusercontent.com\n", "", 1), []string{
			`accounts.yaml: account "support": oauth.client_id: required for grant refresh_token`}},
		{"InlineClientSecret", strings.Replace(googleAccount, "      client_secret_env: SUPPORT_CLIENT_SECRET\n", "      client_secret: "+secretInline+"\n", 1), []string{
			`accounts.yaml: account "support": oauth.client_secret: secrets must not be written in the accounts file: use client_secret_env or client_secret_file`}},
		{"InlineRefreshToken", strings.Replace(googleAccount, "      refresh_token_env: SUPPORT_REFRESH_TOKEN\n", "      refresh_token: {value: "+secretInline+"}\n", 1), []string{
			`accounts.yaml: account "support": oauth.refresh_token: secrets must not be written in the accounts file: use refresh_token_env or refresh_token_file`}},
		{"InlineServiceAccountKey", `
accounts:
  - id: sa
    provider: google
    username: sa@example.com
    oauth:
      grant: jwt
      service_account_key: |
        {"type": "service_account", "private_key": "` + secretInline + `"}
`, []string{
			`accounts.yaml: account "sa": oauth.service_account_key: secrets must not be written in the accounts file: use service_account_key_env or service_account_key_file`}},
		{"EnvNotSet", strings.Replace(googleAccount, "client_secret_env: SUPPORT_CLIENT_SECRET", "client_secret_env: OTHER_SECRET", 1), []string{
			`accounts.yaml: account "support": oauth.client_secret_env: environment variable OTHER_SECRET is not set`}},
		{"BadEnvName", strings.Replace(googleAccount, "client_secret_env: SUPPORT_CLIENT_SECRET", "client_secret_env: $SECRET", 1), []string{
			`accounts.yaml: account "support": oauth.client_secret_env: "$SECRET" is not an environment variable name`}},
		{"SecretFileMissing", strings.Replace(googleAccount, "client_secret_env: SUPPORT_CLIENT_SECRET", "client_secret_file: secrets/nope", 1), []string{
			`accounts.yaml: account "support": oauth.client_secret_file: open /etc/sendq/secrets/nope: file does not exist`}},
		{"SecretFileEmpty", strings.Replace(googleAccount, "refresh_token_env: SUPPORT_REFRESH_TOKEN", "refresh_token_file: secrets/empty", 1), []string{
			`accounts.yaml: account "support": oauth.refresh_token_file: file /etc/sendq/secrets/empty is empty`}},
		{"BothEnvAndFile", strings.Replace(googleAccount, "client_secret_env: SUPPORT_CLIENT_SECRET", "client_secret_env: SUPPORT_CLIENT_SECRET\n      client_secret_file: secrets/client", 1), []string{
			`accounts.yaml: account "support": oauth.client_secret_env: set only one of client_secret_env and client_secret_file`}},
		{"RefreshTokenRequired", strings.Replace(googleAccount, "      refresh_token_env: SUPPORT_REFRESH_TOKEN\n", "", 1), []string{
			`accounts.yaml: account "support": oauth.refresh_token_env: refresh_token_env or refresh_token_file is required for grant refresh_token`}},
		{"ClientCredentialsNeedASecret", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth: {grant: client_credentials, tenant: contoso.com, client_id: c}
`, []string{
			`accounts.yaml: account "m": oauth.client_secret_env: client_secret_env or client_secret_file is required for grant client_credentials`}},
		{"JWTNeedsAKey", `
accounts:
  - id: sa
    provider: google
    username: sa@example.com
    oauth: {grant: jwt}
`, []string{
			`accounts.yaml: account "sa": oauth.service_account_key_env: service_account_key_env or service_account_key_file is required for grant jwt`}},
		{"FieldsTheGrantDoesNotUse", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth:
      grant: client_credentials
      tenant: contoso.com
      client_id: c
      client_secret_env: SUPPORT_CLIENT_SECRET
      refresh_token_env: SUPPORT_REFRESH_TOKEN
      subject: other@contoso.com
  - id: sa
    provider: google
    username: sa@example.com
    oauth:
      grant: jwt
      client_id: c
      client_secret_file: secrets/client
      service_account_key_file: sa.json
`, []string{
			`accounts.yaml: account "m": oauth.refresh_token_env: not used by grant client_credentials`,
			`accounts.yaml: account "m": oauth.subject: not used by grant client_credentials`,
			`accounts.yaml: account "sa": oauth.client_id: not used by grant jwt`,
			`accounts.yaml: account "sa": oauth.client_secret_file: not used by grant jwt`}},
		{"TenantOnlyForMicrosoft", strings.Replace(googleAccount, "      grant:", "      tenant: contoso.com\n      grant:", 1), []string{
			`accounts.yaml: account "support": oauth.tenant: only used by provider microsoft`}},
		{"ClientCredentialsNeedARealTenant", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth: {grant: client_credentials, client_id: c, client_secret_env: SUPPORT_CLIENT_SECRET}
`, []string{
			`accounts.yaml: account "m": oauth.tenant: grant client_credentials needs the organization's tenant (a domain or directory ID), not "common"`}},
		{"BadTenant", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth: {grant: refresh_token, tenant: "contoso/../x", client_id: c, refresh_token_env: SUPPORT_REFRESH_TOKEN}
`, []string{
			`accounts.yaml: account "m": oauth.tenant: "contoso/../x" is not a tenant domain or ID`}},
		{"BadScope", strings.Replace(googleAccount, "      grant:", "      scopes: [\"a b\"]\n      grant:", 1), []string{
			`accounts.yaml: account "support": oauth.scopes: "a b" is not a scope (one scope per list item)`}},
		{"TokenURLNotHTTPS", strings.Replace(googleAccount, "      grant:", "      token_url: http://auth.example.com/token\n      grant:", 1), []string{
			`accounts.yaml: account "support": oauth.token_url: http://auth.example.com/token must use https (http is allowed only to a loopback host)`}},
		{"AuthURLNotAbsolute", strings.Replace(googleAccount, "      grant:", "      auth_url: /authorize\n      grant:", 1), []string{
			`accounts.yaml: account "support": oauth.auth_url: /authorize is not an absolute https URL`}},
		{"NotAServiceAccountKey", `
accounts:
  - id: sa
    provider: google
    username: sa@example.com
    oauth: {grant: jwt, service_account_key_file: user-creds.json}
`, []string{
			`accounts.yaml: account "sa": oauth.service_account_key_file: not a service account key: google: read JWT from JSON credentials: 'type' field is "authorized_user" (expected "service_account")`}},
		{"CollectsEveryError", `
accounts:
  - id: one
    provider: google
    username: one@example.com
    oauth: {grant: refresh_token, client_id: c, refresh_token_env: NOPE_1}
  - id: two
    provider: microsoft
    username: two@contoso.com
    smtp: {port: 0, tls: bogus}
    oauth: {grant: refresh_token, client_id: c, client_secret: x, refresh_token_env: NOPE_2}
`, []string{
			`accounts.yaml: account "one": oauth.refresh_token_env: environment variable NOPE_1 is not set`,
			`accounts.yaml: account "two": smtp.tls: unknown mode "bogus": want starttls, implicit or none`,
			`accounts.yaml: account "two": oauth.client_secret: secrets must not be written in the accounts file: use client_secret_env or client_secret_file`,
			`accounts.yaml: account "two": oauth.refresh_token_env: environment variable NOPE_2 is not set`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := Parse([]byte(tt.yaml), defaultTestEnv(t).options())
			if err == nil {
				t.Fatalf("Parse succeeded with %d accounts, want errors:\n%s", len(f.Accounts()), strings.Join(tt.want, "\n"))
			}
			msg := err.Error()
			lines := strings.Split(msg, "\n")
			for _, want := range tt.want {
				if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, want) }) {
					t.Errorf("missing error line\n  %s\ngot:\n  %s", want, strings.ReplaceAll(msg, "\n", "\n  "))
				}
			}
			if len(lines) != len(tt.want) {
				t.Errorf("got %d error lines, want %d:\n  %s", len(lines), len(tt.want), strings.ReplaceAll(msg, "\n", "\n  "))
			}
			for _, s := range []string{secretClient, secretRefresh, secretInline} {
				if strings.Contains(msg, s) {
					t.Errorf("error contains a secret value: %s", msg)
				}
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %T does not contain a *FieldError", err)
			}
		})
	}
}

func TestParsePresets(t *testing.T) {
	t.Parallel()

	type want struct {
		host      string
		port      int
		tls       smtpoauth.TLSMode
		mechanism string
		tenant    string
		subject   string
		scopes    []string
		tokenURL  string
		authURL   string
	}
	googleDefaults := want{
		host: "smtp.gmail.com", port: 587, tls: "starttls", mechanism: "XOAUTH2",
		scopes:   []string{"https://mail.google.com/"},
		tokenURL: "https://oauth2.googleapis.com/token", authURL: "https://accounts.google.com/o/oauth2/auth",
	}
	with := func(w want, f func(*want)) want { f(&w); return w }

	tests := []struct {
		name string
		yaml string
		want want
	}{
		{"GoogleDefaults", googleAccount, googleDefaults},
		{"GoogleImplicitTLSGetsPort465", strings.Replace(googleAccount, "    oauth:", "    smtp: {tls: implicit}\n    oauth:", 1),
			with(googleDefaults, func(w *want) { w.port, w.tls = 465, "implicit" })},
		{"Port465MeansImplicitTLS", strings.Replace(googleAccount, "    oauth:", "    smtp: {port: 465}\n    oauth:", 1),
			with(googleDefaults, func(w *want) { w.port, w.tls = 465, "implicit" })},
		{"MechanismIsCaseInsensitive", strings.Replace(googleAccount, "    oauth:", "    mechanism: oauthbearer\n    oauth:", 1),
			with(googleDefaults, func(w *want) { w.mechanism = "OAUTHBEARER" })},
		{"ExplicitValuesWin", `
accounts:
  - id: support
    provider: google
    username: support@example.com
    smtp: {host: smtp-relay.gmail.com, port: 2525}
    oauth:
      grant: refresh_token
      client_id: c
      refresh_token_env: SUPPORT_REFRESH_TOKEN
      scopes: [https://mail.google.com/, openid]
      token_url: https://tokens.example.com/token
      auth_url: https://auth.example.com/auth
`, with(googleDefaults, func(w *want) {
			w.host, w.port = "smtp-relay.gmail.com", 2525
			w.scopes = []string{"https://mail.google.com/", "openid"}
			w.tokenURL, w.authURL = "https://tokens.example.com/token", "https://auth.example.com/auth"
		})},
		{"GoogleJWTSubjectDefaultsToUsername", `
accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth: {grant: jwt, service_account_key_file: sa.json}
`, with(googleDefaults, func(w *want) { w.subject, w.tokenURL = "support@example.com", "https://sa.example.com/token" })},
		{"GoogleJWTExplicitSubjectAndTokenURL", `
accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth: {grant: jwt, subject: boss@example.com, service_account_key_file: sa.json, token_url: https://t.example.com/}
`, with(googleDefaults, func(w *want) { w.subject, w.tokenURL = "boss@example.com", "https://t.example.com/" })},
		{"GoogleJWTKeyWithoutTokenURI", `
accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth: {grant: jwt, service_account_key_file: sa-no-uri.json}
`, with(googleDefaults, func(w *want) { w.subject = "support@example.com" })},
		{"MicrosoftDelegatedDefaults", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth: {grant: refresh_token, client_id: c, refresh_token_env: SUPPORT_REFRESH_TOKEN}
`, want{
			host: "smtp.office365.com", port: 587, tls: "starttls", mechanism: "XOAUTH2", tenant: "common",
			scopes:   []string{"https://outlook.office.com/SMTP.Send", "offline_access"},
			tokenURL: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
			authURL:  "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
		}},
		{"MicrosoftAppOnlyWithTenant", `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth: {grant: client_credentials, tenant: contoso.onmicrosoft.com, client_id: c, client_secret_env: SUPPORT_CLIENT_SECRET}
`, want{
			host: "smtp.office365.com", port: 587, tls: "starttls", mechanism: "XOAUTH2", tenant: "contoso.onmicrosoft.com",
			scopes:   []string{"https://outlook.office365.com/.default"},
			tokenURL: "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
			authURL:  "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
		}},
		{"GenericTakesWhatItIsGiven", `
accounts:
  - id: g
    provider: generic
    username: g@example.com
    mechanism: OAUTHBEARER
    smtp: {host: localhost, port: 2525, tls: none, allow_insecure_loopback: true}
    oauth: {grant: client_credentials, client_id: c, client_secret_env: SUPPORT_CLIENT_SECRET, token_url: "http://127.0.0.1:8080/token"}
`, want{host: "localhost", port: 2525, tls: "none", mechanism: "OAUTHBEARER", tokenURL: "http://127.0.0.1:8080/token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := Parse([]byte(tt.yaml), defaultTestEnv(t).options())
			if err != nil {
				t.Fatal(err)
			}
			a := f.Accounts()[0]
			got := want{
				host: a.SMTP.Host, port: a.SMTP.Port, tls: a.SMTP.TLS, mechanism: a.Mechanism,
				tenant: a.OAuth.Tenant, subject: a.OAuth.Subject, scopes: a.OAuth.Scopes,
				tokenURL: a.OAuth.TokenURL, authURL: a.OAuth.AuthURL,
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("resolved\n  %+v\nwant\n  %+v", got, tt.want)
			}
		})
	}
}

func TestParseSecrets(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name             string
		oauth            string
		wantClient       smtpoauth.Secret
		wantRefresh      smtpoauth.Secret
		wantRefreshFile  string
		wantSecretInEnvs bool
	}{
		{"FromEnv", "client_secret_env: SUPPORT_CLIENT_SECRET, refresh_token_env: SUPPORT_REFRESH_TOKEN",
			secretClient, secretRefresh, "", true},
		{"FromRelativeFilesTrimmed", "client_secret_file: secrets/client, refresh_token_file: ./secrets/refresh",
			secretClient, secretRefresh, "/etc/sendq/secrets/refresh", false},
		{"FromAbsoluteFile", "client_secret_file: /etc/sendq/secrets/client, refresh_token_env: SUPPORT_REFRESH_TOKEN",
			secretClient, secretRefresh, "", true},
		{"ClientSecretIsOptionalForRefreshToken", "refresh_token_env: SUPPORT_REFRESH_TOKEN",
			"", secretRefresh, "", true},
		{"EnvValueIsTrimmed", "refresh_token_env: PADDED", "", secretRefresh, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := defaultTestEnv(t)
			env.env["PADDED"] = " " + secretRefresh + "\n"
			data := `
accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth: {grant: refresh_token, client_id: c, ` + tt.oauth + `}
`
			f, err := Parse([]byte(data), env.options())
			if err != nil {
				t.Fatal(err)
			}
			a, ok := f.Account("support")
			if !ok {
				t.Fatal(`Account("support") not found`)
			}
			if a.creds.clientSecret != tt.wantClient {
				t.Errorf("client secret = %q, want %q", string(a.creds.clientSecret), string(tt.wantClient))
			}
			if a.creds.refreshToken != tt.wantRefresh {
				t.Errorf("refresh token = %q, want %q", string(a.creds.refreshToken), string(tt.wantRefresh))
			}
			if a.creds.refreshTokenFile != tt.wantRefreshFile {
				t.Errorf("refresh token file = %q, want %q", a.creds.refreshTokenFile, tt.wantRefreshFile)
			}
		})
	}

	t.Run("ServiceAccountKeyFromEnv", func(t *testing.T) {
		t.Parallel()
		env := defaultTestEnv(t)
		env.env["SA_KEY"] = env.files["/etc/sendq/sa.json"]
		f, err := Parse([]byte(`
accounts:
  - id: sa
    provider: google
    username: sa@example.com
    oauth: {grant: jwt, service_account_key_env: SA_KEY}
`), env.options())
		if err != nil {
			t.Fatal(err)
		}
		a, _ := f.Account("sa")
		if string(a.creds.serviceAccountKey) != strings.TrimSpace(env.env["SA_KEY"]) {
			t.Error("service account key not loaded from the environment")
		}
	})

	t.Run("SecretsNeverPrinted", func(t *testing.T) {
		t.Parallel()
		f, err := Parse([]byte(googleAccount), defaultTestEnv(t).options())
		if err != nil {
			t.Fatal(err)
		}
		a, _ := f.Account("support")
		if got := fmt.Sprint(a); got != `account "support"` {
			t.Errorf("Sprint(account) = %s, want account \"support\"", got)
		}
		if got := fmt.Sprintf("%+v", a); !strings.Contains(got, "Host:smtp.gmail.com") {
			t.Errorf("%%+v of an account = %s, want its settings", got)
		}
		for _, verb := range []string{"%v", "%+v", "%s", "%#v", "%x", "%d"} {
			out := fmt.Sprintf(verb, a) + fmt.Sprintf(verb, *a) + fmt.Sprintf(verb, []*Account{a})
			if strings.Contains(out, secretClient) || strings.Contains(out, secretRefresh) {
				t.Errorf("%s of an account prints a secret: %s", verb, out)
			}
		}
	})
}

func TestParseCAFile(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		caFile  string
		baseDir string
		want    string
	}{
		{"RelativeToTheFile", "./ca.pem", baseDir, "/etc/sendq/ca.pem"},
		{"Absolute", "/etc/sendq/ca.pem", "/elsewhere", "/etc/sendq/ca.pem"},
		{"RelativeWithoutBaseDir", "ca.pem", "", "ca.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := defaultTestEnv(t)
			env.files["ca.pem"] = env.files["/etc/sendq/ca.pem"]
			opts := env.options()
			opts.BaseDir = tt.baseDir
			data := strings.Replace(googleAccount, "    oauth:", "    smtp: {ca_file: "+tt.caFile+"}\n    oauth:", 1)
			f, err := Parse([]byte(data), opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Accounts()[0].SMTP.CAFile; got != tt.want {
				t.Errorf("CAFile = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFileAccounts(t *testing.T) {
	t.Parallel()
	data := googleAccount + `
  - id: billing
    provider: microsoft
    username: billing@contoso.com
    oauth: {grant: refresh_token, client_id: c, refresh_token_env: SUPPORT_REFRESH_TOKEN}
`
	f, err := Parse([]byte(data), defaultTestEnv(t).options())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range f.Accounts() {
		ids = append(ids, a.ID)
	}
	if want := []string{"support", "billing"}; !slices.Equal(ids, want) {
		t.Errorf("Accounts() ids = %q, want %q (file order)", ids, want)
	}
	if a, ok := f.Account("billing"); !ok || a.Provider != ProviderMicrosoft {
		t.Errorf(`Account("billing") = %v, %v`, a, ok)
	}
	if _, ok := f.Account("nope"); ok {
		t.Error(`Account("nope") found`)
	}
	f.Accounts()[0] = nil // a copy: the file is not affected
	if f.Accounts()[0] == nil {
		t.Error("Accounts returns the file's own slice")
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()

	t.Run("ResolvesPathsAgainstTheFile", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "ca.pem"), string(testCAPEM(t)))
		writeFile(t, filepath.Join(dir, "secrets", "rt"), secretRefresh+"\n")
		path := filepath.Join(dir, "accounts.yaml")
		writeFile(t, path, `
accounts:
  - id: support
    provider: google
    username: support@example.com
    smtp: {ca_file: ca.pem}
    oauth: {grant: refresh_token, client_id: c, refresh_token_file: secrets/rt}
`)
		f, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := f.Account("support")
		if want := filepath.Join(dir, "ca.pem"); a.SMTP.CAFile != want {
			t.Errorf("CAFile = %q, want %q", a.SMTP.CAFile, want)
		}
		if a.creds.refreshToken != secretRefresh {
			t.Error("refresh token not read from the file next to the accounts file")
		}
		cfg, err := a.SenderConfig(staticTokenSource{})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.RootCAs == nil || cfg.Host != "smtp.gmail.com" || cfg.Username != "support@example.com" {
			t.Errorf("SenderConfig = %+v", cfg)
		}
	})

	t.Run("ErrorsNameThePath", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "accounts.yaml")
		writeFile(t, path, strings.Replace(googleAccount, "SUPPORT_CLIENT_SECRET", "SENDQ_TEST_UNSET_VARIABLE", 1))
		_, err := Load(path)
		want := path + `: account "support": oauth.client_secret_env: environment variable SENDQ_TEST_UNSET_VARIABLE is not set`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load error = %v\nwant it to contain %s", err, want)
		}
	})

	t.Run("MissingFile", func(t *testing.T) {
		t.Parallel()
		_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load error = %v, want fs.ErrNotExist", err)
		}
	})
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
