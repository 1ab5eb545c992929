package tasks

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
)

// DefaultRetention is how long a completed task, and so its idempotency key,
// stays in Redis unless the Retention option says otherwise.
const DefaultRetention = 24 * time.Hour

// Client enqueues emails. It wraps an *asynq.Client and is safe for
// concurrent use.
type Client struct {
	c     *asynq.Client
	owned bool
}

// NewClient returns a Client with its own connection to Redis; Close closes
// it.
func NewClient(r asynq.RedisConnOpt) *Client {
	return &Client{c: asynq.NewClient(r), owned: true}
}

// NewClientFrom returns a Client that enqueues through c. The caller keeps
// ownership of c: Close does not close it.
func NewClientFrom(c *asynq.Client) *Client {
	return &Client{c: c}
}

// Close closes the connection made by NewClient; it does nothing for a
// Client made by NewClientFrom.
func (c *Client) Close() error {
	if !c.owned {
		return nil
	}
	return c.c.Close()
}

// Enqueued describes an enqueued email.
type Enqueued struct {
	// TaskID is the asynq task ID: "idem-" and 32 hex digits with an
	// idempotency key, asynq's random ID otherwise.
	TaskID string
	// MessageID is the Message-ID header value, angle brackets included.
	// For a Duplicate it is the ID derived from the key, which is the queued
	// email's unless the earlier call had a From with another domain.
	MessageID string
	// Queue is the asynq queue the task is in.
	Queue string
	// Duplicate reports that a task with the same idempotency key already
	// existed, so nothing was enqueued.
	Duplicate bool
}

// Enqueue validates e (see Email.ValidateLimits), builds its payload and
// enqueues it. An invalid email returns an error matching ErrInvalidEmail
// before anything touches Redis.
//
// With the IdempotencyKey option, the task ID and the Message-ID are derived
// from the account and the key: if that task already exists in the queue
// (pending, scheduled, retrying, archived, or completed within its retention),
// Enqueue enqueues nothing and returns the Enqueued with Duplicate set and a
// nil error.
func (c *Client) Enqueue(ctx context.Context, e *Email, opts ...Option) (*Enqueued, error) {
	res, err := c.enqueue(ctx, e, opts)
	if err != nil {
		return nil, fmt.Errorf("enqueue email: %w", err)
	}
	return res, nil
}

func (c *Client) enqueue(ctx context.Context, e *Email, opts []Option) (*Enqueued, error) {
	t, err := newTask(e, opts)
	if err != nil {
		return nil, err
	}
	res := &Enqueued{TaskID: t.taskID, MessageID: t.payload.MessageID, Queue: t.queue}
	info, err := c.c.EnqueueContext(ctx, t.task)
	switch {
	case t.taskID != "" && (errors.Is(err, asynq.ErrTaskIDConflict) || errors.Is(err, asynq.ErrDuplicateTask)):
		res.Duplicate = true
		return res, nil
	case err != nil:
		return nil, err
	}
	res.TaskID, res.Queue = info.ID, info.Queue
	return res, nil
}

// batchConcurrency is how many enqueues of a batch are in flight at once:
// each is a Redis round trip, and a few at a time keep one connection per
// goroutine of the client's pool busy.
const batchConcurrency = 8

// EnqueueBatch enqueues each email as Enqueue does, up to eight at a time
// (the queue order of a batch's tasks is not guaranteed), and carries on past
// failures: the result has one entry per email, in the order of emails, nil
// for those that failed, and the error joins one error per failure naming
// its index ("emails[3]: ..."). With the IdempotencyKey option, email i gets
// the key "<key>#<i>", so re-sending the same batch enqueues nothing new.
func (c *Client) EnqueueBatch(ctx context.Context, emails []*Email, opts ...Option) ([]*Enqueued, error) {
	var o options
	o.apply(opts)
	out := make([]*Enqueued, len(emails))
	errs := make([]error, len(emails))
	sem := make(chan struct{}, batchConcurrency)
	var wg sync.WaitGroup
	for i, e := range emails {
		if err := ctx.Err(); err != nil {
			errs[i] = fmt.Errorf("enqueue batch: emails[%d:]: %w", i, err)
			break
		}
		itemOpts := opts
		if o.key != "" {
			itemOpts = append(opts[:len(opts):len(opts)], IdempotencyKey(fmt.Sprintf("%s#%d", o.key, i)))
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res, err := c.enqueue(ctx, e, itemOpts)
			if err != nil {
				errs[i] = fmt.Errorf("enqueue batch: emails[%d]: %w", i, err)
				return
			}
			out[i] = res
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// NewTask validates e and returns the asynq task Enqueue would enqueue, for
// code that uses an asynq.Client directly, and its payload. The task carries
// the options (queue, task ID, retention and the others) as asynq options.
// The payload shares e's slices.
func NewTask(e *Email, opts ...Option) (*asynq.Task, *Payload, error) {
	t, err := newTask(e, opts)
	if err != nil {
		return nil, nil, err
	}
	return t.task, t.payload, nil
}

type builtTask struct {
	task    *asynq.Task
	payload *Payload
	taskID  string // "" without an idempotency key
	queue   string
}

func newTask(e *Email, opts []Option) (*builtTask, error) {
	var o options
	o.apply(opts)
	if o.err != nil {
		return nil, o.err
	}
	if e == nil {
		return nil, &ValidationError{Reason: "email is nil"}
	}
	var c checker
	if o.key != "" {
		if r := checkID(o.key); r != "" {
			c.add("idempotency_key", r)
		}
	}
	e.check(&c, o.limits.WithDefaults())
	if err := c.err(); err != nil {
		return nil, err
	}

	p := &Payload{
		Version:        PayloadVersion,
		MessageID:      newMessageID(e.AccountID, c.fromAddress, o.key),
		Date:           time.Now().Truncate(time.Second),
		IdempotencyKey: o.key,
		Email:          *e,
	}
	data, err := encodePayload(p)
	if err != nil {
		return nil, err
	}

	t := &builtTask{payload: p, queue: o.queue}
	aopts := append(make([]asynq.Option, 0, 3+len(o.asynq)), asynq.Queue(o.queue), retentionOption, maxRetryOption)
	if o.key != "" {
		t.taskID = taskIDFor(e.AccountID, o.key)
		aopts = append(aopts, asynq.TaskID(t.taskID))
	}
	aopts = append(aopts, o.asynq...)
	t.task = asynq.NewTask(TypeSendEmail, data, aopts...)
	return t, nil
}

// The asynq options every task gets unless Option says otherwise, made once.
var (
	retentionOption = asynq.Retention(DefaultRetention)
	maxRetryOption  = asynq.MaxRetry(DefaultMaxRetry)
)

// idEncoding is base32 (RFC 4648) in lower case, without padding.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newMessageID returns "<id@domain>" with the domain of the address from
// (its address part, "a@example.com") and an id of 128 bits: random, or
// derived from the account and the idempotency key.
func newMessageID(accountID, from, key string) string {
	var id [16]byte
	if key != "" {
		h := sha256.Sum256([]byte("sendq message-id\x00" + accountID + "\x00" + key))
		id = [16]byte(h[:16])
	} else {
		_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	}
	domain := messageIDDomain(from)
	b := make([]byte, 0, 2+idEncoding.EncodedLen(len(id))+1+len(domain))
	b = append(b, '<')
	b = idEncoding.AppendEncode(b, id[:])
	b = append(b, '@')
	b = append(b, domain...)
	return string(append(b, '>'))
}

// messageIDDomain returns the domain of the address from ("a@example.com"),
// or "sendq.invalid" when it cannot be the right-hand side of a Message-ID.
func messageIDDomain(from string) string {
	const fallback = "sendq.invalid"
	i := strings.LastIndexByte(from, '@')
	if i < 0 {
		return fallback
	}
	domain := strings.ToLower(from[i+1:])
	if !isDotAtom(domain) && checkMessageID("<x@"+domain+">") != "" {
		return fallback
	}
	return domain
}

// taskIDFor derives the asynq task ID of an email with an idempotency key.
func taskIDFor(accountID, key string) string {
	h := sha256.Sum256([]byte("sendq task-id\x00" + accountID + "\x00" + key))
	return "idem-" + hex.EncodeToString(h[:16])
}

// Option configures Enqueue, EnqueueBatch and NewTask.
type Option func(*options)

type options struct {
	queue  string
	key    string
	limits Limits
	asynq  []asynq.Option // schedule, retries, timeout, retention: applied last
	err    error
}

func (o *options) apply(opts []Option) {
	o.queue = DefaultQueue
	for _, opt := range opts {
		opt(o)
	}
}

// Queue enqueues on the named asynq queue instead of DefaultQueue.
func Queue(name string) Option {
	return func(o *options) {
		if strings.TrimSpace(name) == "" {
			o.err = errors.New("invalid option: queue name is empty")
			return
		}
		o.queue = name
	}
}

// ProcessAt schedules the email for t instead of sending it at once.
func ProcessAt(t time.Time) Option {
	return func(o *options) { o.asynq = append(o.asynq, asynq.ProcessAt(t)) }
}

// ProcessIn schedules the email d from now instead of sending it at once.
func ProcessIn(d time.Duration) Option {
	return func(o *options) { o.asynq = append(o.asynq, asynq.ProcessIn(d)) }
}

// IdempotencyKey makes enqueueing idempotent: the task ID and the Message-ID
// are derived from the account and key, and enqueueing the same account and
// key again on the same queue while the task exists (up to its retention
// after completion) enqueues nothing and reports Enqueued.Duplicate. asynq
// task IDs are unique per queue, so the same key on another queue is another
// email. An empty key means none. The key is stored in the payload; at most
// 250 bytes, no control characters.
func IdempotencyKey(key string) Option {
	return func(o *options) { o.key = key }
}

// MaxRetry sets asynq's retry limit of the task (default DefaultMaxRetry).
// The worker's RetryPolicy.MaxAttempts and queue lifetime normally give up
// first, with a dead letter; this is asynq's backstop.
func MaxRetry(n int) Option {
	return func(o *options) { o.asynq = append(o.asynq, asynq.MaxRetry(n)) }
}

// Timeout bounds one attempt (asynq's default: 30 minutes).
func Timeout(d time.Duration) Option {
	return func(o *options) { o.asynq = append(o.asynq, asynq.Timeout(d)) }
}

// Retention keeps the completed task, its result and so its idempotency key
// for d after completion (default DefaultRetention; 0 deletes it at once).
func Retention(d time.Duration) Option {
	return func(o *options) { o.asynq = append(o.asynq, asynq.Retention(d)) }
}

// WithLimits validates with l instead of the default Limits. The worker
// decoding the task must accept the same limits (DecodePayloadLimits).
func WithLimits(l Limits) Option {
	return func(o *options) { o.limits = l }
}
