package smtpoauth

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/jwt"
)

// The grant token sources below fetch a new access token from the token
// endpoint on every call to Token: they do no caching of their own (unlike the
// token sources of golang.org/x/oauth2, which reuse a token until ten seconds
// before it expires). Wrap them in a TokenCache, which decides when to
// refresh.
//
// The ctx given to their constructors is kept and used for every request to
// the token endpoint (x/oauth2 takes its *http.Client from it, see
// oauth2.HTTPClient). It must live as long as the token source: a process
// lifetime context, never the context of one task.

// NewRefreshTokenSource returns a token source for the refresh_token grant.
// Every call to Token exchanges the current refresh token for a new access
// token at cfg.Endpoint.TokenURL.
//
// When the endpoint answers with a refresh token different from the one sent
// (Microsoft rotates it on every refresh, and the old one may stop working),
// the source keeps the new one for later calls and calls onRotate with it,
// synchronously, before Token returns, so the caller can persist it. onRotate
// may be nil; it must not call Token.
//
// Calls are serialized, so concurrent callers never spend the same rotating
// refresh token twice. The tokens returned carry no refresh token, and errors
// never contain it: if the endpoint echoes it back, it is replaced by
// "[redacted]". A dead refresh token shows up as an *oauth2.RetrieveError
// with ErrorCode "invalid_grant".
func NewRefreshTokenSource(ctx context.Context, cfg *oauth2.Config, refreshToken string, onRotate func(newRefreshToken string)) oauth2.TokenSource {
	return &refreshTokenSource{
		ctx:          ctx,
		cfg:          cfg,
		refreshToken: Secret(refreshToken),
		onRotate:     onRotate,
	}
}

type refreshTokenSource struct {
	ctx      context.Context
	cfg      *oauth2.Config
	onRotate func(string)

	mu           sync.Mutex // held across the refresh: serializes requests
	refreshToken Secret
}

// Token implements oauth2.TokenSource.
func (s *refreshTokenSource) Token() (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	rt := string(s.refreshToken)
	if rt == "" {
		return nil, fmt.Errorf("refresh token grant: %w", ErrNoRefreshToken)
	}
	// A token without an access token is expired, so the reuse source that
	// oauth2.Config.TokenSource builds refreshes at once.
	tok, err := s.cfg.TokenSource(s.ctx, &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		return nil, fmt.Errorf("refresh token grant: %w", redactError(err, rt, s.cfg.ClientSecret))
	}
	if tok.RefreshToken != "" && tok.RefreshToken != rt {
		s.refreshToken = Secret(tok.RefreshToken)
		if s.onRotate != nil {
			s.onRotate(tok.RefreshToken)
		}
	}
	return withoutRefreshToken(tok), nil
}

// NewClientCredentialsSource returns a token source for the
// client_credentials grant (Microsoft 365 app-only access: scope
// https://outlook.office365.com/.default, the mailbox given as the XOAUTH2
// user). Every call to Token requests a new access token. Errors never
// contain the client secret.
func NewClientCredentialsSource(ctx context.Context, cfg *clientcredentials.Config) oauth2.TokenSource {
	return tokenSourceFunc(func() (*oauth2.Token, error) {
		tok, err := cfg.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("client credentials grant: %w", redactError(err, cfg.ClientSecret))
		}
		return withoutRefreshToken(tok), nil
	})
}

// NewJWTSource returns a token source for the JWT bearer grant of a Google
// service account with domain-wide delegation: cfg.Subject is the mailbox
// to act as (google.JWTConfigFromJSON builds cfg from the account's JSON
// key). Every call to Token signs a new assertion and requests a new access
// token.
func NewJWTSource(ctx context.Context, cfg *jwt.Config) oauth2.TokenSource {
	return tokenSourceFunc(func() (*oauth2.Token, error) {
		// jwt.Config.TokenSource wraps its source in a reuse source that
		// starts empty, so a fresh one always fetches.
		tok, err := cfg.TokenSource(ctx).Token()
		if err != nil {
			return nil, fmt.Errorf("jwt grant: %w", withErrorCode(err))
		}
		return withoutRefreshToken(tok), nil
	})
}

// withErrorCode fills in ErrorCode, ErrorDescription and ErrorURI of an
// *oauth2.RetrieveError from its JSON body when x/oauth2 left them empty (its
// jwt package does), so that callers can tell invalid_grant from other
// failures. Other errors are returned as they are.
func withErrorCode(err error) error {
	re, ok := err.(*oauth2.RetrieveError)
	if !ok || re.ErrorCode != "" {
		return err
	}
	var body struct {
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
		ErrorURI         string `json:"error_uri"`
	}
	if json.Unmarshal(re.Body, &body) != nil || body.Error == "" {
		return err
	}
	cp := *re
	cp.ErrorCode, cp.ErrorDescription, cp.ErrorURI = body.Error, body.ErrorDescription, body.ErrorURI
	return &cp
}

// tokenSourceFunc adapts a function to oauth2.TokenSource.
type tokenSourceFunc func() (*oauth2.Token, error)

func (f tokenSourceFunc) Token() (*oauth2.Token, error) { return f() }

// withoutRefreshToken returns a copy of tok with no refresh token, so the
// long-lived credential does not travel with the access token.
func withoutRefreshToken(tok *oauth2.Token) *oauth2.Token {
	if tok.RefreshToken == "" {
		return tok
	}
	out := *tok
	out.RefreshToken = ""
	return &out
}

// redactError returns err with every occurrence of the non-empty secrets
// replaced by "[redacted]" in its message. An *oauth2.RetrieveError is
// copied with its Body, ErrorDescription and ErrorURI scrubbed, so errors.As
// still finds it (and its ErrorCode) and printing it directly is safe too.
func redactError(err error, secrets ...string) error {
	var live []string
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		return err
	}
	scrub := func(s string) string {
		for _, secret := range live {
			s = strings.ReplaceAll(s, secret, redacted)
		}
		return s
	}
	if re, ok := err.(*oauth2.RetrieveError); ok {
		cp := *re
		cp.Body = []byte(scrub(string(re.Body)))
		cp.ErrorDescription = scrub(re.ErrorDescription)
		cp.ErrorURI = scrub(re.ErrorURI)
		if msg := cp.Error(); scrub(msg) == msg {
			return &cp
		}
	}
	return &redactedError{msg: scrub(err.Error()), err: err}
}

// redactedError replaces the message of an error that contained a secret.
// Unwrap still reaches the cause for errors.Is/As.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
