package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/ledger"
)

// ErrTaskNotFound is matched (errors.Is) by the error Admin.Status returns
// when the queue holds no task with the given ID and the ledger has no dead
// letter for it either: a wrong ID or queue, or a completed task whose
// retention has passed.
var ErrTaskNotFound = errors.New("task not found")

// Admin is the operator's side of sendq, beside the producer's Client: what
// became of a task (Status), the dead letters and their requeue (DeadLetters,
// Requeue, RequeueAll), and the health of the sending accounts
// (AccountStatus, Accounts, ResumeAccount). It reads asynq's queues through an
// asynq.Inspector and the workers' shared state through a ledger.Store, and
// never returns a message body. It is safe for concurrent use.
type Admin struct {
	rdb    redis.UniversalClient
	insp   *asynq.Inspector
	client *asynq.Client
	ledger *ledger.Store
}

// NewAdmin returns an Admin with its own connection to r, the Redis server of
// the queue and of the workers' ledger; Close closes it. opts must name the
// workers' ledger: the zero value is the ledger's defaults, which is what
// the worker uses.
func NewAdmin(r asynq.RedisConnOpt, opts ledger.Options) (*Admin, error) {
	if r == nil {
		return nil, errors.New("tasks: NewAdmin: the redis connection option is nil")
	}
	rdb, ok := r.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("tasks: NewAdmin: %T does not make a go-redis v9 client", r)
	}
	return &Admin{
		rdb:    rdb,
		insp:   asynq.NewInspectorFromRedisClient(rdb),
		client: asynq.NewClientFromRedisClient(rdb),
		ledger: ledger.New(rdb, opts),
	}, nil
}

// Close closes the Admin's connection to Redis.
func (a *Admin) Close() error {
	return a.rdb.Close()
}

// TaskState is where a task is in its life, as Status reports it.
type TaskState string

// The task states. They are asynq's, with asynq's "retry" named "retrying".
const (
	// StatePending: the task waits for a worker.
	StatePending TaskState = "pending"
	// StateScheduled: the task waits for the time it was scheduled for
	// (Status.NextAttempt).
	StateScheduled TaskState = "scheduled"
	// StateRetrying: an attempt failed or was deferred; the next one is at
	// Status.NextAttempt.
	StateRetrying TaskState = "retrying"
	// StateActive: a worker is delivering the message now.
	StateActive TaskState = "active"
	// StateArchived: the message was given up; Status.Reason says why and
	// the ledger keeps it as a dead letter (see Admin.Requeue).
	StateArchived TaskState = "archived"
	// StateCompleted: every recipient was accepted or refused for good;
	// Status.Result says which.
	StateCompleted TaskState = "completed"
)

// deferredPrefix starts the error of a deferred attempt (see deferError):
// the account was throttled, failing authentication or held.
const deferredPrefix = "deferred until "

// Status is what became of one email:send task, for a producer or an
// operator asking. It never holds the message's content: of the payload it
// shows only the Message-ID and the account.
type Status struct {
	// TaskID and Queue name the task.
	TaskID string `json:"task_id"`
	Queue  string `json:"queue"`
	// State is where the task is.
	State TaskState `json:"state"`
	// MessageID is the Message-ID header value, the key of the message's
	// delivery state in the ledger.
	MessageID string `json:"message_id,omitempty"`
	// Account is the id of the sending account.
	Account string `json:"account,omitempty"`
	// Attempts counts the task's retries so far (asynq's Retried): the
	// failed attempts that were tried again. Neither the attempt that got a
	// task archived nor the deferrals of a throttled or held account count.
	// MaxRetry is the task's bound on them.
	Attempts int `json:"attempts"`
	MaxRetry int `json:"max_retry"`
	// NextAttempt is when the task runs next, for StateScheduled and
	// StateRetrying; zero otherwise.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// Deferred reports a StateRetrying task that waits because its account
	// is throttled, failing authentication or held, not because an attempt
	// of its own failed; LastError says until when and why.
	Deferred bool `json:"deferred,omitempty"`
	// LastError is the error of the last failed or deferred attempt.
	LastError string `json:"last_error,omitempty"`
	// Class is the failure's classification (smtpoauth.Class names, such as
	// "permanent-message") when the ledger knows it: for an archived task,
	// from its dead letter. Empty otherwise.
	Class string `json:"class,omitempty"`
	// Reason is why an archived task was given up, from its dead letter.
	Reason string `json:"reason,omitempty"`
	// Trimmed reports an archived task that asynq has trimmed from its
	// archive (past 10,000 tasks or 90 days): what Status shows comes from
	// the ledger's dead letter, which Admin.Requeue can still requeue.
	Trimmed bool `json:"trimmed,omitempty"`
	// CompletedAt is when a StateCompleted task completed.
	CompletedAt time.Time `json:"completed_at,omitzero"`
	// Result is what a completed task wrote: the accepted and refused
	// recipients and the server's reply, or its message's receipt when the
	// result is not in yet (a worker writes both just after asynq
	// completes the task). Nil when neither is there.
	Result *Result `json:"result,omitempty"`
}

// Status returns what became of the task taskID in queue. A task asynq no
// longer has but the ledger keeps as a dead letter is reported archived and
// Trimmed; any other unknown task returns an error matching ErrTaskNotFound.
func (a *Admin) Status(ctx context.Context, queue, taskID string) (*Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("look up task %s: %w", taskID, err)
	}
	if queue == "" || taskID == "" {
		return nil, fmt.Errorf("look up task %q in queue %q: %w", taskID, queue, ErrTaskNotFound)
	}
	info, err := a.insp.GetTaskInfo(queue, taskID)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return a.trimmedStatus(ctx, queue, taskID)
	}
	if err != nil {
		return nil, fmt.Errorf("look up task %s: %w", taskID, err)
	}
	st := &Status{
		TaskID:    info.ID,
		Queue:     info.Queue,
		State:     stateOf(info.State),
		Attempts:  info.Retried,
		MaxRetry:  info.MaxRetry,
		LastError: info.LastErr,
	}
	st.MessageID, st.Account = payloadIDs(info.Payload)
	switch st.State {
	case StateScheduled, StateRetrying:
		st.NextAttempt = info.NextProcessAt
		st.Deferred = st.State == StateRetrying && strings.HasPrefix(info.LastErr, deferredPrefix)
	case StateCompleted:
		st.CompletedAt = info.CompletedAt
		if len(info.Result) > 0 {
			var r Result
			if json.Unmarshal(info.Result, &r) == nil {
				st.Result = &r
			}
		}
		if st.Result == nil && st.MessageID != "" {
			// A worker writes the result with the receipt, which may
			// follow the acknowledgement by a moment
			// (HandlerConfig.AsyncReceipt): the receipt says the same.
			d, err := a.ledger.Delivery(ctx, st.MessageID)
			if err != nil {
				return nil, fmt.Errorf("look up task %s: %w", taskID, err)
			}
			if d.Receipt != nil {
				r := resultOf(d.Receipt)
				st.Result = &r
			}
		}
	case StateArchived:
		dl, err := a.ledger.DeadLetter(ctx, taskID)
		switch {
		case errors.Is(err, ledger.ErrNotFound):
			// Archived by hand (asynqmon, Inspector.ArchiveTask):
			// LastError is all there is.
		case err != nil:
			return nil, fmt.Errorf("look up task %s: %w", taskID, err)
		case dl.Queue == "" || dl.Queue == queue:
			st.Reason, st.Class = dl.Reason, dl.Class
		}
	}
	return st, nil
}

// trimmedStatus is Status for a task asynq does not have: archived if the
// ledger keeps its dead letter, not found otherwise.
func (a *Admin) trimmedStatus(ctx context.Context, queue, taskID string) (*Status, error) {
	dl, err := a.ledger.DeadLetter(ctx, taskID)
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		return nil, fmt.Errorf("look up task %s in queue %s: %w", taskID, queue, ErrTaskNotFound)
	case err != nil:
		return nil, fmt.Errorf("look up task %s: %w", taskID, err)
	case dl.Kind != ledger.DeadLetterMessage || dl.Queue != queue:
		return nil, fmt.Errorf("look up task %s in queue %s: %w", taskID, queue, ErrTaskNotFound)
	}
	return &Status{
		TaskID:    taskID,
		Queue:     queue,
		State:     StateArchived,
		MessageID: dl.MessageID,
		Account:   dl.Account,
		Class:     dl.Class,
		Reason:    dl.Reason,
		Trimmed:   true,
	}, nil
}

// stateOf names an asynq task state.
func stateOf(s asynq.TaskState) TaskState {
	if s == asynq.TaskStateRetry {
		return StateRetrying
	}
	return TaskState(s.String())
}

// payloadIDs reads the Message-ID and the account of a payload, and nothing
// else of it. It is lenient: a payload DecodePayload would refuse still
// shows what it has.
func payloadIDs(payload []byte) (messageID, account string) {
	var ids struct {
		MessageID string `json:"message_id"`
		AccountID string `json:"account_id"`
	}
	_ = json.Unmarshal(payload, &ids)
	return ids.MessageID, ids.AccountID
}

// AccountStatus returns the recorded health of the account id; an account the
// ledger knows nothing about is ledger.AccountOK.
func (a *Admin) AccountStatus(ctx context.Context, id string) (ledger.AccountStatus, error) {
	return a.ledger.Account(ctx, id)
}

// Accounts returns the status of every account that is not ledger.AccountOK,
// sorted by account id.
func (a *Admin) Accounts(ctx context.Context) ([]ledger.AccountStatus, error) {
	return a.ledger.Accounts(ctx)
}

// ResumeAccount returns the account id to ledger.AccountOK, whatever held or
// paused it: an operator fixed the cause. Tasks already deferred keep the
// time they were deferred to: a held account's run within
// RetryPolicy.HeldRecheck, a paused one's when its pause would have ended.
func (a *Admin) ResumeAccount(ctx context.Context, id string) error {
	return a.ledger.Resume(ctx, id)
}
