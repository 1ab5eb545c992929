package ledger

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sendq/sendq/smtpoauth"
)

func TestConnLimiter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("SlotsAreSharedAndGivenBack", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		// Two processes' limiters of the same account, on one Redis.
		a, b := tb.store.ConnLimiter("acct", 2, nil), tb.store.ConnLimiter("acct", 2, nil)
		r1, err := a.AcquireConn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := b.AcquireConn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.AcquireConn(ctx)
		if !errors.Is(err, smtpoauth.ErrConnLimit) || !errors.Is(err, ErrSessionsFull) {
			t.Fatalf("third AcquireConn = %v, want ErrConnLimit and ErrSessionsFull", err)
		}
		r1.Release()
		r1.Release() // twice is harmless
		if n, _ := tb.store.Sessions(ctx, "acct"); n != 1 {
			t.Errorf("Sessions = %d after one release, want 1", n)
		}
		r3, err := a.AcquireConn(ctx)
		if err != nil {
			t.Fatalf("AcquireConn after a release: %v", err)
		}
		r2.Release()
		r3.Release()
		if n, _ := tb.store.Sessions(ctx, "acct"); n != 0 {
			t.Errorf("Sessions = %d after every release, want 0", n)
		}
	})

	t.Run("AHeldSlotIsRenewedPastItsLease", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{SessionLease: 150 * time.Millisecond, NowFunc: time.Now})
		lim := tb.store.ConnLimiter("acct", 1, nil)
		release, err := lim.AcquireConn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer release.Release()
		// Wait out three leases: the renewals keep the slot.
		deadline := time.Now().Add(450 * time.Millisecond)
		for time.Now().Before(deadline) {
			if _, err := lim.AcquireConn(ctx); !errors.Is(err, smtpoauth.ErrConnLimit) {
				t.Fatalf("AcquireConn while the slot is held and renewed = %v, want ErrConnLimit", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("ASlotTakenAfterItsLeaseRanOutIsLost", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{SessionLease: 90 * time.Millisecond})
		slot, err := tb.store.ConnLimiter("acct", 1, nil).AcquireConn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer slot.Release()
		// The holder is paused past its lease (the store's clock jumps),
		// and another takes the slot.
		tb.clock.Advance(time.Second)
		if _, err := tb.store.AcquireSession(ctx, "acct", 1); err != nil {
			t.Fatal(err)
		}
		select {
		case <-slot.Lost:
		case <-time.After(10 * time.Second):
			t.Fatal("the slot's next renewal did not report it lost")
		}
	})

	t.Run("ADeadHoldersSlotFreesAfterItsLease", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		// A lease taken and never renewed: its holder died.
		if _, err := tb.store.AcquireSession(ctx, "acct", 1); err != nil {
			t.Fatal(err)
		}
		lim := tb.store.ConnLimiter("acct", 1, nil)
		if _, err := lim.AcquireConn(ctx); !errors.Is(err, smtpoauth.ErrConnLimit) {
			t.Fatalf("AcquireConn = %v, want ErrConnLimit", err)
		}
		tb.clock.Advance(DefaultSessionLease + time.Millisecond)
		release, err := lim.AcquireConn(ctx)
		if err != nil {
			t.Fatalf("AcquireConn after the dead holder's lease: %v", err)
		}
		release.Release()
	})
}

func TestRefund(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tb := setup(t, Options{})
	perMinute := Rate{Name: "messages_per_minute", Limit: 2, Window: time.Minute}
	rcpts := Rate{Name: "recipients_per_day", Limit: 10, Window: 24 * time.Hour}
	uses := []Use{{Rate: perMinute, N: 1}, {Rate: rcpts, N: 3}}

	first, err := tb.store.Allow(ctx, "acct", uses...)
	if err != nil || !first.Allowed {
		t.Fatalf("Allow = %+v, %v", first, err)
	}
	second, err := tb.store.Allow(ctx, "acct", uses...)
	if err != nil || !second.Allowed {
		t.Fatalf("Allow = %+v, %v", second, err)
	}
	for range 2 { // refunding twice takes back once
		if err := tb.store.Refund(ctx, "acct", second, uses...); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		r    Rate
		want int64
	}{{perMinute, 1}, {rcpts, 3}} {
		if n, err := tb.store.Used(ctx, "acct", tc.r); err != nil || n != tc.want {
			t.Errorf("Used(%s) = %d, %v; want %d", tc.r.Name, n, err, tc.want)
		}
	}
	// The refunded count is room again: a third use fits the minute.
	if a, err := tb.store.Allow(ctx, "acct", uses...); err != nil || !a.Allowed {
		t.Errorf("Allow after the refund = %+v, %v; want allowed", a, err)
	}
	if a, err := tb.store.Allow(ctx, "acct", uses...); err != nil || a.Allowed {
		t.Errorf("Allow over the limit = %+v, %v; want refused", a, err)
	}
	if err := tb.store.Refund(ctx, "acct", Allowance{}, uses...); err != nil {
		t.Errorf("Refund of a refused Allowance: %v", err)
	}
}
