package smtpoauthtest

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"time"
)

// oauthClient is a registered OAuth2 client (application).
type oauthClient struct {
	id, secret string
	// mailboxes restricts the mailboxes an app-only (client_credentials)
	// token may send as; nil means any.
	mailboxes map[string]bool
}

// refreshGrant is a live refresh token.
type refreshGrant struct {
	clientID string
	username string
	scope    string
	// family identifies the consent the token descends from: rotation
	// keeps it, Revoke kills every access token of the family.
	family string
}

// accessToken is an issued access token. The token string itself is the
// map key and is never logged.
type accessToken struct {
	clientID  string
	username  string // "" for app-only tokens
	appOnly   bool   // client_credentials: valid for the client's mailboxes
	grantType string
	family    string
	scope     string
	issuedAt  time.Time
	expiresAt time.Time
}

// randomToken returns an opaque random token with a readable prefix.
func randomToken(prefix string) string {
	b := make([]byte, 32)
	rand.Read(b) // never fails
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// AddClient registers an OAuth2 client. Registering an existing client ID
// again replaces its secret.
func (s *Server) AddClient(clientID, clientSecret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[clientID]; ok {
		c.secret = clientSecret
		return
	}
	s.clients[clientID] = &oauthClient{id: clientID, secret: clientSecret}
}

// SetClientMailboxes restricts the mailboxes that app-only tokens of
// clientID (client_credentials grant) may authenticate as, like an Exchange
// application access policy. Without it such tokens are valid for any
// mailbox. It registers the client with an empty secret if unknown.
func (s *Server) SetClientMailboxes(clientID string, mailboxes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[clientID]
	if !ok {
		c = &oauthClient{id: clientID}
		s.clients[clientID] = c
	}
	c.mailboxes = make(map[string]bool, len(mailboxes))
	for _, m := range mailboxes {
		c.mailboxes[normalizeAddress(m)] = true
	}
}

// NewRefreshToken records a user's consent to clientID sending mail as
// username and returns the refresh token the authorization flow would have
// produced. The client does not need to be registered yet, but the token
// endpoint only honours it for a registered client with the right secret.
func (s *Server) NewRefreshToken(clientID, username string) string {
	tok := randomToken(s.refreshPrefix())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordIssuedLocked(IssuedRefresh, tok, username, "")
	s.refresh[tok] = &refreshGrant{
		clientID: clientID,
		username: username,
		scope:    s.spec.defaultScope,
		family:   tok,
	}
	return tok
}

// Revoke revokes a refresh token or an access token, as the providers'
// revocation endpoints do. Revoking a refresh token also kills the access
// tokens issued from it (with rotation: along the whole chain of refresh
// tokens it descends from); later refreshes answer 400 invalid_grant.
// Unknown or already dead tokens are ignored. A later NewRefreshToken for
// the same client and user is a re-authorization: the new token works, the
// revoked ones stay dead.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.access[token]; ok {
		delete(s.access, token)
		s.log.Info("access token revoked")
		return
	}
	g, ok := s.refresh[token]
	if !ok {
		return
	}
	for k, rg := range s.refresh {
		if rg.family == g.family {
			delete(s.refresh, k)
		}
	}
	for k, at := range s.access {
		if at.family == g.family {
			delete(s.access, k)
		}
	}
	s.log.Info("refresh token revoked", "client_id", g.clientID, "username", g.username)
}

// IssueAccessToken returns a fresh access token for username, valid for
// Config.AccessTokenLifetime, without going through the token endpoint
// (for tests that drive SMTP directly). It is not counted in Stats.
func (s *Server) IssueAccessToken(username string) string {
	return s.issue(&accessToken{username: username, grantType: "direct", scope: s.spec.defaultScope})
}

// issue stores at, stamped with the server clock, and returns its token.
func (s *Server) issue(at *accessToken) string {
	tok := randomToken(s.accessPrefix())
	now := s.now()
	at.issuedAt = now
	at.expiresAt = now.Add(s.cfg.AccessTokenLifetime)
	s.mu.Lock()
	s.access[tok] = at
	s.recordIssuedLocked(IssuedAccess, tok, at.username, at.grantType)
	s.mu.Unlock()
	return tok
}

// accessPrefix and refreshPrefix make the opaque tokens look like the
// provider's (Google's start with "ya29." and "1//"), which helps reading
// test failures; nothing depends on them.
func (s *Server) accessPrefix() string {
	if s.cfg.Flavor == FlavorMicrosoft {
		return "EwB"
	}
	return "ya29."
}

func (s *Server) refreshPrefix() string {
	if s.cfg.Flavor == FlavorMicrosoft {
		return "0.A"
	}
	return "1//"
}

// authReject says why a token was refused; it goes to the log, never to the
// client (providers do not say either).
type authReject string

const (
	rejectUnknown  authReject = "unknown or revoked token"
	rejectExpired  authReject = "token expired"
	rejectUser     authReject = "token issued for another user"
	rejectMailbox  authReject = "mailbox not allowed for this application"
	rejectMalform  authReject = "malformed response"
	rejectNoUser   authReject = "no user given"
	rejectNoBearer authReject = "not a bearer token"
	rejectRate     authReject = "too many login attempts"
	rejectSessions authReject = "too many concurrent sessions"
)

// checkAccessToken decides whether token lets the client authenticate as
// username.
func (s *Server) checkAccessToken(username, token string) authReject {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.access[token]
	switch {
	case !ok:
		return rejectUnknown
	case !now.Before(at.expiresAt):
		return rejectExpired
	case username == "":
		return rejectNoUser
	case at.appOnly:
		if c := s.clients[at.clientID]; c != nil && c.mailboxes != nil && !c.mailboxes[normalizeAddress(username)] {
			return rejectMailbox
		}
	case !strings.EqualFold(at.username, username):
		return rejectUser
	}
	return ""
}

// normalizeAddress lower-cases an address for comparisons (both providers
// treat mailbox names case-insensitively).
func normalizeAddress(a string) string {
	return strings.ToLower(strings.TrimSpace(a))
}
