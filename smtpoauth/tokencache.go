package smtpoauth

import (
	"errors"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// DefaultRefreshMargin is how long before its expiry a cached access token is
// replaced by default. Microsoft rejects tokens that are about to expire, so
// this is far more than x/oauth2's ten seconds.
const DefaultRefreshMargin = 10 * time.Minute

// TokenCache is an oauth2.TokenSource that caches the access token of another
// source and refreshes it on demand, ahead of its expiry.
//
// A cached token is returned until expiry - m, where m is the margin given to
// NewTokenCache scaled down for short-lived tokens: m = min(margin,
// lifetime/2), lifetime being the time from when the token was obtained to its
// expiry. A one-hour token is thus used for 50 minutes, a ten-minute token for
// five. A token with a zero Expiry never expires.
//
// It is safe for concurrent use. Concurrent callers that find no usable token
// share a single call to the underlying source and all get its result. A
// failed refresh is not cached: the next call tries again.
//
// The sender calls Invalidate when the SMTP server rejects a token, then asks
// for a new one.
type TokenCache struct {
	src    oauth2.TokenSource
	margin time.Duration
	// nowFunc is the clock; tests replace it.
	nowFunc func() time.Time

	mu        sync.Mutex
	tok       *oauth2.Token
	refreshAt time.Time    // when tok stops being served; zero: never
	inflight  *refreshCall // the refresh in progress, if any
}

var _ oauth2.TokenSource = (*TokenCache)(nil)

// refreshCall is one call to the underlying source, shared by every caller
// that arrives while it runs.
type refreshCall struct {
	done chan struct{} // closed when tok and err are set
	tok  *oauth2.Token
	err  error
}

// NewTokenCache returns a cache over src that refreshes margin before expiry
// (scaled down for short lifetimes, see TokenCache). A margin of zero or less
// means DefaultRefreshMargin.
func NewTokenCache(src oauth2.TokenSource, margin time.Duration) *TokenCache {
	if margin <= 0 {
		margin = DefaultRefreshMargin
	}
	return &TokenCache{src: src, margin: margin, nowFunc: time.Now}
}

// Token returns the cached access token, or obtains a new one from the
// underlying source when there is none or it is within the refresh margin of
// its expiry. Callers must not modify the returned token.
func (c *TokenCache) Token() (*oauth2.Token, error) {
	c.mu.Lock()
	if c.tok != nil && (c.refreshAt.IsZero() || c.nowFunc().Before(c.refreshAt)) {
		tok := c.tok
		c.mu.Unlock()
		return tok, nil
	}
	call := c.inflight
	if call == nil {
		call = &refreshCall{done: make(chan struct{})}
		c.inflight = call
		c.mu.Unlock()
		c.refresh(call)
	} else {
		c.mu.Unlock()
	}
	<-call.done
	return call.tok, call.err
}

// refresh runs call against the underlying source and publishes its result.
func (c *TokenCache) refresh(call *refreshCall) {
	// Deferred so that waiters are released even if the source panics.
	defer func() {
		c.mu.Lock()
		c.inflight = nil
		if call.err == nil && call.tok == nil {
			call.err = errors.New("refresh access token: token source panicked")
		}
		if call.err == nil {
			c.tok = call.tok
			c.refreshAt = c.refreshTime(call.tok, c.nowFunc())
		}
		c.mu.Unlock()
		close(call.done)
	}()
	tok, err := c.src.Token()
	if err == nil && tok == nil {
		err = errors.New("refresh access token: token source returned no token")
	}
	call.tok, call.err = tok, err
}

// refreshTime returns when tok, obtained at now, should be replaced: its
// expiry minus min(margin, lifetime/2). Zero means never.
func (c *TokenCache) refreshTime(tok *oauth2.Token, now time.Time) time.Time {
	if tok.Expiry.IsZero() {
		return time.Time{}
	}
	m := min(c.margin, tok.Expiry.Sub(now)/2)
	if m < 0 {
		// Already expired when obtained: serve it to this round of callers
		// only.
		return now
	}
	return tok.Expiry.Add(-m)
}

// Invalidate drops the cached token if it is still tok (the same pointer or
// the same access token), typically because a server rejected it, so that the
// next call to Token obtains a new one. It does nothing if the cache has
// already moved on to another token.
func (c *TokenCache) Invalidate(tok *oauth2.Token) {
	if tok == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tok != nil && (c.tok == tok || c.tok.AccessToken == tok.AccessToken) {
		c.tok = nil
		c.refreshAt = time.Time{}
	}
}
