package accounts

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
)

// This file holds what obtaining a refresh token by consent needs (the
// authorization-code and device flows of cmd/authorize), and what proving an
// account works needs (authorize -check).

// ErrNoConsent is returned (wrapped) by ConsentConfig for an account whose
// grant obtains its tokens without a person's consent: client_credentials
// and jwt.
var ErrNoConsent = errors.New("grant needs no consent")

// ErrNoRefreshToken is returned (wrapped) by Registry.Refresh for a
// refresh_token account that has no refresh token yet: none in the token
// store and none in the accounts file (oauth.refresh_token_in_store before
// the account was authorized).
var ErrNoRefreshToken = smtpoauth.ErrNoRefreshToken

// ConsentConfig returns the OAuth2 client configuration with which a person
// consents to the account's use and so obtains its refresh token: the
// client ID and secret, the authorization, device authorization and token
// endpoints (oauth.auth_url, oauth.device_url, oauth.token_url or the
// preset's) and the scopes. Set RedirectURL before using it for the
// authorization-code flow, and make the requests with the context
// HTTPContext returns.
//
// It fails, wrapping ErrNoConsent, for the client_credentials and jwt
// grants, and when the account has no authorization endpoint (a generic
// account without oauth.auth_url); DeviceAuthURL may be empty.
func (a *Account) ConsentConfig() (*oauth2.Config, error) {
	if a.creds == nil {
		return nil, fmt.Errorf("%v: not loaded from an accounts file", a)
	}
	if a.OAuth.Grant != GrantRefreshToken {
		return nil, fmt.Errorf("%v: oauth.grant %s: %w", a, a.OAuth.Grant, ErrNoConsent)
	}
	if a.OAuth.AuthURL == "" && a.OAuth.DeviceURL == "" {
		return nil, fmt.Errorf("%v: oauth.auth_url: required to obtain a refresh token by consent", a)
	}
	cfg := a.oauth2Config()
	cfg.Endpoint.DeviceAuthURL = a.OAuth.DeviceURL
	cfg.Scopes = slices.Clone(cfg.Scopes)
	return cfg, nil
}

// ConsentOptions returns the parameters the account's authorization request
// needs for the provider to issue a refresh token, and to propose the right
// mailbox: access_type=offline and prompt=consent at Google (without
// prompt=consent, a user who consented before gets no new refresh token),
// and login_hint=Username at every provider. Microsoft issues a refresh
// token for the offline_access scope, which its preset requests. They are
// for the authorization-code flow only: device authorization endpoints
// take no such parameters.
func (a *Account) ConsentOptions() []oauth2.AuthCodeOption {
	var opts []oauth2.AuthCodeOption
	if pre, ok := presets[a.Provider]; ok {
		for _, k := range slices.Sorted(maps.Keys(pre.authParams)) {
			opts = append(opts, oauth2.SetAuthURLParam(k, pre.authParams[k]))
		}
	}
	if a.Username != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", a.Username))
	}
	return opts
}

// HTTPContext returns ctx carrying the HTTP client of the account's token
// endpoint, which trusts smtp.ca_file when the account names one, for the
// requests of a ConsentConfig (Exchange, DeviceAuth, DeviceAccessToken).
// Without a ca_file it returns ctx.
func (a *Account) HTTPContext(ctx context.Context) (context.Context, error) {
	if a.creds == nil {
		return nil, fmt.Errorf("%v: not loaded from an accounts file", a)
	}
	return a.tokenContext(ctx)
}

// Refresh obtains a new access token for the account from its token
// endpoint, rather than from a cache, and returns it: the token the
// account's sender uses next. With a TokenStore (RegistryOptions.Tokens) it
// first drops the account's access token from the store, so that a token
// another process cached proves nothing, then refreshes as every process
// does, under the store's lock (a rotated refresh token is stored); the
// other processes refresh once more on their next use. Without one, the
// account's source has no shared cache and Refresh returns its token, from
// the endpoint unless this Registry obtained one already.
//
// It is how authorize -check proves that an account's grant works, not only
// that a token cached earlier does. For a refresh_token account with no
// refresh token anywhere (none stored, none in the accounts file) it
// returns an error wrapping ErrNoRefreshToken without asking the endpoint;
// for an unknown account, one wrapping ErrUnknownAccount. Other errors are
// the token source's: an *oauth2.RetrieveError from the endpoint, a
// network error, or the store's.
func (r *Registry) Refresh(ctx context.Context, accountID string) (*oauth2.Token, error) {
	ts, ok := r.sources[accountID]
	if !ok {
		return nil, fmt.Errorf("refresh %q: %w", accountID, ErrUnknownAccount)
	}
	c, ok := ts.(*sharedTokenCache)
	if !ok {
		return ts.Token()
	}
	tok, err := c.shared.refreshNow(ctx)
	if err != nil {
		return nil, err
	}
	// The process's cache holds the shared token now, unless it held one
	// of its own before: drop that one.
	if cur, err := c.TokenCache.Token(); err == nil && cur.AccessToken != tok.AccessToken {
		c.TokenCache.Invalidate(cur)
	}
	return tok, nil
}

// refreshNow drops the shared access token and obtains a new one (see
// Registry.Refresh).
func (s *sharedSource) refreshNow(ctx context.Context) (*oauth2.Token, error) {
	if s.refresh {
		stored, _, err := s.store.RefreshToken(ctx, s.account)
		if err != nil {
			return nil, err
		}
		if stored == "" && s.seed == "" {
			return nil, fmt.Errorf("account %s: %w: none stored and none in the accounts file", s.account, ErrNoRefreshToken)
		}
	}
	at, _, _, err := s.store.AccessToken(ctx, s.account, s.key)
	if err != nil {
		return nil, err
	}
	if at != "" {
		s.reject(&oauth2.Token{AccessToken: at})
		if _, err := s.store.DeleteAccessToken(ctx, s.account, s.key, at); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.callTimeout())
	defer cancel()
	tok, _, err := s.fetch(ctx)
	return tok, err
}
