package tasks

// Outcomes of an attempt reported to an Observer, besides the name of a
// failure's smtpoauth.Class ("transient", "throttle", "auth", "needs-human",
// "permanent-recipient", "permanent-message", "ambiguous").
const (
	// OutcomeDelivered: the server accepted the message (a 250 to the
	// final "."), for every recipient of the attempt or for some of them.
	OutcomeDelivered = "delivered"
	// OutcomeDeferred: the attempt was put off without contacting the
	// server: the account is throttled or held, over one of its rates, or
	// has every SMTP session open elsewhere.
	OutcomeDeferred = "deferred"
)

// Observer hears how each attempt to send ended, for metrics (see
// HandlerConfig.Observer). SendOutcome is called once per attempt that got
// as far as the account's sender, or was deferred because of the account,
// with the account id and OutcomeDelivered, OutcomeDeferred or the failure's
// smtpoauth.Class name; never for a task refused before (an invalid payload,
// an unknown account, an expired queue lifetime, a receipt already
// written). It must be quick, must not block, and must be safe for
// concurrent use.
type Observer interface {
	// SendOutcome reports that an attempt through account ended with
	// outcome.
	SendOutcome(account, outcome string)
}

// observe reports an attempt's outcome to HandlerConfig.Observer, if any.
func (h *Handler) observe(a *attempt, outcome string) {
	if o := h.cfg.Observer; o != nil {
		o.SendOutcome(a.payload.AccountID, outcome)
	}
}
