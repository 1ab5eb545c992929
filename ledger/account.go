package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// AccountState is the health of a sending account, shared by every worker.
type AccountState string

// The account states.
const (
	// AccountOK: mail flows. An account the store knows nothing about is OK.
	AccountOK AccountState = "ok"
	// AccountThrottled: the provider limits the account; mail waits until
	// AccountStatus.Until.
	AccountThrottled AccountState = "throttled"
	// AccountAuthFailing: authentication failed; mail waits until
	// AccountStatus.Until, a pause that doubles with each round of
	// failures (Postfix's smtp_sasl_auth_soft_bounce).
	AccountAuthFailing AccountState = "auth-failing"
	// AccountHeld: nothing changes until someone acts (AccountStatus.Hold
	// says what); mail waits until Resume, or SetRefreshToken for a
	// HoldReauthorize hold.
	AccountHeld AccountState = "held"
)

// Kinds of hold, the values of AccountStatus.Hold. They are the values of
// smtpoauth.HoldReauthorize and smtpoauth.HoldConfiguration.
const (
	// HoldReauthorize: the refresh token is dead; run the authorization
	// flow for the account (SetRefreshToken then resumes it).
	HoldReauthorize = "reauthorize"
	// HoldConfiguration: the account's settings, the OAuth client or the
	// tenant are wrong; fix them, then Resume.
	HoldConfiguration = "configuration"
)

// Defaults of InvalidGrant's threshold and window.
const (
	// DefaultInvalidGrantThreshold is how many consecutive invalid_grant
	// refusals InvalidGrant needs before it holds an account.
	DefaultInvalidGrantThreshold = 3
	// DefaultInvalidGrantWindow is how long invalid_grant refusals must
	// have persisted before InvalidGrant holds an account.
	DefaultInvalidGrantWindow = 30 * time.Minute
)

// AccountStatus is the recorded health of one account.
type AccountStatus struct {
	// Account is the account id.
	Account string
	// State is the account's health; AccountOK for an unknown account.
	State AccountState
	// Until is when mail may flow again, for AccountThrottled and
	// AccountAuthFailing. A pause whose Until has passed keeps its State
	// until Succeeded clears it; Usable tells whether mail may flow.
	Until time.Time
	// Hold is HoldReauthorize or HoldConfiguration for AccountHeld.
	Hold string
	// Reason is operator-readable: why the account left AccountOK. It
	// never holds a token.
	Reason string
	// Since is when the account entered State.
	Since time.Time
	// AuthFailures counts consecutive authentication failures (soft
	// bounces and invalid_grant refusals) since the last success.
	AuthFailures int
	// InvalidGrants counts consecutive invalid_grant refusals since the
	// last success or re-authorization; FirstInvalidGrant is when the first
	// of them was recorded.
	InvalidGrants     int
	FirstInvalidGrant time.Time
	// TokenVersion is the refresh-token version stored when the account
	// was held (see SetRefreshToken).
	TokenVersion int64
}

// Fields of an account hash; see the package documentation.
const (
	fieldState             = "state"
	fieldUntil             = "until"
	fieldHold              = "hold"
	fieldReason            = "reason"
	fieldSince             = "since"
	fieldAuthFailures      = "auth_failures"
	fieldAuthStep          = "auth_step"
	fieldInvalidGrants     = "invalid_grants"
	fieldFirstInvalidGrant = "first_invalid_grant"
	fieldTokenVersion      = "token_version"
)

var errEmptyAccount = errors.New("empty account id")

// Account returns the health of account id in one round trip (HGETALL). An
// account with no record is AccountOK.
func (s *Store) Account(ctx context.Context, id string) (AccountStatus, error) {
	if id == "" {
		return AccountStatus{}, fmt.Errorf("load account: %w", errEmptyAccount)
	}
	h, err := s.rdb.HGetAll(ctx, s.accountKey(id)).Result()
	if err != nil {
		return AccountStatus{}, fmt.Errorf("load account %s: %w", id, err)
	}
	return decodeAccount(id, h), nil
}

func decodeAccount(id string, h map[string]string) AccountStatus {
	st := AccountStatus{Account: id, State: AccountState(h[fieldState])}
	if st.State == "" {
		st.State = AccountOK
	}
	num := func(f string) int64 {
		n, _ := strconv.ParseInt(h[f], 10, 64)
		return n
	}
	st.Until = fromMS(num(fieldUntil))
	st.Hold = h[fieldHold]
	st.Reason = h[fieldReason]
	st.Since = fromMS(num(fieldSince))
	st.AuthFailures = int(num(fieldAuthFailures))
	st.InvalidGrants = int(num(fieldInvalidGrants))
	st.FirstInvalidGrant = fromMS(num(fieldFirstInvalidGrant))
	st.TokenVersion = num(fieldTokenVersion)
	return st
}

// decodeAccountReply decodes the flat field/value array a script returns
// (HGETALL inside Lua).
func decodeAccountReply(id string, v any) (AccountStatus, error) {
	arr, ok := v.([]any)
	if !ok || len(arr)%2 != 0 {
		return AccountStatus{}, fmt.Errorf("unexpected script reply %T", v)
	}
	h := make(map[string]string, len(arr)/2)
	for i := 0; i < len(arr); i += 2 {
		k, _ := arr[i].(string)
		val, _ := arr[i+1].(string)
		h[k] = val
	}
	return decodeAccount(id, h), nil
}

// Usable reports whether the account with status st may send at now. When it
// may not, retryAt is when it may: Until for a throttled or auth-failing
// account, and the zero time for a held one, which waits for an operator (the
// caller picks how long to defer its mail). Usable does no I/O.
func (s *Store) Usable(st AccountStatus, now time.Time) (ok bool, retryAt time.Time) {
	if st.State == AccountHeld {
		return false, time.Time{}
	}
	if now.Before(st.Until) {
		return false, st.Until
	}
	return true, time.Time{}
}

// Throttle pauses the account's mail until until, because the provider limits
// it. It extends a pause and never shortens one: a call whose until is not
// later than the current pause's end, or is not in the future, changes
// nothing. A held account stays held. One round trip (a Lua script).
func (s *Store) Throttle(ctx context.Context, id string, until time.Time, reason string) error {
	if id == "" {
		return fmt.Errorf("throttle account: %w", errEmptyAccount)
	}
	err := throttleScript.Run(ctx, s.rdb, []string{s.accountKey(id), s.unhealthyKey()},
		ms(s.now()), ms(until), reason, id).Err()
	if err != nil {
		return fmt.Errorf("throttle account %s: %w", id, err)
	}
	return nil
}

// throttleScript: KEYS[1] account hash, KEYS[2] unhealthy set; ARGV[1] now
// ms, ARGV[2] until ms, ARGV[3] reason, ARGV[4] account id.
var throttleScript = redis.NewScript(`
local now, untl = tonumber(ARGV[1]), tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'state', 'until')
local state, cur = h[1] or 'ok', tonumber(h[2] or '0')
if state == 'held' or untl <= now or untl <= cur then
  return 0
end
if state ~= 'throttled' then
  redis.call('HSET', KEYS[1], 'since', now)
end
redis.call('HSET', KEYS[1], 'state', 'throttled', 'until', untl, 'reason', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
`)

// AuthFailed records an authentication failure (a soft bounce: the token was
// refused even after a refresh) and returns the account's new status, in one
// round trip (a Lua script).
//
// It counts every failure in AuthFailures. When the account's mail is not
// paused already, it pauses it: State becomes AccountAuthFailing and Until
// now + the backoff, which starts at Options.AuthBackoff (1m) and doubles with
// each consecutive pause (2m, 4m, …) up to Options.MaxAuthBackoff (30m).
// Failures arriving while a pause runs (other workers' attempts that started
// before it) are counted but neither extend the pause nor advance the
// backoff, so a burst of concurrent failures is one round, not many. A held
// account stays held.
func (s *Store) AuthFailed(ctx context.Context, id, reason string) (AccountStatus, error) {
	if id == "" {
		return AccountStatus{}, fmt.Errorf("record auth failure: %w", errEmptyAccount)
	}
	st, err := s.authFailed(ctx, id, reason, false, 0, 0)
	if err != nil {
		return AccountStatus{}, fmt.Errorf("record auth failure of account %s: %w", id, err)
	}
	return st, nil
}

// InvalidGrant records that the token endpoint refused the account's refresh
// token with invalid_grant, and returns the account's new status, in one round
// trip (a Lua script).
//
// invalid_grant usually means the refresh token is dead, but not always, so a
// single refusal never holds the account. InvalidGrant counts consecutive
// refusals in InvalidGrants; once there are at least threshold of them AND
// the first is at least window old, it holds the account with
// HoldReauthorize, recording the current refresh-token version. Until then it
// behaves like AuthFailed: a short, doubling pause. A threshold below 1 means
// DefaultInvalidGrantThreshold, a window of zero or less
// DefaultInvalidGrantWindow. The counters restart after Succeeded, Resume
// and SetRefreshToken.
func (s *Store) InvalidGrant(ctx context.Context, id, reason string, threshold int, window time.Duration) (AccountStatus, error) {
	if id == "" {
		return AccountStatus{}, fmt.Errorf("record invalid grant: %w", errEmptyAccount)
	}
	if threshold < 1 {
		threshold = DefaultInvalidGrantThreshold
	}
	window = positiveOr(window, DefaultInvalidGrantWindow)
	st, err := s.authFailed(ctx, id, reason, true, threshold, window)
	if err != nil {
		return AccountStatus{}, fmt.Errorf("record invalid grant of account %s: %w", id, err)
	}
	return st, nil
}

func (s *Store) authFailed(ctx context.Context, id, reason string, grant bool, threshold int, window time.Duration) (AccountStatus, error) {
	mode := "auth"
	if grant {
		mode = "grant"
	}
	v, err := authFailedScript.Run(ctx, s.rdb,
		[]string{s.accountKey(id), s.unhealthyKey(), s.tokenKey(id)},
		ms(s.now()), reason, s.opts.AuthBackoff.Milliseconds(), s.opts.MaxAuthBackoff.Milliseconds(),
		mode, threshold, window.Milliseconds(), id).Result()
	if err != nil {
		return AccountStatus{}, err
	}
	return decodeAccountReply(id, v)
}

// authFailedScript: KEYS[1] account hash, KEYS[2] unhealthy set, KEYS[3]
// token hash; ARGV[1] now ms, ARGV[2] reason, ARGV[3] first backoff ms,
// ARGV[4] max backoff ms, ARGV[5] "auth" or "grant", ARGV[6] invalid_grant
// threshold, ARGV[7] invalid_grant window ms, ARGV[8] account id. Returns the
// account hash (HGETALL).
var authFailedScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'auth_step', 'first_invalid_grant')
local state, untl = h[1] or 'ok', tonumber(h[2] or '0')
local step = tonumber(h[3] or '0')
redis.call('HINCRBY', KEYS[1], 'auth_failures', 1)
if ARGV[5] == 'grant' then
  local n = redis.call('HINCRBY', KEYS[1], 'invalid_grants', 1)
  local first = tonumber(h[4] or '0')
  if first == 0 then
    first = now
    redis.call('HSET', KEYS[1], 'first_invalid_grant', now)
  end
  if state ~= 'held' and n >= tonumber(ARGV[6]) and now - first >= tonumber(ARGV[7]) then
    local ver = redis.call('HGET', KEYS[3], 'version') or '0'
    redis.call('HSET', KEYS[1], 'state', 'held', 'hold', 'reauthorize', 'reason', ARGV[2],
      'since', now, 'token_version', ver)
    redis.call('HDEL', KEYS[1], 'until')
    redis.call('SADD', KEYS[2], ARGV[8])
    return redis.call('HGETALL', KEYS[1])
  end
end
if state == 'held' or now < untl then
  return redis.call('HGETALL', KEYS[1])
end
local base, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local d = base
for i = 2, step + 1 do
  d = d * 2
  if d >= cap then break end
end
if d >= cap then
  d = cap
else
  step = step + 1
end
if state ~= 'auth-failing' then
  redis.call('HSET', KEYS[1], 'since', now)
end
redis.call('HSET', KEYS[1], 'state', 'auth-failing', 'until', now + d, 'reason', ARGV[2], 'auth_step', step)
redis.call('SADD', KEYS[2], ARGV[8])
return redis.call('HGETALL', KEYS[1])
`)

// Hold holds the account's mail until someone acts: kind is HoldReauthorize
// or HoldConfiguration, reason says why for the operator. It records the
// current refresh-token version in TokenVersion: SetRefreshToken resumes a
// HoldReauthorize hold only with a newer token. Throttle, AuthFailed,
// InvalidGrant and Succeeded leave a held account held. One round trip (a
// Lua script).
func (s *Store) Hold(ctx context.Context, id, kind, reason string) error {
	if id == "" {
		return fmt.Errorf("hold account: %w", errEmptyAccount)
	}
	if kind != HoldReauthorize && kind != HoldConfiguration {
		return fmt.Errorf("hold account %s: unknown kind %q", id, kind)
	}
	err := holdScript.Run(ctx, s.rdb, []string{s.accountKey(id), s.unhealthyKey(), s.tokenKey(id)},
		ms(s.now()), kind, reason, id).Err()
	if err != nil {
		return fmt.Errorf("hold account %s: %w", id, err)
	}
	return nil
}

// holdScript: KEYS[1] account hash, KEYS[2] unhealthy set, KEYS[3] token
// hash; ARGV[1] now ms, ARGV[2] kind, ARGV[3] reason, ARGV[4] account id.
var holdScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'state') ~= 'held' then
  redis.call('HSET', KEYS[1], 'since', ARGV[1])
end
local ver = redis.call('HGET', KEYS[3], 'version') or '0'
redis.call('HSET', KEYS[1], 'state', 'held', 'hold', ARGV[2], 'reason', ARGV[3], 'token_version', ver)
redis.call('HDEL', KEYS[1], 'until')
redis.call('SADD', KEYS[2], ARGV[4])
return 1
`)

// Resume returns the account to AccountOK and clears its counters, whatever
// its state: an operator fixed what held it. One round trip.
func (s *Store) Resume(ctx context.Context, id string) error {
	if id == "" {
		return fmt.Errorf("resume account: %w", errEmptyAccount)
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.accountKey(id))
		p.SRem(ctx, s.unhealthyKey(), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("resume account %s: %w", id, err)
	}
	return nil
}

// Succeeded records that a send through the account worked. It returns an
// auth-failing account, or a throttled one whose pause has ended, to
// AccountOK and clears the failure counters. A success proves nothing about a
// provider's limit or an operator's hold, so a throttled account whose pause
// still runs stays throttled (with its failure counters cleared), and a held
// account stays held. Call it only when the status read before sending was
// not AccountOK; it takes one round trip (a Lua script).
func (s *Store) Succeeded(ctx context.Context, id string) error {
	if id == "" {
		return fmt.Errorf("record success: %w", errEmptyAccount)
	}
	err := succeededScript.Run(ctx, s.rdb, []string{s.accountKey(id), s.unhealthyKey()},
		ms(s.now()), id).Err()
	if err != nil {
		return fmt.Errorf("record success of account %s: %w", id, err)
	}
	return nil
}

// succeededScript: KEYS[1] account hash, KEYS[2] unhealthy set; ARGV[1] now
// ms, ARGV[2] account id.
var succeededScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'state', 'until')
local state, untl = h[1], tonumber(h[2] or '0')
if state == 'held' then
  return 0
end
if state == 'throttled' and tonumber(ARGV[1]) < untl then
  redis.call('HDEL', KEYS[1], 'auth_failures', 'auth_step', 'invalid_grants', 'first_invalid_grant')
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
`)

// Accounts returns the status of every account whose recorded state is not
// AccountOK (including pauses that have ended but were not yet cleared by
// Succeeded), sorted by account id, in one round trip (a Lua script over the
// index set of unhealthy accounts).
func (s *Store) Accounts(ctx context.Context) ([]AccountStatus, error) {
	v, err := accountsScript.Run(ctx, s.rdb, []string{s.unhealthyKey()}, s.accountKeyPrefix()).Result()
	if err != nil {
		return nil, fmt.Errorf("list accounts: %w", err)
	}
	arr, ok := v.([]any)
	if !ok || len(arr)%2 != 0 {
		return nil, fmt.Errorf("list accounts: unexpected script reply %T", v)
	}
	var out []AccountStatus
	for i := 0; i < len(arr); i += 2 {
		id, _ := arr[i].(string)
		st, err := decodeAccountReply(id, arr[i+1])
		if err != nil {
			return nil, fmt.Errorf("list accounts: %w", err)
		}
		if st.State != AccountOK {
			out = append(out, st)
		}
	}
	slices.SortFunc(out, func(a, b AccountStatus) int { return cmp.Compare(a.Account, b.Account) })
	return out, nil
}

// accountsScript: KEYS[1] unhealthy set; ARGV[1] account key prefix. Returns
// id, HGETALL pairs. The account keys share KEYS[1]'s hash slot.
var accountsScript = redis.NewScript(`
local ids = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. id)
end
return out
`)
