// Package metrics exposes a sendq worker's Prometheus metrics.
//
// New returns Metrics with a registry of its own (Registry), which also
// holds the Go runtime and process collectors; serve it with
// promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}). A
// worker.Config with Metrics set records into it and registers its
// collectors; cmd/worker serves it over HTTP.
//
// # Metrics
//
//	sendq_sends_total{account, outcome}              attempts to send: "delivered", "deferred" or a failure's smtpoauth.Class
//	sendq_smtp_stage_seconds{account, stage}         histogram of each SMTP step (smtpoauth.Stage: connect, tls, ehlo, token, auth, mail, rcpt, data, data-end, rset)
//	sendq_smtp_logins_total{account}                 SASL exchanges on new connections
//	sendq_smtp_connections_reused_total{account}     messages sent on a pooled connection, without a login
//	sendq_token_refreshes_total{account}             access tokens obtained from the token endpoint
//	sendq_token_refresh_failures_total{account}      failed requests to the token endpoint
//	sendq_queue_tasks{queue, state}                  tasks per asynq queue and state (QueueCollector)
//	sendq_accounts{state="throttled"|"held"}         accounts whose mail waits (LedgerCollector)
//	sendq_dead_letters                               dead letters kept (LedgerCollector)
//	sendq_scrape_errors_total{collector}             failed or timed-out collections from Redis
//
// The account label is the id of an account of the accounts file; no label
// ever holds an address, a token or anything from a message.
//
// # Hooks
//
// The instrumented packages do not import Prometheus: each declares a small
// observer interface that this package implements. ForAccount returns the
// *Account of an account id, made once with every series of the account
// resolved, so that recording does not allocate; it is the
// smtpoauth.Config.Observer of the account's sender (stage timings, logins,
// reused connections) and the accounts.Observer that
// accounts.RegistryOptions.ObserverFunc returns (token refreshes). Metrics
// itself is the tasks.Observer of a tasks.Handler (outcomes).
//
// # Read at scrape time
//
// QueueCollector (through an asynq.Inspector) and LedgerCollector (through
// a ledger.Store) read Redis when Prometheus scrapes. Each has one call to
// Redis under way at most (concurrent scrapes share it), waits for it no
// longer than a timeout (DefaultScrapeTimeout), and on failure leaves its
// metrics out of the scrape and counts the failure in
// sendq_scrape_errors_total instead of holding the scrape.
package metrics
