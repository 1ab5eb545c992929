package smtpoauthtest

import (
	"cmp"
	"crypto/rand"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Device flow (RFC 8628) settings of the server.
const (
	// DeviceCodeLifetime is how long a device code may be polled for, on
	// the server's clock (Microsoft's last 15 minutes, Google's 30).
	DeviceCodeLifetime = 15 * time.Minute
	// DevicePollInterval is the interval the device authorization endpoint
	// tells clients to poll at: one second, the smallest RFC 8628 allows
	// (the providers say 5), so that tests wait little.
	DevicePollInterval = time.Second
)

// deviceCode is a device code not yet exchanged.
type deviceCode struct {
	clientID, userCode, scope string
	polls                     int // answered authorization_pending so far
	expiresAt                 time.Time
}

// deviceAuthResponse is the JSON body of a device authorization response
// (RFC 8628 section 3.2), with the members each provider sends: Google
// spells verification_url, Microsoft verification_uri and adds a message.
type deviceAuthResponse struct {
	DeviceCode      string `json:"device_code"`
	UserCode        string `json:"user_code"`
	VerificationURI string `json:"verification_uri,omitempty"`
	VerificationURL string `json:"verification_url,omitempty"`
	ExpiresIn       int64  `json:"expires_in"`
	Interval        int64  `json:"interval"`
	Message         string `json:"message,omitempty"`
}

// handleDeviceAuth is the device authorization endpoint (RFC 8628 section
// 3.1): POST, form-encoded, with client_id and scope. The user "at the
// verification page" then answers as SetConsent says, when the client polls
// the token endpoint with the device code.
func (s *Server) handleDeviceAuth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.writeTokenError(w, r, &tokenError{status: http.StatusMethodNotAllowed, Code: "invalid_request", Description: "device authorization requests must be POST"})
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeTokenError(w, r, &tokenError{status: http.StatusBadRequest, Code: "invalid_request", Description: "malformed form body"})
		return
	}
	clientID := r.PostForm.Get("client_id")
	if id, _, ok := r.BasicAuth(); ok && clientID == "" {
		clientID = id
	}
	s.mu.Lock()
	_, known := s.clients[clientID]
	s.mu.Unlock()
	if !known {
		s.writeTokenError(w, r, &tokenError{status: http.StatusUnauthorized, Code: "invalid_client", Description: "The OAuth client was not found."})
		return
	}
	scope := cmp.Or(r.PostForm.Get("scope"), s.spec.defaultScope)
	dc := randomToken("device.")
	userCode := newUserCode()
	now := s.now()
	s.mu.Lock()
	s.consent.initLocked()
	s.consent.devices[dc] = &deviceCode{clientID: clientID, userCode: userCode, scope: scope, expiresAt: now.Add(DeviceCodeLifetime)}
	s.mu.Unlock()
	verify := s.URL + "/device"
	resp := deviceAuthResponse{
		DeviceCode: dc,
		UserCode:   userCode,
		ExpiresIn:  int64(DeviceCodeLifetime / time.Second),
		Interval:   int64(DevicePollInterval / time.Second),
	}
	if s.cfg.Flavor == FlavorMicrosoft {
		resp.VerificationURI = verify
		resp.Message = "To sign in, use a web browser to open the page " + verify + " and enter the code " + userCode + " to authenticate."
	} else {
		resp.VerificationURL = verify
	}
	s.log.Info("device code issued", "client_id", clientID)
	writeJSON(w, http.StatusOK, resp)
}

// grantDeviceCode answers a poll with a device code (RFC 8628 section
// 3.4): authorization_pending for Consent.PendingPolls polls, then the
// tokens (a refresh token always at Google, for the offline_access scope at
// Microsoft), or access_denied; expired_token once the code has expired.
func (s *Server) grantDeviceCode(r *http.Request) (*tokenResponse, *tokenError) {
	c, terr := s.authenticateClient(r)
	if terr != nil {
		return nil, terr
	}
	fail := func(code, description string) (*tokenResponse, *tokenError) {
		return nil, &tokenError{status: http.StatusBadRequest, Code: code, Description: description}
	}
	code := r.PostForm.Get("device_code")
	if code == "" {
		return fail("invalid_request", "Missing required parameter: device_code")
	}
	now := s.now()
	s.mu.Lock()
	d, ok := s.consent.devices[code]
	consent := s.consent.consent
	switch {
	case !ok:
		s.mu.Unlock()
		return fail("invalid_grant", "Unknown device code.")
	case d.clientID != c.id:
		s.mu.Unlock()
		return fail("invalid_grant", "The device code was issued to another client.")
	// A refused or expired code stays, and keeps its answer: x/oauth2
	// repeats a failed request with the other client authentication
	// style, which must hear the same.
	case !now.Before(d.expiresAt):
		s.mu.Unlock()
		return fail("expired_token", "The device code has expired.")
	case consent.Deny || consent.Username == "":
		s.mu.Unlock()
		return fail("access_denied", "The user denied the request.")
	case d.polls < consent.PendingPolls:
		d.polls++
		s.mu.Unlock()
		return fail("authorization_pending", "The user has not yet approved the request.")
	}
	delete(s.consent.devices, code)
	s.mu.Unlock()

	offline := s.cfg.Flavor != FlavorMicrosoft || slices.Contains(strings.Fields(d.scope), "offline_access")
	resp := s.consentTokens(GrantDeviceCode, c.id, consent.Username, d.scope, offline)
	s.log.Info("token granted", "grant_type", GrantDeviceCode, "client_id", c.id,
		"username", consent.Username, "refresh_token", resp.RefreshToken != "")
	return resp, nil
}

// newUserCode returns a user code like Google's and Microsoft's: eight
// letters without vowels (no words), shown as XXXX-XXXX.
func newUserCode() string {
	const letters = "BCDFGHJKLMNPQRSTVWXZ"
	b := make([]byte, 9)
	rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	b[4] = '-'
	return string(b)
}
