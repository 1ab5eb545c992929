// Package ledger is the state sendq's workers share through Redis for
// delivering mail despite failures: what became of each recipient of a
// message and whether the message is complete, the health of each sending
// account, its sending limits, dead letters, and the accounts' tokens.
//
// # A tour
//
// A Store wraps a go-redis client:
//
//	keys, err := ledger.LoadKeyring(os.Getenv) // SENDQ_TOKEN_KEY, …
//	store := ledger.New(rdb, ledger.Options{TokenKeys: keys})
//
// The handler of an email:send task uses it around each attempt:
//
//  1. Delivery loads the message's state by Message-ID (stable across
//     retries and re-enqueues) in one HGETALL; StartAttempt does it with
//     the account's health in the same round trip and records which task
//     is attempting the message (Delivery.LastAttempt for the next
//     reader). A Receipt means the message is complete: finish without
//     sending. Otherwise send only to Delivery.Pending(recipients):
//     recipients accepted or rejected for good in an earlier attempt are
//     done.
//  2. Account and Usable tell whether the account may send; a throttled,
//     auth-failing or held account's task is deferred. So is one over the
//     account's limits: AcquireSession takes one of its session slots for
//     the send (Lease.Release gives it back), and Allow counts the message
//     and its recipients against its rates.
//  3. After the server's 250 to DATA, WriteReceipt records the outcome in
//     one MULTI transaction; when some recipients were deferred (4xx) and
//     will be retried, RecordRecipients records those that are done. A
//     connection lost after the final "." calls for MarkPossibleDuplicate.
//  4. Failures update the account: Throttle, AuthFailed, InvalidGrant and
//     Hold; a send that works on an account that was not AccountOK calls
//     Succeeded. Operators call Resume and Accounts.
//  5. Mail given up for good becomes a DeadLetter (AddDeadLetter), kept
//     with its task payload until RemoveDeadLetter, however many there are.
//     To requeue a message whose rejected recipients were fixed, call
//     ForgetRejections first: the new attempt goes to them only.
//
// The refresh-token store (SetRefreshToken, RefreshToken,
// CompareAndSwapRefreshToken) keeps one token per account with a version; a
// re-authorization resumes an account held for one, and retires the
// account's cached access tokens.
//
// # Shared tokens
//
// The workers share each account's access token (AccessToken,
// PutAccessToken, DeleteAccessToken) so that one of them asks the token
// endpoint and all use the answer. LockToken, UnlockToken and WaitTokenLock
// make the refresh single-flight across processes: a lock with a time to
// live (SET NX PX), released by a script that checks its owner and announces
// the release on a pub/sub channel; waiters subscribe, and look again at the
// lock when it expires or every Options.TokenPollInterval, so a holder that
// dies delays them by the lock's time to live at most. ClaimTokenKeepAlive
// elects one worker per period to use an idle account's refresh token.
// accounts.Registry drives all of it (see accounts.RegistryOptions).
//
// # Limits
//
// An account's limits hold across every worker. AcquireSession is a
// semaphore whose slots are leases: a sorted set of holder ids scored by
// lease expiry, to which one Lua script adds a holder after dropping the
// expired ones, if fewer than the limit remain. A holder renews its lease
// (Lease.Renew) during a long send; one that dies frees its slot when its
// lease (Options.SessionLease) ends. Allow checks and counts the uses of
// one or more sliding-window rates (Rate: at most Limit in any Window) in
// one Lua script, all or nothing, and says how long to wait when one is
// full: each rate logs its uses in a sorted set scored by time, beside a
// running total, both expiring a Window after the last use. Times come
// from the workers' clocks (Options.NowFunc), which must agree to well
// within a lease and a window.
//
// # Tokens at rest
//
// Refresh and access tokens are sealed with AES-256-GCM before they are
// written (Options.TokenKeys, a Keyring): the stored value names its key
// ("v1:<key id>:<base64>"), so keys rotate by making a new one current and
// keeping the old ones to read until their values are rewritten; and the
// Redis key and field are the associated data, so a sealed value moved to
// another account's key does not open. Keys come from the environment
// (LoadKeyring): SENDQ_TOKEN_KEY (base64 of 32 bytes), SENDQ_TOKEN_KEYS
// ("id:base64,id:base64", the first current) or SENDQ_TOKEN_KEY_FILE. Beside
// each sealed token the store keeps its SHA-256, which the Lua scripts
// compare instead of the token. Without keys the token methods fail with
// ErrNoTokenKeys, unless Options.InsecurePlaintextTokens allows plaintext
// (development).
//
// Every operation takes one round trip: a single command, a MULTI
// transaction or a Lua script. Read-modify-write updates shared by many
// workers (account health, token rotation, forgetting rejections) are Lua
// scripts, atomic across machines. A script is sent in full the first time a
// server runs it (one extra round trip); LoadScripts avoids that.
//
// # Key layout
//
// With the default prefix "sendq:" (Options.Prefix):
//
//	sendq:delivery:<message-id>             hash, expires Options.DeliveryTTL after its last update
//	    rcpt:<lower-cased address>          JSON {address, state, reply, task_id, at}
//	    receipt                             JSON {task_id, reply, possible_duplicate, at}
//	    duplicate                           JSON {task_id, at}: a possible duplicate
//	    attempt                             JSON {queue, task_id, at}: the task that last started an attempt
//	    requeued                            Unix milliseconds: the operator's last requeue
//	sendq:{accounts}:account:<account>      hash, absent while the account is ok
//	    state, hold, reason                 strings
//	    until, since, first_invalid_grant   Unix milliseconds
//	    auth_failures, invalid_grants       counters
//	    auth_step                           how many times the auth pause doubled
//	    token_version                       token version when held
//	sendq:{accounts}:unhealthy              set of the account ids with a state other than ok
//	sendq:{accounts}:token:<account>        hash: the refresh token
//	    token                               sealed token (see Tokens at rest)
//	    digest                              hex SHA-256 of the token
//	    version                             bumped by every change of the token
//	sendq:{accounts}:access:<account>:<key> hash: a shared access token, expires with it;
//	                                        <key> is the caller's (grant:provider:tenant:client:mailbox:…)
//	    token, digest                       as above
//	    expiry, refresh_at                  Unix milliseconds, 0 for never
//	    refresh_version                     the refresh-token version it came from (absent: none)
//	sendq:{accounts}:token-lock:<account>   string: the lock holder's random id, expires (PX)
//	sendq:{accounts}:token-keepalive:<account> string, expires: the keep-alive claim
//	sendq:{accounts}:token-unlocked:<account>  pub/sub channel: the lock was released
//	sendq:{limits:<account>}:sessions      sorted set: session lease ids, scored by expiry in Unix ms;
//	                                        expires with the last lease
//	sendq:{limits:<account>}:rate:<name>   sorted set: "<n>:<id>" per use, scored by time in Unix ms;
//	                                        expires a window after the last use
//	sendq:{limits:<account>}:rate:<name>:total  string: the sum of the uses in the window
//	sendq:{dead}:index                      sorted set: dead-letter id, scored by time in Unix ms
//	sendq:{dead}:letter:<id>                hash: meta (JSON without payload), payload (bytes)
//
// Account, token and dead-letter keys carry a Redis Cluster hash tag
// ({accounts}, {dead}) so that the transactions and scripts spanning them
// stay in one slot; limit keys carry one per account ({limits:<account>}),
// the busiest keys spreading over a cluster by account; delivery keys have
// none and spread over a cluster. Apart from delivery and limit keys, only
// the access tokens, the token lock and the keep-alive claim expire: account
// records are deleted when the account returns to ok, dead letters when
// they are removed, refresh tokens never.
//
// Addresses are compared case-insensitively. Tokens and keys never appear in
// errors.
package ledger
