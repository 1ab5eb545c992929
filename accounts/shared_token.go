package accounts

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
)

// TokenStore is the shared state through which the token sources of many
// processes share each account's access token and refresh token.
// *ledger.Store implements it; see its methods for the exact contracts.
//
// Refresh tokens are kept per account with a version that changes with
// every change of the token; access tokens per account and cache key, each
// tagged with the refresh-token version it came from (a negative version:
// none), so that a re-authorization retires them. The lock lets one process
// at a time refresh an account, and expires so that a process that dies
// holding it blocks others for its time to live only.
type TokenStore interface {
	// RefreshToken returns the account's stored refresh token and its
	// version; "" and 0 when none is stored.
	RefreshToken(ctx context.Context, account string) (token string, version int64, err error)
	// CompareAndSwapRefreshToken stores newToken if the stored token is
	// still oldToken ("" matching none), and reports whether it did.
	CompareAndSwapRefreshToken(ctx context.Context, account, oldToken, newToken string) (swapped bool, err error)
	// AccessToken returns the access token cached under key, "" when none
	// (or it came from a refresh token that changed since).
	AccessToken(ctx context.Context, account, key string) (token string, expiry, refreshAt time.Time, err error)
	// PutAccessToken caches an access token obtained with refresh-token
	// version refreshVersion; false when the version changed meanwhile.
	PutAccessToken(ctx context.Context, account, key string, refreshVersion int64, token string, expiry, refreshAt time.Time) (ok bool, err error)
	// DeleteAccessToken removes the cached access token if it is token.
	DeleteAccessToken(ctx context.Context, account, key, token string) (deleted bool, err error)
	// LockToken takes the account's token lock for owner for ttl, without
	// waiting.
	LockToken(ctx context.Context, account, owner string, ttl time.Duration) (acquired bool, err error)
	// UnlockToken releases the lock if owner holds it and announces it.
	UnlockToken(ctx context.Context, account, owner string) (released bool, err error)
	// WaitTokenLock returns when the lock is released or expired.
	WaitTokenLock(ctx context.Context, account string) error
	// ClaimTokenKeepAlive reports true to one caller per period.
	ClaimTokenKeepAlive(ctx context.Context, account string, period time.Duration) (claimed bool, err error)
}

// TokenSource is an account's source of access tokens, as a Registry builds
// it: safe for concurrent use, and able to drop a token a server rejected
// (the sender calls Invalidate, then Token for a fresh one).
// *smtpoauth.TokenCache is one.
type TokenSource interface {
	oauth2.TokenSource
	Invalidate(*oauth2.Token)
}

var (
	_ TokenSource = (*smtpoauth.TokenCache)(nil)
	_ TokenSource = (*sharedTokenCache)(nil)
)

// grantFunc obtains a new access token from the token endpoint, with
// refreshToken for the refresh_token grant (ignored by the others). rotated
// is the new refresh token when the endpoint rotated it, otherwise "".
type grantFunc func(ctx context.Context, refreshToken string) (tok *oauth2.Token, rotated string, err error)

// errConflict: the stored refresh token changed while this process was
// refreshing (a re-authorization, or a lock that expired under a slow
// refresh). The round is abandoned and the next one starts from the stored
// token.
var errConflict = errors.New("refresh token changed during the refresh")

// maxConflicts bounds the conflicts one call to sharedSource.fetch starts
// again after. Waits for another holder of the lock are bounded by the
// call's deadline instead (each by the lock's time to live).
const maxConflicts = 3

// sharedSource is an oauth2.TokenSource over an account's grant that shares
// access tokens through a TokenStore: it returns the token cached in the
// store while it is fresh, and otherwise refreshes it under the store's
// lock, so that of all the processes that need a token at once, one asks
// the token endpoint and the others wait for its result. For the
// refresh_token grant the stored refresh token comes before the accounts
// file's (the seed, stored on first use), and a rotated one is stored by
// compare-and-swap before the access token obtained with it is published
// or returned.
//
// It is meant to sit behind a smtpoauth.TokenCache (see sharedTokenCache),
// which shares one call among the goroutines of the process and keeps the
// token in memory, so that most calls never reach Redis.
type sharedSource struct {
	ctx     context.Context // process lifetime: every call's context derives from it
	store   TokenStore
	account string
	key     string // the cache key: provider, tenant, client, mailbox
	grant   grantFunc
	refresh bool             // the refresh_token grant
	seed    smtpoauth.Secret // refresh token from the accounts file
	lockTTL time.Duration
	margin  time.Duration
	nowFunc func() time.Time
	logger  *slog.Logger

	mu       sync.Mutex
	rejected smtpoauth.Secret // access token last invalidated: never served again
	pending  *pendingRotation
}

// pendingRotation is a refresh token the endpoint rotated that could not be
// stored (Redis failed): the next refresh uses it while the store still
// holds after, which the endpoint has retired.
type pendingRotation struct {
	after smtpoauth.Secret
	next  smtpoauth.Secret
}

// callTimeout bounds one call to Token: a wait for another holder (at most
// lockTTL), a refresh of its own (grantTimeout) and the Redis round trips.
func (s *sharedSource) callTimeout() time.Duration { return 3 * s.lockTTL }

// grantTimeout bounds a request to the token endpoint, well within the lock's
// time to live, so that the lock does not expire under a slow refresh and
// let another process spend the same rotating refresh token.
func (s *sharedSource) grantTimeout() time.Duration { return s.lockTTL / 2 }

// Token implements oauth2.TokenSource.
func (s *sharedSource) Token() (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.callTimeout())
	defer cancel()
	tok, _, err := s.fetch(ctx)
	return tok, err
}

// fetch returns a fresh access token from the store or, failing that, from
// the endpoint under the store's lock; granted tells which.
func (s *sharedSource) fetch(ctx context.Context) (tok *oauth2.Token, granted bool, err error) {
	conflicts := 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, false, fmt.Errorf("shared token of account %s: %w", s.account, err)
		}
		if tok := s.cached(ctx); tok != nil {
			return tok, false, nil
		}
		owner := newOwner()
		acquired, err := s.store.LockToken(ctx, s.account, owner, s.lockTTL)
		if err != nil {
			return nil, false, err
		}
		if !acquired {
			// Another process refreshes: its token is in the store when
			// the lock is released (or the lock expires if it died).
			if err := s.store.WaitTokenLock(ctx, s.account); err != nil {
				return nil, false, err
			}
			continue
		}
		tok, granted, err = s.refreshLocked(ctx)
		s.unlock(owner)
		if errors.Is(err, errConflict) && conflicts < maxConflicts {
			conflicts++
			s.logger.Info("refresh token changed during a refresh; starting again from the stored one", "account", s.account)
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("shared token of account %s: %w", s.account, err)
		}
		return tok, granted, nil
	}
}

// unlock releases the lock, even when the call's context has ended.
func (s *sharedSource) unlock(owner string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 5*time.Second)
	defer cancel()
	if _, err := s.store.UnlockToken(ctx, s.account, owner); err != nil {
		s.logger.Warn("release token lock (it expires on its own)", "account", s.account, "error", err)
	}
}

// cached returns the store's access token if it is fresh and was not
// rejected, else nil. A store error counts as a miss: the refresh that
// follows reports it if it persists.
func (s *sharedSource) cached(ctx context.Context) *oauth2.Token {
	at, expiry, refreshAt, err := s.store.AccessToken(ctx, s.account, s.key)
	if err != nil {
		s.logger.Warn("read shared access token; obtaining a new one", "account", s.account, "error", err)
		return nil
	}
	if at == "" {
		return nil
	}
	if !refreshAt.IsZero() && !s.nowFunc().Before(refreshAt) {
		return nil
	}
	s.mu.Lock()
	rejected := at == string(s.rejected)
	s.mu.Unlock()
	if rejected {
		return nil
	}
	return &oauth2.Token{AccessToken: at, TokenType: "Bearer", Expiry: expiry}
}

// refreshLocked obtains a new access token while holding the lock.
func (s *sharedSource) refreshLocked(ctx context.Context) (*oauth2.Token, bool, error) {
	// Someone may have published between our look and the lock.
	if tok := s.cached(ctx); tok != nil {
		return tok, false, nil
	}
	var (
		stored, used string
		usedPending  bool
		version      int64 = -1
		err          error
	)
	if s.refresh {
		stored, version, err = s.store.RefreshToken(ctx, s.account)
		if err != nil {
			return nil, false, err
		}
		used = cmp.Or(stored, string(s.seed))
		if used == "" {
			return nil, false, fmt.Errorf("account %s: %w: none stored and none in the accounts file", s.account, ErrNoRefreshToken)
		}
		s.mu.Lock()
		if p := s.pending; p != nil && string(p.after) == stored {
			used, usedPending = string(p.next), true
		}
		s.mu.Unlock()
	}
	gctx, cancel := context.WithTimeout(ctx, s.grantTimeout())
	tok, rotated, err := s.grant(gctx, used)
	cancel()
	if err != nil {
		if s.refresh && isInvalidGrant(err) {
			if usedPending {
				s.mu.Lock()
				s.pending = nil
				s.mu.Unlock()
			}
			// A re-authorization may have replaced the token we used.
			if now, _, rerr := s.store.RefreshToken(ctx, s.account); rerr == nil && now != stored {
				return nil, false, errConflict
			}
		}
		return nil, false, err
	}
	if s.refresh {
		next := cmp.Or(rotated, used)
		if next != stored {
			swapped, err := s.store.CompareAndSwapRefreshToken(ctx, s.account, stored, next)
			if err != nil {
				if rotated != "" {
					// The endpoint has retired the old token: keep the new
					// one for the next attempt.
					s.mu.Lock()
					s.pending = &pendingRotation{after: smtpoauth.Secret(stored), next: smtpoauth.Secret(rotated)}
					s.mu.Unlock()
				}
				return nil, false, fmt.Errorf("store refresh token of account %s: %w", s.account, err)
			}
			if !swapped {
				return nil, false, errConflict
			}
			version++
			if stored == "" {
				s.logger.Info("stored the accounts file's refresh token in the shared store", "account", s.account, "rotated", rotated != "")
			} else {
				s.logger.Info("stored rotated refresh token", "account", s.account)
			}
		}
		s.mu.Lock()
		s.pending = nil
		s.mu.Unlock()
	}
	ok, err := s.store.PutAccessToken(ctx, s.account, s.key, version, tok.AccessToken, tok.Expiry, s.refreshTime(tok.Expiry))
	switch {
	case err != nil:
		// The token is good and the refresh token safe: only sharing failed.
		s.logger.Warn("share access token", "account", s.account, "error", err)
	case !ok:
		return nil, false, errConflict
	}
	return tok, true, nil
}

// refreshTime returns when a token expiring at expiry, obtained now, should
// be replaced: expiry - min(margin, lifetime/2), as smtpoauth.TokenCache
// does. Zero means never.
func (s *sharedSource) refreshTime(expiry time.Time) time.Time {
	if expiry.IsZero() {
		return time.Time{}
	}
	now := s.nowFunc()
	m := min(s.margin, expiry.Sub(now)/2)
	if m < 0 {
		return now
	}
	return expiry.Add(-m)
}

// reject marks tok as refused by a server: the store's copy is no longer
// served by this process, even if deleting it fails.
func (s *sharedSource) reject(tok *oauth2.Token) {
	s.mu.Lock()
	s.rejected = smtpoauth.Secret(tok.AccessToken)
	s.mu.Unlock()
}

// deleteShared removes tok from the store if the store still holds it.
func (s *sharedSource) deleteShared(tok *oauth2.Token) {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if _, err := s.store.DeleteAccessToken(ctx, s.account, s.key, tok.AccessToken); err != nil {
		s.logger.Warn("delete rejected access token from the shared store", "account", s.account, "error", err)
	}
}

// keepAlive makes sure the account's refresh token was used lately: a fresh
// shared access token proves it was (within its lifetime); otherwise it
// refreshes. It reports whether it asked the endpoint.
func (s *sharedSource) keepAlive(ctx context.Context) (granted bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.callTimeout())
	defer cancel()
	_, granted, err = s.fetch(ctx)
	return granted, err
}

// sharedTokenCache is the token source of an account with a TokenStore: an
// in-process TokenCache in front of the shared source.
type sharedTokenCache struct {
	*smtpoauth.TokenCache
	shared *sharedSource
}

// Invalidate drops tok from the process and, if it still holds it, from the
// shared store, so that the next Token obtains a new one.
func (c *sharedTokenCache) Invalidate(tok *oauth2.Token) {
	if tok == nil {
		return
	}
	c.shared.reject(tok)
	c.TokenCache.Invalidate(tok)
	c.shared.deleteShared(tok)
}

// isInvalidGrant reports whether err is the token endpoint's invalid_grant.
func isInvalidGrant(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.ErrorCode == "invalid_grant"
}

// newOwner returns a random lock owner id.
func newOwner() string { return rand.Text() }

// cacheKey returns the name an account's access tokens are shared under:
// grant, provider, tenant, client, mailbox, and a digest of the token URL
// and scopes, so that a change of any of them in the accounts file does not
// serve a token obtained for the old settings.
func cacheKey(a *Account, clientID, mailbox string) string {
	h := sha256.Sum256([]byte(a.OAuth.TokenURL + "\x00" + strings.Join(a.OAuth.Scopes, " ")))
	return strings.Join([]string{
		string(a.OAuth.Grant),
		string(a.Provider),
		cmp.Or(a.OAuth.Tenant, "-"),
		clientID,
		strings.ToLower(mailbox),
		hex.EncodeToString(h[:4]),
	}, ":")
}
