package ledger

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestAccountUnknownIsOK(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	st, err := tb.store.Account(context.Background(), "nobody")
	if err != nil {
		t.Fatal(err)
	}
	if st != (AccountStatus{Account: "nobody", State: AccountOK}) {
		t.Errorf("Account() = %+v", st)
	}
	if ok, _ := tb.store.Usable(st, tb.clock.Now()); !ok {
		t.Error("an unknown account is not usable")
	}
}

func TestUsable(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)
	s := New(redis.NewClient(&redis.Options{}), Options{}) // never used: Usable does no I/O
	cases := []struct {
		name    string
		st      AccountStatus
		ok      bool
		retryAt time.Time
	}{
		{"OK", AccountStatus{State: AccountOK}, true, time.Time{}},
		{"ThrottledUntilLater", AccountStatus{State: AccountThrottled, Until: now.Add(time.Minute)}, false, now.Add(time.Minute)},
		{"ThrottleEndedNow", AccountStatus{State: AccountThrottled, Until: now}, true, time.Time{}},
		{"ThrottleEnded", AccountStatus{State: AccountThrottled, Until: now.Add(-time.Minute)}, true, time.Time{}},
		{"AuthFailingUntilLater", AccountStatus{State: AccountAuthFailing, Until: now.Add(time.Hour)}, false, now.Add(time.Hour)},
		{"AuthFailingEnded", AccountStatus{State: AccountAuthFailing, Until: now.Add(-time.Second)}, true, time.Time{}},
		{"HeldWaitsForAnOperator", AccountStatus{State: AccountHeld, Hold: HoldReauthorize}, false, time.Time{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, retryAt := s.Usable(tc.st, now)
			if ok != tc.ok || !retryAt.Equal(tc.retryAt) {
				t.Errorf("Usable() = %v, %v; want %v, %v", ok, retryAt, tc.ok, tc.retryAt)
			}
		})
	}
}

func TestThrottleNeverShortens(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	t0 := tb.clock.Now()
	mustThrottle := func(until time.Time, reason string) AccountStatus {
		t.Helper()
		if err := tb.store.Throttle(ctx, "acct", until, reason); err != nil {
			t.Fatal(err)
		}
		st, err := tb.store.Account(ctx, "acct")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	st := mustThrottle(t0.Add(10*time.Minute), "454 4.7.0 too many logins")
	if st.State != AccountThrottled || !st.Until.Equal(t0.Add(10*time.Minute)) || st.Reason != "454 4.7.0 too many logins" || !st.Since.Equal(t0) {
		t.Fatalf("after Throttle: %+v", st)
	}
	tb.clock.Advance(time.Minute)
	if st := mustThrottle(t0.Add(5*time.Minute), "450 4.2.1 rate"); !st.Until.Equal(t0.Add(10*time.Minute)) || st.Reason != "454 4.7.0 too many logins" {
		t.Errorf("a shorter throttle changed the pause: %+v", st)
	}
	if st := mustThrottle(t0.Add(-time.Hour), "past"); !st.Until.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("a throttle in the past changed the pause: %+v", st)
	}
	st = mustThrottle(t0.Add(time.Hour), "550 5.4.5 daily quota")
	if !st.Until.Equal(t0.Add(time.Hour)) || st.Reason != "550 5.4.5 daily quota" || !st.Since.Equal(t0) {
		t.Errorf("a longer throttle did not extend the pause: %+v", st)
	}
	if ok, retryAt := tb.store.Usable(st, tb.clock.Now()); ok || !retryAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("Usable() = %v, %v", ok, retryAt)
	}
}

func TestThrottleInThePastOfOKAccountIsNoOp(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	if err := tb.store.Throttle(context.Background(), "acct", tb.clock.Now(), "now"); err != nil {
		t.Fatal(err)
	}
	if ks := tb.keys(t); len(ks) != 0 {
		t.Errorf("created keys %v", ks)
	}
}

func TestAuthFailedBackoffDoublesAndCaps(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	t0 := tb.clock.Now()
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i, w := range want {
		w *= time.Minute
		now := tb.clock.Now()
		st, err := tb.store.AuthFailed(ctx, "acct", fmt.Sprintf("535 5.7.8 failure %d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		if st.State != AccountAuthFailing || st.AuthFailures != i+1 || !st.Until.Equal(now.Add(w)) || !st.Since.Equal(t0) {
			t.Fatalf("failure %d: %+v, want auth-failing until now+%v since %v", i+1, st, w, t0)
		}
		if got, err := tb.store.Account(ctx, "acct"); err != nil || got != st {
			t.Fatalf("Account() = %+v, %v; AuthFailed returned %+v", got, err, st)
		}
		tb.clock.Set(st.Until) // the pause ends; the next attempt fails again
	}

	t.Run("FailureDuringPauseOnlyCounts", func(t *testing.T) {
		st, err := tb.store.AuthFailed(ctx, "acct", "first")
		if err != nil {
			t.Fatal(err)
		}
		tb.clock.Advance(time.Minute)
		again, err := tb.store.AuthFailed(ctx, "acct", "second")
		if err != nil {
			t.Fatal(err)
		}
		if !again.Until.Equal(st.Until) || again.AuthFailures != st.AuthFailures+1 || again.Reason != "first" {
			t.Errorf("a failure during the pause changed it: before %+v, after %+v", st, again)
		}
	})

	t.Run("SuccessRestartsTheBackoff", func(t *testing.T) {
		if err := tb.store.Succeeded(ctx, "acct"); err != nil {
			t.Fatal(err)
		}
		st, err := tb.store.AuthFailed(ctx, "acct", "again")
		if err != nil {
			t.Fatal(err)
		}
		if st.AuthFailures != 1 || !st.Until.Equal(tb.clock.Now().Add(time.Minute)) {
			t.Errorf("after a success: %+v, want a 1m pause", st)
		}
	})
}

func TestAuthFailedHonorsOptions(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{AuthBackoff: 10 * time.Second, MaxAuthBackoff: 25 * time.Second})
	ctx := context.Background()
	for _, w := range []time.Duration{10 * time.Second, 20 * time.Second, 25 * time.Second, 25 * time.Second} {
		now := tb.clock.Now()
		st, err := tb.store.AuthFailed(ctx, "acct", "535")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Until.Equal(now.Add(w)) {
			t.Fatalf("Until = now+%v, want now+%v", st.Until.Sub(now), w)
		}
		tb.clock.Set(st.Until)
	}
}

func TestAuthFailedConcurrent(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	const workers = 64
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		wg.Go(func() {
			<-start
			if _, err := tb.store.AuthFailed(ctx, "acct", fmt.Sprintf("535 from worker %d", i)); err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st, err := tb.store.Account(ctx, "acct")
	if err != nil {
		t.Fatal(err)
	}
	// Every failure counted, but one burst is one round: a 1m pause.
	if st.State != AccountAuthFailing || st.AuthFailures != workers || !st.Until.Equal(tb.clock.Now().Add(time.Minute)) {
		t.Errorf("after %d concurrent failures: %+v", workers, st)
	}
	list, err := tb.store.Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0] != st {
		t.Errorf("Accounts() = %+v", list)
	}
}

func TestInvalidGrantHoldsOnlyAfterThresholdAndWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const threshold, window = 3, time.Hour

	t.Run("ThresholdAloneIsNotEnough", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		version, err := tb.store.SetRefreshToken(ctx, "acct", "rt-dead")
		if err != nil {
			t.Fatal(err)
		}
		t0 := tb.clock.Now()
		for i := 1; i <= 5; i++ {
			st, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", threshold, window)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != AccountAuthFailing || st.InvalidGrants != i || !st.FirstInvalidGrant.Equal(t0) {
				t.Fatalf("refusal %d, %v after the first: %+v", i, tb.clock.Now().Sub(t0), st)
			}
			tb.clock.Set(st.Until)
		}
		if tb.clock.Now().Sub(t0) >= window {
			t.Fatalf("test setup: %v passed, want less than the window", tb.clock.Now().Sub(t0))
		}
		tb.clock.Set(t0.Add(window))
		st, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant: token expired or revoked", threshold, window)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != AccountHeld || st.Hold != HoldReauthorize || st.TokenVersion != version ||
			st.Reason != "invalid_grant: token expired or revoked" || !st.Until.IsZero() || !st.Since.Equal(tb.clock.Now()) {
			t.Errorf("after the window: %+v, want held for reauthorization at token version %d", st, version)
		}
	})

	t.Run("WindowAloneIsNotEnough", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if _, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", threshold, window); err != nil {
			t.Fatal(err)
		}
		tb.clock.Advance(3 * window)
		st, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", threshold, window)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != AccountAuthFailing || st.InvalidGrants != 2 {
			t.Errorf("two refusals: %+v, want auth-failing", st)
		}
		tb.clock.Advance(time.Second)
		st, err = tb.store.InvalidGrant(ctx, "acct", "invalid_grant", threshold, window)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != AccountHeld {
			t.Errorf("third refusal, window passed: %+v, want held", st)
		}
	})

	t.Run("SuccessRestartsTheCount", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		for range threshold {
			if _, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", threshold, window); err != nil {
				t.Fatal(err)
			}
		}
		if err := tb.store.Succeeded(ctx, "acct"); err != nil {
			t.Fatal(err)
		}
		tb.clock.Advance(2 * window)
		st, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", threshold, window)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != AccountAuthFailing || st.InvalidGrants != 1 || !st.FirstInvalidGrant.Equal(tb.clock.Now()) {
			t.Errorf("after a success: %+v, want a fresh count", st)
		}
	})

	t.Run("ZeroMeansDefaults", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		t0 := tb.clock.Now()
		for range DefaultInvalidGrantThreshold {
			if _, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		tb.clock.Set(t0.Add(DefaultInvalidGrantWindow - time.Millisecond))
		if st, _ := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 0, 0); st.State == AccountHeld {
			t.Fatalf("held before the default window: %+v", st)
		}
		tb.clock.Set(t0.Add(DefaultInvalidGrantWindow))
		if st, _ := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 0, 0); st.State != AccountHeld {
			t.Errorf("not held after the default threshold and window: %+v", st)
		}
	})
}

func TestHoldAndResume(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if _, err := tb.store.AuthFailed(ctx, "acct", "535"); err != nil {
		t.Fatal(err)
	}
	tb.clock.Advance(time.Second)
	if err := tb.store.Hold(ctx, "acct", HoldConfiguration, "535 5.7.139 SMTP AUTH disabled for the tenant"); err != nil {
		t.Fatal(err)
	}
	st, err := tb.store.Account(ctx, "acct")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != AccountHeld || st.Hold != HoldConfiguration || st.Reason != "535 5.7.139 SMTP AUTH disabled for the tenant" ||
		!st.Since.Equal(tb.clock.Now()) || !st.Until.IsZero() || st.TokenVersion != 0 {
		t.Fatalf("after Hold: %+v", st)
	}
	if ok, retryAt := tb.store.Usable(st, tb.clock.Now().Add(24*time.Hour)); ok || !retryAt.IsZero() {
		t.Errorf("Usable() = %v, %v for a held account", ok, retryAt)
	}

	// Nothing but Resume releases it.
	later := tb.clock.Now().Add(time.Hour)
	if err := tb.store.Throttle(ctx, "acct", later, "quota"); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.store.AuthFailed(ctx, "acct", "535"); err != nil {
		t.Fatal(err)
	}
	if err := tb.store.Succeeded(ctx, "acct"); err != nil {
		t.Fatal(err)
	}
	if st, _ := tb.store.Account(ctx, "acct"); st.State != AccountHeld || st.Hold != HoldConfiguration {
		t.Errorf("Throttle, AuthFailed or Succeeded released the hold: %+v", st)
	}
	if list, _ := tb.store.Accounts(ctx); len(list) != 1 || list[0].Account != "acct" {
		t.Errorf("Accounts() = %+v", list)
	}

	if err := tb.store.Resume(ctx, "acct"); err != nil {
		t.Fatal(err)
	}
	st, err = tb.store.Account(ctx, "acct")
	if err != nil {
		t.Fatal(err)
	}
	if st != (AccountStatus{Account: "acct", State: AccountOK}) {
		t.Errorf("after Resume: %+v, want ok with cleared counters", st)
	}
	if list, _ := tb.store.Accounts(ctx); len(list) != 0 {
		t.Errorf("Accounts() = %+v after Resume", list)
	}
	if err := tb.store.Hold(ctx, "acct", "vacation", "?"); err == nil {
		t.Error("Hold with an unknown kind succeeded")
	}
}

func TestSucceeded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ClearsAuthFailing", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		if _, err := tb.store.InvalidGrant(ctx, "acct", "invalid_grant", 3, time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := tb.store.Succeeded(ctx, "acct"); err != nil {
			t.Fatal(err)
		}
		if st, _ := tb.store.Account(ctx, "acct"); st != (AccountStatus{Account: "acct", State: AccountOK}) {
			t.Errorf("after Succeeded: %+v", st)
		}
		if ks := tb.keys(t); len(ks) != 0 {
			t.Errorf("keys left: %v", ks)
		}
	})

	t.Run("KeepsRunningThrottle", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		until := tb.clock.Now().Add(time.Hour)
		if err := tb.store.Throttle(ctx, "acct", until, "550 5.4.5 daily quota"); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.store.AuthFailed(ctx, "acct", "535"); err != nil {
			t.Fatal(err)
		}
		if err := tb.store.Succeeded(ctx, "acct"); err != nil {
			t.Fatal(err)
		}
		st, _ := tb.store.Account(ctx, "acct")
		if st.State != AccountThrottled || !st.Until.Equal(until) || st.AuthFailures != 0 {
			t.Errorf("after Succeeded: %+v, want the throttle kept and counters cleared", st)
		}
	})

	t.Run("ClearsEndedThrottle", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		until := tb.clock.Now().Add(time.Hour)
		if err := tb.store.Throttle(ctx, "acct", until, "quota"); err != nil {
			t.Fatal(err)
		}
		tb.clock.Set(until)
		if err := tb.store.Succeeded(ctx, "acct"); err != nil {
			t.Fatal(err)
		}
		if st, _ := tb.store.Account(ctx, "acct"); st.State != AccountOK {
			t.Errorf("after Succeeded: %+v", st)
		}
		if list, _ := tb.store.Accounts(ctx); len(list) != 0 {
			t.Errorf("Accounts() = %+v", list)
		}
	})
}

func TestAccountsListsUnhealthyAccounts(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	now := tb.clock.Now()
	if err := tb.store.Throttle(ctx, "carol", now.Add(time.Hour), "quota"); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.store.AuthFailed(ctx, "alice", "535"); err != nil {
		t.Fatal(err)
	}
	if err := tb.store.Hold(ctx, "bob", HoldReauthorize, "invalid_grant"); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.store.Account(ctx, "dave"); err != nil { // read only: stays unknown
		t.Fatal(err)
	}
	if _, err := tb.store.AuthFailed(ctx, "erin", "535"); err != nil {
		t.Fatal(err)
	}
	if err := tb.store.Succeeded(ctx, "erin"); err != nil {
		t.Fatal(err)
	}
	list, err := tb.store.Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, st := range list {
		got = append(got, st.Account+"="+string(st.State))
	}
	if want := "[alice=auth-failing bob=held carol=throttled]"; fmt.Sprint(got) != want {
		t.Errorf("Accounts() = %v, want %v", got, want)
	}
}
