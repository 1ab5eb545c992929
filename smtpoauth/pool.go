package smtpoauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// pool keeps a Sender's authenticated sessions between messages, and
// bounds how many connections are open at once (Config.MaxConns).
//
// A Send takes a session (get), delivers one message on it, and gives it
// back (put): to a Send waiting for one, to the idle list, or to be closed
// with a QUIT in the background when it has carried Config.MaxMessagesPerConn
// messages, when Config.MaxIdleConns sessions are idle already, or when
// pooling is disabled. A session that failed (a network error, a 421, ctx
// ending) is closed at once, without QUIT. Idle sessions are taken most
// recently used first, so that the surplus ages out; one idle longer than
// Config.IdleTimeout is closed, by a timer or by the next get, whichever
// comes first.
//
// A slot (a count in open) is held from the dial of a connection until it
// is closed, QUIT included, so that the server never sees more than
// MaxConns sessions of the Sender. With a Config.ConnLimiter, each slot
// with a connection also holds one of the mailbox's slots across
// processes (a lease), taken before the dial and given back once the
// connection is closed, or passed on with the slot to a waiting Send. When
// the limiter has no slot free, a Send waits for one of the Sender's own
// connections if it has any, and otherwise fails at once with
// ErrConnLimit, so that the caller can try again later.
type pool struct {
	s           *Sender
	limiter     ConnLimiter
	maxConns    int // 0: unlimited
	maxIdle     int
	maxMessages int
	idleTimeout time.Duration
	disabled    bool

	// nowFunc is the clock of idle times; tests replace it before the
	// first Send.
	nowFunc func() time.Time
	// reaped, if set, is called when the idle timer has taken a session
	// out of the pool to close it, and waiting when a Send starts waiting
	// for a connection (tests).
	reaped, waiting func()

	mu      sync.Mutex
	idle    []*session // most recently used last
	open    int        // connections being dialled, in use, idle or being closed
	waiters []chan grant
	closed  bool
	closing int        // sessions being closed in the background
	drained *sync.Cond // on mu; broadcast when closing drops to 0

	releasing sync.WaitGroup // leases being given back to the limiter
	returning int            // how many, guarded by mu
	returned  uint64         // how many were given back so far, guarded by mu
}

// grant is what a waiting Send receives: a session to reuse, or else (ss
// nil) a slot to dial into, with the lease of the connection that had it
// (nil when there is none, or no limiter).
type grant struct {
	ss    *session
	lease *ConnSlot
}

func newPool(s *Sender) *pool {
	p := &pool{
		s:           s,
		limiter:     s.cfg.ConnLimiter,
		maxConns:    s.cfg.MaxConns,
		maxIdle:     s.cfg.MaxIdleConns,
		maxMessages: s.cfg.MaxMessagesPerConn,
		idleTimeout: s.cfg.IdleTimeout,
		disabled:    s.cfg.DisablePooling,
		nowFunc:     time.Now,
	}
	p.drained = sync.NewCond(&p.mu)
	return p
}

// get returns a session for one message: the most recently used idle
// session, or a new one when a slot is free, or else the first session or
// slot freed, waiting as long as ctx allows. A waiting Send is served
// before any later one. A Send whose ctx has ended fails as it would on a
// new connection (at StageToken), leaving the idle sessions alone.
func (p *pool) get(ctx context.Context) (*session, error) {
	p.mu.Lock()
	// An idle session is not handed to a Send whose ctx has ended already:
	// binding that ctx would close its connection.
	if contextError(ctx) == nil {
		if ss := p.takeIdleLocked(); ss != nil {
			p.mu.Unlock()
			return ss, nil
		}
	}
	if p.maxConns == 0 || p.open < p.maxConns {
		p.open++
		p.mu.Unlock()
		return p.dial(ctx, nil)
	}
	return p.waitLocked(ctx, false)
}

// limiterRecheck is how long, on average, a Send that waits for the
// Sender's own connections because the limiter had no slot waits before it
// asks the limiter again: a slot freed elsewhere (a worker that stopped,
// or whose lease ran out) is taken up within about this long.
const limiterRecheck = 500 * time.Millisecond

// waitLocked waits, from a locked p.mu (which it unlocks), for a session to
// reuse or a slot to dial into. With recheck (the limiter had no slot),
// it gives up waiting after about limiterRecheck and starts over.
func (p *pool) waitLocked(ctx context.Context, recheck bool) (*session, error) {
	ch := make(chan grant, 1)
	p.waiters = append(p.waiters, ch)
	hook := p.waiting
	p.mu.Unlock()
	if hook != nil {
		hook()
	}

	var again <-chan time.Time
	if recheck {
		t := time.NewTimer(limiterRecheck/2 + rand.N(limiterRecheck))
		defer t.Stop()
		again = t.C
	}
	select {
	case g := <-ch:
		return p.granted(ctx, g)
	case <-ctx.Done():
	case <-again:
	}
	p.mu.Lock()
	i := slices.Index(p.waiters, ch)
	if i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
	}
	p.mu.Unlock()
	if i < 0 {
		// Served while giving up.
		return p.granted(ctx, <-ch)
	}
	if contextError(ctx) != nil {
		return nil, p.waitFailed(ctx)
	}
	return p.get(ctx)
}

// granted takes what a waiting Send received: a session, or a slot to dial
// into. If ctx has ended, it passes either on and fails.
func (p *pool) granted(ctx context.Context, g grant) (*session, error) {
	switch {
	case contextError(ctx) == nil && g.ss == nil:
		return p.dial(ctx, g.lease)
	case contextError(ctx) == nil:
		return g.ss, nil
	case g.ss != nil:
		p.put(g.ss, nil) // not to be closed by the ended ctx: pass it on
	default:
		p.freeSlot(g.lease)
	}
	return nil, p.waitFailed(ctx)
}

// waitFailed is the error of a Send whose ctx ended while it waited for a
// connection.
func (p *pool) waitFailed(ctx context.Context) error {
	return p.s.fail(ctx, StageConnect,
		fmt.Errorf("wait for one of %d connections: %w", p.maxConns, contextError(ctx)))
}

// dial opens a session in a slot already counted, with the slot's lease
// from the limiter, taking one first if lease is nil and there is a
// limiter, and frees the slot if that fails.
func (p *pool) dial(ctx context.Context, lease *ConnSlot) (*session, error) {
	if lease == nil && p.limiter != nil {
		p.mu.Lock()
		returned := p.returned
		p.mu.Unlock()
		var err error
		if lease, err = p.limiter.AcquireConn(ctx); err != nil {
			return p.noLease(ctx, err, returned)
		}
	}
	ss, err := p.s.open(ctx)
	if err != nil {
		p.freeSlot(lease)
		return nil, err
	}
	ss.lease = lease
	return ss, nil
}

// noLease handles the limiter's refusal of a lease for a counted slot:
// when every slot of the mailbox is taken elsewhere, the Send asks again if
// one of the Sender's own leases was given back since it asked (returned
// was p.returned then), or frees the slot and waits for one of the Sender's
// connections if there is one, or for a lease it is giving back; otherwise
// it frees the slot and fails with err.
func (p *pool) noLease(ctx context.Context, err error, returned uint64) (*session, error) {
	p.mu.Lock()
	if errors.Is(err, ErrConnLimit) && p.returned != returned && !p.closed {
		// The refusal may have crossed the lease coming back.
		p.mu.Unlock()
		return p.dial(ctx, nil)
	}
	p.open--
	if errors.Is(err, ErrConnLimit) && (p.open > 0 || p.returning > 0) && !p.closed {
		return p.waitLocked(ctx, true)
	}
	if p.open == 0 && len(p.waiters) > 0 {
		// No connection is left to serve the waiting Sends: each tries
		// the limiter in turn.
		p.open++
		ch := p.waiters[0]
		p.waiters = p.waiters[1:]
		ch <- grant{}
	}
	p.mu.Unlock()
	return nil, p.s.fail(ctx, StageConnect, err)
}

// replace closes ss, which the server closed while it was idle, and dials
// a new session in its slot, with its lease.
func (p *pool) replace(ctx context.Context, ss *session) (*session, error) {
	ss.close()
	return p.dial(ctx, ss.lease)
}

// put gives back the session a message was delivered on, err being the
// outcome.
func (p *pool) put(ss *session, err error) {
	if ss.broken || !reusable(err) || ss.lease.lost() {
		ss.close()
		p.freeSlot(ss.lease)
		return
	}
	p.mu.Lock()
	var reason string
	switch {
	case p.closed:
		// After Close nothing runs in the background: the Send closes
		// its own connection.
		p.mu.Unlock()
		p.logClose(ss, "sender closed")
		ss.quit()
		p.freeSlot(ss.lease)
		return
	case p.disabled:
		reason = "pooling disabled"
	case ss.uses >= p.maxMessages:
		reason = "max messages per connection"
	case len(p.waiters) > 0:
		ch := p.waiters[0]
		p.waiters = p.waiters[1:]
		ch <- grant{ss: ss}
	case len(p.idle) >= p.maxIdle:
		reason = "max idle connections"
	default:
		p.idleLocked(ss)
	}
	if reason != "" {
		p.retireLocked(ss, reason)
	}
	p.mu.Unlock()
}

// reusable reports whether a session may carry another message after a
// delivery that ended with err: success, a message refused before any
// command, or a reply from a server that is not closing the connection
// (421).
func reusable(err error) bool {
	if err == nil || errors.Is(err, ErrInvalidMessage) {
		return true
	}
	var reply *smtp.SMTPError
	return errors.As(err, &reply) && reply.Code != 421
}

// redialable reports whether err, the failure of the first command on a
// reused connection, says the server had closed the connection while it
// was idle: a 421 reply, EOF, a reset or closed connection; not a timeout,
// nor ctx ending.
func redialable(ctx context.Context, err error) bool {
	if contextError(ctx) != nil {
		return false
	}
	var reply *smtp.SMTPError
	if errors.As(err, &reply) {
		return reply.Code == 421
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return false
	}
	return isNetworkError(err)
}

// takeIdleLocked takes the most recently used idle session, closing those
// idle for IdleTimeout or longer; nil when none is left.
func (p *pool) takeIdleLocked() *session {
	now := p.nowFunc()
	for len(p.idle) > 0 {
		ss := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		p.leaveIdleLocked(ss)
		switch {
		case ss.lease.lost():
			p.retireLocked(ss, "connection slot lost")
		case now.Sub(ss.idleSince) < p.idleTimeout:
			return ss
		default:
			p.retireLocked(ss, "idle timeout")
		}
	}
	return nil
}

// idleLocked adds ss to the idle sessions, with a timer that closes it
// after IdleTimeout.
func (p *pool) idleLocked(ss *session) {
	ss.idleSince = p.nowFunc()
	ss.idleGen++
	gen := ss.idleGen
	ss.idleTimer = time.AfterFunc(p.idleTimeout, func() { p.reap(ss, gen) })
	p.idle = append(p.idle, ss)
}

// leaveIdleLocked ends the idle period of ss, taken out of p.idle.
func (p *pool) leaveIdleLocked(ss *session) {
	ss.idleTimer.Stop()
	ss.idleTimer = nil
	ss.idleGen++
}

// reap closes ss when its idle timer fires, unless the idle period the
// timer was set for has ended.
func (p *pool) reap(ss *session, gen int) {
	p.mu.Lock()
	i := slices.Index(p.idle, ss)
	if i < 0 || ss.idleGen != gen {
		p.mu.Unlock()
		return
	}
	p.idle = slices.Delete(p.idle, i, i+1)
	p.leaveIdleLocked(ss)
	p.retireLocked(ss, "idle timeout")
	hook := p.reaped
	p.mu.Unlock()
	if hook != nil {
		hook()
	}
}

// retireLocked closes a healthy session with a QUIT in the background, so
// that no Send waits for it; its slot is freed once it is closed.
func (p *pool) retireLocked(ss *session, reason string) {
	p.closing++
	go func() {
		p.logClose(ss, reason)
		ss.quit()
		p.mu.Lock()
		p.closing--
		if p.closing == 0 {
			p.drained.Broadcast()
		}
		p.freeSlotLocked(ss.lease)
		p.mu.Unlock()
	}()
}

func (p *pool) logClose(ss *session, reason string) {
	p.s.log.LogAttrs(context.Background(), slog.LevelDebug, "smtp connection closed",
		append(p.s.attrs(), slog.String("reason", reason), slog.Int("messages", ss.uses))...)
}

func (p *pool) freeSlot(lease *ConnSlot) {
	p.mu.Lock()
	p.freeSlotLocked(lease)
	p.mu.Unlock()
}

// freeSlotLocked frees the slot of a closed connection and gives its lease
// back (in the background), or passes both to the first waiting Send,
// which dials into the slot.
func (p *pool) freeSlotLocked(lease *ConnSlot) {
	if lease.lost() {
		// Not to be passed on: the next connection takes a new one.
		p.releaseLocked(lease)
		lease = nil
	}
	if len(p.waiters) > 0 {
		ch := p.waiters[0]
		p.waiters = p.waiters[1:]
		ch <- grant{lease: lease}
		return
	}
	p.open--
	if lease != nil {
		p.releaseLocked(lease)
	}
}

// releaseLocked gives lease back to the limiter in the background.
func (p *pool) releaseLocked(lease *ConnSlot) {
	p.returning++
	p.releasing.Go(func() {
		lease.Release()
		p.mu.Lock()
		p.returning--
		p.returned++
		p.mu.Unlock()
	})
}

// close closes the idle sessions, each with a QUIT, waits for every
// session being closed, and turns pooling off for good.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	for _, ss := range p.idle {
		p.leaveIdleLocked(ss)
		p.retireLocked(ss, "sender closed")
	}
	p.idle = nil
	for p.closing > 0 {
		p.drained.Wait()
	}
	p.mu.Unlock()
	p.releasing.Wait() // its goroutines take mu when done
}
