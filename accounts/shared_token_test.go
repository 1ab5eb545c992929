package accounts_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// sharedDB is the Redis database of this package's tests of shared tokens.
const sharedDB = 7

const sharedAccountsFile = `
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    smtp: {{smtp}}
    oauth:
      grant: refresh_token
      tenant: contoso.onmicrosoft.com
      client_id: ms-app
      client_secret_env: MS_SECRET
      refresh_token_env: MS_REFRESH
      token_url: {{token_url}}
`

// sharedBundle is a provider with one Microsoft account "m" and a Redis key
// prefix of the test's own, where "processes" share the account's tokens.
type sharedBundle struct {
	*providerBundle
	seed   string
	prefix string
	keys   *ledger.Keyring
	admin  *ledger.Store // what an operator's tool sees
}

func setupShared(t *testing.T, cfg smtpoauthtest.Config) *sharedBundle {
	t.Helper()
	if cfg.Flavor == "" {
		cfg.Flavor = smtpoauthtest.FlavorMicrosoft
	}
	b := &sharedBundle{providerBundle: setupProvider(t, cfg)}
	b.srv.AddClient("ms-app", "ms-secret")
	b.seed = b.srv.NewRefreshToken("ms-app", "m@contoso.com")
	b.env["MS_SECRET"] = "ms-secret"
	b.env["MS_REFRESH"] = b.seed

	rdb := redistest.Client(t, sharedDB)
	var r [6]byte
	rand.Read(r[:])
	b.prefix = "test:" + hex.EncodeToString(r[:]) + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := rdb.Keys(ctx, b.prefix+"*").Result()
		if len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
	})
	key := make([]byte, ledger.TokenKeySize)
	rand.Read(key)
	var err error
	if b.keys, err = ledger.NewKeyring("test", map[string][]byte{"test": key}); err != nil {
		t.Fatal(err)
	}
	b.admin = ledger.New(rdb, ledger.Options{Prefix: b.prefix, TokenKeys: b.keys})
	return b
}

// process returns what one worker process has: its own Redis client and
// store, and a registry built from a fresh parse of the accounts file.
func (b *sharedBundle) process(t *testing.T, logger *slog.Logger, opts accounts.RegistryOptions) *accounts.Registry {
	t.Helper()
	opts.Tokens = ledger.New(redistest.Client(t, sharedDB), ledger.Options{Prefix: b.prefix, TokenKeys: b.keys})
	reg, err := accounts.NewRegistry(t.Context(), b.parse(t, sharedAccountsFile), logger, opts)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// processes returns n processes' token sources for account m.
func (b *sharedBundle) processes(t *testing.T, n int, opts accounts.RegistryOptions) []accounts.TokenSource {
	t.Helper()
	out := make([]accounts.TokenSource, n)
	for i := range out {
		ts, err := b.process(t, nil, opts).TokenSource("m")
		if err != nil {
			t.Fatal(err)
		}
		out[i] = ts
	}
	return out
}

func (b *sharedBundle) grants() int {
	return b.srv.Stats().TokenGrants[smtpoauthtest.GrantRefreshToken]
}

// storedRefreshToken returns the refresh token in Redis and its version.
func (b *sharedBundle) storedRefreshToken(t *testing.T) (string, int64) {
	t.Helper()
	rt, v, err := b.admin.RefreshToken(context.Background(), "m")
	if err != nil {
		t.Fatal(err)
	}
	return rt, v
}

// live reports whether the provider still honours refresh token rt. It
// spends it: with rotation, call it last.
func (b *sharedBundle) live(t *testing.T, rt string) bool {
	t.Helper()
	cfg := &oauth2.Config{ClientID: "ms-app", ClientSecret: "ms-secret", Endpoint: oauth2.Endpoint{TokenURL: b.srv.TokenURL}}
	_, err := smtpoauth.NewRefreshTokenSource(t.Context(), cfg, rt, nil).Token()
	return err == nil
}

// tokenWithin calls ts.Token in a goroutine and fails the test if it takes
// longer than limit.
func tokenWithin(t *testing.T, ts oauth2.TokenSource, limit time.Duration) (*oauth2.Token, time.Duration, error) {
	t.Helper()
	type result struct {
		tok *oauth2.Token
		err error
		d   time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		tok, err := ts.Token()
		done <- result{tok, err, time.Since(start)}
	}()
	select {
	case r := <-done:
		return r.tok, r.d, r.err
	case <-time.After(limit):
		t.Fatalf("Token() still running after %v", limit)
		return nil, 0, nil
	}
}

func TestSharedTokenOneGrantForManyProcesses(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
	sources := b.processes(t, 3, accounts.RegistryOptions{})

	const perProcess = 20
	start := make(chan struct{})
	var (
		mu     sync.Mutex
		tokens = map[string]int{}
		wg     sync.WaitGroup
	)
	for _, ts := range sources {
		for range perProcess {
			wg.Go(func() {
				<-start
				tok, err := ts.Token()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				tokens[tok.AccessToken]++
				mu.Unlock()
			})
		}
	}
	close(start)
	wg.Wait()
	if g := b.grants(); g != 1 {
		t.Errorf("%d grants for %d callers in 3 processes, want 1", g, 3*perProcess)
	}
	if len(tokens) != 1 {
		t.Errorf("callers got %d different access tokens, want 1", len(tokens))
	}
	rt, version := b.storedRefreshToken(t)
	if rt == "" || rt == b.seed || version != 1 {
		t.Errorf("stored refresh token: seed %v, version %d; want the rotated one at version 1", rt == b.seed, version)
	}
}

func TestSharedTokenRotation(t *testing.T) {
	t.Parallel()

	t.Run("SequentialRefreshesAcrossProcesses", func(t *testing.T) {
		t.Parallel()
		b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
		sources := b.processes(t, 3, accounts.RegistryOptions{})
		const refreshes = 50
		// Each round invalidates the token one process holds; a process
		// holding an older token than the store's gets the store's, so
		// not every round asks the endpoint.
		for round := 0; b.grants() < refreshes; round++ {
			if round > 4*refreshes {
				t.Fatalf("only %d grants after %d rounds", b.grants(), round)
			}
			ts := sources[round%3]
			tok, err := ts.Token()
			if err != nil {
				t.Fatalf("round %d (after %d grants): %v", round, b.grants(), err)
			}
			rt, version := b.storedRefreshToken(t)
			if g := b.grants(); version != int64(g) || rt == "" {
				t.Fatalf("round %d: stored refresh token version %d after %d grants: a rotation was not stored", round, version, g)
			}
			ts.Invalidate(tok)
		}
		rt, _ := b.storedRefreshToken(t)
		if !b.live(t, rt) {
			t.Error("the stored refresh token is not the provider's latest")
		}
	})

	t.Run("ConcurrentRefreshesAcrossProcesses", func(t *testing.T) {
		t.Parallel()
		b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
		sources := b.processes(t, 3, accounts.RegistryOptions{})
		var wg sync.WaitGroup
		for _, ts := range sources {
			for range 4 {
				wg.Go(func() {
					for range 10 {
						tok, err := ts.Token()
						if err != nil {
							t.Error(err) // an invalid_grant would show here
							return
						}
						ts.Invalidate(tok)
					}
				})
			}
		}
		wg.Wait()
		rt, version := b.storedRefreshToken(t)
		if g := b.grants(); version != int64(g) || g < 10 {
			t.Errorf("%d grants, stored version %d: want one stored rotation per grant, and at least 10", g, version)
		}
		if !b.live(t, rt) {
			t.Error("the stored refresh token is not the provider's latest")
		}
	})
}

func TestSharedTokenDeadLockHolder(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{})
	const ttl = time.Second
	ts := b.processes(t, 1, accounts.RegistryOptions{TokenLockTTL: ttl})[0]
	// A process takes the lock and dies.
	if ok, err := b.admin.LockToken(t.Context(), "m", "dead-process", ttl); !ok || err != nil {
		t.Fatalf("LockToken() = %v, %v", ok, err)
	}
	tok, d, err := tokenWithin(t, ts, ttl+time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || b.grants() != 1 {
		t.Errorf("after %v: token %v, %d grants; want one grant", d, tok.AccessToken != "", b.grants())
	}
}

func TestSharedTokenReauthorization(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
	ctx := t.Context()
	first := b.processes(t, 1, accounts.RegistryOptions{})[0]
	old, err := first.Token()
	if err != nil {
		t.Fatal(err)
	}

	// The refresh token dies: the provider refuses it, the worker reports
	// invalid_grant and keeps the token (an operator decides).
	dead, version := b.storedRefreshToken(t)
	b.srv.Revoke(dead)
	first.Invalidate(old)
	_, err = first.Token()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("Token() with a revoked refresh token: %v, want an *oauth2.RetrieveError invalid_grant", err)
	}
	if strings.Contains(err.Error(), dead) {
		t.Errorf("error shows the refresh token: %v", err)
	}
	if rt, v := b.storedRefreshToken(t); rt != dead || v != version {
		t.Fatalf("after invalid_grant the stored token changed (version %d -> %d)", version, v)
	}
	if err := b.admin.Hold(ctx, "m", ledger.HoldReauthorize, "invalid_grant"); err != nil {
		t.Fatal(err)
	}

	// The operator re-authorizes.
	fresh := b.srv.NewRefreshToken("ms-app", "m@contoso.com")
	if _, err := b.admin.SetRefreshToken(ctx, "m", fresh); err != nil {
		t.Fatal(err)
	}
	if st, _ := b.admin.Account(ctx, "m"); st.State != ledger.AccountOK {
		t.Errorf("account after re-authorization: %+v, want ok", st)
	}
	grants := b.grants()
	tok, err := first.Token()
	if err != nil {
		t.Fatalf("first refresh after re-authorization: %v", err)
	}
	if b.grants() != grants+1 {
		t.Errorf("grants %d -> %d, want one", grants, b.grants())
	}
	rt, v := b.storedRefreshToken(t)
	if rt == fresh || v != version+2 { // SetRefreshToken, then the rotation
		t.Errorf("stored refresh token version %d (the re-authorized one: %v), want %d, rotated", v, rt == fresh, version+2)
	}

	// Another process joins: it uses the token the first one published.
	other := b.processes(t, 1, accounts.RegistryOptions{})[0]
	if got, err := other.Token(); err != nil || got.AccessToken != tok.AccessToken {
		t.Errorf("other process: same token %v, %v", err == nil && got.AccessToken == tok.AccessToken, err)
	}
	if b.grants() != grants+1 {
		t.Errorf("the second process asked the endpoint again")
	}
}

func TestSharedTokenReauthorizationRetiresCachedTokens(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{})
	ctx := t.Context()
	if _, err := b.processes(t, 1, accounts.RegistryOptions{})[0].Token(); err != nil {
		t.Fatal(err)
	}
	// A re-authorization for another consent: the seed is revoked, so
	// only the new refresh token works.
	b.srv.Revoke(b.seed)
	fresh := b.srv.NewRefreshToken("ms-app", "m@contoso.com")
	if _, err := b.admin.SetRefreshToken(ctx, "m", fresh); err != nil {
		t.Fatal(err)
	}
	// A new process does not take the cached token of the old consent.
	tok, err := b.processes(t, 1, accounts.RegistryOptions{})[0].Token()
	if err != nil {
		t.Fatal(err)
	}
	if b.grants() != 2 {
		t.Errorf("%d grants, want 2: the cached token outlived the re-authorization", b.grants())
	}
	if rt, _ := b.storedRefreshToken(t); rt != fresh {
		t.Error("the re-authorized refresh token was replaced without rotation")
	}
	if tok.AccessToken == "" {
		t.Error("empty token")
	}
}

func TestSharedTokenInvalidate(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
	s := b.processes(t, 2, accounts.RegistryOptions{})
	a, c := s[0], s[1]
	t1, err := a.Token()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Token(); got == nil || got.AccessToken != t1.AccessToken {
		t.Fatal("second process did not get the shared token")
	}
	a.Invalidate(t1) // a server refused t1: gone from a and from Redis
	t2, err := a.Token()
	if err != nil || t2.AccessToken == t1.AccessToken {
		t.Fatalf("after Invalidate: new token %v, %v", err == nil && t2.AccessToken != t1.AccessToken, err)
	}
	c.Invalidate(t1) // c hears of it later: Redis holds t2, which stays
	if got, _ := c.Token(); got == nil || got.AccessToken != t2.AccessToken {
		t.Error("second process did not pick up the replacement")
	}
	if b.grants() != 2 {
		t.Errorf("%d grants, want 2", b.grants())
	}
}

func TestSharedTokenSenderRecoversFromRejectedToken(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
	one := b.process(t, nil, accounts.RegistryOptions{})
	two := b.process(t, nil, accounts.RegistryOptions{})
	ts, _ := one.TokenSource("m")
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := two.SenderFor("m")
	if _, err := s2.Send(t.Context(), testMessage("m@contoso.com")); err != nil {
		t.Fatal(err)
	}
	b.srv.Revoke(tok.AccessToken) // the server now refuses the shared token
	for _, reg := range []*accounts.Registry{one, two} {
		s, _ := reg.SenderFor("m")
		if _, err := s.Send(t.Context(), testMessage("m@contoso.com")); err != nil {
			t.Fatalf("send after the token was revoked: %v", err)
		}
	}
	if b.grants() != 2 {
		t.Errorf("%d grants, want 2 (one, then one replacement shared by both)", b.grants())
	}
}

// recorder is a slog handler that hands every record to a channel.
type recorder struct{ ch chan slog.Record }

func (r recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r recorder) WithGroup(string) slog.Handler            { return r }
func (r recorder) Handle(_ context.Context, rec slog.Record) error {
	select {
	case r.ch <- rec.Clone():
	default:
	}
	return nil
}

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestSharedTokenKeepAlive(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
	clock := &testClock{t: time.Now()}
	logs := recorder{ch: make(chan slog.Record, 1000)}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)
	for range 3 {
		// Checks every 50-100ms, one claim per 200ms cluster-wide.
		reg := b.process(t, slog.New(logs), accounts.WithClock(accounts.RegistryOptions{KeepAlive: 400 * time.Millisecond}, clock.Now))
		wg.Go(func() { reg.KeepAlive(ctx) })
	}
	// keepAlive waits for the next keep-alive record and reports whether it
	// asked the endpoint; a warning fails the test.
	keepAlive := func() bool {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case rec := <-logs.ch:
				if rec.Level >= slog.LevelWarn {
					t.Fatalf("warning: %s", recordString(rec))
				}
				if rec.Message != "token keep-alive" {
					continue
				}
				granted := false
				rec.Attrs(func(a slog.Attr) bool {
					if a.Key == "granted" {
						granted = a.Value.Bool()
					}
					return true
				})
				return granted
			case <-timeout:
				t.Fatal("no keep-alive within 5s")
			}
		}
	}

	// Nobody sends: the keep-alive uses the refresh token once.
	if !keepAlive() {
		t.Fatal("the first keep-alive of an idle account did not refresh")
	}
	// The token obtained is fresh: later claims, whoever wins them, find
	// it and leave the endpoint alone.
	for range 3 {
		if keepAlive() {
			t.Fatal("a keep-alive refreshed while a fresh token was shared")
		}
	}
	if g := b.grants(); g != 1 {
		t.Fatalf("%d grants, want 1", g)
	}
	// Hours pass with no mail: the next claim refreshes again.
	clock.Advance(2 * time.Hour)
	for !keepAlive() {
	}
	if g := b.grants(); g != 2 {
		t.Errorf("%d grants, want 2", g)
	}
	rt, version := b.storedRefreshToken(t)
	if version != 2 || !b.live(t, rt) {
		t.Errorf("stored refresh token version %d; want 2, and live", version)
	}
}

func recordString(r slog.Record) string {
	var sb strings.Builder
	sb.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&sb, " %s=%v", a.Key, a.Value)
		return true
	})
	return sb.String()
}

func TestKeepAliveWithoutStoreReturns(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{})
	reg, err := accounts.NewRegistry(t.Context(), b.parse(t, sharedAccountsFile), nil, accounts.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { reg.KeepAlive(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("KeepAlive without a token store did not return")
	}
}

func TestSharedTokenNeverLogsTokens(t *testing.T) {
	t.Parallel()
	b := setupShared(t, smtpoauthtest.Config{RotateRefreshTokens: true})
	var buf strings.Builder
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := b.process(t, logger, accounts.RegistryOptions{})
	ts, _ := reg.TokenSource("m")
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := b.storedRefreshToken(t)
	mu.Lock()
	defer mu.Unlock()
	out := buf.String()
	if !strings.Contains(out, "stored the accounts file's refresh token") {
		t.Errorf("no log of storing the seed:\n%s", out)
	}
	for _, secret := range []string{b.seed, rt, tok.AccessToken} {
		if strings.Contains(out, secret) {
			t.Errorf("log shows a token:\n%s", out)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
