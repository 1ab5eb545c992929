package ledger

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Cluster-wide limits of an account: a semaphore of SMTP sessions whose slots
// are leases, and sliding-window rates (messages per minute, recipients per
// day). Every worker on the same Redis shares them.

// ErrSessionsFull is returned by AcquireSession when every session slot of
// the account is held.
var ErrSessionsFull = errors.New("every session slot is taken")

// ErrLeaseLost is returned by Lease.Renew when the lease expired, another
// holder took its slot and none is free, or the lease was released.
var ErrLeaseLost = errors.New("session lease lost")

// ErrExceedsLimit is returned by Allow when a Use asks for more than its
// Rate's Limit: it can never be allowed, however long it waits.
var ErrExceedsLimit = errors.New("use exceeds the limit")

// AcquireSession takes one of the limit session slots of account, for
// Options.SessionLease (default DefaultSessionLease), in one round trip (a Lua
// script that drops expired leases, then adds this one if fewer than limit
// remain). When every slot is held it returns ErrSessionsFull; the caller
// looks again later. A limit below 1 is an error.
//
// The holder keeps the slot with Lease.Renew (at least once per lease for a
// long send) and gives it back with Lease.Release. A holder that dies frees
// its slot when its lease expires. Lease expiry is judged by the workers'
// clocks (Options.NowFunc), which must agree to well within a lease.
func (s *Store) AcquireSession(ctx context.Context, account string, limit int) (*Lease, error) {
	if account == "" {
		return nil, fmt.Errorf("acquire session: %w", errEmptyAccount)
	}
	if limit < 1 {
		return nil, fmt.Errorf("acquire session of account %s: limit %d is below 1", account, limit)
	}
	l := &Lease{s: s, account: account, id: uuid.NewString(), limit: limit}
	ok, err := l.take(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire session of account %s: %w", account, err)
	}
	if !ok {
		return nil, fmt.Errorf("acquire session of account %s: %w (limit %d)", account, ErrSessionsFull, limit)
	}
	return l, nil
}

// Sessions returns how many session slots of account are held by unexpired
// leases, in one round trip.
func (s *Store) Sessions(ctx context.Context, account string) (int, error) {
	if account == "" {
		return 0, fmt.Errorf("count sessions: %w", errEmptyAccount)
	}
	n, err := s.rdb.ZCount(ctx, s.sessionsKey(account), fmt.Sprintf("(%d", ms(s.now())), "+inf").Result()
	if err != nil {
		return 0, fmt.Errorf("count sessions of account %s: %w", account, err)
	}
	return int(n), nil
}

// Lease is a session slot of an account held by one sender, from
// AcquireSession. Its methods are safe for concurrent use.
type Lease struct {
	s       *Store
	account string
	id      string
	limit   int

	mu       sync.Mutex
	expiry   time.Time
	released bool
}

// Account returns the account whose slot the lease holds.
func (l *Lease) Account() string { return l.account }

// ID returns the lease's random id, its member in the sessions sorted set.
func (l *Lease) ID() string { return l.id }

// Duration returns how long the lease lasts from its last renewal
// (Options.SessionLease): renew well within it.
func (l *Lease) Duration() time.Duration { return l.s.opts.SessionLease }

// Expiry returns when the lease ends unless renewed.
func (l *Lease) Expiry() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expiry
}

// Renew extends the lease to Options.SessionLease from now, in one round
// trip. If the lease had expired and its slot was taken, Renew takes a free
// slot if there is one, or returns ErrLeaseLost. After Release it returns
// ErrLeaseLost.
func (l *Lease) Renew(ctx context.Context) error {
	l.mu.Lock()
	released := l.released
	l.mu.Unlock()
	if released {
		return fmt.Errorf("renew session lease of account %s: %w (released)", l.account, ErrLeaseLost)
	}
	ok, err := l.take(ctx)
	if err != nil {
		return fmt.Errorf("renew session lease of account %s: %w", l.account, err)
	}
	if !ok {
		return fmt.Errorf("renew session lease of account %s: %w", l.account, ErrLeaseLost)
	}
	return nil
}

// Release gives the slot back, in one round trip. Releasing twice, or a lease
// that expired, is harmless.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	l.released = true
	l.mu.Unlock()
	if err := l.s.rdb.ZRem(ctx, l.s.sessionsKey(l.account), l.id).Err(); err != nil {
		return fmt.Errorf("release session lease of account %s: %w", l.account, err)
	}
	return nil
}

// take runs acquireSessionScript for the lease: it adds or extends the
// lease if the lease is held or a slot is free.
func (l *Lease) take(ctx context.Context) (bool, error) {
	now := l.s.now()
	expiry := now.Add(l.s.opts.SessionLease)
	n, err := acquireSessionScript.Run(ctx, l.s.rdb, []string{l.s.sessionsKey(l.account)},
		ms(now), ms(expiry), l.id, l.limit).Int()
	if err != nil {
		return false, err
	}
	if n == 1 {
		l.mu.Lock()
		l.expiry = expiry
		l.mu.Unlock()
	}
	return n == 1, nil
}

// acquireSessionScript: KEYS[1] sessions sorted set (holder id scored by
// lease expiry, Unix ms); ARGV[1] now ms, ARGV[2] expiry ms, ARGV[3] holder
// id, ARGV[4] limit. Returns 1 when the holder has the slot until ARGV[2], 0
// when every slot is taken. The key expires with its last lease.
var acquireSessionScript = redis.NewScript(`
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(last[2]) - now, 1))
return 1
`)

// Rate limits how much of something an account may use in any window of
// time: at most Limit in any Window (a sliding window, exact to the
// millisecond). Rates with the same Name share a counter.
type Rate struct {
	// Name names the counter under the account, such as
	// "messages_per_minute": 1 to 64 of a-z, 0-9 and '_'.
	Name string
	// Limit is the most that may be used in any Window; at least 1.
	Limit int64
	// Window is the length of the sliding window; at least a millisecond.
	Window time.Duration
}

// String returns "messages_per_minute (30 per 1m0s)".
func (r Rate) String() string {
	return fmt.Sprintf("%s (%d per %s)", r.Name, r.Limit, r.Window)
}

var validRateName = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)

func (r Rate) validate() error {
	switch {
	case !validRateName.MatchString(r.Name):
		return fmt.Errorf("rate name %q must be 1 to 64 of a-z, 0-9 and '_'", r.Name)
	case r.Limit < 1:
		return fmt.Errorf("rate %s: limit %d is below 1", r.Name, r.Limit)
	case r.Window < time.Millisecond:
		return fmt.Errorf("rate %s: window %s is below a millisecond", r.Name, r.Window)
	}
	return nil
}

// Use is how much of a Rate one operation uses: 1 message, or the number of
// recipients of a message.
type Use struct {
	Rate Rate
	// N is the amount used; zero uses nothing (and is always allowed).
	N int64
}

// Allowance is Allow's answer.
type Allowance struct {
	// Allowed is true when every Use fit and was counted.
	Allowed bool
	// RetryAfter, when not Allowed, is how long until every Use fits, if
	// nothing else is used meanwhile: when the oldest uses that stand in
	// the way leave their windows. Zero when Allowed.
	RetryAfter time.Duration
	// Refused, when not Allowed, is the rate that needs the longest wait.
	Refused Rate
	// ID identifies the counted uses when Allowed, for Refund.
	ID string
}

// Allow counts uses of an account's rates if all of them fit, in one round
// trip (a Lua script): either every Use is counted or none is. When one does
// not fit, Allowed is false and RetryAfter says when it will. A Use whose N
// exceeds its Limit returns an error wrapping ErrExceedsLimit. With no uses it
// allows at once without I/O.
//
// Each rate is a sorted set of the uses in its window (scored by time in
// Unix ms, by the store's clock) beside their running total; both expire one
// Window after the last use, so an idle account keeps nothing.
func (s *Store) Allow(ctx context.Context, account string, uses ...Use) (Allowance, error) {
	if account == "" {
		return Allowance{}, fmt.Errorf("allow: %w", errEmptyAccount)
	}
	var keys []string
	id := uuid.NewString()
	args := []any{ms(s.now()), id}
	var rates []Rate
	seen := make(map[string]bool, len(uses))
	for _, u := range uses {
		if err := u.Rate.validate(); err != nil {
			return Allowance{}, fmt.Errorf("allow account %s: %w", account, err)
		}
		if seen[u.Rate.Name] {
			return Allowance{}, fmt.Errorf("allow account %s: rate %s used twice in one call", account, u.Rate.Name)
		}
		seen[u.Rate.Name] = true
		if u.N < 0 {
			return Allowance{}, fmt.Errorf("allow account %s: rate %s: negative use %d", account, u.Rate.Name, u.N)
		}
		if u.N > u.Rate.Limit {
			return Allowance{}, fmt.Errorf("allow account %s: %d exceeds %s: %w", account, u.N, u.Rate, ErrExceedsLimit)
		}
		if u.N == 0 {
			continue
		}
		keys = append(keys, s.rateKey(account, u.Rate.Name), s.rateKey(account, u.Rate.Name)+":total")
		args = append(args, u.Rate.Limit, u.Rate.Window.Milliseconds(), u.N)
		rates = append(rates, u.Rate)
	}
	if len(rates) == 0 {
		return Allowance{Allowed: true}, nil
	}
	v, err := allowScript.Run(ctx, s.rdb, keys, args...).Int64Slice()
	if err != nil {
		return Allowance{}, fmt.Errorf("allow account %s: %w", account, err)
	}
	if len(v) != 3 {
		return Allowance{}, fmt.Errorf("allow account %s: unexpected script reply %v", account, v)
	}
	if v[0] == 1 {
		return Allowance{Allowed: true, ID: id}, nil
	}
	i := int(v[2]) - 1
	if i < 0 || i >= len(rates) {
		return Allowance{}, fmt.Errorf("allow account %s: unexpected script reply %v", account, v)
	}
	return Allowance{RetryAfter: time.Duration(v[1]) * time.Millisecond, Refused: rates[i]}, nil
}

// Refund takes back the uses an Allow counted (a.ID; the same uses) when
// the operation did not happen after all, in one round trip. Refunding
// twice, an Allowance that was not allowed or uses that left their window
// already is harmless.
func (s *Store) Refund(ctx context.Context, account string, a Allowance, uses ...Use) error {
	if !a.Allowed || a.ID == "" {
		return nil
	}
	var keys []string
	var args []any
	for _, u := range uses {
		if u.N <= 0 {
			continue
		}
		keys = append(keys, s.rateKey(account, u.Rate.Name), s.rateKey(account, u.Rate.Name)+":total")
		args = append(args, fmt.Sprintf("%d:%s", u.N, a.ID), u.N)
	}
	if len(keys) == 0 {
		return nil
	}
	if err := refundScript.Run(ctx, s.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("refund account %s: %w", account, err)
	}
	return nil
}

// refundScript: for rate i, KEYS[2i-1] its log and KEYS[2i] its total;
// ARGV[2i-1] the member to remove and ARGV[2i] its amount, taken off the
// total only if the member was still in the log.
var refundScript = redis.NewScript(`
for i = 1, #KEYS / 2 do
  if redis.call('ZREM', KEYS[2*i-1], ARGV[2*i-1]) == 1 and redis.call('EXISTS', KEYS[2*i]) == 1 then
    redis.call('DECRBY', KEYS[2*i], ARGV[2*i])
  end
end
return 0
`)

// Used returns how much of rate r account used in the window that ends now,
// in one round trip; it changes nothing.
func (s *Store) Used(ctx context.Context, account string, r Rate) (int64, error) {
	if account == "" {
		return 0, fmt.Errorf("rate usage: %w", errEmptyAccount)
	}
	if err := r.validate(); err != nil {
		return 0, fmt.Errorf("rate usage of account %s: %w", account, err)
	}
	now := ms(s.now())
	n, err := usedScript.Run(ctx, s.rdb, []string{s.rateKey(account, r.Name)}, now-r.Window.Milliseconds()).Int64()
	if err != nil {
		return 0, fmt.Errorf("rate usage of account %s: %w", account, err)
	}
	return n, nil
}

// allowScript checks and counts the uses of one or more rates, all or
// nothing. For rate i: KEYS[2i-1] its log, a sorted set of "<n>:<id>" scored
// by Unix ms; KEYS[2i] the total of the log; ARGV[3i], ARGV[3i+1], ARGV[3i+2]
// its limit, window (ms) and the use n. ARGV[1] is now (ms), ARGV[2] a unique
// id of this call. A use at time t counts while now - t < window.
//
// Returns {1, 0, 0} when allowed and counted, or {0, wait ms, i} with the
// rate i that needs the longest wait. Expired uses are dropped from the log
// and the total as a side effect either way.
var allowScript = redis.NewScript(`
local now, id = tonumber(ARGV[1]), ARGV[2]
local function amount(member)
  return tonumber(string.match(member, '^(%d+):'))
end
local totals = {}
local wait, refused = 0, 0
for i = 1, #KEYS / 2 do
  local log, tot = KEYS[2*i-1], KEYS[2*i]
  local limit, window, n = tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2])
  local horizon = now - window
  local total = tonumber(redis.call('GET', tot) or '')
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', horizon)
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', horizon)
  end
  if total == nil or redis.call('EXISTS', log) == 0 then
    -- First use, or the total is missing: count the log.
    total = 0
    for _, m in ipairs(redis.call('ZRANGE', log, 0, -1)) do
      total = total + amount(m)
    end
  else
    for _, m in ipairs(old) do
      total = total - amount(m)
    end
  end
  if #old > 0 then
    -- The total shares the log's time to live.
    local ttl = redis.call('PTTL', log)
    if ttl > 0 then
      redis.call('SET', tot, total, 'PX', ttl)
    else
      redis.call('DEL', tot)
    end
  end
  totals[i] = total
  if total + n > limit then
    -- Wait until the oldest uses that stand in the way leave the window:
    -- each is at least 1, so at most need of them.
    local need = total + n - limit
    local w = window
    local acc = 0
    local entries = redis.call('ZRANGE', log, 0, need - 1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      acc = acc + amount(entries[j])
      if acc >= need then
        w = tonumber(entries[j+1]) + window - now
        break
      end
    end
    if w > wait then
      wait, refused = w, i
    end
  end
end
if refused > 0 then
  return {0, math.max(wait, 1), refused}
end
for i = 1, #KEYS / 2 do
  local log, tot = KEYS[2*i-1], KEYS[2*i]
  local window, n = tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2])
  redis.call('ZADD', log, now, n .. ':' .. id)
  redis.call('SET', tot, totals[i] + n, 'PX', window)
  redis.call('PEXPIRE', log, window)
end
return {1, 0, 0}
`)

// usedScript: KEYS[1] a rate's log; ARGV[1] the horizon (ms). Returns the
// sum of the uses after the horizon.
var usedScript = redis.NewScript(`
local total = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  total = total + tonumber(string.match(m, '^(%d+):'))
end
return total
`)
