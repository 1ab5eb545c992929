package accounts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sendq/sendq/smtpoauth"
)

// ErrUnknownAccount is returned (wrapped) by Registry.SenderFor for an
// account id the accounts file does not define.
var ErrUnknownAccount = errors.New("unknown account")

// Defaults of RegistryOptions.
const (
	// DefaultKeepAlive is how often, at most, an idle account's refresh
	// token is used so that it does not expire from disuse (Microsoft's
	// expire after 90 days unused, Google's after six months).
	DefaultKeepAlive = 24 * time.Hour
	// DefaultTokenLockTTL is how long a process may hold an account's token
	// lock: the longest another process waits for a holder that died.
	DefaultTokenLockTTL = 30 * time.Second
)

// RegistryOptions configures a Registry. The zero value builds token sources
// local to the process, as a single worker needs.
type RegistryOptions struct {
	// Tokens shares access and refresh tokens among every process that
	// uses the same store (a *ledger.Store). Default nil: each process
	// obtains its own tokens, and keeps a rotated refresh token in memory
	// and in oauth.refresh_token_file.
	//
	// With Tokens, each account's token source is a TokenCache in front of
	// the store: an access token fetched by one process serves all of them
	// until its refresh time, and refreshes are single-flight across
	// processes (the store's lock). For the refresh_token grant, the
	// stored refresh token comes before the accounts file's, which is only
	// a seed, stored on first use; a rotated one is stored by
	// compare-and-swap before the access token obtained with it is used;
	// a re-authorization (ledger.Store.SetRefreshToken) is used by every
	// process on its next refresh; refresh_token_file is no longer
	// written. A dead refresh token is never deleted: its invalid_grant
	// comes back as an *oauth2.RetrieveError. Redis failing fails the
	// refresh (it never falls back to a refresh that could not be stored).
	Tokens TokenStore
	// Sessions, if set, enforces each account's Limits.MaxSessions across
	// every process that uses the same store (a *ledger.Store): the
	// account's Sender gets Sessions.ConnLimiter as its
	// smtpoauth.Config.ConnLimiter, and a pool of at most MaxSessions
	// connections. Default nil: MaxSessions bounds each process's pool
	// only.
	Sessions SessionLimits
	// IdleConnsPerAccount is how many authenticated SMTP connections each
	// account's Sender keeps between messages (smtpoauth.Config.
	// MaxIdleConns), at most the account's Limits.MaxSessions. A worker
	// sets it to its concurrency, so that a steady stream reuses every
	// connection instead of closing the surplus after each message and
	// logging in again. Default 0: smtpoauth.DefaultMaxIdleConns.
	IdleConnsPerAccount int
	// KeepAlive is the longest an idle account's refresh token goes
	// unused, with Tokens: KeepAlive runs a check every KeepAlive/8 to
	// KeepAlive/4 (random) per account, and one process per KeepAlive/2
	// cluster-wide refreshes unless a fresh shared access token shows the
	// refresh token was used within the last token lifetime. Default
	// DefaultKeepAlive; zero or negative means the default.
	KeepAlive time.Duration
	// TokenLockTTL is the time to live of the token lock, with Tokens: the
	// longest a process that died while refreshing delays the others. A
	// request to the token endpoint gets half of it. Default
	// DefaultTokenLockTTL; zero or negative means the default.
	TokenLockTTL time.Duration
	// RefreshMargin is how long before expiry an access token is replaced,
	// scaled down for short-lived tokens (see smtpoauth.TokenCache).
	// Default smtpoauth.DefaultRefreshMargin; zero or negative means the
	// default.
	RefreshMargin time.Duration
	// ObserverFunc, if set, returns the observer of an account (by id),
	// for metrics: it hears about every request to the account's token
	// endpoint (not about tokens served from a cache, the process's or
	// the TokenStore's) and is the smtpoauth.Config.Observer of its
	// sender. NewRegistry calls it once per account; a nil Observer means
	// none for that account. Default nil: nothing is observed.
	ObserverFunc func(accountID string) Observer

	// nowFunc is the shared sources' clock (tests).
	nowFunc func() time.Time
}

// WithDefaults returns o with every zero (or negative) field replaced by its
// default.
func (o RegistryOptions) WithDefaults() RegistryOptions {
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.TokenLockTTL <= 0 {
		o.TokenLockTTL = DefaultTokenLockTTL
	}
	if o.RefreshMargin <= 0 {
		o.RefreshMargin = smtpoauth.DefaultRefreshMargin
	}
	if o.nowFunc == nil {
		o.nowFunc = time.Now
	}
	return o
}

// SessionLimits makes the cluster-wide limit of an account's concurrent SMTP
// sessions (see RegistryOptions.Sessions). *ledger.Store implements it.
type SessionLimits interface {
	ConnLimiter(account string, limit int, logger *slog.Logger) smtpoauth.ConnLimiter
}

// Registry holds one token source and one *smtpoauth.Sender per account,
// built once. It is safe for concurrent use.
type Registry struct {
	// Read-only after NewRegistry.
	senders map[string]*smtpoauth.Sender
	sources map[string]TokenSource
	shared  []*sharedSource // refresh_token accounts with a TokenStore
	opts    RegistryOptions
	logger  *slog.Logger
}

// NewRegistry builds the token source and the sender of every account in f.
// ctx is kept by the token sources for every request to the token endpoints
// and to the token store: pass a context that lives as long as the process.
// logger (nil: quiet) is given to each sender with an "account" attribute,
// and hears about refresh-token rotations and the token store. opts decides
// whether tokens are shared among processes (see RegistryOptions). All
// failures are reported, joined.
func NewRegistry(ctx context.Context, f *File, logger *slog.Logger, opts RegistryOptions) (*Registry, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts = opts.WithDefaults()
	r := &Registry{
		senders: make(map[string]*smtpoauth.Sender, len(f.accounts)),
		sources: make(map[string]TokenSource, len(f.accounts)),
		opts:    opts,
		logger:  logger,
	}
	var errs []error
	for _, a := range f.accounts {
		var obs Observer
		if opts.ObserverFunc != nil {
			obs = opts.ObserverFunc(a.ID)
		}
		ts, err := r.tokenSource(ctx, a, obs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cfg, err := a.SenderConfig(ts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cfg.Logger = logger.With("account", a.ID)
		if obs != nil {
			cfg.Observer = obs
		}
		cfg.MaxConns = a.Limits.MaxConns(cfg.MaxConns)
		if n := opts.IdleConnsPerAccount; n > 0 {
			cfg.MaxIdleConns = n
			if cfg.MaxConns > 0 {
				cfg.MaxIdleConns = min(n, cfg.MaxConns)
			}
		}
		if a.Limits.MaxSessions > 0 && opts.Sessions != nil {
			cfg.ConnLimiter = opts.Sessions.ConnLimiter(a.ID, a.Limits.MaxSessions, cfg.Logger)
		}
		s, err := smtpoauth.NewSender(cfg)
		if err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", a, err))
			continue
		}
		r.senders[a.ID] = s
		r.sources[a.ID] = ts
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// tokenSource builds a's token source: local, or shared through
// opts.Tokens; obs (nil: none) hears about its requests to the token
// endpoint.
func (r *Registry) tokenSource(ctx context.Context, a *Account, obs Observer) (TokenSource, error) {
	if r.opts.Tokens == nil {
		return a.tokenSource(ctx, r.logger, obs)
	}
	grant, key, err := a.grant()
	if err != nil {
		return nil, err
	}
	if obs != nil {
		grant = observeGrant(grant, obs)
	}
	s := &sharedSource{
		ctx:     ctx,
		store:   r.opts.Tokens,
		account: a.ID,
		key:     key,
		grant:   grant,
		refresh: a.OAuth.Grant == GrantRefreshToken,
		lockTTL: r.opts.TokenLockTTL,
		margin:  r.opts.RefreshMargin,
		nowFunc: r.opts.nowFunc,
		logger:  r.logger,
	}
	if s.refresh {
		s.seed = a.seedRefreshToken()
		r.shared = append(r.shared, s)
	}
	return &sharedTokenCache{TokenCache: smtpoauth.NewTokenCache(s, r.opts.RefreshMargin), shared: s}, nil
}

// SenderFor returns the sender of the account with the given id, or an
// error wrapping ErrUnknownAccount.
func (r *Registry) SenderFor(accountID string) (*smtpoauth.Sender, error) {
	s, ok := r.senders[accountID]
	if !ok {
		return nil, fmt.Errorf("sender for %q: %w", accountID, ErrUnknownAccount)
	}
	return s, nil
}

// TokenSource returns the token source the sender of the account with the
// given id uses, or an error wrapping ErrUnknownAccount.
func (r *Registry) TokenSource(accountID string) (TokenSource, error) {
	ts, ok := r.sources[accountID]
	if !ok {
		return nil, fmt.Errorf("token source for %q: %w", accountID, ErrUnknownAccount)
	}
	return ts, nil
}

// Close closes the idle SMTP connections of every account's sender (see
// smtpoauth.Sender.Close), all at once, and waits for them to end. Call it
// when the process stops sending; a Send after it still works, on a
// connection of its own.
func (r *Registry) Close() error {
	errs := make([]error, 0, len(r.senders))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range r.senders {
		wg.Go(func() {
			err := s.Close()
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// KeepAlive keeps the refresh tokens of idle accounts alive until ctx ends:
// for each refresh_token account it checks, every RegistryOptions.KeepAlive
// /8 to /4 (random, so that processes spread out), whether this process
// wins the account's keep-alive claim for KeepAlive/2 (one process
// cluster-wide does), and if so refreshes the account's token unless a
// fresh shared access token shows its refresh token was used lately. An
// account's refresh token is thus used at least every 3/4 KeepAlive. Run it
// in its own goroutine; it returns when ctx ends, at once without a
// TokenStore (nothing is shared to coordinate with).
func (r *Registry) KeepAlive(ctx context.Context) {
	if r.opts.Tokens == nil {
		return
	}
	var wg sync.WaitGroup
	for _, s := range r.shared {
		wg.Go(func() { r.keepAlive(ctx, s) })
	}
	wg.Wait()
}

// keepAlive is KeepAlive's loop for one account.
func (r *Registry) keepAlive(ctx context.Context, s *sharedSource) {
	period := r.opts.KeepAlive
	t := time.NewTimer(keepAliveDelay(period))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		claimed, err := r.opts.Tokens.ClaimTokenKeepAlive(ctx, s.account, period/2)
		switch {
		case err != nil && ctx.Err() == nil:
			r.logger.Warn("token keep-alive", "account", s.account, "error", err)
		case claimed:
			granted, err := s.keepAlive(ctx)
			if err != nil && ctx.Err() == nil {
				r.logger.Warn("token keep-alive", "account", s.account, "error", err)
			} else if err == nil {
				r.logger.Debug("token keep-alive", "account", s.account, "granted", granted)
			}
		}
		t.Reset(keepAliveDelay(period))
	}
}

// keepAliveDelay returns a random delay in [period/8, period/4).
func keepAliveDelay(period time.Duration) time.Duration {
	return period/8 + rand.N(max(period/8, 1))
}
