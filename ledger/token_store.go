package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is the token store: the refresh token of each account, the
// access tokens shared by every worker, and the lock that lets one process
// at a time refresh an account's token.
//
// Tokens are sealed with Options.TokenKeys (see Keyring) before they leave
// the process, with the Redis key and the hash field as associated data, so
// that a sealed value copied to another account's key does not open. Beside
// each sealed token the store keeps its digest (hex SHA-256), which lets the
// Lua scripts compare tokens without seeing them: compare-and-swap of a
// rotated refresh token, and invalidation of a rejected access token. Tokens
// are long random strings, so their digests reveal nothing.

// Fields of a token hash (refresh token) and of an access-token hash.
const (
	fieldToken          = "token"           // sealed token, both hashes
	fieldDigest         = "digest"          // hex SHA-256 of the token, both hashes
	fieldVersion        = "version"         // token hash: bumped by every change
	fieldExpiry         = "expiry"          // access: Unix ms, 0 for never
	fieldRefreshAt      = "refresh_at"      // access: Unix ms, 0 for never
	fieldRefreshVersion = "refresh_version" // access: token version it came from
)

// plainPrefix starts a token stored without encryption
// (Options.InsecurePlaintextTokens).
const plainPrefix = "plain:"

var (
	errEmptyToken = errors.New("empty refresh token")
	errEmptyOwner = errors.New("empty lock owner")
)

// digest returns the hex SHA-256 of a token; "" for "".
func digest(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// aad is the associated data binding a sealed token to where it is stored.
func aad(redisKey, field string) []byte { return []byte(redisKey + "\x00" + field) }

// checkTokenCrypto reports whether the store may read and write tokens.
func (s *Store) checkTokenCrypto() error {
	if s.opts.TokenKeys == nil && !s.opts.InsecurePlaintextTokens {
		return ErrNoTokenKeys
	}
	return nil
}

// seal prepares token for storage in field of redisKey.
func (s *Store) seal(redisKey, field, token string) string {
	if s.opts.TokenKeys != nil {
		return s.opts.TokenKeys.Seal([]byte(token), aad(redisKey, field))
	}
	return plainPrefix + token
}

// open reverses seal. Errors wrap ErrTokenUnreadable and never contain the
// value.
func (s *Store) open(redisKey, field, stored string) (string, error) {
	if plain, ok := strings.CutPrefix(stored, plainPrefix); ok {
		if !s.opts.InsecurePlaintextTokens {
			return "", fmt.Errorf("%w: stored in plaintext, which this store does not accept (store it again)", ErrTokenUnreadable)
		}
		return plain, nil
	}
	if s.opts.TokenKeys == nil {
		return "", fmt.Errorf("%w: sealed, and no token key is configured", ErrTokenUnreadable)
	}
	b, err := s.opts.TokenKeys.Open(stored, aad(redisKey, field))
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// SetRefreshToken stores the refresh token of a re-authorization of account
// and returns its version, which increases by one with every change of the
// stored token (this call and a successful CompareAndSwapRefreshToken).
//
// In the same Lua script, hence atomically, a re-authorization restarts the
// account's invalid_grant counters and returns to AccountOK an account held
// with HoldReauthorize whose recorded TokenVersion is older than the new
// version, and an auth-failing one. A HoldConfiguration hold and a throttle
// stay. Account therefore reports the resumed state as soon as this returns.
// The new version also retires every access token cached for the account
// (AccessToken no longer returns them), so every worker's next refresh
// starts from the new refresh token. One round trip. Errors never contain
// the token.
func (s *Store) SetRefreshToken(ctx context.Context, account, token string) (version int64, err error) {
	if account == "" {
		return 0, fmt.Errorf("set refresh token: %w", errEmptyAccount)
	}
	if token == "" {
		return 0, fmt.Errorf("set refresh token of account %s: %w", account, errEmptyToken)
	}
	if err := s.checkTokenCrypto(); err != nil {
		return 0, fmt.Errorf("set refresh token of account %s: %w", account, err)
	}
	key := s.tokenKey(account)
	version, err = setRefreshTokenScript.Run(ctx, s.rdb,
		[]string{key, s.accountKey(account), s.unhealthyKey()},
		s.seal(key, fieldToken, token), account, digest(token)).Int64()
	if err != nil {
		return 0, fmt.Errorf("set refresh token of account %s: %w", account, err)
	}
	return version, nil
}

// setRefreshTokenScript: KEYS[1] token hash, KEYS[2] account hash, KEYS[3]
// unhealthy set; ARGV[1] sealed token, ARGV[2] account id, ARGV[3] digest.
// Returns the new version.
var setRefreshTokenScript = redis.NewScript(`
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'digest', ARGV[3])
local h = redis.call('HMGET', KEYS[2], 'state', 'hold', 'token_version')
local state = h[1]
if (state == 'held' and h[2] == 'reauthorize' and tonumber(h[3] or '0') < v) or state == 'auth-failing' then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[2])
else
  redis.call('HDEL', KEYS[2], 'invalid_grants', 'first_invalid_grant')
end
return v
`)

// RefreshToken returns the stored refresh token of account and its version;
// "" and 0 when none is stored. An error wrapping ErrTokenUnreadable means a
// token is stored but cannot be opened (see Keyring.Open). One round trip.
func (s *Store) RefreshToken(ctx context.Context, account string) (token string, version int64, err error) {
	if account == "" {
		return "", 0, fmt.Errorf("load refresh token: %w", errEmptyAccount)
	}
	if err := s.checkTokenCrypto(); err != nil {
		return "", 0, fmt.Errorf("load refresh token of account %s: %w", account, err)
	}
	key := s.tokenKey(account)
	vals, err := s.rdb.HMGet(ctx, key, fieldToken, fieldVersion).Result()
	if err != nil {
		return "", 0, fmt.Errorf("load refresh token of account %s: %w", account, err)
	}
	sealed, _ := vals[0].(string)
	if sealed == "" {
		return "", 0, nil
	}
	if v, ok := vals[1].(string); ok {
		version, err = strconv.ParseInt(v, 10, 64)
		if err != nil {
			return "", 0, fmt.Errorf("load refresh token of account %s: bad version %q", account, v)
		}
	}
	token, err = s.open(key, fieldToken, sealed)
	if err != nil {
		return "", 0, fmt.Errorf("load refresh token of account %s: %w", account, err)
	}
	return token, version, nil
}

// CompareAndSwapRefreshToken stores newToken as account's refresh token only
// if the stored one is still oldToken, and reports whether it did. It is for
// providers that rotate the refresh token on every refresh (Microsoft): of
// several workers that refreshed with the same old token, exactly one stores
// its successor. An oldToken of "" matches an account with no token. Swapping a
// token for itself reports true and changes nothing; otherwise a swap
// increases the version (retiring the account's cached access tokens, see
// PutAccessToken). The comparison is of digests, inside one Lua script: one
// round trip. Errors never contain a token.
func (s *Store) CompareAndSwapRefreshToken(ctx context.Context, account, oldToken, newToken string) (swapped bool, err error) {
	if account == "" {
		return false, fmt.Errorf("swap refresh token: %w", errEmptyAccount)
	}
	if newToken == "" {
		return false, fmt.Errorf("swap refresh token of account %s: %w", account, errEmptyToken)
	}
	if err := s.checkTokenCrypto(); err != nil {
		return false, fmt.Errorf("swap refresh token of account %s: %w", account, err)
	}
	key := s.tokenKey(account)
	n, err := casRefreshTokenScript.Run(ctx, s.rdb, []string{key},
		digest(oldToken), digest(newToken), s.seal(key, fieldToken, newToken)).Int()
	if err != nil {
		return false, fmt.Errorf("swap refresh token of account %s: %w", account, err)
	}
	return n == 1, nil
}

// casRefreshTokenScript: KEYS[1] token hash; ARGV[1] old digest ("" for
// none), ARGV[2] new digest, ARGV[3] new sealed token. Returns 1 when the
// stored token is (now) the new one, 0 when it was not the old one. A token
// stored without a digest matches nothing.
var casRefreshTokenScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'digest', 'token')
local cur = h[1] or ''
if cur == '' and h[2] then
  cur = '?'
end
if cur ~= ARGV[1] then
  return 0
end
if cur ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'token', ARGV[3], 'digest', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'version', 1)
end
return 1
`)

// AccessToken returns the access token cached for account under key (the
// caller's name for what the token is good for: provider, tenant, client,
// mailbox), with its expiry and the time refreshAt after which it should be
// replaced (both zero for a token that never expires). It returns "" when
// nothing is cached, the entry expired, or it came from a refresh token that
// has since changed (a re-authorization, see PutAccessToken). An error
// wrapping ErrTokenUnreadable means an entry exists that cannot be opened;
// the caller may treat it as missing and replace it. One round trip (a Lua
// script).
func (s *Store) AccessToken(ctx context.Context, account, key string) (token string, expiry, refreshAt time.Time, err error) {
	if account == "" {
		return "", time.Time{}, time.Time{}, fmt.Errorf("load access token: %w", errEmptyAccount)
	}
	if err := s.checkTokenCrypto(); err != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("load access token of account %s: %w", account, err)
	}
	akey := s.accessKey(account, key)
	v, err := accessTokenScript.Run(ctx, s.rdb, []string{akey, s.tokenKey(account)}).StringSlice()
	if errors.Is(err, redis.Nil) {
		return "", time.Time{}, time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("load access token of account %s: %w", account, err)
	}
	if len(v) != 3 {
		return "", time.Time{}, time.Time{}, fmt.Errorf("load access token of account %s: unexpected script reply", account)
	}
	exp, err1 := strconv.ParseInt(v[1], 10, 64)
	at, err2 := strconv.ParseInt(v[2], 10, 64)
	if err1 != nil || err2 != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("load access token of account %s: bad times", account)
	}
	token, err = s.open(akey, fieldToken, v[0])
	if err != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("load access token of account %s: %w", account, err)
	}
	return token, fromMS(exp), fromMS(at), nil
}

// accessTokenScript: KEYS[1] access hash, KEYS[2] token hash. Returns the
// sealed token, expiry and refresh_at, or nil when absent or retired.
var accessTokenScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'token', 'expiry', 'refresh_at', 'refresh_version')
if not h[1] then
  return false
end
if h[4] and h[4] ~= (redis.call('HGET', KEYS[2], 'version') or '0') then
  return false
end
return {h[1], h[2] or '0', h[3] or '0'}
`)

// PutAccessToken caches token for account under key (see AccessToken) until
// expiry, to be replaced after refreshAt, and reports whether it did.
//
// refreshVersion is the version of the account's refresh token the access
// token was obtained with (RefreshToken's version, plus one after a
// successful CompareAndSwapRefreshToken to a new token), or a negative
// number for grants without a refresh token (client credentials, JWT). When
// the stored version differs, the refresh token changed meanwhile (a
// re-authorization): nothing is cached and PutAccessToken reports false.
// The entry stays valid only while the version stays the same, so
// SetRefreshToken retires it. A token already expired is not cached (true).
// The Redis key expires with the token. One round trip (a Lua script).
func (s *Store) PutAccessToken(ctx context.Context, account, key string, refreshVersion int64, token string, expiry, refreshAt time.Time) (ok bool, err error) {
	if account == "" {
		return false, fmt.Errorf("store access token: %w", errEmptyAccount)
	}
	if token == "" {
		return false, fmt.Errorf("store access token of account %s: empty access token", account)
	}
	if err := s.checkTokenCrypto(); err != nil {
		return false, fmt.Errorf("store access token of account %s: %w", account, err)
	}
	var px int64 // 0: no expiry
	if !expiry.IsZero() {
		px = expiry.Sub(s.now()).Milliseconds()
		if px <= 0 {
			return true, nil
		}
	}
	version := ""
	if refreshVersion >= 0 {
		version = strconv.FormatInt(refreshVersion, 10)
	}
	akey := s.accessKey(account, key)
	n, err := putAccessTokenScript.Run(ctx, s.rdb, []string{akey, s.tokenKey(account)},
		s.seal(akey, fieldToken, token), digest(token), ms(expiry), ms(refreshAt), version, px).Int()
	if err != nil {
		return false, fmt.Errorf("store access token of account %s: %w", account, err)
	}
	return n == 1, nil
}

// putAccessTokenScript: KEYS[1] access hash, KEYS[2] token hash; ARGV[1]
// sealed token, ARGV[2] digest, ARGV[3] expiry ms, ARGV[4] refresh_at ms,
// ARGV[5] refresh-token version ("" for none), ARGV[6] time to live in ms (0
// for none). Returns 0 when the refresh-token version differs.
var putAccessTokenScript = redis.NewScript(`
if ARGV[5] ~= '' and ARGV[5] ~= (redis.call('HGET', KEYS[2], 'version') or '0') then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'digest', ARGV[2], 'expiry', ARGV[3], 'refresh_at', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'refresh_version', ARGV[5])
end
if tonumber(ARGV[6]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return 1
`)

// DeleteAccessToken removes the access token cached for account under key if
// it is still token, typically because a server rejected it, and reports
// whether it did; a token that was already replaced stays. It needs no key:
// the comparison is of digests. One round trip (a Lua script).
func (s *Store) DeleteAccessToken(ctx context.Context, account, key, token string) (deleted bool, err error) {
	if account == "" {
		return false, fmt.Errorf("delete access token: %w", errEmptyAccount)
	}
	n, err := deleteAccessTokenScript.Run(ctx, s.rdb, []string{s.accessKey(account, key)}, digest(token)).Int()
	if err != nil {
		return false, fmt.Errorf("delete access token of account %s: %w", account, err)
	}
	return n == 1, nil
}

// deleteAccessTokenScript: KEYS[1] access hash; ARGV[1] digest.
var deleteAccessTokenScript = redis.NewScript(`
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// LockToken takes account's token lock for owner (a random string unique to
// this attempt) for ttl, and reports whether it did: false while another
// owner holds it. The holder refreshes the account's token and then calls
// UnlockToken; a holder that dies blocks others only until ttl passes (SET
// NX PX, one round trip). It does not wait: see WaitTokenLock.
func (s *Store) LockToken(ctx context.Context, account, owner string, ttl time.Duration) (acquired bool, err error) {
	if account == "" {
		return false, fmt.Errorf("lock token: %w", errEmptyAccount)
	}
	if owner == "" {
		return false, fmt.Errorf("lock token of account %s: %w", account, errEmptyOwner)
	}
	if ttl < time.Millisecond {
		return false, fmt.Errorf("lock token of account %s: ttl %v is less than a millisecond", account, ttl)
	}
	acquired, err = s.rdb.SetNX(ctx, s.tokenLockKey(account), owner, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("lock token of account %s: %w", account, err)
	}
	return acquired, nil
}

// UnlockToken releases account's token lock if owner still holds it, and
// reports whether it did (false when the lock expired, and perhaps passed to
// another owner). A release is announced to WaitTokenLock's callers. One
// round trip (a Lua script that checks the owner, deletes and publishes).
func (s *Store) UnlockToken(ctx context.Context, account, owner string) (released bool, err error) {
	if account == "" {
		return false, fmt.Errorf("unlock token: %w", errEmptyAccount)
	}
	if owner == "" {
		return false, fmt.Errorf("unlock token of account %s: %w", account, errEmptyOwner)
	}
	n, err := unlockTokenScript.Run(ctx, s.rdb, []string{s.tokenLockKey(account)}, owner, s.tokenChannel(account)).Int()
	if err != nil {
		return false, fmt.Errorf("unlock token of account %s: %w", account, err)
	}
	return n == 1, nil
}

// unlockTokenScript: KEYS[1] lock; ARGV[1] owner, ARGV[2] channel.
var unlockTokenScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'unlocked')
  return 1
end
return 0
`)

// WaitTokenLock returns when account's token lock is free: released
// (UnlockToken announces it through Redis pub/sub) or expired, or at once if
// nobody holds it. It subscribes before it looks, so no release is missed,
// and looks again at least every Options.TokenPollInterval and when the
// lock's time to live runs out, so a lost announcement or a dead holder
// delays it by no more than that. The wait is thus bounded by the lock's
// expiry, whoever holds it; it also ends with ctx (returning ctx's error).
//
// It takes a dedicated connection for the time of the wait. The lock may be
// taken again by the time the caller acts: call LockToken again.
func (s *Store) WaitTokenLock(ctx context.Context, account string) error {
	if account == "" {
		return fmt.Errorf("wait for token lock: %w", errEmptyAccount)
	}
	fail := func(err error) error { return fmt.Errorf("wait for token lock of account %s: %w", account, err) }
	ps := s.rdb.Subscribe(ctx, s.tokenChannel(account))
	defer ps.Close()
	// The confirmation: from here on, no release is missed.
	if _, err := ps.Receive(ctx); err != nil {
		return fail(err)
	}
	lock := s.tokenLockKey(account)
	for {
		ttl, err := s.rdb.PTTL(ctx, lock).Result()
		if err != nil {
			return fail(err)
		}
		if ttl == -2 { // no such key: free
			return nil
		}
		wait := s.opts.TokenPollInterval
		if ttl > 0 {
			wait = min(wait, ttl+time.Millisecond)
		}
		if dl, ok := ctx.Deadline(); ok {
			wait = max(min(wait, time.Until(dl)), time.Millisecond)
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		_, err = ps.ReceiveTimeout(ctx, wait)
		var ne net.Error
		switch {
		case err == nil, errors.As(err, &ne) && ne.Timeout():
			// A release, or time to look again.
		case ctx.Err() != nil:
			return fail(ctx.Err())
		default:
			// The subscription broke; it reconnects on the next receive.
			// Look at the lock after a poll interval meanwhile.
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return fail(ctx.Err())
			case <-t.C:
			}
		}
	}
}

// ClaimTokenKeepAlive claims the keep-alive of account's refresh token for
// period, and reports whether it did: of all the workers that call it, one
// per period gets true (SET NX PX, one round trip). The winner uses the
// refresh token (see accounts.RegistryOptions.KeepAlive) so that an idle
// account's token does not expire from disuse.
func (s *Store) ClaimTokenKeepAlive(ctx context.Context, account string, period time.Duration) (claimed bool, err error) {
	if account == "" {
		return false, fmt.Errorf("claim token keep-alive: %w", errEmptyAccount)
	}
	if period < time.Millisecond {
		return false, fmt.Errorf("claim token keep-alive of account %s: period %v is less than a millisecond", account, period)
	}
	claimed, err = s.rdb.SetNX(ctx, s.keepAliveKey(account), "1", period).Result()
	if err != nil {
		return false, fmt.Errorf("claim token keep-alive of account %s: %w", account, err)
	}
	return claimed, nil
}
