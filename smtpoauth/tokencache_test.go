package smtpoauth

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/oauth2"
)

// fakeClock is a manually advanced clock for TokenCache.nowFunc.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// countingSource hands out tokens "tok-1", "tok-2", ... that expire lifetime
// after the clock's now (never, if lifetime is zero). If block is set, each
// call waits for a value on it: nil to succeed, an error to fail.
type countingSource struct {
	clock    func() time.Time
	lifetime time.Duration
	block    chan error
	calls    atomic.Int32
}

func (s *countingSource) Token() (*oauth2.Token, error) {
	n := s.calls.Add(1)
	if s.block != nil {
		if err := <-s.block; err != nil {
			return nil, err
		}
	}
	tok := &oauth2.Token{AccessToken: fmt.Sprintf("tok-%d", n), TokenType: "Bearer"}
	if s.lifetime != 0 {
		tok.Expiry = s.clock().Add(s.lifetime)
	}
	return tok, nil
}

type tokenCacheBundle struct {
	clock *fakeClock
	src   *countingSource
	cache *TokenCache
}

func setupTokenCache(t *testing.T, lifetime, margin time.Duration) *tokenCacheBundle {
	t.Helper()
	clock := newFakeClock()
	src := &countingSource{clock: clock.Now, lifetime: lifetime}
	cache := NewTokenCache(src, margin)
	cache.nowFunc = clock.Now
	return &tokenCacheBundle{clock: clock, src: src, cache: cache}
}

func mustToken(t *testing.T, ts oauth2.TokenSource) *oauth2.Token {
	t.Helper()
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	return tok
}

func TestTokenCacheRefreshSchedule(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name     string
		lifetime time.Duration
		margin   time.Duration
		// after: time since the first token was obtained; wantCalls: calls
		// to the source after a Token at that time.
		after     time.Duration
		wantCalls int32
	}{
		{"HourTokenCachedJustBeforeMargin", time.Hour, 10 * time.Minute, 50*time.Minute - time.Nanosecond, 1},
		{"HourTokenRefreshedAtMargin", time.Hour, 10 * time.Minute, 50 * time.Minute, 2},
		{"ZeroMarginMeansDefault", time.Hour, 0, 50 * time.Minute, 2},
		{"ZeroMarginCachedBeforeDefault", time.Hour, 0, 49 * time.Minute, 1},
		{"NegativeMarginMeansDefault", time.Hour, -time.Second, 50 * time.Minute, 2},
		{"CustomMarginHonoured", time.Hour, 5 * time.Minute, 54 * time.Minute, 1},
		{"CustomMarginRefreshes", time.Hour, 5 * time.Minute, 55 * time.Minute, 2},
		{"ShortLifetimeUsesHalf", 10 * time.Minute, 10 * time.Minute, 5*time.Minute - time.Nanosecond, 1},
		{"ShortLifetimeRefreshedAtHalf", 10 * time.Minute, 10 * time.Minute, 5 * time.Minute, 2},
		{"VeryShortLifetime", 2 * time.Second, 10 * time.Minute, time.Second, 2},
		{"ZeroExpiryNeverExpires", 0, 10 * time.Minute, 10000 * time.Hour, 1},
		{"ExpiredWhenObtainedIsRefreshedNextCall", -time.Minute, 10 * time.Minute, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupTokenCache(t, tt.lifetime, tt.margin)

			first := mustToken(t, b.cache)
			if first.AccessToken != "tok-1" {
				t.Fatalf("first token = %q, want tok-1", first.AccessToken)
			}
			b.clock.Advance(tt.after)
			tok := mustToken(t, b.cache)
			if got := b.src.calls.Load(); got != tt.wantCalls {
				t.Fatalf("source called %d times, want %d", got, tt.wantCalls)
			}
			if want := fmt.Sprintf("tok-%d", tt.wantCalls); tok.AccessToken != want {
				t.Errorf("token = %q, want %q", tok.AccessToken, want)
			}
		})
	}
}

func TestTokenCache(t *testing.T) {
	t.Parallel()

	t.Run("RefreshedTokenIsCachedAgain", func(t *testing.T) {
		t.Parallel()
		b := setupTokenCache(t, time.Hour, 10*time.Minute)
		mustToken(t, b.cache)
		b.clock.Advance(50 * time.Minute)
		mustToken(t, b.cache) // tok-2, expires at 110 min, refresh at 100 min
		b.clock.Advance(49 * time.Minute)
		if tok := mustToken(t, b.cache); tok.AccessToken != "tok-2" {
			t.Errorf("token = %q, want tok-2", tok.AccessToken)
		}
		b.clock.Advance(time.Minute)
		if tok := mustToken(t, b.cache); tok.AccessToken != "tok-3" {
			t.Errorf("token = %q, want tok-3", tok.AccessToken)
		}
	})

	t.Run("InvalidateDropsCurrentToken", func(t *testing.T) {
		t.Parallel()
		b := setupTokenCache(t, time.Hour, 0)
		tok := mustToken(t, b.cache)
		b.cache.Invalidate(tok)
		if got := mustToken(t, b.cache); got.AccessToken != "tok-2" {
			t.Errorf("token after Invalidate = %q, want tok-2", got.AccessToken)
		}
	})

	t.Run("InvalidateMatchesACopy", func(t *testing.T) {
		t.Parallel()
		b := setupTokenCache(t, time.Hour, 0)
		tok := mustToken(t, b.cache)
		b.cache.Invalidate(&oauth2.Token{AccessToken: tok.AccessToken})
		if got := mustToken(t, b.cache); got.AccessToken != "tok-2" {
			t.Errorf("token after Invalidate = %q, want tok-2", got.AccessToken)
		}
	})

	t.Run("InvalidateIgnoresStaleToken", func(t *testing.T) {
		t.Parallel()
		b := setupTokenCache(t, time.Hour, 0)
		old := mustToken(t, b.cache)
		b.cache.Invalidate(old)
		current := mustToken(t, b.cache)
		b.cache.Invalidate(old) // a second sender reports the same old token
		b.cache.Invalidate(nil)
		if got := mustToken(t, b.cache); got != current {
			t.Errorf("token = %q, want the cached %q", got.AccessToken, current.AccessToken)
		}
		if got := b.src.calls.Load(); got != 2 {
			t.Errorf("source called %d times, want 2", got)
		}
	})

	t.Run("InvalidateNeverExpiringToken", func(t *testing.T) {
		t.Parallel()
		b := setupTokenCache(t, 0, 0)
		b.cache.Invalidate(mustToken(t, b.cache))
		if got := mustToken(t, b.cache); got.AccessToken != "tok-2" {
			t.Errorf("token after Invalidate = %q, want tok-2", got.AccessToken)
		}
	})

	t.Run("FailedRefreshIsNotCached", func(t *testing.T) {
		t.Parallel()
		errDown := errors.New("token endpoint down")
		fails := 1
		src := tokenSourceFunc(func() (*oauth2.Token, error) {
			if fails > 0 {
				fails--
				return nil, errDown
			}
			return &oauth2.Token{AccessToken: "ok"}, nil
		})
		cache := NewTokenCache(src, 0)
		if _, err := cache.Token(); !errors.Is(err, errDown) {
			t.Fatalf("first Token error = %v, want %v", err, errDown)
		}
		if tok := mustToken(t, cache); tok.AccessToken != "ok" {
			t.Errorf("token = %q, want ok", tok.AccessToken)
		}
	})

	t.Run("NilTokenIsAnError", func(t *testing.T) {
		t.Parallel()
		cache := NewTokenCache(tokenSourceFunc(func() (*oauth2.Token, error) { return nil, nil }), 0)
		if tok, err := cache.Token(); err == nil {
			t.Fatalf("Token = %v, nil; want an error", tok)
		}
	})
}

func TestTokenCacheSingleFlight(t *testing.T) {
	t.Parallel()
	const callers = 50

	// Each subtest runs in a synctest bubble: synctest.Wait returns once
	// every goroutine is blocked, which proves that all callers are waiting
	// while the source is still busy with the first refresh.
	t.Run("ConcurrentCallersShareOneRefresh", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			src := &countingSource{clock: time.Now, lifetime: time.Hour, block: make(chan error)}
			cache := NewTokenCache(src, 0)

			toks := make([]*oauth2.Token, callers)
			errs := make([]error, callers)
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() { toks[i], errs[i] = cache.Token() })
			}
			synctest.Wait()
			if got := src.calls.Load(); got != 1 {
				t.Fatalf("source called %d times while callers wait, want 1", got)
			}
			src.block <- nil
			wg.Wait()

			for i := range callers {
				if errs[i] != nil {
					t.Fatalf("caller %d: %v", i, errs[i])
				}
				if toks[i] != toks[0] {
					t.Fatalf("caller %d got %q, caller 0 got %q", i, toks[i].AccessToken, toks[0].AccessToken)
				}
			}
			if got := src.calls.Load(); got != 1 {
				t.Errorf("source called %d times, want 1", got)
			}
		})
	})

	t.Run("ConcurrentCallersShareOneFailure", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			src := &countingSource{clock: time.Now, lifetime: time.Hour, block: make(chan error)}
			cache := NewTokenCache(src, 0)
			errDown := errors.New("token endpoint down")

			errs := make([]error, callers)
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() { _, errs[i] = cache.Token() })
			}
			synctest.Wait()
			src.block <- errDown
			wg.Wait()
			for i, err := range errs {
				if !errors.Is(err, errDown) {
					t.Fatalf("caller %d: error %v, want %v", i, err, errDown)
				}
			}
			if got := src.calls.Load(); got != 1 {
				t.Fatalf("source called %d times, want 1", got)
			}

			// The failure is not cached: the next caller refreshes again.
			go func() { src.block <- nil }()
			if tok := mustToken(t, cache); tok.AccessToken != "tok-2" {
				t.Errorf("token after failure = %q, want tok-2", tok.AccessToken)
			}
		})
	})

	t.Run("PanickingSourceReleasesWaiters", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			release := make(chan struct{})
			var calls atomic.Int32
			cache := NewTokenCache(tokenSourceFunc(func() (*oauth2.Token, error) {
				calls.Add(1)
				<-release
				panic("broken source")
			}), 0)

			panicked := make(chan any, 1)
			go func() {
				defer func() { panicked <- recover() }()
				_, _ = cache.Token()
			}()
			synctest.Wait() // the first caller is inside the source
			waiterErr := make(chan error, 1)
			go func() {
				_, err := cache.Token()
				waiterErr <- err
			}()
			synctest.Wait() // the second caller waits for the first
			close(release)
			if p := <-panicked; p == nil {
				t.Error("first caller did not see the panic")
			}
			if err := <-waiterErr; err == nil {
				t.Error("waiter got no error from a panicking source")
			}
			if got := calls.Load(); got != 1 {
				t.Errorf("source called %d times, want 1", got)
			}
		})
	})
}
