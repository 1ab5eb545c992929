package smtpoauthtest

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TokenFault scripts a failure of the token endpoint: matching requests
// are answered with an error instead of being looked at. Add one with
// Server.AddTokenFault.
type TokenFault struct {
	// Status is the HTTP status, such as 503 or 429. Default 400 when
	// Error is set; required otherwise.
	Status int
	// Error is the OAuth2 error code, such as "invalid_grant" or
	// "temporarily_unavailable": the answer is then the JSON error body of
	// RFC 6749 section 5.2, which x/oauth2 reports as
	// *oauth2.RetrieveError with that ErrorCode. Empty: a plain-text body
	// (Description, or the status text), as a proxy or load balancer in
	// front of the provider would answer.
	Error string
	// Description is the error_description (with Error) or the plain-text
	// body (without).
	Description string
	// RetryAfter, when positive, is sent as a Retry-After header, in
	// whole seconds rounded up.
	RetryAfter time.Duration
	// Times is how many requests the fault answers before it disappears.
	// 0: until removed. Note that x/oauth2 with AuthStyleAutoDetect sends
	// a failed request again with the other style of client
	// authentication, so one failed token fetch can take two.
	Times int
	// ClientID selects the requests of one OAuth2 client (for the
	// jwt-bearer grant: the service account's client_email). Empty: every
	// request.
	ClientID string
	// Hang leaves the request without an answer until its client gives up
	// (closes the connection, as a process killed mid-refresh does) or the
	// server closes; Status and Error are then not needed. WaitTokenHangs
	// waits until requests hang. A hung request is not an answer: it does
	// not count in Stats.TokenErrors.
	Hang bool
}

func (f TokenFault) validate() error {
	if f.Status == 0 && f.Error == "" && !f.Hang {
		return fmt.Errorf("TokenFault.Status: required without Error")
	}
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		return fmt.Errorf("TokenFault.Status: %d is not an error status (400 to 599)", f.Status)
	}
	if f.Times < 0 {
		return fmt.Errorf("TokenFault.Times: negative (%d)", f.Times)
	}
	if f.RetryAfter < 0 {
		return fmt.Errorf("TokenFault.RetryAfter: negative (%v)", f.RetryAfter)
	}
	return nil
}

// tokenFaultEntry is an added TokenFault and what is left of it.
type tokenFaultEntry struct {
	f    TokenFault
	left int
}

// AddTokenFault makes the token endpoint fail as f says, for instance
// TokenFault{Status: 503, RetryAfter: 30 * time.Second} for an outage,
// TokenFault{Status: 429, Error: "temporarily_unavailable"} for
// throttling or TokenFault{Error: "invalid_grant", Description: "Token has
// been expired or revoked."} for a dead refresh token. Faults are tried in
// the order they were added; the first that matches answers the request.
// The count of Times is shared by all requests. The returned function
// removes the fault; calling it again does nothing. Answers by a fault
// count in Stats.TokenErrors.
//
// AddTokenFault panics if f is invalid: no Status and no Error, a Status
// outside 400 to 599, or a negative Times or RetryAfter.
func (s *Server) AddTokenFault(f TokenFault) (remove func()) {
	if err := f.validate(); err != nil {
		panic("smtpoauthtest: AddTokenFault: " + err.Error())
	}
	e := &tokenFaultEntry{f: f, left: f.Times}
	s.mu.Lock()
	s.tokenFlt = append(s.tokenFlt, e)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.removeTokenFaultLocked(e)
		s.mu.Unlock()
	}
}

func (s *Server) removeTokenFaultLocked(e *tokenFaultEntry) {
	s.tokenFlt = slices.DeleteFunc(s.tokenFlt, func(x *tokenFaultEntry) bool { return x == e })
}

// takeTokenFault returns the first token fault matching clientID,
// counting it as fired, or nil.
func (s *Server) takeTokenFault(clientID string) *TokenFault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.tokenFlt {
		if e.f.ClientID != "" && e.f.ClientID != clientID {
			continue
		}
		if e.f.Times > 0 {
			e.left--
			if e.left == 0 {
				s.removeTokenFaultLocked(e)
			}
		}
		f := e.f
		return &f
	}
	return nil
}

// requestClientID names the client of a token request without
// authenticating it: HTTP Basic, else client_id in the body, else the
// issuer of a jwt-bearer assertion.
func requestClientID(r *http.Request) string {
	if id, _, ok := r.BasicAuth(); ok {
		if u, err := url.QueryUnescape(id); err == nil {
			return u
		}
		return id
	}
	if id := r.PostForm.Get("client_id"); id != "" {
		return id
	}
	if r.PostForm.Get("grant_type") == GrantJWTBearer {
		if parts := strings.Split(r.PostForm.Get("assertion"), "."); len(parts) == 3 {
			var claims jwtClaims
			if decodeSegment(parts[1], &claims) == nil {
				return claims.Iss
			}
		}
	}
	return ""
}

// tokenFault answers r with a matching token fault and reports whether
// one did.
func (s *Server) tokenFault(w http.ResponseWriter, r *http.Request) bool {
	clientID := requestClientID(r)
	f := s.takeTokenFault(clientID)
	if f == nil {
		return false
	}
	if f.Hang {
		s.hang(r, clientID)
		return true
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((f.RetryAfter+time.Second-1)/time.Second), 10))
	}
	if f.Error != "" {
		s.writeTokenError(w, r, &tokenError{status: cmp.Or(f.Status, http.StatusBadRequest), Code: f.Error, Description: f.Description})
		return true
	}
	s.mu.Lock()
	s.stats.TokenErrors++
	s.mu.Unlock()
	s.log.Info("token request failed by fault", "grant_type", r.PostForm.Get("grant_type"),
		"client_id", clientID, "status", f.Status)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(f.Status)
	fmt.Fprintln(w, cmp.Or(f.Description, http.StatusText(f.Status)))
	return true
}

// tokenHangs counts the token requests hung by a TokenFault with Hang.
// Guarded by Server.mu.
type tokenHangs struct {
	n       int
	changed chan struct{} // closed and replaced when n grows
}

// hang blocks a token request until its client goes away or the server
// closes.
func (s *Server) hang(r *http.Request, clientID string) {
	s.mu.Lock()
	s.hangs.n++
	if s.hangs.changed != nil {
		close(s.hangs.changed)
	}
	s.hangs.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("token request hung by fault", "grant_type", r.PostForm.Get("grant_type"), "client_id", clientID)
	select {
	case <-r.Context().Done():
	case <-s.closed:
	}
}

// WaitTokenHangs waits until at least n token requests have been hung by
// a TokenFault with Hang since the server started. It waits on a signal,
// not a timer, and returns an error wrapping ctx.Err() when ctx is done
// first, or ErrServerClosed when the server is closed.
func (s *Server) WaitTokenHangs(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		if s.hangs.changed == nil {
			s.hangs.changed = make(chan struct{})
		}
		got, changed := s.hangs.n, s.hangs.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("wait for %d hung token requests, got %d: %w", n, got, ctx.Err())
		case <-s.closed:
			return fmt.Errorf("wait for %d hung token requests, got %d: %w", n, got, ErrServerClosed)
		}
	}
}
