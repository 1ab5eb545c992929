// Package opsweb is the worker's operations listener: health, readiness,
// Prometheus metrics and the asynq web UI (asynqmon), behind HTTP basic auth.
//
// A tour:
//
//	h, err := opsweb.New(opsweb.Config{
//		Addr:     "0.0.0.0:8080",                // decides whether a password is required
//		Redis:    asynq.RedisClientOpt{Addr: "127.0.0.1:6379"},
//		Password: password,                     // from PasswordFromEnv: SENDQ_HTTP_PASSWORD or SENDQ_HTTP_PASSWORD_FILE
//		Gatherer: prometheus.DefaultGatherer,   // nil: /metrics answers 404
//		AccountsReadyFunc: func() error { … },  // nil error once the accounts are loaded
//	})
//	defer h.Close()
//	ln, _ := net.Listen("tcp", "0.0.0.0:8080")
//	err = h.Serve(ctx, ln)                      // until ctx is done, then a graceful shutdown
//
// The routes:
//
//	/healthz       200 "ok" while the process runs. Open.
//	/readyz        200 "ok" when Redis answers PING within Config.ReadyTimeout and the
//	               accounts are loaded; 503 and a one-line reason otherwise. Open.
//	/metrics       Config.Gatherer in the Prometheus text format (promhttp). Basic auth.
//	/monitoring/   the asynq web UI and its JSON API (/monitoring/api/...). Basic auth.
//
// Basic auth applies whenever a password is configured, and a password is
// required unless Config.Addr is a loopback address: [New] refuses to build a
// handler for 0.0.0.0, a non-loopback IP or a host name without one
// ([ErrCredentialsRequired]). User and password are compared in constant time.
// Config.ReadOnly turns the UI's pause, delete, run and archive actions off:
// the API answers every method but GET with 405. State-changing requests
// from another site are refused ([net/http.CrossOriginProtection]).
//
// The UI never shows a message body, an attachment or a recipient's local
// part: [FormatPayload] reduces an email:send payload to its account,
// recipient count, recipient domains, subject, Message-ID and attachment
// count, and [FormatResult] a result to its counts, domains and final reply.
// Anything they cannot read is shown as "(payload hidden)" or
// "(result hidden)".
//
// The worker command sets it up from flags and environment variables:
//
//	-http ADDR               SENDQ_HTTP_ADDR            listen address, default 127.0.0.1:8080; empty disables
//	-monitoring-readonly     SENDQ_MONITORING_READONLY  UI in read-only mode
//	                         SENDQ_HTTP_USER            basic auth user, default "admin"
//	                         SENDQ_HTTP_PASSWORD        basic auth password, or
//	                         SENDQ_HTTP_PASSWORD_FILE   a file holding it
package opsweb
