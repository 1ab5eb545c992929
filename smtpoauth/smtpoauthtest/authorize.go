package smtpoauthtest

import (
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Grant types of the consent flows, keys of Stats.TokenGrants.
const (
	// GrantAuthorizationCode exchanges a code from AuthURL (RFC 6749
	// section 4.1, with PKCE).
	GrantAuthorizationCode = "authorization_code"
	// GrantDeviceCode exchanges a device code from DeviceAuthURL (RFC
	// 8628).
	GrantDeviceCode = "urn:ietf:params:oauth:grant-type:device_code"
)

// AuthCodeLifetime is how long a code from the authorization endpoint may
// be exchanged, on the server's clock (Google's and Microsoft's last about
// as long).
const AuthCodeLifetime = 10 * time.Minute

// Consent is how the user at the provider's consent screen answers, in the
// authorization-code flow (AuthURL) and the device flow (DeviceAuthURL). Set
// it with SetConsent. The zero value approves at once, as the mailbox the
// authorization request names in login_hint.
type Consent struct {
	// Username is the mailbox that signs in and approves. Default: the
	// login_hint of the authorization request. A request without one, and
	// every device code (device requests name no user), is then denied
	// with access_denied, since nobody signs in.
	Username string
	// Deny makes the user refuse: the authorization endpoint redirects
	// with error=access_denied, and the token endpoint answers a device
	// code's next poll with access_denied. Default false.
	Deny bool
	// PendingPolls is how many polls of the token endpoint for a device
	// code are answered authorization_pending before the user approves
	// (the user is still typing the code). Default 0: the first poll
	// gets the tokens.
	PendingPolls int
}

// consentState is the consent flows' state. Guarded by Server.mu.
type consentState struct {
	consent Consent
	codes   map[string]*authCode   // by code
	devices map[string]*deviceCode // by device code
	// granted remembers who consented to which client (clientID NUL
	// normalized user): Google gives such a user a new refresh token only
	// with prompt=consent.
	granted map[string]bool
}

// initLocked makes the maps on first use.
func (cs *consentState) initLocked() {
	if cs.granted == nil {
		cs.granted = make(map[string]bool)
		cs.codes = make(map[string]*authCode)
		cs.devices = make(map[string]*deviceCode)
	}
}

// authCode is an authorization code not yet exchanged.
type authCode struct {
	clientID, redirectURI, challenge string
	username, scope                  string
	offline                          bool // a refresh token comes with the access token
	expiresAt                        time.Time
}

// SetConsent decides how the user answers the consent screen from now on,
// for the authorization and device codes issued later and for the device
// codes already pending.
func (s *Server) SetConsent(c Consent) {
	s.mu.Lock()
	s.consent.consent = c
	s.mu.Unlock()
}

// handleAuthorize is the authorization endpoint (RFC 6749 section 4.1.1):
// GET with response_type=code, client_id, redirect_uri, scope, state, and a
// PKCE code_challenge with method S256, which this server requires. The user
// answers at once (Consent) and the browser is redirected to redirect_uri
// with code and state, or error and state. A request with an unknown client
// or an unusable redirect_uri gets a 400 page, not a redirect, as RFC 6749
// section 4.1.2.1 says.
//
// Like Google, the FlavorGoogle server issues a refresh token only with
// access_type=offline, and to a user who consented to the client before
// only with prompt=consent. Like Microsoft, the FlavorMicrosoft server
// issues one only for the offline_access scope. The redirect_uri must be
// https, or http to a loopback address (RFC 8252 section 7.3) on any port.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "authorization requests must be GET or POST", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "malformed request", http.StatusBadRequest)
		return
	}
	q := r.Form
	clientID, redirectURI := q.Get("client_id"), q.Get("redirect_uri")
	s.mu.Lock()
	_, known := s.clients[clientID]
	s.mu.Unlock()
	if !known {
		s.log.Info("authorization refused", "error", "invalid_client")
		http.Error(w, "invalid_client: the OAuth client was not found", http.StatusBadRequest)
		return
	}
	target, err := url.Parse(redirectURI)
	if err != nil || !usableRedirect(target) {
		s.log.Info("authorization refused", "client_id", clientID, "error", "redirect_uri_mismatch")
		http.Error(w, "redirect_uri_mismatch: redirect_uri must be https, or http to a loopback address", http.StatusBadRequest)
		return
	}
	redirect := func(params url.Values) {
		v := target.Query()
		for k, vs := range params {
			v[k] = vs
		}
		if st := q.Get("state"); st != "" {
			v.Set("state", st)
		}
		u := *target
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	refuse := func(code, description string) {
		s.log.Info("authorization refused", "client_id", clientID, "error", code)
		redirect(url.Values{"error": {code}, "error_description": {description}})
	}
	switch {
	case q.Get("response_type") != "code":
		refuse("unsupported_response_type", "response_type must be code")
		return
	case q.Get("code_challenge") == "":
		refuse("invalid_request", "code_challenge is required (PKCE)")
		return
	case q.Get("code_challenge_method") != "S256":
		refuse("invalid_request", "code_challenge_method must be S256")
		return
	}

	scope := cmp.Or(q.Get("scope"), s.spec.defaultScope)
	now := s.now()
	s.mu.Lock()
	c := s.consent.consent
	user := cmp.Or(c.Username, q.Get("login_hint"))
	if c.Deny || user == "" {
		s.mu.Unlock()
		refuse("access_denied", "The user denied the request.")
		return
	}
	key := clientID + "\x00" + normalizeAddress(user)
	var offline bool
	if s.cfg.Flavor == FlavorMicrosoft {
		offline = slices.Contains(strings.Fields(scope), "offline_access")
	} else {
		offline = q.Get("access_type") == "offline" &&
			(!s.consent.granted[key] || slices.Contains(strings.Fields(q.Get("prompt")), "consent"))
	}
	s.consent.initLocked()
	s.consent.granted[key] = true
	code := randomToken("code.")
	s.consent.codes[code] = &authCode{
		clientID: clientID, redirectURI: redirectURI, challenge: q.Get("code_challenge"),
		username: user, scope: scope, offline: offline,
		expiresAt: now.Add(AuthCodeLifetime),
	}
	s.mu.Unlock()
	s.log.Info("authorization approved", "client_id", clientID, "username", user, "offline", offline)
	redirect(url.Values{"code": {code}})
}

// usableRedirect reports whether u may receive the authorization response:
// https anywhere, http only to a loopback address.
func usableRedirect(u *url.URL) bool {
	switch {
	case u.Host == "" || u.Fragment != "":
		return false
	case u.Scheme == "https":
		return true
	case u.Scheme != "http":
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// grantAuthorizationCode exchanges a code (RFC 6749 section 4.1.3) after
// checking the client, the redirect_uri and the PKCE code_verifier.
func (s *Server) grantAuthorizationCode(r *http.Request) (*tokenResponse, *tokenError) {
	c, terr := s.authenticateClient(r)
	if terr != nil {
		return nil, terr
	}
	code := r.PostForm.Get("code")
	if code == "" {
		return nil, &tokenError{status: http.StatusBadRequest, Code: "invalid_request", Description: "Missing required parameter: code"}
	}
	invalid := func(description string) (*tokenResponse, *tokenError) {
		return nil, &tokenError{status: http.StatusBadRequest, Code: "invalid_grant", Description: description}
	}
	now := s.now()
	s.mu.Lock()
	ac, ok := s.consent.codes[code]
	delete(s.consent.codes, code) // single use, even when refused
	s.mu.Unlock()
	switch {
	case !ok:
		return invalid("Malformed auth code.")
	case !now.Before(ac.expiresAt):
		return invalid("The authorization code has expired.")
	case ac.clientID != c.id:
		return invalid("The authorization code was issued to another client.")
	case r.PostForm.Get("redirect_uri") != ac.redirectURI:
		return invalid("redirect_uri does not match the authorization request.")
	}
	verifier := r.PostForm.Get("code_verifier")
	if verifier == "" {
		return invalid("Missing code verifier.")
	}
	sum := sha256.Sum256([]byte(verifier))
	if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(ac.challenge)) != 1 {
		return invalid("Invalid code verifier.")
	}
	resp := s.consentTokens(GrantAuthorizationCode, c.id, ac.username, ac.scope, ac.offline)
	s.log.Info("token granted", "grant_type", GrantAuthorizationCode, "client_id", c.id,
		"username", ac.username, "refresh_token", resp.RefreshToken != "")
	return resp, nil
}

// consentTokens issues the tokens of a consent: an access token for
// username and, when offline, a refresh token (a new family, which Revoke
// kills as a whole).
func (s *Server) consentTokens(grantType, clientID, username, scope string, offline bool) *tokenResponse {
	var rt string
	if offline {
		rt = s.NewRefreshToken(clientID, username)
		s.mu.Lock()
		if g := s.refresh[rt]; g != nil {
			g.scope = scope
		}
		s.mu.Unlock()
	}
	tok := s.issue(&accessToken{clientID: clientID, username: username, grantType: grantType, family: rt, scope: scope})
	resp := s.response(tok, scope)
	resp.RefreshToken = rt
	return resp
}
