package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/tasks"
)

// namespace starts the name of every metric of the package.
const namespace = "sendq"

// stageBuckets are the upper bounds, in seconds, of the buckets of
// sendq_smtp_stage_seconds: from a command on a fast link to the minutes a
// server may take to answer the final ".".
var stageBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// stages are the SMTP stages whose latency series are made with an
// Account, before their first observation.
var stages = []smtpoauth.Stage{
	smtpoauth.StageConnect, smtpoauth.StageTLS, smtpoauth.StageHello,
	smtpoauth.StageToken, smtpoauth.StageAuth, smtpoauth.StageMail,
	smtpoauth.StageRcpt, smtpoauth.StageData, smtpoauth.StageDataEnd,
	smtpoauth.StageReset,
}

// outcomes are the values of the outcome label of sendq_sends_total, made
// with an Account so that each series exists, at zero, from the start.
var outcomes = []string{
	tasks.OutcomeDelivered,
	tasks.OutcomeDeferred,
	smtpoauth.ClassTransient.String(),
	smtpoauth.ClassThrottle.String(),
	smtpoauth.ClassAuth.String(),
	smtpoauth.ClassNeedsHuman.String(),
	smtpoauth.ClassPermanentRecipient.String(),
	smtpoauth.ClassPermanentMessage.String(),
	smtpoauth.ClassAmbiguous.String(),
}

// Metrics holds the metrics of a worker and the registry that exposes them.
// It is safe for concurrent use.
//
// The instrumented packages do not import Prometheus: an Account (from
// ForAccount) is an smtpoauth.Observer and an accounts.Observer, and Metrics
// itself is a tasks.Observer. The values that are read from Redis at scrape
// time come from a QueueCollector and a LedgerCollector registered with
// Registry.
type Metrics struct {
	reg                  *prometheus.Registry
	sends                *prometheus.CounterVec
	stageSeconds         *prometheus.HistogramVec
	tokenRefreshes       *prometheus.CounterVec
	tokenRefreshFailures *prometheus.CounterVec
	logins               *prometheus.CounterVec
	reused               *prometheus.CounterVec

	mu       sync.RWMutex
	accounts map[string]*Account
}

var _ tasks.Observer = (*Metrics)(nil)

// New returns Metrics with a registry of its own that holds them, and the
// Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "sends_total",
			Help:      `Attempts to send a message, by account and outcome: "delivered", "deferred" (put off without contacting the server: account throttled or held, over a rate, no SMTP session free) or the failure's class (transient, throttle, auth, needs-human, permanent-recipient, permanent-message, ambiguous).`,
		}, []string{"account", "outcome"}),
		stageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "smtp_stage_seconds",
			Help:      "Time taken by each step of an SMTP submission, failed steps included, by account and stage (connect, tls, ehlo, token, auth, mail, rcpt, data, data-end, rset).",
			Buckets:   stageBuckets,
		}, []string{"account", "stage"}),
		tokenRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "token_refreshes_total",
			Help:      "Access tokens obtained from the account's token endpoint.",
		}, []string{"account"}),
		tokenRefreshFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "token_refresh_failures_total",
			Help:      "Requests to the account's token endpoint that failed.",
		}, []string{"account"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "smtp_logins_total",
			Help:      "SASL exchanges started on new SMTP connections (a token sent), accepted or not.",
		}, []string{"account"}),
		reused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "smtp_connections_reused_total",
			Help:      "Messages sent on a pooled, already authenticated SMTP connection, without a new login.",
		}, []string{"account"}),
		accounts: make(map[string]*Account),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.sends, m.stageSeconds, m.tokenRefreshes, m.tokenRefreshFailures, m.logins, m.reused,
	)
	return m
}

// Registry returns the registry that holds the metrics, for an HTTP handler
// (promhttp.HandlerFor) and for the collectors read at scrape time.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ForAccount returns the metrics of the account with the given id, made on
// first use (with every series of the account at zero) and the same
// afterwards. The id is a label value: pass the id of an account of the
// accounts file, never an address or anything taken from a message.
func (m *Metrics) ForAccount(id string) *Account {
	m.mu.RLock()
	a := m.accounts[id]
	m.mu.RUnlock()
	if a != nil {
		return a
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if a := m.accounts[id]; a != nil {
		return a
	}
	a = newAccount(m, id)
	m.accounts[id] = a
	return a
}

// SendOutcome counts an attempt to send through account in
// sendq_sends_total; it implements tasks.Observer. As with ForAccount,
// account must be an account id of the accounts file (a tasks.Handler
// reports no other).
func (m *Metrics) SendOutcome(account, outcome string) {
	m.ForAccount(account).SendOutcome(outcome)
}
