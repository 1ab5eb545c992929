package smtpoauth_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/sendq/sendq/smtpoauth"
)

// slotLimiter is an in-memory smtpoauth.ConnLimiter of limit slots, shared
// by the Senders of a test as Redis shares the ledger's among processes.
type slotLimiter struct {
	mu       sync.Mutex
	limit    int
	held     int
	peak     int
	refusals int
	acquired int
	released int
	failOnce error         // returned by the next AcquireConn instead of a slot
	refused  chan struct{} // a slot was refused
	// answerSlowly, if set, makes a refusal wait until every slot is
	// back before it is returned: a limiter on a remote Redis answers
	// while leases come back.
	answerSlowly bool
	returned     *sync.Cond      // on mu; broadcast when a slot is released
	slots        []chan struct{} // the Lost channels handed out
}

func newSlotLimiter(limit int) *slotLimiter {
	l := &slotLimiter{limit: limit, refused: make(chan struct{}, 100)}
	l.returned = sync.NewCond(&l.mu)
	return l
}

func (l *slotLimiter) AcquireConn(context.Context) (*smtpoauth.ConnSlot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.failOnce; err != nil {
		l.failOnce = nil
		return nil, err
	}
	if l.held >= l.limit {
		l.refusals++
		select {
		case l.refused <- struct{}{}:
		default:
		}
		for l.answerSlowly && l.held > 0 {
			l.returned.Wait()
		}
		return nil, fmt.Errorf("%w (limit %d)", smtpoauth.ErrConnLimit, l.limit)
	}
	l.held++
	l.acquired++
	l.peak = max(l.peak, l.held)
	var once sync.Once
	lost := make(chan struct{})
	l.slots = append(l.slots, lost)
	return &smtpoauth.ConnSlot{Release: func() {
		once.Do(func() {
			l.mu.Lock()
			l.held--
			l.released++
			l.returned.Broadcast()
			l.mu.Unlock()
		})
	}, Lost: lost}, nil
}

// takeAll marks every slot handed out so far lost, as a limiter whose
// leases ran out and were taken by others does, and frees them.
func (l *slotLimiter) takeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, lost := range l.slots {
		close(lost)
	}
	l.slots = nil
}

func (l *slotLimiter) counts() (held, peak, acquired, refusals int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held, l.peak, l.acquired, l.refusals
}

func TestSenderConnLimiter(t *testing.T) {
	t.Parallel()

	t.Run("ConcurrentSendsWaitForTheSendersOwnConnections", func(t *testing.T) {
		t.Parallel()
		lim := newSlotLimiter(1)
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.ConnLimiter = lim })
		const n = 8
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if _, err := b.s.Send(t.Context(), poolMessage(i)); err != nil {
					t.Errorf("Send %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		wantEachOnce(t, b.srv, n)
		if st := b.srv.Stats(); st.PeakSessions["alice@example.com"] != 1 || st.Logins != 1 {
			t.Errorf("provider saw %d sessions at once and %d logins, want 1 and 1", st.PeakSessions["alice@example.com"], st.Logins)
		}
		if held, _, acquired, _ := lim.counts(); held != 1 || acquired != 1 {
			t.Errorf("limiter: %d held, %d acquired; want the idle connection's 1 and 1", held, acquired)
		}
		b.s.Close()
		if held, _, _, _ := lim.counts(); held != 0 {
			t.Errorf("after Close the limiter holds %d slots, want 0", held)
		}
	})

	t.Run("ASenderWithoutConnectionsFailsAtOnceWhenTheSlotsAreTaken", func(t *testing.T) {
		t.Parallel()
		lim := newSlotLimiter(1)
		a := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.ConnLimiter = lim })
		other := newSender(t, func() smtpoauth.Config { c := a.cfg; c.ConnLimiter = lim; return c }())
		t.Cleanup(func() { other.Close() })

		a.send(t, 0) // a keeps its connection, and the only slot, idle
		_, err := other.Send(t.Context(), poolMessage(1))
		if !errors.Is(err, smtpoauth.ErrConnLimit) {
			t.Fatalf("Send on the other Sender: %v, want ErrConnLimit", err)
		}
		var se *smtpoauth.SendError
		if !errors.As(err, &se) || se.Stage != smtpoauth.StageConnect {
			t.Errorf("error %v is not a SendError at %s", err, smtpoauth.StageConnect)
		}
		if st := a.srv.Stats(); st.Logins != 1 {
			t.Errorf("provider saw %d logins, want 1: the refused Send must not connect", st.Logins)
		}

		a.s.Close() // the idle connection closes and gives its slot back
		if _, err := other.Send(t.Context(), poolMessage(1)); err != nil {
			t.Fatalf("Send after the slot was freed: %v", err)
		}
		wantEachOnce(t, a.srv, 2)
		if _, peak, _, refusals := lim.counts(); peak != 1 || refusals != 1 {
			t.Errorf("limiter: peak %d, %d refusals; want 1 and 1", peak, refusals)
		}
	})

	t.Run("ALimiterErrorFailsTheSendWithoutConnecting", func(t *testing.T) {
		t.Parallel()
		lim := newSlotLimiter(1)
		lim.failOnce = errors.New("redis: connection refused")
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.ConnLimiter = lim })
		_, err := b.s.Send(t.Context(), poolMessage(0))
		if err == nil || errors.Is(err, smtpoauth.ErrConnLimit) {
			t.Fatalf("Send = %v, want the limiter's error", err)
		}
		if st := b.srv.Stats(); st.Logins != 0 {
			t.Errorf("provider saw %d logins, want 0", st.Logins)
		}
		b.send(t, 1) // the slot count is whole again
		if held, _, _, _ := lim.counts(); held != 1 {
			t.Errorf("limiter holds %d slots, want 1", held)
		}
	})

	t.Run("ARefusalThatCrossedAReturnedLeaseAsksAgain", func(t *testing.T) {
		t.Parallel()
		lim := newSlotLimiter(1)
		lim.answerSlowly = true
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) {
			cfg.ConnLimiter = lim
			cfg.MaxMessagesPerConn = 1 // each connection retires after its message
		})
		for i := range 4 {
			b.send(t, i)
		}
		b.wantLogins(t, 4, 4)
		if held, peak, _, _ := lim.counts(); held != 1 || peak != 1 {
			t.Errorf("limiter: %d held, peak %d; want 1 and 1", held, peak)
		}
	})

	t.Run("ARetiredConnectionPassesItsSlotOn", func(t *testing.T) {
		t.Parallel()
		lim := newSlotLimiter(1)
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) {
			cfg.ConnLimiter = lim
			cfg.MaxMessagesPerConn = 2
		})
		for i := range 5 {
			b.send(t, i)
		}
		// Each retired connection's slot goes to the next dial, or back to
		// the limiter first: one connection at a time either way.
		b.wantLogins(t, 3, 5)
		if held, peak, _, refusals := lim.counts(); held != 1 || peak != 1 || refusals > 2 {
			t.Errorf("limiter: %d held, peak %d, %d refusals; want 1, 1 and at most 2", held, peak, refusals)
		}
		if peak := b.srv.Stats().PeakSessions["alice@example.com"]; peak != 1 {
			t.Errorf("provider saw %d sessions at once, want 1", peak)
		}
	})

	t.Run("AWaitingSendTakesASlotFreedElsewhere", func(t *testing.T) {
		t.Parallel()
		lim := newSlotLimiter(2)
		other, err := lim.AcquireConn(t.Context()) // another worker's connection
		if err != nil {
			t.Fatal(err)
		}
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.ConnLimiter = lim })
		b.send(t, 0) // the Sender's one connection takes the other slot

		b.srv.Freeze()
		var wg sync.WaitGroup
		for i := 1; i <= 2; i++ {
			wg.Go(func() {
				if _, err := b.s.Send(t.Context(), poolMessage(i)); err != nil {
					t.Errorf("Send %d: %v", i, err)
				}
			})
		}
		// One Send parks on the idle connection; the other found no slot
		// and waits for it, asking the limiter again now and then.
		if err := b.srv.WaitParked(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		waitSignal(t, lim.refused, "a Send refused a slot")
		other.Release()
		// The freed slot is taken up: a second connection is dialled (its
		// greeting parks).
		if err := b.srv.WaitParked(t.Context(), 2); err != nil {
			t.Fatal(err)
		}
		b.srv.Thaw(false)
		wg.Wait()
		wantEachOnce(t, b.srv, 3)
		b.wantLogins(t, 2, 3)
		if _, peak, _, _ := lim.counts(); peak != 2 {
			t.Errorf("limiter: peak %d, want 2", peak)
		}
	})

	t.Run("AConnectionWhoseSlotWasLostIsNotReused", func(t *testing.T) {
		t.Parallel()
		lim := newSlotLimiter(1)
		b := setupPoolTest(t, func(cfg *smtpoauth.Config) { cfg.ConnLimiter = lim })
		b.send(t, 0)
		lim.takeAll() // the idle connection's lease ran out and was taken
		b.send(t, 1)
		b.wantLogins(t, 2, 2)
		if st := b.srv.Stats(); st.PeakSessions["alice@example.com"] != 1 {
			t.Errorf("provider saw %d sessions at once, want 1: the lost slot's connection closes first", st.PeakSessions["alice@example.com"])
		}
	})
}
