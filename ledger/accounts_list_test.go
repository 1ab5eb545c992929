package ledger

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/redistest"
)

func TestKnownAccounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rdb := redistest.Client(t, testDB)
	// A prefix with the characters SCAN patterns treat specially, and a
	// decoy store whose keys its pattern would match if they were not
	// escaped.
	prefix := randomPrefix("test[*]?")
	decoyPrefix := strings.Replace(prefix, "[*]?", "*X", 1)
	for _, p := range []string{prefix, decoyPrefix} {
		t.Cleanup(func() { deletePrefix(t, rdb, globEscape(p)) })
	}
	clock := newTestClock()
	store := New(rdb, Options{Prefix: prefix, NowFunc: clock.Now, TokenKeys: testKeyring(t, "k")})
	decoy := New(rdb, Options{Prefix: decoyPrefix, NowFunc: clock.Now, TokenKeys: testKeyring(t, "k")})

	known := func() []string {
		t.Helper()
		ids, err := store.KnownAccounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if ids := known(); len(ids) != 0 {
		t.Errorf("empty store knows %v", ids)
	}

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(store.Throttle(ctx, "sales", clock.Now().Add(time.Hour), "550 5.4.5 daily limit"))
	must(store.Hold(ctx, "team:eu", HoldConfiguration, "530 5.7.0 must issue STARTTLS"))
	_, err := store.SetRefreshToken(ctx, "support", "1//refresh")
	must(err)
	_, err = store.ClaimTokenKeepAlive(ctx, "idle", time.Hour)
	must(err)
	_, err = store.AcquireSession(ctx, "limited}x", 2)
	must(err)
	_, err = store.Allow(ctx, "rated", Use{Rate: Rate{Name: "messages_per_minute", Limit: 10, Window: time.Minute}, N: 1})
	must(err)
	must(decoy.Throttle(ctx, "decoy", clock.Now().Add(time.Hour), "not this store's"))
	_, err = decoy.SetRefreshToken(ctx, "decoy-token", "1//other")
	must(err)

	want := []string{"idle", "limited}x", "rated", "sales", "support", "team:eu"}
	if ids := known(); !slices.Equal(ids, want) {
		t.Errorf("KnownAccounts() = %q, want %q", ids, want)
	}

	t.Run("AnAccountBackToOkWithNothingElseIsForgotten", func(t *testing.T) {
		must(store.Resume(ctx, "sales"))
		want := slices.DeleteFunc(slices.Clone(want), func(id string) bool { return id == "sales" })
		if ids := known(); !slices.Equal(ids, want) {
			t.Errorf("KnownAccounts() after Resume(sales) = %q, want %q", ids, want)
		}
	})
}

func TestGlobEscape(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"sendq:":       "sendq:",
		"a*b?c[d]e\\f": `a\*b\?c\[d\]e\\f`,
		"{accounts}:":  "{accounts}:",
	} {
		if got := globEscape(in); got != want {
			t.Errorf("globEscape(%q) = %q, want %q", in, got, want)
		}
	}
}
