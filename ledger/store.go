package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of Options.
const (
	// DefaultPrefix starts every key the Store writes.
	DefaultPrefix = "sendq:"
	// DefaultDeliveryTTL is how long delivery state and receipts are kept
	// after their last update: the five days a message may wait in the
	// queue plus two days to read its result.
	DefaultDeliveryTTL = 7 * 24 * time.Hour
	// DefaultAuthBackoff is the first pause of an account whose
	// authentication failed; each further pause doubles it.
	DefaultAuthBackoff = time.Minute
	// DefaultMaxAuthBackoff caps the doubling of DefaultAuthBackoff.
	DefaultMaxAuthBackoff = 30 * time.Minute
	// DefaultTokenPollInterval is how often WaitTokenLock looks at the
	// token lock when no release is announced.
	DefaultTokenPollInterval = 500 * time.Millisecond
	// DefaultSessionLease is how long a session slot taken with
	// AcquireSession is held unless renewed: how long a dead holder keeps
	// its slot.
	DefaultSessionLease = 30 * time.Second
)

// ErrNotFound is returned by DeadLetter and RemoveDeadLetter when there is no
// dead letter with the given id.
var ErrNotFound = errors.New("not found")

// Options configures a Store. The zero value is ready to use: a zero field
// means its default.
type Options struct {
	// Prefix starts every key. Default DefaultPrefix. It may hold a Redis
	// Cluster hash tag only if all of sendq's keys are meant to live in one
	// slot (see the package documentation for the layout).
	Prefix string
	// NowFunc is the clock. Default time.Now. Tests move it forward instead
	// of sleeping.
	NowFunc func() time.Time
	// DeliveryTTL is how long a message's delivery state and receipt are
	// kept after their last update. Default DefaultDeliveryTTL; zero or
	// negative means the default.
	DeliveryTTL time.Duration
	// AuthBackoff is the first pause after an authentication failure; the
	// pause doubles with each consecutive round of failures. Default
	// DefaultAuthBackoff; zero or negative means the default.
	AuthBackoff time.Duration
	// MaxAuthBackoff caps the doubling pause. Default DefaultMaxAuthBackoff;
	// zero or negative means the default. It is raised to AuthBackoff when
	// smaller.
	MaxAuthBackoff time.Duration
	// TokenKeys encrypts the refresh and access tokens the store keeps
	// (see Keyring). Default nil: the token methods fail with
	// ErrNoTokenKeys unless InsecurePlaintextTokens is set.
	TokenKeys *Keyring
	// InsecurePlaintextTokens, with no TokenKeys, stores tokens in
	// plaintext: for development only. With TokenKeys, new values are
	// sealed and plaintext ones written earlier stay readable (a
	// migration). Default false: plaintext values are refused.
	InsecurePlaintextTokens bool
	// TokenPollInterval bounds each wait of WaitTokenLock between looks at
	// the lock, in case a release announcement is lost. Default
	// DefaultTokenPollInterval; zero or negative means the default.
	TokenPollInterval time.Duration
	// SessionLease is how long a session slot (AcquireSession) is held
	// unless renewed; a holder that dies keeps it that long. Default
	// DefaultSessionLease; zero or negative means the default.
	SessionLease time.Duration
}

// WithDefaults returns o with every zero (or negative) field replaced by its
// default.
func (o Options) WithDefaults() Options {
	o.Prefix = cmp.Or(o.Prefix, DefaultPrefix)
	if o.NowFunc == nil {
		o.NowFunc = time.Now
	}
	o.DeliveryTTL = positiveOr(o.DeliveryTTL, DefaultDeliveryTTL)
	o.AuthBackoff = positiveOr(o.AuthBackoff, DefaultAuthBackoff)
	o.MaxAuthBackoff = max(positiveOr(o.MaxAuthBackoff, DefaultMaxAuthBackoff), o.AuthBackoff)
	o.TokenPollInterval = positiveOr(o.TokenPollInterval, DefaultTokenPollInterval)
	o.SessionLease = positiveOr(o.SessionLease, DefaultSessionLease)
	return o
}

func positiveOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Store is the state sendq's workers share through Redis: delivery state and
// receipts of messages, health and limits of accounts, refresh tokens and
// dead letters.
//
// It is safe for concurrent use, and so are the records it keeps: every
// update is a single MULTI transaction or Lua script, so workers on many
// machines may update the same message or account at once.
type Store struct {
	rdb  redis.UniversalClient
	opts Options
	// co shares round trips among concurrent hot-path operations; nil on
	// Redis Cluster, where a transaction cannot span slots.
	co *coalescer
}

// New returns a Store over rdb configured by opts (see Options.WithDefaults).
// It panics when rdb is nil.
func New(rdb redis.UniversalClient, opts Options) *Store {
	if rdb == nil {
		panic("ledger: New called with a nil redis client")
	}
	s := &Store{rdb: rdb, opts: opts.WithDefaults()}
	if _, cluster := rdb.(*redis.ClusterClient); !cluster {
		s.co = &coalescer{rdb: rdb}
	}
	return s
}

// shared runs queue in a MULTI transaction, shared with the operations of
// concurrent callers when it can be (see coalescer), and returns the first
// error of its commands or of the round trip.
func (s *Store) shared(ctx context.Context, queue func(p redis.Pipeliner)) error {
	if s.co != nil {
		return s.co.do(ctx, queue)
	}
	op := &batchOp{queue: queue}
	send(ctx, s.rdb, []*batchOp{op})
	return op.err
}

// LoadScripts loads the store's Lua scripts into the server's script cache.
// It is optional: a script missing from the cache is loaded on first use, at
// the cost of one extra round trip. Call it at startup (and it is cheap to
// call again) to keep every operation at one round trip from the first.
func (s *Store) LoadScripts(ctx context.Context) error {
	for _, sc := range scripts {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("load lua scripts: %w", err)
		}
	}
	return nil
}

// scripts lists every Lua script of the package, for LoadScripts.
var scripts = []*redis.Script{
	forgetRejectionsScript,
	hsetIfExistsScript,
	throttleScript,
	authFailedScript,
	holdScript,
	succeededScript,
	accountsScript,
	setRefreshTokenScript,
	casRefreshTokenScript,
	accessTokenScript,
	putAccessTokenScript,
	deleteAccessTokenScript,
	unlockTokenScript,
	deadLettersScript,
	acquireSessionScript,
	allowScript,
	usedScript,
}

func (s *Store) now() time.Time { return s.opts.NowFunc() }

// Keys. The account and token keys share the hash tag {accounts}, and the
// dead-letter keys share {dead}, so that their scripts and transactions work
// on Redis Cluster; delivery keys carry no tag and spread over the cluster.

func (s *Store) deliveryKey(messageID string) string {
	return s.opts.Prefix + "delivery:" + messageID
}

func (s *Store) accountKey(id string) string {
	return s.accountKeyPrefix() + id
}

func (s *Store) accountKeyPrefix() string { return s.opts.Prefix + "{accounts}:account:" }

func (s *Store) unhealthyKey() string { return s.opts.Prefix + "{accounts}:unhealthy" }

func (s *Store) tokenKey(account string) string {
	return s.opts.Prefix + "{accounts}:token:" + account
}

func (s *Store) accessKey(account, key string) string {
	return s.opts.Prefix + "{accounts}:access:" + account + ":" + key
}

func (s *Store) tokenLockKey(account string) string {
	return s.opts.Prefix + "{accounts}:token-lock:" + account
}

func (s *Store) keepAliveKey(account string) string {
	return s.opts.Prefix + "{accounts}:token-keepalive:" + account
}

// tokenChannel is the pub/sub channel announcing the release of account's
// token lock. Channels are not keys: no slot, no tag needed.
func (s *Store) tokenChannel(account string) string {
	return s.opts.Prefix + "{accounts}:token-unlocked:" + account
}

// Limit keys carry a hash tag per account ({limits:<account>}): each script
// touches one account's keys, and the busiest keys of the store spread over a
// cluster by account.

func (s *Store) limitsKeyPrefix(account string) string {
	return s.opts.Prefix + "{limits:" + account + "}:"
}

func (s *Store) sessionsKey(account string) string { return s.limitsKeyPrefix(account) + "sessions" }

// rateKey is the log of a rate; its total is rateKey + ":total".
func (s *Store) rateKey(account, name string) string {
	return s.limitsKeyPrefix(account) + "rate:" + name
}

func (s *Store) deadIndexKey() string { return s.opts.Prefix + "{dead}:index" }

func (s *Store) deadKeyPrefix() string { return s.opts.Prefix + "{dead}:letter:" }

func (s *Store) deadKey(id string) string { return s.deadKeyPrefix() + id }

// ms converts t to Unix milliseconds, the unit of every time stored in a
// hash field; the zero time is 0.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fromMS is the inverse of ms.
func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}
