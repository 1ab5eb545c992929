package accounts

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/google"
	"golang.org/x/oauth2/jwt"

	"github.com/sendq/sendq/smtpoauth"
)

// Account is one sending mailbox from the accounts file, with its provider's
// presets filled in and its secrets loaded. The exported fields are the
// resolved settings; the secrets are kept unexported and never printed.
//
// Build its token source with TokenSource and its sender configuration with
// SenderConfig, or let a Registry do both.
type Account struct {
	// ID is the account's unique name, used by producers to pick it.
	ID string
	// Provider is the preset the account's defaults come from.
	Provider Provider
	// Username is the mailbox, sent as the XOAUTH2 user= (OAUTHBEARER a=).
	Username string
	// Mechanism is smtpoauth.MechXOAUTH2 (default) or
	// smtpoauth.MechOAuthBearer.
	Mechanism string
	// SMTP is where and how the account submits mail.
	SMTP SMTP
	// OAuth is how the account obtains access tokens.
	OAuth OAuth
	// Limits are the account's sending limits, shared by every worker:
	// the "limits" block over the provider's preset.
	Limits Limits

	label string // `account "id"` or `account #n`, for messages
	// creds is a pointer so that printing an Account, even with %#v,
	// shows an address rather than the secrets.
	creds *credentials
}

// credentials are an account's secrets and where they came from.
type credentials struct {
	clientSecret      smtpoauth.Secret
	serviceAccountKey smtpoauth.Secret
	refreshTokenEnv   string // where the refresh token came from
	refreshTokenFile  string // resolved path; rotated tokens are saved here

	httpOnce   sync.Once // builds httpClient from the ca_file
	httpClient *http.Client
	httpErr    error

	mu           sync.Mutex // guards refreshToken, replaced on rotation
	refreshToken smtpoauth.Secret
}

// SMTP is the submission server of an account.
type SMTP struct {
	// Host is the server's name. Preset default: smtp.gmail.com or
	// smtp.office365.com; required for the generic provider.
	Host string
	// Port is the server's port. Preset default: 465 with TLS "implicit",
	// otherwise 587; required for the generic provider.
	Port int
	// TLS is "starttls", "implicit" or "none". Default: implicit on port
	// 465, otherwise starttls. "none" needs AllowInsecureLoopback.
	TLS smtpoauth.TLSMode
	// CAFile is a PEM file of extra trusted CA certificates, resolved
	// against the accounts file's directory, trusted for the SMTP server
	// and the token endpoint. Empty: system roots only.
	CAFile string
	// AllowInsecureLoopback allows TLS "none" when the host is a loopback
	// address (a local relay or a test server).
	AllowInsecureLoopback bool
}

// OAuth is how an account obtains access tokens. The secrets it uses come
// from the environment or from files and are not part of it.
type OAuth struct {
	// Grant is the OAuth2 grant: refresh_token, client_credentials or jwt.
	Grant Grant
	// ClientID is the OAuth client (application) ID; required by the
	// refresh_token and client_credentials grants. The jwt grant takes its
	// client from the service-account key.
	ClientID string
	// Tenant is the Microsoft tenant (a domain or a directory ID) put in
	// the Microsoft token and authorization URLs. Microsoft only; default
	// "common", which the client_credentials grant cannot use.
	Tenant string
	// Subject is the mailbox a jwt grant acts as; default Username.
	Subject string
	// Scopes are the scopes requested. Preset default: Google
	// https://mail.google.com/; Microsoft https://outlook.office.com/SMTP.Send
	// and offline_access, or https://outlook.office365.com/.default for
	// client_credentials.
	Scopes []string
	// TokenURL is the token endpoint. Preset default; for the jwt grant the
	// key's token_uri comes before the preset. Required for the generic
	// provider unless the jwt key names one.
	TokenURL string
	// AuthURL is the authorization endpoint, used to obtain a refresh token
	// by consent. Preset default; optional.
	AuthURL string
	// DeviceURL is the device authorization endpoint (RFC 8628), used to
	// obtain a refresh token by consent on another device. Preset
	// default; optional.
	DeviceURL string
}

// TokenSource returns the account's access-token source: a
// *smtpoauth.TokenCache over the source of its grant, refreshing
// smtpoauth.DefaultRefreshMargin ahead of expiry.
//
// ctx is kept for every request to the token endpoint: pass a context that
// lives as long as the process, never the context of one task.
//
// With the refresh_token grant, a refresh token the provider rotates is kept
// (later calls to TokenSource start from it) and, when it was read from
// oauth.refresh_token_file, written back to that file so that it survives a
// restart. Call TokenSource once per account and share the result (a
// Registry does): two sources spending the same rotating refresh token
// invalidate each other. To share tokens among processes, use a Registry
// with a TokenStore instead (see RegistryOptions).
func (a *Account) TokenSource(ctx context.Context) (oauth2.TokenSource, error) {
	return a.tokenSource(ctx, nil, nil)
}

// tokenSource builds the token source; logger (nil: quiet) hears about
// refresh-token rotations, obs (nil: none) about requests to the token
// endpoint.
func (a *Account) tokenSource(ctx context.Context, logger *slog.Logger, obs Observer) (*smtpoauth.TokenCache, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := a.creds
	if c == nil {
		return nil, fmt.Errorf("%v: not loaded from an accounts file", a)
	}
	ctx, err := a.tokenContext(ctx)
	if err != nil {
		return nil, err
	}
	var src oauth2.TokenSource
	switch a.OAuth.Grant {
	case GrantRefreshToken:
		c.mu.Lock()
		rt := string(c.refreshToken)
		c.mu.Unlock()
		src = smtpoauth.NewRefreshTokenSource(ctx, a.oauth2Config(), rt, func(newToken string) { a.rotated(newToken, logger) })
	case GrantClientCredentials:
		src = smtpoauth.NewClientCredentialsSource(ctx, a.clientCredentialsConfig())
	case GrantJWT:
		cfg, err := a.jwtConfig()
		if err != nil {
			return nil, err
		}
		src = smtpoauth.NewJWTSource(ctx, cfg)
	default:
		return nil, fmt.Errorf("%v: oauth.grant: unknown grant %q", a, a.OAuth.Grant)
	}
	if obs != nil {
		src = observedSource{src: src, obs: obs}
	}
	return smtpoauth.NewTokenCache(src, 0), nil
}

// grant returns the account's grant as a function of a context (each call
// bounded on its own, unlike a token source's kept context) and, for the
// refresh_token grant, of the refresh token to spend; and the cache key its
// access tokens are shared under.
func (a *Account) grant() (grantFunc, string, error) {
	if a.creds == nil {
		return nil, "", fmt.Errorf("%v: not loaded from an accounts file", a)
	}
	if _, err := a.tokenContext(context.Background()); err != nil {
		return nil, "", err
	}
	f, key, err := a.bareGrant()
	if err != nil {
		return nil, "", err
	}
	return func(ctx context.Context, refreshToken string) (*oauth2.Token, string, error) {
		ctx, err := a.tokenContext(ctx)
		if err != nil {
			return nil, "", err
		}
		return f(ctx, refreshToken)
	}, key, nil
}

// tokenContext returns ctx carrying, when the account names a ca_file, an
// HTTP client that trusts it for the token endpoint too: a private provider
// (or the sandbox) signs both its SMTP and its HTTPS certificates.
func (a *Account) tokenContext(ctx context.Context) (context.Context, error) {
	if a.SMTP.CAFile == "" {
		return ctx, nil
	}
	a.creds.httpOnce.Do(func() {
		pool, err := smtpoauth.LoadCertPool(a.SMTP.CAFile)
		if err != nil {
			a.creds.httpErr = fmt.Errorf("%v: smtp.ca_file: %w", a, err)
			return
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		a.creds.httpClient = &http.Client{Transport: t, Timeout: 30 * time.Second}
	})
	if a.creds.httpErr != nil {
		return nil, a.creds.httpErr
	}
	return context.WithValue(ctx, oauth2.HTTPClient, a.creds.httpClient), nil
}

// bareGrant is grant without the account's CA for the token endpoint.
func (a *Account) bareGrant() (grantFunc, string, error) {
	switch a.OAuth.Grant {
	case GrantRefreshToken:
		cfg := a.oauth2Config()
		f := func(ctx context.Context, refreshToken string) (*oauth2.Token, string, error) {
			var rotated string
			src := smtpoauth.NewRefreshTokenSource(ctx, cfg, refreshToken, func(newToken string) { rotated = newToken })
			tok, err := src.Token()
			return tok, rotated, err
		}
		return f, cacheKey(a, a.OAuth.ClientID, a.Username), nil
	case GrantClientCredentials:
		cfg := a.clientCredentialsConfig()
		f := func(ctx context.Context, _ string) (*oauth2.Token, string, error) {
			tok, err := smtpoauth.NewClientCredentialsSource(ctx, cfg).Token()
			return tok, "", err
		}
		return f, cacheKey(a, a.OAuth.ClientID, a.Username), nil
	case GrantJWT:
		cfg, err := a.jwtConfig()
		if err != nil {
			return nil, "", err
		}
		f := func(ctx context.Context, _ string) (*oauth2.Token, string, error) {
			tok, err := smtpoauth.NewJWTSource(ctx, cfg).Token()
			return tok, "", err
		}
		return f, cacheKey(a, cfg.Email, cfg.Subject), nil
	default:
		return nil, "", fmt.Errorf("%v: oauth.grant: unknown grant %q", a, a.OAuth.Grant)
	}
}

// oauth2Config is the client configuration of the refresh_token grant.
func (a *Account) oauth2Config() *oauth2.Config {
	return &oauth2.Config{
		ClientID:     a.OAuth.ClientID,
		ClientSecret: string(a.creds.clientSecret),
		Endpoint:     oauth2.Endpoint{AuthURL: a.OAuth.AuthURL, TokenURL: a.OAuth.TokenURL},
		Scopes:       a.OAuth.Scopes,
	}
}

// clientCredentialsConfig is the configuration of the client_credentials
// grant.
func (a *Account) clientCredentialsConfig() *clientcredentials.Config {
	return &clientcredentials.Config{
		ClientID:     a.OAuth.ClientID,
		ClientSecret: string(a.creds.clientSecret),
		TokenURL:     a.OAuth.TokenURL,
		Scopes:       a.OAuth.Scopes,
	}
}

// jwtConfig is the configuration of the jwt grant, from the service-account
// key.
func (a *Account) jwtConfig() (*jwt.Config, error) {
	cfg, err := google.JWTConfigFromJSON([]byte(a.creds.serviceAccountKey), a.OAuth.Scopes...)
	if err != nil {
		return nil, fmt.Errorf("%v: oauth.service_account_key: %w", a, err)
	}
	cfg.Subject = a.OAuth.Subject
	cfg.TokenURL = a.OAuth.TokenURL
	return cfg, nil
}

// seedRefreshToken returns the refresh token the accounts file gave (or the
// latest rotation of it kept in memory).
func (a *Account) seedRefreshToken() smtpoauth.Secret {
	a.creds.mu.Lock()
	defer a.creds.mu.Unlock()
	return a.creds.refreshToken
}

// rotated keeps a refresh token the provider rotated and saves it to the
// file it came from, if any.
func (a *Account) rotated(newToken string, logger *slog.Logger) {
	c := a.creds
	c.mu.Lock()
	c.refreshToken = smtpoauth.Secret(newToken)
	c.mu.Unlock()
	if c.refreshTokenFile == "" {
		logger.Warn("refresh token rotated; the new one is kept in memory only (set oauth.refresh_token_file to keep it across restarts)",
			"account", a.ID, "env", c.refreshTokenEnv)
		return
	}
	if err := writeSecretFile(c.refreshTokenFile, newToken); err != nil {
		logger.Error("save rotated refresh token", "account", a.ID, "file", c.refreshTokenFile, "error", err)
		return
	}
	logger.Info("saved rotated refresh token", "account", a.ID, "file", c.refreshTokenFile)
}

// writeSecretFile replaces path atomically with value and a newline, mode
// 0600.
func writeSecretFile(path, value string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.WriteString(value + "\n"); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// SenderConfig returns the smtpoauth.Config of the account's sender, with ts
// as its token source (usually the one TokenSource returned) and the CA file,
// if any, loaded. The caller may set the fields the accounts file does not
// cover (Logger, timeouts, LocalName) before calling smtpoauth.NewSender.
func (a *Account) SenderConfig(ts oauth2.TokenSource) (smtpoauth.Config, error) {
	if ts == nil {
		return smtpoauth.Config{}, errors.New("sender config: nil token source")
	}
	cfg := smtpoauth.Config{
		Host:                  a.SMTP.Host,
		Port:                  a.SMTP.Port,
		TLS:                   a.SMTP.TLS,
		Username:              a.Username,
		Mechanism:             a.Mechanism,
		TokenSource:           ts,
		AllowInsecureLoopback: a.SMTP.AllowInsecureLoopback,
	}
	if a.SMTP.CAFile != "" {
		pool, err := smtpoauth.LoadCertPool(a.SMTP.CAFile)
		if err != nil {
			return smtpoauth.Config{}, fmt.Errorf("%v: smtp.ca_file: %w", a, err)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// String returns `account "id"`.
func (a Account) String() string { return fmt.Sprintf("account %q", a.ID) }

// Format prints String for %v and %s, and the exported fields for %+v, %#v
// and other verbs, so that formatting an Account never reveals its secrets.
func (a Account) Format(f fmt.State, verb rune) {
	if (verb == 'v' && !f.Flag('+') && !f.Flag('#')) || verb == 's' {
		_, _ = io.WriteString(f, a.String())
		return
	}
	type Account struct {
		ID        string
		Provider  Provider
		Username  string
		Mechanism string
		SMTP      SMTP
		OAuth     OAuth
		Limits    Limits
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), Account{a.ID, a.Provider, a.Username, a.Mechanism, a.SMTP, a.OAuth, a.Limits})
}
