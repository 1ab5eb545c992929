package smtpoauthtest

import (
	"cmp"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// Grant types the token endpoint accepts, the keys of Stats.TokenGrants.
const (
	GrantRefreshToken      = "refresh_token"
	GrantClientCredentials = "client_credentials"
	GrantJWTBearer         = "urn:ietf:params:oauth:grant-type:jwt-bearer"
)

// tokenResponse is the JSON body of a successful token request, with the
// members Google and Microsoft send.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	ExtExpiresIn int64  `json:"ext_expires_in,omitempty"` // Microsoft
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// tokenError is an OAuth2 error answer (RFC 6749 section 5.2).
type tokenError struct {
	status      int
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// handleToken is the token endpoint: POST, form-encoded, RFC 6749.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.writeTokenError(w, r, &tokenError{status: http.StatusMethodNotAllowed, Code: "invalid_request", Description: "token requests must be POST"})
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeTokenError(w, r, &tokenError{status: http.StatusBadRequest, Code: "invalid_request", Description: "malformed form body"})
		return
	}
	if s.tokenFault(w, r) {
		return
	}
	grantType := r.PostForm.Get("grant_type")
	var (
		resp *tokenResponse
		terr *tokenError
	)
	switch grantType {
	case GrantRefreshToken:
		resp, terr = s.grantRefreshToken(r)
	case GrantClientCredentials:
		resp, terr = s.grantClientCredentials(r)
	case GrantJWTBearer:
		resp, terr = s.grantJWTBearer(r)
	case GrantAuthorizationCode:
		resp, terr = s.grantAuthorizationCode(r)
	case GrantDeviceCode:
		resp, terr = s.grantDeviceCode(r)
	case "":
		terr = &tokenError{status: http.StatusBadRequest, Code: "invalid_request", Description: "Missing required parameter: grant_type"}
	default:
		terr = &tokenError{status: http.StatusBadRequest, Code: "unsupported_grant_type", Description: "Invalid grant_type: " + grantType}
	}
	if terr != nil {
		s.writeTokenError(w, r, terr)
		return
	}
	s.mu.Lock()
	s.stats.TokenGrants[grantType]++
	s.stats.TokenGrantsTotal++
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) writeTokenError(w http.ResponseWriter, r *http.Request, e *tokenError) {
	s.mu.Lock()
	s.stats.TokenErrors++
	s.mu.Unlock()
	s.log.Info("token request refused", "grant_type", r.PostForm.Get("grant_type"),
		"status", e.status, "error", e.Code)
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="token"`)
	}
	writeJSON(w, e.status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// authenticateClient checks the client credentials, from HTTP Basic
// (form-urlencoded inside, RFC 6749 section 2.3.1, as x/oauth2 sends them)
// or from client_id/client_secret in the body.
func (s *Server) authenticateClient(r *http.Request) (*oauthClient, *tokenError) {
	id, secret, basic := r.BasicAuth()
	// Secrets a client may have sent: x/oauth2 form-encodes Basic
	// credentials as RFC 6749 says, some clients send them raw.
	secrets := []string{secret}
	if basic {
		if u, err := url.QueryUnescape(id); err == nil {
			id = u
		}
		if u, err := url.QueryUnescape(secret); err == nil && u != secret {
			secrets = append(secrets, u)
		}
	} else {
		id, secrets = r.PostForm.Get("client_id"), []string{r.PostForm.Get("client_secret")}
	}
	if id == "" {
		return nil, &tokenError{status: http.StatusUnauthorized, Code: "invalid_client", Description: "The OAuth client was not found."}
	}
	s.mu.Lock()
	c := s.clients[id]
	s.mu.Unlock()
	if c == nil {
		return nil, &tokenError{status: http.StatusUnauthorized, Code: "invalid_client", Description: "The OAuth client was not found."}
	}
	for _, secret := range secrets {
		if subtle.ConstantTimeCompare([]byte(c.secret), []byte(secret)) == 1 {
			return c, nil
		}
	}
	return nil, &tokenError{status: http.StatusUnauthorized, Code: "invalid_client", Description: s.spec.badClient}
}

func (s *Server) expiresIn() int64 {
	return int64((s.cfg.AccessTokenLifetime + time.Second - 1) / time.Second)
}

func (s *Server) response(tok, scope string) *tokenResponse {
	resp := &tokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: s.expiresIn(), Scope: scope}
	if s.cfg.Flavor == FlavorMicrosoft {
		resp.ExtExpiresIn = resp.ExpiresIn
	}
	return resp
}

func (s *Server) grantRefreshToken(r *http.Request) (*tokenResponse, *tokenError) {
	c, terr := s.authenticateClient(r)
	if terr != nil {
		return nil, terr
	}
	rt := r.PostForm.Get("refresh_token")
	if rt == "" {
		return nil, &tokenError{status: http.StatusBadRequest, Code: "invalid_request", Description: "Missing required parameter: refresh_token"}
	}
	s.mu.Lock()
	g, ok := s.refresh[rt]
	if !ok {
		s.mu.Unlock()
		return nil, &tokenError{status: http.StatusBadRequest, Code: "invalid_grant", Description: s.spec.revokedGrant}
	}
	if g.clientID != c.id {
		s.mu.Unlock()
		return nil, &tokenError{status: http.StatusBadRequest, Code: "unauthorized_client", Description: "Unauthorized"}
	}
	newRT := ""
	if s.cfg.RotateRefreshTokens {
		newRT = randomToken(s.refreshPrefix())
		s.recordIssuedLocked(IssuedRefresh, newRT, g.username, "")
		delete(s.refresh, rt)
		s.refresh[newRT] = &refreshGrant{clientID: g.clientID, username: g.username, scope: g.scope, family: g.family}
	} else if s.cfg.Flavor == FlavorMicrosoft {
		newRT = rt // Microsoft always answers with a refresh token
	}
	grant := *g
	s.mu.Unlock()

	scope := cmp.Or(r.PostForm.Get("scope"), grant.scope)
	tok := s.issue(&accessToken{clientID: c.id, username: grant.username, grantType: GrantRefreshToken, family: grant.family, scope: scope})
	resp := s.response(tok, scope)
	resp.RefreshToken = newRT
	s.log.Info("token granted", "grant_type", GrantRefreshToken, "client_id", c.id,
		"username", grant.username, "rotated", s.cfg.RotateRefreshTokens)
	return resp, nil
}

func (s *Server) grantClientCredentials(r *http.Request) (*tokenResponse, *tokenError) {
	c, terr := s.authenticateClient(r)
	if terr != nil {
		return nil, terr
	}
	scope := cmp.Or(r.PostForm.Get("scope"), s.spec.appScope)
	tok := s.issue(&accessToken{clientID: c.id, appOnly: true, grantType: GrantClientCredentials, scope: scope})
	s.log.Info("token granted", "grant_type", GrantClientCredentials, "client_id", c.id)
	return s.response(tok, scope), nil
}
