package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
)

func TestRefreshTokenRoundTrip(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	tok, version, err := tb.store.RefreshToken(ctx, "acct")
	if err != nil || tok != "" || version != 0 {
		t.Fatalf("RefreshToken() of an account without one = %q, %d, %v", tok, version, err)
	}
	for i, want := range []string{"rt-first", "rt-second"} {
		v, err := tb.store.SetRefreshToken(ctx, "acct", want)
		if err != nil {
			t.Fatal(err)
		}
		if v != int64(i+1) {
			t.Errorf("SetRefreshToken() = version %d, want %d", v, i+1)
		}
		tok, version, err := tb.store.RefreshToken(ctx, "acct")
		if err != nil || tok != want || version != v {
			t.Errorf("RefreshToken() = %q, %d, %v; want %q, %d", tok, version, err, want, v)
		}
	}
	if _, err := tb.store.SetRefreshToken(ctx, "acct", ""); err == nil {
		t.Error("SetRefreshToken with an empty token succeeded")
	}
}

func TestSetRefreshTokenResumesReauthorizeHold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	healthy := func(t *testing.T, tb *testBundle) AccountStatus {
		t.Helper()
		st, err := tb.store.Account(ctx, "acct")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	t.Run("ReauthorizeHoldResumes", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-dead"); err != nil {
			t.Fatal(err)
		}
		if err := tb.store.Hold(ctx, "acct", HoldReauthorize, "invalid_grant for an hour"); err != nil {
			t.Fatal(err)
		}
		if st := healthy(t, tb); st.State != AccountHeld || st.TokenVersion != 1 {
			t.Fatalf("after Hold: %+v, want held at token version 1", st)
		}
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-fresh"); err != nil {
			t.Fatal(err)
		}
		if st := healthy(t, tb); st != (AccountStatus{Account: "acct", State: AccountOK}) {
			t.Errorf("after re-authorization: %+v, want ok", st)
		}
		if list, _ := tb.store.Accounts(ctx); len(list) != 0 {
			t.Errorf("Accounts() = %+v", list)
		}
	})

	t.Run("HoldFromInvalidGrantResumes", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-dead"); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 2, time.Minute); err != nil {
			t.Fatal(err)
		}
		tb.clock.Advance(time.Minute)
		if st, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 2, time.Minute); err != nil || st.State != AccountHeld {
			t.Fatalf("InvalidGrant() = %+v, %v; want held", st, err)
		}
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-fresh"); err != nil {
			t.Fatal(err)
		}
		if st := healthy(t, tb); st.State != AccountOK {
			t.Errorf("after re-authorization: %+v, want ok", st)
		}
	})

	t.Run("ConfigurationHoldStays", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if err := tb.store.Hold(ctx, "acct", HoldConfiguration, "535 5.7.139"); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-fresh"); err != nil {
			t.Fatal(err)
		}
		if st := healthy(t, tb); st.State != AccountHeld || st.Hold != HoldConfiguration {
			t.Errorf("after re-authorization: %+v, want the configuration hold kept", st)
		}
	})

	t.Run("ThrottleStaysCountersRestart", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		until := tb.clock.Now().Add(time.Hour)
		if err := tb.store.Throttle(ctx, "acct", until, "quota"); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 3, time.Hour); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-fresh"); err != nil {
			t.Fatal(err)
		}
		st := healthy(t, tb)
		if st.State != AccountThrottled || !st.Until.Equal(until) || st.InvalidGrants != 0 || !st.FirstInvalidGrant.IsZero() {
			t.Errorf("after re-authorization: %+v, want the throttle kept and invalid_grant counters cleared", st)
		}
	})

	t.Run("AuthFailingResumes", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if _, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 3, time.Hour); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-fresh"); err != nil {
			t.Fatal(err)
		}
		if st := healthy(t, tb); st.State != AccountOK {
			t.Errorf("after re-authorization: %+v, want ok", st)
		}
	})
}

func TestCompareAndSwapRefreshToken(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	swap := func(old, new string) bool {
		t.Helper()
		ok, err := tb.store.CompareAndSwapRefreshToken(ctx, "acct", old, new)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	stored := func() (string, int64) {
		t.Helper()
		tok, v, err := tb.store.RefreshToken(ctx, "acct")
		if err != nil {
			t.Fatal(err)
		}
		return tok, v
	}
	if !swap("", "rt-1") {
		t.Error("swap from none failed")
	}
	if swap("rt-0", "rt-2") {
		t.Error("swap from a stale token succeeded")
	}
	if tok, v := stored(); tok != "rt-1" || v != 1 {
		t.Errorf("stored %q version %d, want rt-1 version 1", tok, v)
	}
	if !swap("rt-1", "rt-1") {
		t.Error("swap of a token for itself failed")
	}
	if _, v := stored(); v != 1 {
		t.Errorf("swap of a token for itself changed the version to %d", v)
	}
	if !swap("rt-1", "rt-2") {
		t.Error("swap from the stored token failed")
	}
	if tok, v := stored(); tok != "rt-2" || v != 2 {
		t.Errorf("stored %q version %d, want rt-2 version 2", tok, v)
	}
	if _, err := tb.store.CompareAndSwapRefreshToken(ctx, "acct", "rt-2", ""); err == nil {
		t.Error("swap for an empty token succeeded")
	}
}

func TestCompareAndSwapRefreshTokenConcurrent(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-0"); err != nil {
		t.Fatal(err)
	}
	const rounds, workers = 20, 16
	for round := 1; round <= rounds; round++ {
		old, version, err := tb.store.RefreshToken(ctx, "acct")
		if err != nil {
			t.Fatal(err)
		}
		start := make(chan struct{})
		var (
			wg     sync.WaitGroup
			wins   atomic.Int32
			winner atomic.Value
		)
		for w := range workers {
			wg.Go(func() {
				<-start
				mine := fmt.Sprintf("rt-%d-%d", round, w)
				ok, err := tb.store.CompareAndSwapRefreshToken(ctx, "acct", old, mine)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					wins.Add(1)
					winner.Store(mine)
				}
			})
		}
		close(start)
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d workers swapped, want exactly 1", round, n)
		}
		tok, v, err := tb.store.RefreshToken(ctx, "acct")
		if err != nil {
			t.Fatal(err)
		}
		if tok != winner.Load().(string) || v != version+1 {
			t.Fatalf("round %d: stored %q version %d, want the winner's %q version %d", round, tok, v, winner.Load(), version+1)
		}
	}
}

func TestTokensNeverInErrors(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(redistest.Options(testDB))
	rdb.Close() // every call fails
	s := New(rdb, Options{Prefix: randomPrefix("test"), TokenKeys: testKeyring(t, "k1")})
	ctx := context.Background()
	const secret = "1//0gSECRET-refresh-token"
	var errs []error
	_, err := s.SetRefreshToken(ctx, "acct", secret)
	errs = append(errs, err)
	_, err = s.CompareAndSwapRefreshToken(ctx, "acct", secret, secret+"-next")
	errs = append(errs, err)
	_, _, err = s.RefreshToken(ctx, "acct")
	errs = append(errs, err)
	_, err = s.PutAccessToken(ctx, "acct", "k", 1, secret, time.Now().Add(time.Hour), time.Time{})
	errs = append(errs, err)
	_, err = s.DeleteAccessToken(ctx, "acct", "k", secret)
	errs = append(errs, err)
	_, _, _, err = s.AccessToken(ctx, "acct", "k")
	errs = append(errs, err)
	_, err = s.LockToken(ctx, "acct", "owner", time.Second)
	errs = append(errs, err)
	for i, err := range errs {
		if err == nil {
			t.Errorf("call %d on a closed client succeeded", i)
			continue
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error shows the token: %v", err)
		}
		if !strings.Contains(err.Error(), "acct") {
			t.Errorf("error does not name the account: %v", err)
		}
	}
}

// rawField returns a hash field as stored in Redis.
func (tb *testBundle) rawField(t *testing.T, key, field string) string {
	t.Helper()
	v, err := tb.rdb.HGet(context.Background(), key, field).Result()
	if err != nil {
		t.Fatalf("HGET %s %s: %v", key, field, err)
	}
	return v
}

// sibling returns a store over the same Redis keys as tb's, with opts (the
// prefix and clock are tb's): another process, or the same after a restart.
func (tb *testBundle) sibling(opts Options) *Store {
	opts.Prefix = tb.prefix
	opts.NowFunc = tb.clock.Now
	return New(tb.rdb, opts)
}

func TestTokensEncryptedAtRest(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	const rt, at = "1//0gREFRESH-secret", "ya29.ACCESS-secret"
	if _, err := tb.store.SetRefreshToken(ctx, "acct", rt); err != nil {
		t.Fatal(err)
	}
	now := tb.clock.Now()
	if ok, err := tb.store.PutAccessToken(ctx, "acct", "google:user@x", 1, at, now.Add(time.Hour), now.Add(50*time.Minute)); err != nil || !ok {
		t.Fatalf("PutAccessToken() = %v, %v", ok, err)
	}
	for _, c := range []struct{ key, secret string }{
		{tb.store.tokenKey("acct"), rt},
		{tb.store.accessKey("acct", "google:user@x"), at},
	} {
		raw := tb.rawField(t, c.key, "token")
		if !strings.HasPrefix(raw, "v1:test-key:") || strings.Contains(raw, "secret") {
			t.Errorf("%s token field = %q, want a value sealed with test-key that does not show the token", c.key, raw)
		}
		for _, f := range []string{"token", "digest"} {
			if v := tb.rawField(t, c.key, f); strings.Contains(v, c.secret) {
				t.Errorf("%s field %s contains the token", c.key, f)
			}
		}
	}
	if got, v, err := tb.store.RefreshToken(ctx, "acct"); got != rt || v != 1 || err != nil {
		t.Errorf("RefreshToken() = %q, %d, %v", got, v, err)
	}
	if got, exp, refreshAt, err := tb.store.AccessToken(ctx, "acct", "google:user@x"); got != at || err != nil ||
		!exp.Equal(now.Add(time.Hour)) || !refreshAt.Equal(now.Add(50*time.Minute)) {
		t.Errorf("AccessToken() = %q, %v, %v, %v", got, exp, refreshAt, err)
	}
}

func TestSealedTokenBoundToItsRedisKey(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if _, err := tb.store.SetRefreshToken(ctx, "alice", "rt-alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.store.SetRefreshToken(ctx, "mallory", "rt-mallory"); err != nil {
		t.Fatal(err)
	}
	// Someone with write access to Redis moves mallory's sealed token (and
	// its digest) into alice's hash.
	for _, f := range []string{"token", "digest"} {
		v := tb.rawField(t, tb.store.tokenKey("mallory"), f)
		if err := tb.rdb.HSet(ctx, tb.store.tokenKey("alice"), f, v).Err(); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := tb.store.RefreshToken(ctx, "alice")
	if !errors.Is(err, ErrTokenUnreadable) || !strings.Contains(err.Error(), "alice") {
		t.Errorf("RefreshToken of a moved value: %v, want ErrTokenUnreadable naming the account", err)
	}

	now := tb.clock.Now()
	tb.store.PutAccessToken(ctx, "alice", "k", -1, "at-alice", now.Add(time.Hour), now.Add(50*time.Minute))
	tb.store.PutAccessToken(ctx, "mallory", "k", -1, "at-mallory", now.Add(time.Hour), now.Add(50*time.Minute))
	v := tb.rawField(t, tb.store.accessKey("mallory", "k"), "token")
	tb.rdb.HSet(ctx, tb.store.accessKey("alice", "k"), "token", v)
	if tok, _, _, err := tb.store.AccessToken(ctx, "alice", "k"); !errors.Is(err, ErrTokenUnreadable) || tok != "" {
		t.Errorf("AccessToken of a moved value = %q, %v; want ErrTokenUnreadable", tok, err)
	}
}

func TestTokenKeyRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := randomKey(), randomKey()
	oldRing, _ := NewKeyring("old", map[string][]byte{"old": oldKey})
	tb := setup(t, Options{TokenKeys: oldRing})
	ctx := context.Background()
	if _, err := tb.store.SetRefreshToken(ctx, "a", "rt-a"); err != nil {
		t.Fatal(err)
	}

	bothRing, _ := NewKeyring("new", map[string][]byte{"new": newKey, "old": oldKey})
	rotated := tb.sibling(Options{TokenKeys: bothRing})
	if tok, _, err := rotated.RefreshToken(ctx, "a"); tok != "rt-a" || err != nil {
		t.Errorf("after rotation, reading a value of the old key = %q, %v", tok, err)
	}
	if ok, err := rotated.CompareAndSwapRefreshToken(ctx, "a", "rt-a", "rt-a2"); !ok || err != nil {
		t.Fatalf("CompareAndSwapRefreshToken() = %v, %v", ok, err)
	}
	if raw := tb.rawField(t, tb.store.tokenKey("a"), "token"); !strings.HasPrefix(raw, "v1:new:") {
		t.Errorf("rewritten value %q is not sealed with the new key", raw)
	}
	if _, err := rotated.SetRefreshToken(ctx, "b", "rt-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.store.SetRefreshToken(ctx, "c", "rt-c"); err != nil { // a worker not yet rotated
		t.Fatal(err)
	}

	newOnly, _ := NewKeyring("new", map[string][]byte{"new": newKey})
	retired := tb.sibling(Options{TokenKeys: newOnly})
	if tok, _, err := retired.RefreshToken(ctx, "b"); tok != "rt-b" || err != nil {
		t.Errorf("new key alone reading a new value = %q, %v", tok, err)
	}
	if _, _, err := retired.RefreshToken(ctx, "c"); !errors.Is(err, ErrTokenUnreadable) || !strings.Contains(err.Error(), `key "old"`) {
		t.Errorf("reading a value of a retired key: %v, want ErrTokenUnreadable naming key old", err)
	}
	impostor, _ := NewKeyring("old", map[string][]byte{"old": randomKey()})
	if _, _, err := tb.sibling(Options{TokenKeys: impostor}).RefreshToken(ctx, "c"); !errors.Is(err, ErrTokenUnreadable) {
		t.Errorf("another key under the id old: %v, want ErrTokenUnreadable", err)
	}
}

func TestPlaintextTokens(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{InsecurePlaintextTokens: true})
	ctx := context.Background()
	if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-dev"); err != nil {
		t.Fatal(err)
	}
	if raw := tb.rawField(t, tb.store.tokenKey("acct"), "token"); raw != "plain:rt-dev" {
		t.Errorf("stored %q, want plain:rt-dev", raw)
	}
	if tok, _, err := tb.store.RefreshToken(ctx, "acct"); tok != "rt-dev" || err != nil {
		t.Errorf("RefreshToken() = %q, %v", tok, err)
	}

	t.Run("KeyedStoreRefusesPlaintext", func(t *testing.T) {
		keyed := tb.sibling(Options{TokenKeys: testKeyring(t, "k")})
		if _, _, err := keyed.RefreshToken(ctx, "acct"); !errors.Is(err, ErrTokenUnreadable) || !strings.Contains(err.Error(), "plaintext") {
			t.Errorf("RefreshToken() = %v, want ErrTokenUnreadable about plaintext", err)
		}
	})
	t.Run("KeyedStoreMigratesWhenAllowed", func(t *testing.T) {
		migrating := tb.sibling(Options{TokenKeys: testKeyring(t, "k"), InsecurePlaintextTokens: true})
		if tok, _, err := migrating.RefreshToken(ctx, "acct"); tok != "rt-dev" || err != nil {
			t.Errorf("RefreshToken() = %q, %v", tok, err)
		}
		if _, err := migrating.SetRefreshToken(ctx, "other", "rt-sealed"); err != nil {
			t.Fatal(err)
		}
		if raw := tb.rawField(t, tb.store.tokenKey("other"), "token"); !strings.HasPrefix(raw, "v1:k:") {
			t.Errorf("new value %q is not sealed", raw)
		}
	})
	t.Run("NoKeyNoPlaintextRefuses", func(t *testing.T) {
		bare := tb.sibling(Options{})
		_, _, err1 := bare.RefreshToken(ctx, "acct")
		_, err2 := bare.SetRefreshToken(ctx, "acct", "rt")
		_, _, _, err3 := bare.AccessToken(ctx, "acct", "k")
		for i, err := range []error{err1, err2, err3} {
			if !errors.Is(err, ErrNoTokenKeys) {
				t.Errorf("call %d: %v, want ErrNoTokenKeys", i, err)
			}
		}
	})
}

func TestAccessTokenCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	get := func(t *testing.T, s *Store, account, key string) string {
		t.Helper()
		tok, _, _, err := s.AccessToken(ctx, account, key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	t.Run("MissingIsEmpty", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if tok := get(t, tb.store, "acct", "k"); tok != "" {
			t.Errorf("AccessToken() = %q", tok)
		}
	})

	t.Run("ReauthorizationRetiresCachedTokens", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		now := tb.clock.Now()
		v, _ := tb.store.SetRefreshToken(ctx, "acct", "rt-1")
		if ok, _ := tb.store.PutAccessToken(ctx, "acct", "k", v, "at-1", now.Add(time.Hour), now.Add(50*time.Minute)); !ok {
			t.Fatal("PutAccessToken at the current version refused")
		}
		if tok := get(t, tb.store, "acct", "k"); tok != "at-1" {
			t.Fatalf("AccessToken() = %q, want at-1", tok)
		}
		if _, err := tb.store.SetRefreshToken(ctx, "acct", "rt-2"); err != nil {
			t.Fatal(err)
		}
		if tok := get(t, tb.store, "acct", "k"); tok != "" {
			t.Errorf("after re-authorization AccessToken() = %q, want none", tok)
		}
		// A refresh that started before the re-authorization cannot
		// publish its token.
		if ok, _ := tb.store.PutAccessToken(ctx, "acct", "k", v, "at-stale", now.Add(time.Hour), now.Add(50*time.Minute)); ok {
			t.Error("PutAccessToken with the version before the re-authorization succeeded")
		}
	})

	t.Run("RotationPublishesAtTheNextVersion", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		now := tb.clock.Now()
		_, v, _ := tb.store.RefreshToken(ctx, "acct") // none: version 0
		if ok, _ := tb.store.CompareAndSwapRefreshToken(ctx, "acct", "", "rt-seed-rotated"); !ok {
			t.Fatal("seeding failed")
		}
		if ok, _ := tb.store.PutAccessToken(ctx, "acct", "k", v+1, "at-1", now.Add(time.Hour), now.Add(50*time.Minute)); !ok {
			t.Fatal("PutAccessToken at version+1 after a swap refused")
		}
		if tok := get(t, tb.store, "acct", "k"); tok != "at-1" {
			t.Errorf("AccessToken() = %q, want at-1", tok)
		}
	})

	t.Run("WithoutRefreshTokenNotRetired", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		now := tb.clock.Now()
		tb.store.PutAccessToken(ctx, "app", "k", -1, "at-app", now.Add(time.Hour), now.Add(50*time.Minute))
		tb.store.SetRefreshToken(ctx, "app", "rt")
		if tok := get(t, tb.store, "app", "k"); tok != "at-app" {
			t.Errorf("AccessToken() = %q, want at-app", tok)
		}
	})

	t.Run("KeysAreSeparate", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		now := tb.clock.Now()
		tb.store.PutAccessToken(ctx, "acct", "microsoft:t1:c1:a@x", -1, "at-1", now.Add(time.Hour), time.Time{})
		if tok := get(t, tb.store, "acct", "microsoft:t1:c2:a@x"); tok != "" {
			t.Errorf("another client's key returned %q", tok)
		}
	})

	t.Run("ExpiresWithTheToken", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		now := tb.clock.Now()
		tb.store.PutAccessToken(ctx, "acct", "k", -1, "at-1", now.Add(time.Hour), now.Add(50*time.Minute))
		ttl := tb.rdb.PTTL(ctx, tb.store.accessKey("acct", "k")).Val()
		if ttl <= 59*time.Minute || ttl > time.Hour {
			t.Errorf("PTTL = %v, want about an hour", ttl)
		}
		if ok, err := tb.store.PutAccessToken(ctx, "acct", "k2", -1, "at-old", now.Add(-time.Second), time.Time{}); !ok || err != nil {
			t.Errorf("PutAccessToken of an expired token = %v, %v", ok, err)
		}
		if tok := get(t, tb.store, "acct", "k2"); tok != "" {
			t.Errorf("an expired token was cached: %q", tok)
		}
	})

	t.Run("DeleteOnlyTheSameToken", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		now := tb.clock.Now()
		tb.store.PutAccessToken(ctx, "acct", "k", -1, "at-2", now.Add(time.Hour), time.Time{})
		if deleted, err := tb.store.DeleteAccessToken(ctx, "acct", "k", "at-1"); deleted || err != nil {
			t.Errorf("DeleteAccessToken of a replaced token = %v, %v", deleted, err)
		}
		if tok := get(t, tb.store, "acct", "k"); tok != "at-2" {
			t.Errorf("AccessToken() = %q, want at-2 kept", tok)
		}
		if deleted, err := tb.store.DeleteAccessToken(ctx, "acct", "k", "at-2"); !deleted || err != nil {
			t.Errorf("DeleteAccessToken of the cached token = %v, %v", deleted, err)
		}
		if tok := get(t, tb.store, "acct", "k"); tok != "" {
			t.Errorf("AccessToken() after delete = %q", tok)
		}
	})
}

func TestTokenLock(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	other := tb.sibling(Options{TokenKeys: testKeyring(t, "k")})
	lock := func(s *Store, owner string) bool {
		t.Helper()
		ok, err := s.LockToken(ctx, "acct", owner, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !lock(tb.store, "a") {
		t.Fatal("first LockToken failed")
	}
	if lock(other, "b") {
		t.Fatal("a second owner took a held lock")
	}
	if ok, _ := other.UnlockToken(ctx, "acct", "b"); ok {
		t.Error("UnlockToken by a non-holder succeeded")
	}
	if ok, _ := tb.store.UnlockToken(ctx, "acct", "a"); !ok {
		t.Error("UnlockToken by the holder failed")
	}
	if !lock(other, "b") {
		t.Error("LockToken after the release failed")
	}
	if _, err := tb.store.LockToken(ctx, "acct", "", time.Minute); err == nil {
		t.Error("LockToken with no owner succeeded")
	}
}

// waitResult runs f in a goroutine and returns its error and duration, or
// fails the test when it takes longer than limit.
func waitResult(t *testing.T, limit time.Duration, f func() error) (time.Duration, error) {
	t.Helper()
	type result struct {
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		err := f()
		done <- result{time.Since(start), err}
	}()
	select {
	case r := <-done:
		return r.d, r.err
	case <-time.After(limit):
		t.Fatalf("still waiting after %v", limit)
		return 0, nil
	}
}

func TestWaitTokenLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("FreeReturnsAtOnce", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if _, err := waitResult(t, 2*time.Second, func() error { return tb.store.WaitTokenLock(ctx, "acct") }); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ReleaseIsAnnounced", func(t *testing.T) {
		t.Parallel()
		// Polls are an hour apart and the lock lasts a minute: only the
		// announcement can end the wait within seconds.
		tb := setup(t, Options{TokenPollInterval: time.Hour})
		if ok, _ := tb.store.LockToken(ctx, "acct", "holder", time.Minute); !ok {
			t.Fatal("LockToken failed")
		}
		channel := tb.store.tokenChannel("acct")
		waited := make(chan error, 1)
		go func() { waited <- tb.store.WaitTokenLock(ctx, "acct") }()
		awaitCondition(t, func() bool { return tb.rdb.PubSubNumSub(ctx, channel).Val()[channel] > 0 })
		if ok, _ := tb.store.UnlockToken(ctx, "acct", "holder"); !ok {
			t.Fatal("UnlockToken failed")
		}
		select {
		case err := <-waited:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the release did not end the wait")
		}
	})

	t.Run("DeadHolderDelaysNoLongerThanItsTTL", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{TokenPollInterval: time.Hour})
		const ttl = 300 * time.Millisecond
		if ok, _ := tb.store.LockToken(ctx, "acct", "dead", ttl); !ok {
			t.Fatal("LockToken failed")
		}
		d, err := waitResult(t, ttl+time.Second, func() error { return tb.store.WaitTokenLock(ctx, "acct") })
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := tb.store.LockToken(ctx, "acct", "next", time.Minute); !ok {
			t.Errorf("after waiting %v the lock is still held", d)
		}
	})

	t.Run("EndsWithContext", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		tb.store.LockToken(ctx, "acct", "holder", time.Minute)
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := waitResult(t, 3*time.Second, func() error { return tb.store.WaitTokenLock(cctx, "acct") })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("WaitTokenLock() = %v, want DeadlineExceeded", err)
		}
	})
}

// awaitCondition waits until cond holds, looking every few milliseconds,
// and fails the test after five seconds.
func awaitCondition(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatal("condition not reached within 5s")
		case <-tick.C:
		}
	}
}

func TestClaimTokenKeepAlive(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	stores := []*Store{tb.store, tb.sibling(Options{TokenKeys: testKeyring(t, "k")}), tb.sibling(Options{TokenKeys: testKeyring(t, "k")})}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for _, s := range stores {
		for range 5 {
			wg.Go(func() {
				ok, err := s.ClaimTokenKeepAlive(ctx, "acct", time.Hour)
				if err != nil {
					t.Error(err)
				}
				if ok {
					wins.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if n := wins.Load(); n != 1 {
		t.Errorf("%d claims won, want 1", n)
	}
	if ok, _ := tb.store.ClaimTokenKeepAlive(ctx, "other", time.Hour); !ok {
		t.Error("another account's claim failed")
	}
}
