package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/smtpoauth"
)

// Account records the metrics of one sending account, labelled with its
// id. It is the smtpoauth.Observer of the account's Sender and its
// accounts.Observer; make it with Metrics.ForAccount. Its methods are safe
// for concurrent use and do not allocate: the series of the account are
// looked up once, when it is made.
type Account struct {
	m  *Metrics
	id string

	// Read-only after newAccount.
	sends                map[string]prometheus.Counter
	stages               map[smtpoauth.Stage]prometheus.Observer
	tokenRefreshes       prometheus.Counter
	tokenRefreshFailures prometheus.Counter
	logins               prometheus.Counter
	reused               prometheus.Counter
}

var (
	_ smtpoauth.Observer = (*Account)(nil)
	_ accounts.Observer  = (*Account)(nil)
)

func newAccount(m *Metrics, id string) *Account {
	a := &Account{
		m:                    m,
		id:                   id,
		sends:                make(map[string]prometheus.Counter, len(outcomes)),
		stages:               make(map[smtpoauth.Stage]prometheus.Observer, len(stages)),
		tokenRefreshes:       m.tokenRefreshes.WithLabelValues(id),
		tokenRefreshFailures: m.tokenRefreshFailures.WithLabelValues(id),
		logins:               m.logins.WithLabelValues(id),
		reused:               m.reused.WithLabelValues(id),
	}
	for _, o := range outcomes {
		a.sends[o] = m.sends.WithLabelValues(id, o)
	}
	for _, s := range stages {
		a.stages[s] = m.stageSeconds.WithLabelValues(id, string(s))
	}
	return a
}

// ID returns the account id the metrics are labelled with.
func (a *Account) ID() string { return a.id }

// SendOutcome counts an attempt to send through the account in
// sendq_sends_total (see tasks.Observer for the outcomes).
func (a *Account) SendOutcome(outcome string) {
	if c, ok := a.sends[outcome]; ok {
		c.Inc()
		return
	}
	a.m.sends.WithLabelValues(a.id, outcome).Inc()
}

// ObserveStage records in sendq_smtp_stage_seconds that a step of stage
// took d; it implements smtpoauth.Observer.
func (a *Account) ObserveStage(stage smtpoauth.Stage, d time.Duration) {
	if o, ok := a.stages[stage]; ok {
		o.Observe(d.Seconds())
		return
	}
	a.m.stageSeconds.WithLabelValues(a.id, string(stage)).Observe(d.Seconds())
}

// Login counts a login in sendq_smtp_logins_total; it implements
// smtpoauth.Observer.
func (a *Account) Login() { a.logins.Inc() }

// ConnectionReused counts a message sent on a pooled connection in
// sendq_smtp_connections_reused_total; it implements smtpoauth.Observer.
func (a *Account) ConnectionReused() { a.reused.Inc() }

// TokenRefreshed counts a token obtained from the token endpoint in
// sendq_token_refreshes_total; it implements accounts.Observer.
func (a *Account) TokenRefreshed() { a.tokenRefreshes.Inc() }

// TokenRefreshFailed counts a failed request to the token endpoint in
// sendq_token_refresh_failures_total; it implements accounts.Observer.
func (a *Account) TokenRefreshFailed() { a.tokenRefreshFailures.Inc() }
