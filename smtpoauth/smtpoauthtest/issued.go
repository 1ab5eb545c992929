package smtpoauthtest

import "time"

// Kinds of IssuedToken.
const (
	// IssuedAccess is an access token: from the token endpoint, any
	// grant, or from IssueAccessToken.
	IssuedAccess = "access"
	// IssuedRefresh is a refresh token: from NewRefreshToken, or a
	// rotation by the token endpoint (Config.RotateRefreshTokens).
	IssuedRefresh = "refresh"
)

// IssuedToken is a token the server handed out.
type IssuedToken struct {
	// Kind is IssuedAccess or IssuedRefresh.
	Kind string
	// Token is the token itself: a secret, for tests that check it never
	// shows where it should not (logs, errors, traces).
	Token string
	// At is when it was issued, on the server's clock.
	At time.Time
	// Username is the mailbox the token is for ("" for an app-only
	// access token).
	Username string
	// Grant is how an access token was obtained: the token endpoint's
	// grant type (GrantRefreshToken and the others) or "direct" for
	// IssueAccessToken. Empty for refresh tokens.
	Grant string
}

// IssuedTokens returns every access and refresh token the server has
// issued, in order, including those since expired, revoked or replaced by
// a rotation.
func (s *Server) IssuedTokens() []IssuedToken {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]IssuedToken(nil), s.issued...)
}

// recordIssuedLocked adds a token to IssuedTokens, stamped with the server's
// clock. The caller holds s.mu.
func (s *Server) recordIssuedLocked(kind, token, username, grant string) {
	s.issued = append(s.issued, IssuedToken{Kind: kind, Token: token, At: s.cfg.NowFunc().Add(s.offset),
		Username: username, Grant: grant})
}
