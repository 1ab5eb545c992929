package ledger

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestAcquireSession(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	mustAcquire := func(t *testing.T, tb *testBundle, limit int) *Lease {
		t.Helper()
		l, err := tb.store.AcquireSession(ctx, "acct", limit)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	mustBeFull := func(t *testing.T, tb *testBundle, limit int) {
		t.Helper()
		if l, err := tb.store.AcquireSession(ctx, "acct", limit); !errors.Is(err, ErrSessionsFull) {
			t.Fatalf("AcquireSession = %v, %v; want ErrSessionsFull", l, err)
		}
	}
	mustHold := func(t *testing.T, tb *testBundle, want int) {
		t.Helper()
		n, err := tb.store.Sessions(ctx, "acct")
		if err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Errorf("Sessions = %d, want %d", n, want)
		}
	}

	t.Run("NeverMoreHoldersThanTheLimit", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		const limit, workers, rounds = 3, 20, 5
		// A holder keeps its slot until as many hold one as can (the limit,
		// or fewer when fewer workers are left), so that a broken semaphore
		// would let a fourth in while three hold theirs.
		var (
			mu                    sync.Mutex
			cond                  = sync.NewCond(&mu)
			held, maxHeld, gen    int
			active                = workers
			acquisitions, refused int
		)
		flush := func() { // with mu held
			if held > 0 && held >= min(limit, active) {
				gen++
				cond.Broadcast()
			}
		}
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for done := 0; done < rounds; {
					l, err := tb.store.AcquireSession(ctx, "acct", limit)
					if errors.Is(err, ErrSessionsFull) {
						mu.Lock()
						refused++
						mu.Unlock()
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					held++
					acquisitions++
					maxHeld = max(maxHeld, held)
					mine := gen
					flush()
					for gen == mine {
						cond.Wait()
					}
					held--
					if done++; done == rounds {
						active--
						flush()
					}
					mu.Unlock()
					if err := l.Release(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if maxHeld != limit {
			t.Errorf("at most %d holders at once, want %d", maxHeld, limit)
		}
		if acquisitions != workers*rounds {
			t.Errorf("%d acquisitions, want %d", acquisitions, workers*rounds)
		}
		t.Logf("%d acquisitions, %d refusals", acquisitions, refused)
		mustHold(t, tb, 0)
	})

	t.Run("ReleaseFreesASlot", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		a := mustAcquire(t, tb, 3)
		mustAcquire(t, tb, 3)
		mustAcquire(t, tb, 3)
		mustHold(t, tb, 3)
		mustBeFull(t, tb, 3)
		if err := a.Release(ctx); err != nil {
			t.Fatal(err)
		}
		mustHold(t, tb, 2)
		mustAcquire(t, tb, 3)
		mustBeFull(t, tb, 3)
		if err := a.Release(ctx); err != nil {
			t.Errorf("second Release = %v, want nil", err)
		}
		mustHold(t, tb, 3)
	})

	t.Run("ADeadHoldersSlotFreesAfterTheLease", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{SessionLease: 30 * time.Second})
		dead := mustAcquire(t, tb, 3) // never released nor renewed
		tb.clock.Advance(10 * time.Second)
		mustAcquire(t, tb, 3)
		mustAcquire(t, tb, 3)
		mustBeFull(t, tb, 3)
		if want := tb.clock.Now().Add(20 * time.Second); !dead.Expiry().Equal(want) {
			t.Errorf("Expiry = %v, want %v", dead.Expiry(), want)
		}

		tb.clock.Advance(20*time.Second - time.Millisecond)
		mustBeFull(t, tb, 3)
		mustHold(t, tb, 3)
		tb.clock.Advance(time.Millisecond)
		mustHold(t, tb, 2)
		mustAcquire(t, tb, 3)
		mustBeFull(t, tb, 3)
	})

	t.Run("RenewKeepsTheSlot", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{SessionLease: 30 * time.Second})
		l := mustAcquire(t, tb, 1)
		tb.clock.Advance(20 * time.Second)
		if err := l.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		if want := tb.clock.Now().Add(30 * time.Second); !l.Expiry().Equal(want) {
			t.Errorf("Expiry after Renew = %v, want %v", l.Expiry(), want)
		}
		tb.clock.Advance(20 * time.Second) // 40 s after the first lease
		mustBeFull(t, tb, 1)
		mustHold(t, tb, 1)
	})

	t.Run("RenewAfterTheSlotWasTakenFails", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{SessionLease: 30 * time.Second})
		l := mustAcquire(t, tb, 1)
		tb.clock.Advance(31 * time.Second)
		mustAcquire(t, tb, 1)
		if err := l.Renew(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("Renew = %v, want ErrLeaseLost", err)
		}
	})

	t.Run("RenewAfterExpiryTakesAFreeSlot", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{SessionLease: 30 * time.Second})
		l := mustAcquire(t, tb, 2)
		tb.clock.Advance(31 * time.Second)
		mustAcquire(t, tb, 2)
		if err := l.Renew(ctx); err != nil {
			t.Errorf("Renew = %v, want nil", err)
		}
		mustHold(t, tb, 2)
	})

	t.Run("RenewAfterReleaseFails", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		l := mustAcquire(t, tb, 1)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l.Renew(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("Renew after Release = %v, want ErrLeaseLost", err)
		}
		mustHold(t, tb, 0)
	})

	t.Run("TheKeyExpiresWithItsLastLease", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{SessionLease: 30 * time.Second})
		l := mustAcquire(t, tb, 2)
		ttl, err := tb.rdb.PTTL(ctx, tb.prefix+"{limits:acct}:sessions").Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > 30*time.Second {
			t.Errorf("PTTL of the sessions key = %s, want (0, 30s]", ttl)
		}
		if l.ID() == "" || l.Account() != "acct" {
			t.Errorf("lease id %q account %q", l.ID(), l.Account())
		}
	})

	t.Run("RefusesABadLimitOrAccount", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if _, err := tb.store.AcquireSession(ctx, "acct", 0); err == nil {
			t.Error("AcquireSession with limit 0 succeeded")
		}
		if _, err := tb.store.AcquireSession(ctx, "", 1); err == nil {
			t.Error("AcquireSession of no account succeeded")
		}
	})
}

func TestAllow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	perMinute := Rate{Name: "messages_per_minute", Limit: 30, Window: time.Minute}

	allow := func(t *testing.T, tb *testBundle, uses ...Use) Allowance {
		t.Helper()
		a, err := tb.store.Allow(ctx, "acct", uses...)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	mustAllow := func(t *testing.T, tb *testBundle, uses ...Use) {
		t.Helper()
		if a := allow(t, tb, uses...); !a.Allowed {
			t.Fatalf("Allow = %+v, want allowed", a)
		}
	}
	mustRefuse := func(t *testing.T, tb *testBundle, retryAfter time.Duration, refused Rate, uses ...Use) {
		t.Helper()
		want := Allowance{RetryAfter: retryAfter, Refused: refused}
		if a := allow(t, tb, uses...); a != want {
			t.Fatalf("Allow = %+v, want %+v", a, want)
		}
	}
	used := func(t *testing.T, tb *testBundle, r Rate) int64 {
		t.Helper()
		n, err := tb.store.Used(ctx, "acct", r)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	one := Use{Rate: perMinute, N: 1}

	t.Run("The31stInAMinuteWaitsForTheNextSlot", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		for range 30 {
			mustAllow(t, tb, one)
			tb.clock.Advance(time.Second)
		}
		// 30 s after the first: it leaves the window in 30 s.
		mustRefuse(t, tb, 30*time.Second, perMinute, one)
		if n := used(t, tb, perMinute); n != 30 {
			t.Errorf("Used = %d after a refusal, want 30", n)
		}
		tb.clock.Advance(30*time.Second - time.Millisecond)
		mustRefuse(t, tb, time.Millisecond, perMinute, one)
		tb.clock.Advance(time.Millisecond)
		mustAllow(t, tb, one)
		// The next slot is the second use's, a second later.
		mustRefuse(t, tb, time.Second, perMinute, one)
	})

	t.Run("ConcurrentCallersGetExactlyTheLimit", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		var allowed atomic.Int64
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				a, err := tb.store.Allow(ctx, "acct", one)
				if err != nil {
					t.Error(err)
					return
				}
				if a.Allowed {
					allowed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := allowed.Load(); n != 30 {
			t.Errorf("%d of 50 allowed, want 30", n)
		}
	})

	t.Run("RecipientsPerDayCountRecipients", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		perDay := Rate{Name: "recipients_per_day", Limit: 10_000, Window: 24 * time.Hour}
		t0 := tb.clock.Now()
		for range 99 {
			mustAllow(t, tb, Use{Rate: perDay, N: 100})
			tb.clock.Advance(time.Minute)
		}
		mustAllow(t, tb, Use{Rate: perDay, N: 60})
		if n := used(t, tb, perDay); n != 9_960 {
			t.Fatalf("Used = %d, want 9960", n)
		}
		// 41 more need the first message's 100 to leave the day.
		untilFirstLeaves := t0.Add(24 * time.Hour).Sub(tb.clock.Now())
		mustRefuse(t, tb, untilFirstLeaves, perDay, Use{Rate: perDay, N: 41})
		mustAllow(t, tb, Use{Rate: perDay, N: 40})
		mustRefuse(t, tb, untilFirstLeaves, perDay, Use{Rate: perDay, N: 1})

		tb.clock.Set(t0.Add(24 * time.Hour))
		if n := used(t, tb, perDay); n != 9_900 {
			t.Errorf("Used a day after the first = %d, want 9900", n)
		}
		mustAllow(t, tb, Use{Rate: perDay, N: 100})
		mustRefuse(t, tb, time.Minute, perDay, Use{Rate: perDay, N: 1})
	})

	t.Run("TheOldestUsesThatStandInTheWayDecideTheWait", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		r := Rate{Name: "recipients_per_day", Limit: 10, Window: 24 * time.Hour}
		mustAllow(t, tb, Use{Rate: r, N: 3})
		tb.clock.Advance(time.Hour)
		mustAllow(t, tb, Use{Rate: r, N: 5})
		tb.clock.Advance(time.Hour)
		mustRefuse(t, tb, 22*time.Hour, r, Use{Rate: r, N: 3})  // the 3 must go
		mustRefuse(t, tb, 23*time.Hour, r, Use{Rate: r, N: 10}) // the 3 and the 5
		mustAllow(t, tb, Use{Rate: r, N: 2})
	})

	t.Run("AllOrNothing", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		perDay := Rate{Name: "messages_per_day", Limit: 2, Window: 24 * time.Hour}
		uses := []Use{{Rate: perMinute, N: 1}, {Rate: perDay, N: 1}}
		mustAllow(t, tb, uses...)
		mustAllow(t, tb, uses...)
		mustRefuse(t, tb, 24*time.Hour, perDay, uses...)
		if n := used(t, tb, perMinute); n != 2 {
			t.Errorf("per-minute Used = %d after the day's refusal, want 2", n)
		}
	})

	t.Run("TheLongestWaitIsReported", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		small := Rate{Name: "messages_per_minute", Limit: 1, Window: time.Minute}
		perDay := Rate{Name: "messages_per_day", Limit: 1, Window: 24 * time.Hour}
		mustAllow(t, tb, Use{Rate: small, N: 1}, Use{Rate: perDay, N: 1})
		mustRefuse(t, tb, 24*time.Hour, perDay, Use{Rate: small, N: 1}, Use{Rate: perDay, N: 1})
		mustRefuse(t, tb, 24*time.Hour, perDay, Use{Rate: perDay, N: 1}, Use{Rate: small, N: 1})
	})

	t.Run("KeysExpireAWindowAfterTheLastUse", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		mustAllow(t, tb, one)
		for _, key := range []string{"rate:messages_per_minute", "rate:messages_per_minute:total"} {
			ttl, err := tb.rdb.PTTL(ctx, tb.prefix+"{limits:acct}:"+key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if ttl <= 0 || ttl > time.Minute {
				t.Errorf("PTTL of %s = %s, want (0, 1m]", key, ttl)
			}
		}
	})

	t.Run("ALostTotalIsRecountedFromTheLog", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		r := Rate{Name: "recipients_per_day", Limit: 10, Window: 24 * time.Hour}
		mustAllow(t, tb, Use{Rate: r, N: 4})
		mustAllow(t, tb, Use{Rate: r, N: 4})
		if err := tb.rdb.Del(ctx, tb.prefix+"{limits:acct}:rate:recipients_per_day:total").Err(); err != nil {
			t.Fatal(err)
		}
		mustRefuse(t, tb, 24*time.Hour, r, Use{Rate: r, N: 3})
		mustAllow(t, tb, Use{Rate: r, N: 2})
		mustRefuse(t, tb, 24*time.Hour, r, Use{Rate: r, N: 1})
	})

	t.Run("RatesOfOtherAccountsAreSeparate", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		r := Rate{Name: "messages_per_minute", Limit: 1, Window: time.Minute}
		mustAllow(t, tb, Use{Rate: r, N: 1})
		a, err := tb.store.Allow(ctx, "other", Use{Rate: r, N: 1})
		if err != nil || !a.Allowed {
			t.Errorf("Allow(other) = %+v, %v; want allowed", a, err)
		}
	})

	t.Run("ZeroUsesAreFree", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		mustAllow(t, tb)
		mustAllow(t, tb, Use{Rate: perMinute, N: 0})
		if n := used(t, tb, perMinute); n != 0 {
			t.Errorf("Used = %d, want 0", n)
		}
	})

	t.Run("AUseOverTheLimitNeverFits", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		_, err := tb.store.Allow(ctx, "acct", Use{Rate: Rate{Name: "recipients_per_day", Limit: 10, Window: time.Hour}, N: 11})
		if !errors.Is(err, ErrExceedsLimit) {
			t.Errorf("Allow = %v, want ErrExceedsLimit", err)
		}
	})

	t.Run("RefusesBadRates", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		for _, u := range []Use{
			{Rate: Rate{Name: "", Limit: 1, Window: time.Minute}, N: 1},
			{Rate: Rate{Name: "a:b", Limit: 1, Window: time.Minute}, N: 1},
			{Rate: Rate{Name: "x", Limit: 0, Window: time.Minute}, N: 0},
			{Rate: Rate{Name: "x", Limit: 1, Window: 0}, N: 1},
			{Rate: Rate{Name: "x", Limit: 1, Window: time.Minute}, N: -1},
		} {
			if _, err := tb.store.Allow(ctx, "acct", u); err == nil || errors.Is(err, ErrExceedsLimit) {
				t.Errorf("Allow(%+v) = %v, want a validation error", u, err)
			}
		}
		if _, err := tb.store.Allow(ctx, "", one); err == nil {
			t.Error("Allow of no account succeeded")
		}
		if _, err := tb.store.Allow(ctx, "acct", one, one); err == nil {
			t.Error("Allow of one rate twice succeeded")
		}
	})
}
