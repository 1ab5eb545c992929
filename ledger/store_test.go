package ledger

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
)

// testDB is the Redis database of this package's tests.
const testDB = 5

// testClock is a clock tests move by hand: no test sleeps.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)}
}

// Now returns the clock's time; it is the store's NowFunc.
func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set moves the clock to t.
func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// testBundle is what a test gets from setup: a store on its own key prefix.
type testBundle struct {
	store  *Store
	rdb    *redis.Client
	prefix string
	clock  *testClock
}

// setup returns a store on the test Redis (DB testDB) whose keys start with
// a prefix unique to the test, and deletes those keys when the test ends.
func setup(t testing.TB, opts Options) *testBundle {
	t.Helper()
	rdb := redistest.Client(t, testDB)
	prefix := randomPrefix("test")
	t.Cleanup(func() { deletePrefix(t, rdb, prefix) })
	clock := newTestClock()
	opts.Prefix = prefix
	if opts.NowFunc == nil {
		opts.NowFunc = clock.Now
	}
	if opts.TokenKeys == nil && !opts.InsecurePlaintextTokens {
		opts.TokenKeys = testKeyring(t, "test-key")
	}
	return &testBundle{store: New(rdb, opts), rdb: rdb, prefix: prefix, clock: clock}
}

// testKeyring returns a keyring of one random key named id.
func testKeyring(t testing.TB, id string) *Keyring {
	t.Helper()
	k, err := NewKeyring(id, map[string][]byte{id: randomKey()})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// randomKey returns TokenKeySize random bytes.
func randomKey() []byte {
	b := make([]byte, TokenKeySize)
	rand.Read(b)
	return b
}

// randomPrefix returns kind + ":" + random hex + ":".
func randomPrefix(kind string) string {
	var b [6]byte
	rand.Read(b[:])
	return kind + ":" + hex.EncodeToString(b[:]) + ":"
}

// deletePrefix deletes every key starting with prefix.
func deletePrefix(t testing.TB, rdb redis.UniversalClient, prefix string) {
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("scan %s*: %v", prefix, err)
		return
	}
	if len(keys) > 0 {
		if err := rdb.Del(ctx, keys...).Err(); err != nil {
			t.Errorf("delete %d keys of %s: %v", len(keys), prefix, err)
		}
	}
}

// keys returns the keys under the bundle's prefix.
func (tb *testBundle) keys(t *testing.T) []string {
	t.Helper()
	ks, err := tb.rdb.Keys(context.Background(), tb.prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// roundTrips is a go-redis hook counting round trips: one per command sent
// alone, one per pipeline or transaction.
type roundTrips struct{ n atomic.Int64 }

var _ redis.Hook = (*roundTrips)(nil)

func (*roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// count returns the round trips f takes.
func (c *roundTrips) count(f func()) int64 {
	before := c.n.Load()
	f()
	return c.n.Load() - before
}

func TestOptionsWithDefaults(t *testing.T) {
	t.Parallel()
	o := Options{DeliveryTTL: -time.Hour, MaxAuthBackoff: time.Second}.WithDefaults()
	if o.Prefix != DefaultPrefix || o.NowFunc == nil || o.DeliveryTTL != DefaultDeliveryTTL ||
		o.AuthBackoff != DefaultAuthBackoff || o.MaxAuthBackoff != DefaultAuthBackoff ||
		o.TokenPollInterval != DefaultTokenPollInterval || o.TokenKeys != nil || o.InsecurePlaintextTokens {
		t.Errorf("WithDefaults() = %+v", o)
	}
}

func TestEveryOperationIsOneRoundTrip(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	counter := new(roundTrips)
	tb.rdb.AddHook(counter)
	s := tb.store
	ops := []struct {
		name string
		run  func() error
	}{
		{"Delivery", func() error { _, err := s.Delivery(ctx, "<m@x>"); return err }},
		{"RecordRecipients", func() error {
			return s.RecordRecipients(ctx, "<m@x>", "t1", []string{"a@x", "b@x"}, "250 ok", []Rejection{{"c@x", "550 no"}, {"d@x", "550 no"}})
		}},
		{"WriteReceipt", func() error {
			return s.WriteReceipt(ctx, &Receipt{MessageID: "<m@x>", TaskID: "t1", Accepted: []string{"e@x"}, Rejected: []Rejection{{"f@x", "550"}}, Reply: "250 ok"})
		}},
		{"MarkPossibleDuplicate", func() error { return s.MarkPossibleDuplicate(ctx, "<m@x>", "t1") }},
		{"ForgetRejections", func() error { return s.ForgetRejections(ctx, "<m@x>") }},
		{"Account", func() error { _, err := s.Account(ctx, "acct"); return err }},
		{"Throttle", func() error { return s.Throttle(ctx, "acct", tb.clock.Now().Add(time.Minute), "quota") }},
		{"AuthFailed", func() error { _, err := s.AuthFailed(ctx, "acct", "535"); return err }},
		{"InvalidGrant", func() error { _, err := s.InvalidGrant(ctx, "acct", "invalid_grant", 3, time.Hour); return err }},
		{"Hold", func() error { return s.Hold(ctx, "acct", HoldConfiguration, "530") }},
		{"Succeeded", func() error { return s.Succeeded(ctx, "acct") }},
		{"Resume", func() error { return s.Resume(ctx, "acct") }},
		{"Accounts", func() error { _, err := s.Accounts(ctx); return err }},
		{"SetRefreshToken", func() error { _, err := s.SetRefreshToken(ctx, "acct", "rt-1"); return err }},
		{"RefreshToken", func() error { _, _, err := s.RefreshToken(ctx, "acct"); return err }},
		{"CompareAndSwapRefreshToken", func() error { _, err := s.CompareAndSwapRefreshToken(ctx, "acct", "rt-1", "rt-2"); return err }},
		{"PutAccessToken", func() error {
			_, err := s.PutAccessToken(ctx, "acct", "k", 2, "at-1", tb.clock.Now().Add(time.Hour), tb.clock.Now().Add(50*time.Minute))
			return err
		}},
		{"AccessToken", func() error { _, _, _, err := s.AccessToken(ctx, "acct", "k"); return err }},
		{"DeleteAccessToken", func() error { _, err := s.DeleteAccessToken(ctx, "acct", "k", "at-1"); return err }},
		{"LockToken", func() error { _, err := s.LockToken(ctx, "acct", "owner", time.Minute); return err }},
		{"UnlockToken", func() error { _, err := s.UnlockToken(ctx, "acct", "owner"); return err }},
		{"ClaimTokenKeepAlive", func() error { _, err := s.ClaimTokenKeepAlive(ctx, "acct", time.Minute); return err }},
		{"AddDeadLetter", func() error {
			return s.AddDeadLetter(ctx, &DeadLetter{ID: "d1", Kind: DeadLetterMessage, Payload: []byte("{}")})
		}},
		{"DeadLetters", func() error { _, _, err := s.DeadLetters(ctx, 0, 10); return err }},
		{"DeadLetter", func() error { _, err := s.DeadLetter(ctx, "d1"); return err }},
		{"RemoveDeadLetter", func() error { return s.RemoveDeadLetter(ctx, "d1") }},
	}
	// The first pass warms the connection pool (a new connection's
	// handshake goes through the hooks too); the second counts.
	for _, op := range ops {
		if err := op.run(); err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
	}
	for _, op := range ops {
		var err error
		if n := counter.count(func() { err = op.run() }); n != 1 {
			t.Errorf("%s took %d round trips, want 1", op.name, n)
		}
		if err != nil {
			t.Errorf("%s: %v", op.name, err)
		}
	}
}

func TestLoadScriptsLoadsEveryScript(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if err := tb.store.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	hashes := make([]string, len(scripts))
	for i, sc := range scripts {
		hashes[i] = sc.Hash()
	}
	exists, err := tb.rdb.ScriptExists(ctx, hashes...).Result()
	if err != nil {
		t.Fatal(err)
	}
	for i, ok := range exists {
		if !ok {
			t.Errorf("script %d is not loaded", i)
		}
	}
}

func TestNewPanicsOnNilClient(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Error("New(nil, …) did not panic")
		}
	}()
	New(nil, Options{})
}
