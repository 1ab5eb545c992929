package tasks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
)

// Sender submits one message through one account; *smtpoauth.Sender is the
// implementation a worker uses.
type Sender interface {
	Send(ctx context.Context, m *smtpoauth.Message) (*smtpoauth.Result, error)
}

// HandlerConfig configures a Handler. SenderFunc and Ledger are required.
type HandlerConfig struct {
	// SenderFunc returns the sender of an account id. An error (an unknown
	// account) dead-letters the task: retrying cannot fix it.
	SenderFunc func(accountID string) (Sender, error)
	// Ledger holds the state every worker shares: which recipients already
	// have the message, receipts, account health and dead letters.
	Ledger *ledger.Store
	// Retry decides backoff and when to give up. Zero fields mean defaults.
	Retry RetryPolicy
	// InvalidGrantThreshold and InvalidGrantWindow decide when refusals of
	// the refresh token (invalid_grant) hold the account for
	// re-authorization: that many in a row, the first at least that long
	// ago. Defaults ledger.DefaultInvalidGrantThreshold and
	// ledger.DefaultInvalidGrantWindow.
	InvalidGrantThreshold int
	InvalidGrantWindow    time.Duration
	// LimitsFunc returns the sending limits of an account id, enforced
	// together with every other handler on the same Redis (see
	// AccountLimits). Default nil: no limits.
	LimitsFunc func(accountID string) AccountLimits
	// SessionRecheck is how long, on average, a task waits when its
	// account has every SMTP session open elsewhere (smtpoauth.ErrConnLimit) before
	// it looks again; the wait is jittered by ±50%. Default
	// DefaultSessionRecheck.
	SessionRecheck time.Duration
	// Logger receives one line per delivery and per failure, never a token
	// or a body. Default: discard.
	Logger *slog.Logger
	// Observer, if set, hears the outcome of each attempt, for metrics
	// (see Observer). Default nil: none.
	Observer Observer
	// ResultInReceipt writes a delivered task's result (asynq's
	// ResultWriter) in the transaction of its receipt: one Redis round
	// trip per message instead of two. Set it only when Ledger's Redis
	// client reaches the server and database the asynq server runs on, as
	// worker.New does: the result goes to the hash asynq keeps the task in.
	// Default false: the result is written through asynq's ResultWriter.
	ResultInReceipt bool
	// AsyncReceipt lets a task's first attempt that delivered to every
	// recipient return as soon as the server accepted the message: the
	// receipt (and with ResultInReceipt the result) is written while asynq
	// acknowledges the task, instead of before. That takes a Redis round
	// trip out of each send's path. A process that dies in between can
	// leave a completed task without its receipt; Inspector lets any later
	// task of the same message see that the task was acknowledged and
	// complete without sending again, so AsyncReceipt requires it. Call
	// Flush after the asynq servers have shut down. Default false.
	AsyncReceipt bool
	// Inspector, if set, reads asynq's tasks on the server the handler's
	// tasks come from. A task that finds its message without a receipt but
	// attempted by another task which asynq completed records that task's
	// delivery instead of sending again (see AsyncReceipt).
	Inspector *asynq.Inspector
	// NowFunc is the clock. Default time.Now.
	NowFunc func() time.Time
}

// Handler is the asynq handler of TypeSendEmail tasks. Register it with
// mux.Handle(tasks.TypeSendEmail, h) and give its RetryDelay and IsFailure
// to asynq.Config, so that deferrals of a throttled or held account do not
// spend the task's retries.
//
// Per attempt it: decodes the payload; completes at once if the ledger holds
// a receipt for the Message-ID (a redelivery after a crash or a lost
// acknowledgement); defers if the account is throttled or held, or over its
// limits (AccountLimits: a session slot for the send, room in its rates);
// sends to the recipients that have no outcome yet; writes the receipt right
// after the server's 250 (or, with AsyncReceipt, while asynq acknowledges
// the task); and turns a failure into a retry, a deferral of the account, or
// a dead letter with a reason, following smtpoauth.Classify.
type Handler struct {
	cfg            HandlerConfig
	retry          RetryPolicy
	log            *slog.Logger
	sessionRecheck time.Duration
	// receipts counts the receipts being written after their task
	// returned (AsyncReceipt); once flushed is set, by Flush, none starts.
	mu       sync.Mutex
	flushed  bool
	receipts sync.WaitGroup
}

var _ asynq.Handler = (*Handler)(nil)

// NewHandler validates cfg and returns a Handler.
func NewHandler(cfg HandlerConfig) (*Handler, error) {
	var errs []error
	if cfg.SenderFunc == nil {
		errs = append(errs, errors.New("tasks: HandlerConfig.SenderFunc is required"))
	}
	if cfg.SessionRecheck < 0 {
		errs = append(errs, fmt.Errorf("tasks: HandlerConfig.SessionRecheck %s is negative", cfg.SessionRecheck))
	}
	if cfg.Ledger == nil {
		errs = append(errs, errors.New("tasks: HandlerConfig.Ledger is required"))
	}
	if cfg.AsyncReceipt && cfg.Inspector == nil {
		errs = append(errs, errors.New("tasks: HandlerConfig.AsyncReceipt requires an Inspector"))
	}
	retry := cfg.Retry.WithDefaults()
	errs = append(errs, retry.validate())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.NowFunc == nil {
		cfg.NowFunc = time.Now
	}
	if cfg.InvalidGrantThreshold <= 0 {
		cfg.InvalidGrantThreshold = ledger.DefaultInvalidGrantThreshold
	}
	if cfg.InvalidGrantWindow <= 0 {
		cfg.InvalidGrantWindow = ledger.DefaultInvalidGrantWindow
	}
	return &Handler{cfg: cfg, retry: retry, log: cfg.Logger, sessionRecheck: cmp.Or(cfg.SessionRecheck, DefaultSessionRecheck)}, nil
}

// Flush waits for the receipts still being written for tasks that already
// returned (HandlerConfig.AsyncReceipt). Call it when the asynq servers
// have shut down, before closing the ledger's Redis client. From then on
// every receipt is written before its task returns, as without
// AsyncReceipt: a send that outlived the servers' shutdown timeout does
// not return before its receipt is in.
func (h *Handler) Flush() {
	h.mu.Lock()
	h.flushed = true
	h.mu.Unlock()
	h.receipts.Wait()
}

// startAsyncReceipt reports whether a receipt may be written after its task
// returns, and if so counts it in receipts.
func (h *Handler) startAsyncReceipt() bool {
	if !h.cfg.AsyncReceipt {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.flushed {
		return false
	}
	h.receipts.Add(1)
	return true
}

// Result is what a completed task's result holds (asynq's ResultWriter), for
// producers asking what happened to their message.
type Result struct {
	MessageID string      `json:"message_id"`
	Accepted  []string    `json:"accepted"`
	Rejected  []Rejection `json:"rejected,omitempty"`
	// Reply is the server's reply to the end of DATA, "250 2.0.0 OK …".
	Reply string `json:"reply"`
	// PossibleDuplicate is set when an attempt lost its connection after
	// the final "." and the message may have been delivered twice.
	PossibleDuplicate bool `json:"possible_duplicate,omitempty"`
}

// Rejection is a recipient the server refused for good, with its reply.
type Rejection = ledger.Rejection

// attempt is one run of ProcessTask: the task and what is known about it.
type attempt struct {
	task     *asynq.Task
	taskID   string
	queue    string
	retried  int
	maxRetry int
	payload  *Payload
	// attrs are the attributes of every log line about the attempt; log,
	// built from them when first needed, carries them (logger).
	base  *slog.Logger
	attrs []slog.Attr
	log   *slog.Logger
	// smtpCode is the reply code of the attempt's failure, 0 for none:
	// the dead-letter line carries it.
	smtpCode int
}

// with adds attributes to the attempt's log lines.
func (a *attempt) with(attrs ...slog.Attr) {
	a.attrs = append(a.attrs, attrs...)
	a.log = nil
}

// logger returns the logger of the attempt's lines.
func (a *attempt) logger() *slog.Logger {
	if a.log == nil {
		a.log = slog.New(a.base.Handler().WithAttrs(a.attrs))
	}
	return a.log
}

// ProcessTask delivers one email:send task.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	a := &attempt{task: t}
	a.taskID, _ = asynq.GetTaskID(ctx)
	a.queue, _ = asynq.GetQueueName(ctx)
	a.retried, _ = asynq.GetRetryCount(ctx)
	a.maxRetry, _ = asynq.GetMaxRetry(ctx)
	a.base = h.log
	a.with(slog.String("task_id", a.taskID), slog.Int("attempt", a.retried+1))

	p, err := DecodePayload(t.Payload())
	if err != nil {
		return h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, smtpoauth.ClassPermanentMessage, "invalid payload: "+err.Error())
	}
	a.payload = p
	a.with(slog.String("account", p.AccountID), slog.String("message_id", p.MessageID))

	var d *ledger.Delivery
	var st ledger.AccountStatus
	if a.taskID != "" {
		d, st, err = h.cfg.Ledger.StartAttempt(ctx, p.MessageID, p.AccountID, ledger.Attempt{Queue: a.queue, TaskID: a.taskID})
	} else {
		d, st, err = h.cfg.Ledger.DeliveryAndAccount(ctx, p.MessageID, p.AccountID)
	}
	if err != nil {
		return fmt.Errorf("read delivery state and account health: %w", err)
	}
	if d.Receipt == nil {
		if err := h.recoverReceipt(ctx, a, d); err != nil {
			return err
		}
	}
	if d.Receipt != nil {
		a.logger().Info("already delivered, not sending again", "accepted", len(d.Receipt.Accepted))
		h.writeResult(a, d.Receipt)
		return nil
	}
	now := h.cfg.NowFunc()
	// The queue lifetime counts from enqueue, or from the operator's last
	// requeue.
	if start := later(p.Date, d.RequeuedAt); !start.IsZero() && now.Sub(start) > h.retry.Lifetime {
		return h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, smtpoauth.ClassTransient,
			fmt.Sprintf("undeliverable for %s (queue lifetime)", h.retry.Lifetime))
	}

	if ok, retryAt := h.cfg.Ledger.Usable(st, now); !ok {
		if retryAt.IsZero() {
			retryAt = now.Add(h.retry.HeldRecheck)
		}
		a.logger().Debug("deferred: account not usable", "state", string(st.State), "until", retryAt)
		h.observe(a, OutcomeDeferred)
		return &deferError{until: retryAt, reason: fmt.Sprintf("account %s is %s: %s", p.AccountID, st.State, st.Reason)}
	}

	sender, err := h.cfg.SenderFunc(p.AccountID)
	if err != nil {
		return h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, smtpoauth.ClassNeedsHuman,
			fmt.Sprintf("account %s: %v", p.AccountID, err))
	}
	from, rcpts := p.Envelope()
	pending := d.Pending(rcpts)
	if len(pending) == 0 {
		// Every recipient has an outcome but no receipt was written (a
		// crash between the two): complete now.
		return h.complete(ctx, a, st, &ledger.Receipt{MessageID: p.MessageID, TaskID: a.taskID, Reply: acceptedReply(d), PossibleDuplicate: d.PossibleDuplicate}, false)
	}
	data, err := p.buildMIME() // DecodePayload validated p
	if err != nil {
		return h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, smtpoauth.ClassPermanentMessage, "build message: "+err.Error())
	}

	// The account's rates, then the send, whose Sender bounds the
	// account's SMTP sessions across workers.
	refund, err := h.admit(ctx, a, len(pending))
	if err != nil {
		if _, ok := errors.AsType[*deferError](err); ok {
			h.observe(a, OutcomeDeferred)
		}
		return err
	}
	res, sendErr := sender.Send(ctx, &smtpoauth.Message{From: from, To: pending, Data: data})
	if sendErr == nil {
		h.observe(a, OutcomeDelivered)
		return h.delivered(ctx, a, st, d, res)
	}
	if errors.Is(sendErr, smtpoauth.ErrConnLimit) {
		refund()
		h.observe(a, OutcomeDeferred)
		return h.sessionsBusy(a, sendErr)
	}
	return h.failed(ctx, a, d, res, sendErr)
}

// delivered handles a submission the server took (250 to DATA) for at least
// one recipient.
func (h *Handler) delivered(ctx context.Context, a *attempt, st ledger.AccountStatus, d *ledger.Delivery, res *smtpoauth.Result) error {
	reply := ""
	if res.Reply != nil {
		reply = smtpoauth.FormatReply(res.Reply)
	}
	rejected, deferred := splitRejections(res)
	if len(deferred) > 0 {
		// The accepted recipients have it; only the deferred ones are
		// tried again, later.
		if err := h.cfg.Ledger.RecordRecipients(ctx, a.payload.MessageID, a.taskID, res.Accepted(), reply, rejected); err != nil {
			a.logger().Error("could not record delivered recipients; a retry may send them a second copy", "error", err)
		}
		h.recipientDeadLetter(ctx, a, rejected)
		first := deferred[0]
		log, firstReply := a.logger().With("class", smtpoauth.ClassTransient.String()), "no reply"
		if first.Reply != nil {
			firstReply = smtpoauth.FormatReply(first.Reply)
			log = a.logger().With("class", smtpoauth.ClassifyReply(smtpoauth.StageRcpt, first.Reply).Class.String(), "smtp_code", first.Reply.Code)
		}
		log.Warn("recipients deferred, will retry", "deferred", len(deferred), "accepted", len(res.Accepted()))
		return fmt.Errorf("%d recipient(s) deferred, first %s: %s", len(deferred), first.Address, firstReply)
	}
	r := &ledger.Receipt{
		MessageID:         a.payload.MessageID,
		TaskID:            a.taskID,
		Accepted:          res.Accepted(),
		Rejected:          rejected,
		Reply:             reply,
		PossibleDuplicate: d.PossibleDuplicate,
	}
	h.recipientDeadLetter(ctx, a, rejected)
	if res.Reply != nil {
		a.with(slog.Int("smtp_code", res.Reply.Code))
	}
	// A first attempt's receipt is the whole story; after earlier
	// attempts the merged one is read back.
	whole := len(d.Recipients) == 0
	if whole && len(rejected) == 0 && st.State == ledger.AccountOK && h.startAsyncReceipt() {
		h.completeAsync(ctx, a, r)
		return nil
	}
	return h.complete(ctx, a, st, r, whole)
}

// completeAsync writes the receipt and the task result of a first attempt
// that delivered to every recipient without waiting for them: the task
// returns, and asynq acknowledges it, while they are written
// (HandlerConfig.AsyncReceipt). Should the process die before they are,
// the acknowledgement is the record: recoverReceipt reads it. The caller
// counted the write in h.receipts (startAsyncReceipt).
func (h *Handler) completeAsync(ctx context.Context, a *attempt, r *ledger.Receipt) {
	var result []ledger.HashField
	if f, ok := h.resultField(a, r); ok {
		result = append(result, f)
	} else {
		h.writeResult(a, r) // through asynq, before the task returns
	}
	go func() {
		defer h.receipts.Done()
		if err := h.writeReceipt(ctx, r, result...); err != nil {
			a.logger().Error("delivered but could not write the receipt; the task's acknowledgement stands for it", "error", err)
		}
	}()
	logDelivered(ctx, a, r)
}

// recoverReceipt handles a message without a receipt that another task
// started an attempt of: if asynq completed that task, its handler
// returned success, so it delivered to every recipient then pending, and
// only its receipt, written after (HandlerConfig.AsyncReceipt), was lost.
// recoverReceipt then writes that receipt and sets d.Receipt, so that this
// task completes without sending. Without an Inspector, or when the other
// task is not complete (it failed, is retrying, or is gone), it does
// nothing: the send goes ahead.
func (h *Handler) recoverReceipt(ctx context.Context, a *attempt, d *ledger.Delivery) error {
	last := d.LastAttempt
	if h.cfg.Inspector == nil || last == nil || last.TaskID == a.taskID && last.Queue == a.queue {
		return nil
	}
	info, err := h.cfg.Inspector.GetTaskInfo(last.Queue, last.TaskID)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("look up task %s, which attempted the same message: %w", last.TaskID, err)
	case info.State != asynq.TaskStateCompleted:
		return nil
	}
	_, rcpts := a.payload.Envelope()
	r := &ledger.Receipt{
		MessageID:         a.payload.MessageID,
		TaskID:            last.TaskID,
		Accepted:          d.Pending(rcpts),
		Reply:             "unknown: recovered from the completion of task " + last.TaskID,
		PossibleDuplicate: d.PossibleDuplicate,
	}
	if err := h.writeReceipt(ctx, r); err != nil {
		return fmt.Errorf("write the receipt of task %s, which delivered the message: %w", last.TaskID, err)
	}
	a.logger().Warn("receipt recovered: another task of this message completed without writing it", "completed_task_id", last.TaskID)
	full, err := h.cfg.Ledger.Delivery(ctx, a.payload.MessageID)
	if err != nil {
		return fmt.Errorf("read the recovered receipt: %w", err)
	}
	d.Receipt = full.Receipt
	return nil
}

// complete writes the receipt and the task result. The receipt is written
// before anything else: from then on a redelivered task does not send.
// A first attempt's receipt (whole) is the task's result; after earlier
// attempts the receipt merged over all of them is read back for it.
func (h *Handler) complete(ctx context.Context, a *attempt, st ledger.AccountStatus, r *ledger.Receipt, whole bool) error {
	var result []ledger.HashField
	if whole {
		if f, ok := h.resultField(a, r); ok {
			result = append(result, f)
		}
	}
	if err := h.writeReceipt(ctx, r, result...); err != nil {
		// The message went out; returning an error would send it again.
		// Log loudly and complete: asynq's acknowledgement is the second
		// record of success.
		a.logger().Error("delivered but could not write the receipt; a redelivery of this task would send again", "error", err)
		result = nil
	}
	if st.State != ledger.AccountOK {
		if err := h.cfg.Ledger.Succeeded(ctx, a.payload.AccountID); err != nil {
			a.logger().Warn("could not mark the account healthy", "error", err)
		}
	}
	if !whole {
		if full, err := h.cfg.Ledger.Delivery(ctx, r.MessageID); err == nil && full.Receipt != nil {
			r = full.Receipt
		}
	}
	if result == nil {
		h.writeResult(a, r)
	}
	logDelivered(ctx, a, r)
	return nil
}

// logDelivered writes the one line of a delivered message. Its attributes
// are formatted once, not kept in a logger first.
func logDelivered(ctx context.Context, a *attempt, r *ledger.Receipt) {
	a.base.LogAttrs(ctx, slog.LevelInfo, "delivered", append(slices.Clip(a.attrs),
		slog.Int("accepted", len(r.Accepted)), slog.Int("rejected", len(r.Rejected)), slog.Bool("possible_duplicate", r.PossibleDuplicate))...)
}

// resultField returns the task result of r as the hash field asynq's
// ResultWriter would set, for the receipt's transaction; ok is false when
// ResultInReceipt is off or the task runs outside an asynq server.
func (h *Handler) resultField(a *attempt, r *ledger.Receipt) (f ledger.HashField, ok bool) {
	if !h.cfg.ResultInReceipt || a.queue == "" || a.taskID == "" || a.task.ResultWriter() == nil {
		return f, false
	}
	b, err := json.Marshal(resultOf(r))
	if err != nil {
		return f, false
	}
	return ledger.HashField{Key: asynqTaskKey(a.queue, a.taskID), Field: asynqResultField, Value: b}, true
}

// asynqTaskKey is the Redis hash in which asynq keeps a task, and
// asynqResultField the field its ResultWriter writes (asynq v0.26's
// internal/base.TaskKey and rdb.WriteResult);
// TestAdminStatus/CompletedWithTheResult reads the result back through
// asynq's Inspector, so an upgrade that moves them fails there.
func asynqTaskKey(queue, taskID string) string { return "asynq:{" + queue + "}:t:" + taskID }

const asynqResultField = "result"

// writeReceipt retries a failed receipt write a few times: Redis blips are
// short, and a missing receipt is what turns a crash into a duplicate.
func (h *Handler) writeReceipt(ctx context.Context, r *ledger.Receipt, also ...ledger.HashField) error {
	// Keep trying through a Redis restart or failover (seconds), even when
	// the task's context ends: the message is out, and only the receipt
	// stops a later redelivery from sending it again.
	var err error
	delay := 50 * time.Millisecond
	for deadline := time.Now().Add(receiptPatience); ; {
		if err = h.cfg.Ledger.WriteReceipt(context.WithoutCancel(ctx), r, also...); err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
		delay = min(2*delay, time.Second)
	}
}

// receiptPatience is how long writeReceipt keeps trying.
const receiptPatience = 20 * time.Second

// failed turns a failed submission into a retry, a deferral or a dead letter.
func (h *Handler) failed(ctx context.Context, a *attempt, d *ledger.Delivery, res *smtpoauth.Result, sendErr error) error {
	c := smtpoauth.Classify(sendErr)
	h.observe(a, c.Class.String())
	a.smtpCode = c.Code
	log := a.logger().With("class", c.Class.String())
	if c.Code != 0 {
		log = log.With("smtp_code", c.Code)
	}
	p := a.payload
	now := h.cfg.NowFunc()

	// Recipients refused for good in this attempt stay refused whatever
	// happened next.
	var rejected []ledger.Rejection
	if res != nil {
		rejected, _ = splitRejections(res)
	}

	switch c.Class {
	case smtpoauth.ClassPermanentRecipient:
		if err := h.cfg.Ledger.RecordRecipients(ctx, p.MessageID, a.taskID, nil, "", rejected); err != nil {
			return fmt.Errorf("record rejected recipients: %w", err)
		}
		if anyAccepted(d) {
			// Earlier attempts delivered to the others: the message is
			// complete, these recipients are dead letters of their own.
			log.Warn("remaining recipients rejected", "rejected", len(rejected), "reason", c.Reason)
			h.recipientDeadLetter(ctx, a, rejected)
			return h.complete(ctx, a, ledger.AccountStatus{State: ledger.AccountOK}, &ledger.Receipt{MessageID: p.MessageID, TaskID: a.taskID, Reply: acceptedReply(d), PossibleDuplicate: d.PossibleDuplicate}, false)
		}
		return h.deadLetter(ctx, a, ledger.DeadLetterMessage, addresses(rejected), c.Class, c.Reason)

	case smtpoauth.ClassPermanentMessage:
		return h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, c.Class, c.Reason)

	case smtpoauth.ClassThrottle:
		until := now.Add(max(c.RetryAfter, time.Second))
		if err := h.cfg.Ledger.Throttle(ctx, p.AccountID, until, c.Reason); err != nil {
			log.Warn("could not record the throttle", "error", err)
		}
		log.Warn("account throttled", "until", until, "reason", c.Reason)
		return &deferError{until: until, reason: c.Reason}

	case smtpoauth.ClassAuth:
		var st ledger.AccountStatus
		var err error
		if c.InvalidGrant {
			st, err = h.cfg.Ledger.InvalidGrant(ctx, p.AccountID, c.Reason, h.cfg.InvalidGrantThreshold, h.cfg.InvalidGrantWindow)
		} else {
			st, err = h.cfg.Ledger.AuthFailed(ctx, p.AccountID, c.Reason)
		}
		if err != nil {
			return fmt.Errorf("%s (and recording it failed: %v)", c.Reason, err)
		}
		until := st.Until
		if st.State == ledger.AccountHeld || !until.After(now) {
			until = now.Add(h.retry.HeldRecheck)
		}
		log.Error("authentication failing: the account's mail is deferred", "state", string(st.State), "until", until, "reason", c.Reason)
		return &deferError{until: until, reason: c.Reason}

	case smtpoauth.ClassNeedsHuman:
		if err := h.cfg.Ledger.Hold(ctx, p.AccountID, c.Hold, c.Reason); err != nil {
			return fmt.Errorf("%s (and holding the account failed: %v)", c.Reason, err)
		}
		log.Error("account held: needs "+c.Hold, "reason", c.Reason)
		return &deferError{until: now.Add(h.retry.HeldRecheck), reason: c.Reason}

	case smtpoauth.ClassAmbiguous:
		if err := h.cfg.Ledger.MarkPossibleDuplicate(ctx, p.MessageID, a.taskID); err != nil {
			log.Warn("could not flag the possible duplicate", "error", err)
		}
		log.Warn("connection lost after the message was sent: retrying, possible duplicate", "error", sendErr)
	default:
		log.Warn("send failed, will retry", "error", sendErr)
	}
	if len(rejected) > 0 {
		if err := h.cfg.Ledger.RecordRecipients(ctx, p.MessageID, a.taskID, nil, "", rejected); err != nil {
			log.Warn("could not record rejected recipients", "error", err)
		}
		h.recipientDeadLetter(ctx, a, rejected)
	}
	if a.retried >= min(a.maxRetry, h.retry.MaxAttempts) {
		return h.deadLetter(ctx, a, ledger.DeadLetterMessage, nil, c.Class,
			fmt.Sprintf("gave up after %d attempts: %s", a.retried+1, c.Reason))
	}
	return sendErr
}

// deadLetter records a durable dead letter and returns the error that makes
// asynq archive the task with the same reason.
func (h *Handler) deadLetter(ctx context.Context, a *attempt, kind string, rcpts []string, class smtpoauth.Class, reason string) error {
	dl := &ledger.DeadLetter{
		ID:      a.taskID,
		Kind:    kind,
		TaskID:  a.taskID,
		Queue:   a.queue,
		Reason:  reason,
		Class:   class.String(),
		Payload: a.task.Payload(),
	}
	if a.payload != nil {
		dl.MessageID = a.payload.MessageID
		dl.Account = a.payload.AccountID
		if rcpts == nil {
			_, rcpts = a.payload.Envelope()
		}
	}
	dl.Recipients = rcpts
	if err := h.cfg.Ledger.AddDeadLetter(context.WithoutCancel(ctx), dl); err != nil {
		// Without the durable record, keep the task retrying rather than
		// archive it where asynq may trim it silently.
		return fmt.Errorf("%s (dead letter not recorded: %v)", reason, err)
	}
	log := a.logger()
	if a.smtpCode != 0 {
		log = log.With("smtp_code", a.smtpCode)
	}
	log.Error("dead-lettered", "class", class.String(), "reason", reason)
	return fmt.Errorf("%s: %w", reason, asynq.SkipRetry)
}

// recipientDeadLetter records recipients refused for good while the message
// went, or goes, to the others.
func (h *Handler) recipientDeadLetter(ctx context.Context, a *attempt, rejected []ledger.Rejection) {
	if len(rejected) == 0 {
		return
	}
	reason := "recipient rejected: " + rejected[0].Reply
	if len(rejected) > 1 {
		reason = fmt.Sprintf("%d recipients rejected, first %s: %s", len(rejected), rejected[0].Address, rejected[0].Reply)
	}
	dl := &ledger.DeadLetter{
		Kind:       ledger.DeadLetterRecipients,
		TaskID:     a.taskID,
		Queue:      a.queue,
		MessageID:  a.payload.MessageID,
		Account:    a.payload.AccountID,
		Recipients: addresses(rejected),
		Reason:     reason,
		Class:      smtpoauth.ClassPermanentRecipient.String(),
		Payload:    a.task.Payload(),
	}
	if err := h.cfg.Ledger.AddDeadLetter(context.WithoutCancel(ctx), dl); err != nil {
		a.logger().Error("could not record the rejected recipients as a dead letter", "error", err)
		return
	}
	a.logger().Warn("recipients rejected", "rejected", len(rejected), "reason", reason,
		"class", dl.Class, "smtp_code", replyCode(rejected[0].Reply))
}

func (h *Handler) writeResult(a *attempt, r *ledger.Receipt) {
	w := a.task.ResultWriter()
	if w == nil {
		return
	}
	b, err := json.Marshal(resultOf(r))
	if err == nil {
		_, err = w.Write(b)
	}
	if err != nil {
		a.logger().Warn("could not write the task result", "error", err)
	}
}

// resultOf is the task result of a receipt.
func resultOf(r *ledger.Receipt) Result {
	return Result{MessageID: r.MessageID, Accepted: r.Accepted, Rejected: r.Rejected, Reply: r.Reply, PossibleDuplicate: r.PossibleDuplicate}
}

// splitRejections separates the recipients refused for good (5xx) from the
// deferred ones (4xx, or no reply).
func splitRejections(res *smtpoauth.Result) (rejected []ledger.Rejection, deferred []smtpoauth.RecipientResult) {
	if res == nil {
		return nil, nil
	}
	for _, r := range res.Rejected() {
		if r.Reply != nil && r.Reply.Code >= 500 {
			c := smtpoauth.ClassifyReply(smtpoauth.StageRcpt, r.Reply)
			if c.Class == smtpoauth.ClassPermanentRecipient {
				rejected = append(rejected, ledger.Rejection{Address: r.Address, Reply: smtpoauth.FormatReply(r.Reply)})
				continue
			}
		}
		deferred = append(deferred, r)
	}
	return rejected, deferred
}

// acceptedReply returns the reply to the end of DATA recorded for an
// earlier attempt's accepted recipients, the message's final reply when the
// last attempt sent nothing.
func acceptedReply(d *ledger.Delivery) string {
	var latest ledger.RecipientStatus
	for _, st := range d.Recipients {
		if st.State == ledger.RecipientAccepted && st.At.After(latest.At) {
			latest = st
		}
	}
	return latest.Reply
}

// anyAccepted reports whether an earlier attempt delivered to a recipient.
func anyAccepted(d *ledger.Delivery) bool {
	for _, st := range d.Recipients {
		if st.State == ledger.RecipientAccepted {
			return true
		}
	}
	return false
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// replyCode returns the code that starts a reply formatted by
// smtpoauth.FormatReply, 0 when there is none.
func replyCode(reply string) int {
	code, _, _ := strings.Cut(reply, " ")
	n, err := strconv.Atoi(code)
	if err != nil || n < 100 || n > 599 {
		return 0
	}
	return n
}

func addresses(rs []ledger.Rejection) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Address
	}
	return out
}

// RetryDelay is the asynq.RetryDelayFunc of sendq's tasks: a deferred task
// waits until its account may send again; a failed one backs off
// exponentially with full jitter (RetryPolicy.Backoff).
func (h *Handler) RetryDelay(n int, err error, t *asynq.Task) time.Duration {
	var de *deferError
	if errors.As(err, &de) {
		return max(de.until.Sub(h.cfg.NowFunc()), 0)
	}
	return h.retry.Backoff(n)
}

// IsFailure reports whether err counts against the task's retries: a
// deferral of a throttled, failing or held account does not.
func (h *Handler) IsFailure(err error) bool {
	var de *deferError
	return !errors.As(err, &de)
}
