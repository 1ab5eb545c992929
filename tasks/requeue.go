package tasks

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/ledger"
)

// ErrTaskActive is matched by the error of Admin.Requeue when a worker is
// delivering the dead letter's message at that moment: requeueing it then
// could lose or duplicate recipients, so try again when the attempt is over.
var ErrTaskActive = errors.New("task is being delivered")

// DeadLetters returns a page of the ledger's dead letters, newest first,
// without their payloads, and how many there are in all. offset counts from
// the newest; a limit of zero or less means ledger.DefaultDeadLetterPage.
func (a *Admin) DeadLetters(ctx context.Context, offset, limit int) ([]*ledger.DeadLetter, int, error) {
	return a.ledger.DeadLetters(ctx, offset, limit)
}

// RequeueAction says what Admin.Requeue did with a dead letter.
type RequeueAction string

// The requeue actions.
const (
	// RequeueRan: the letter's archived task was moved back to pending
	// (asynq's RunTask), keeping its task ID.
	RequeueRan RequeueAction = "ran"
	// RequeueEnqueued: a task was enqueued from the letter's stored
	// payload: with the letter's task ID for a message letter whose
	// archived task asynq had trimmed, with an ID derived from the
	// Message-ID ("requeue-" and 32 hex digits) for a recipients letter.
	RequeueEnqueued RequeueAction = "enqueued"
	// RequeueQueued: a task of the message was still waiting (pending,
	// scheduled or retrying); its next attempt includes the recipients
	// whose rejections were forgotten.
	RequeueQueued RequeueAction = "queued"
	// RequeueCompleted: the letter's task has completed since the letter
	// was written (an earlier requeue did not get to remove it): the stale
	// letter was removed and nothing is sent.
	RequeueCompleted RequeueAction = "completed"
)

// Requeued describes a requeued dead letter.
type Requeued struct {
	// ID is the dead letter's ID.
	ID string `json:"id"`
	// Kind is the letter's kind, ledger.DeadLetterMessage or
	// ledger.DeadLetterRecipients.
	Kind string `json:"kind"`
	// TaskID and Queue name the task that delivers the mail now: ask
	// Admin.Status what becomes of it.
	TaskID string `json:"task_id"`
	Queue  string `json:"queue"`
	// Action says what Requeue did.
	Action RequeueAction `json:"action"`
}

// Requeue gives the mail of the dead letter id another chance and removes
// the letter. It first forgets the message's rejected recipients in the
// ledger (ledger.Store.ForgetRejections), so that they are tried again; the
// ledger still holds the recipients that have the message, and they never
// get it twice.
//
//   - A message letter (the whole task was given up): its archived task is
//     run again (RequeueRan); if asynq has trimmed it from its archive, a
//     task with the same ID, queue and payload is enqueued (RequeueEnqueued).
//   - A recipients letter (the message went to the others): a task is
//     enqueued from the stored payload, with an ID derived from the
//     Message-ID so that requeueing several letters of one message makes
//     one task (RequeueEnqueued); it sends only to the forgotten recipients.
//   - If a task of the message is still waiting in the queue, it takes them
//     along instead (RequeueQueued); if a worker is delivering it now,
//     Requeue changes nothing and returns an error matching ErrTaskActive.
//
// An unknown id returns an error matching ledger.ErrNotFound. The letter is
// removed before its task can run, so a new failure records a new letter; if
// running or enqueueing then fails, the letter is written back.
func (a *Admin) Requeue(ctx context.Context, id string) (*Requeued, error) {
	dl, err := a.ledger.DeadLetter(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("requeue: %w", err)
	}
	rq, err := a.requeue(ctx, dl)
	if err != nil {
		return nil, fmt.Errorf("requeue dead letter %s: %w", id, err)
	}
	return rq, nil
}

// RequeueAll requeues every dead letter there is when it starts, as Requeue
// does, and returns how many it requeued. It carries on past failures: the
// error joins one error per letter it could not requeue. Letters written
// while it runs (new failures of the requeued mail) are left for later.
func (a *Admin) RequeueAll(ctx context.Context) (int, error) {
	var ids []string
	seen := make(map[string]bool)
	for offset := 0; ; offset += ledger.DefaultDeadLetterPage {
		page, total, err := a.ledger.DeadLetters(ctx, offset, ledger.DefaultDeadLetterPage)
		if err != nil {
			return 0, fmt.Errorf("requeue all: %w", err)
		}
		for _, dl := range page {
			if !seen[dl.ID] {
				seen[dl.ID] = true
				ids = append(ids, dl.ID)
			}
		}
		if len(page) == 0 || offset+len(page) >= total {
			break
		}
	}
	n := 0
	var errs []error
	for i, id := range ids {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("requeue all: %d letters left: %w", len(ids)-i, err))
			break
		}
		if _, err := a.Requeue(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

func (a *Admin) requeue(ctx context.Context, dl *ledger.DeadLetter) (*Requeued, error) {
	rq := &Requeued{ID: dl.ID, Kind: dl.Kind, TaskID: dl.TaskID, Queue: cmp.Or(dl.Queue, DefaultQueue)}
	orig, err := a.taskState(rq.Queue, dl.TaskID)
	if err != nil {
		return nil, err
	}
	switch {
	case orig == StateActive:
		return nil, fmt.Errorf("task %s: %w; requeue when the attempt is over", dl.TaskID, ErrTaskActive)
	case waiting(orig):
		rq.Action = RequeueQueued
		return rq, a.forgetAndRemove(ctx, dl)
	case dl.Kind == ledger.DeadLetterMessage && orig == StateCompleted:
		rq.Action = RequeueCompleted
		return rq, a.removeLetter(ctx, dl.ID)
	case dl.Kind == ledger.DeadLetterMessage && orig == StateArchived:
		rq.Action = RequeueRan
		return rq, a.thenRestore(ctx, dl, func() error { return a.insp.RunTask(rq.Queue, dl.TaskID) })
	case dl.Kind == ledger.DeadLetterMessage:
		// Trimmed from asynq's archive: the same task again.
		rq.Action = RequeueEnqueued
		return rq, a.thenRestore(ctx, dl, func() error { return a.enqueueLetter(ctx, rq, dl) })
	}

	// A recipients letter whose task is over: one requeue task per message.
	if dl.MessageID == "" {
		rq.TaskID, rq.Action = "", RequeueEnqueued
		return rq, a.thenRestore(ctx, dl, func() error { return a.enqueueLetter(ctx, rq, dl) })
	}
	rq.TaskID = requeueTaskID(dl.MessageID)
	st, err := a.taskState(rq.Queue, rq.TaskID)
	if err != nil {
		return nil, err
	}
	switch {
	case st == StateActive:
		return nil, fmt.Errorf("task %s: %w; requeue when the attempt is over", rq.TaskID, ErrTaskActive)
	case waiting(st):
		rq.Action = RequeueQueued
		return rq, a.forgetAndRemove(ctx, dl)
	case st != "":
		// An earlier requeue task of the message is over: replace it.
		if err := a.insp.DeleteTask(rq.Queue, rq.TaskID); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
			return nil, fmt.Errorf("delete the earlier requeue task %s: %w", rq.TaskID, err)
		}
	}
	rq.Action = RequeueEnqueued
	return rq, a.thenRestore(ctx, dl, func() error { return a.enqueueLetter(ctx, rq, dl) })
}

// waiting reports whether a task in state s will run again by itself.
func waiting(s TaskState) bool {
	return s == StatePending || s == StateScheduled || s == StateRetrying
}

// taskState returns the state of the task id in queue, "" when asynq has no
// such task (or id is empty).
func (a *Admin) taskState(queue, id string) (TaskState, error) {
	if id == "" {
		return "", nil
	}
	info, err := a.insp.GetTaskInfo(queue, id)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("look up task %s: %w", id, err)
	}
	return stateOf(info.State), nil
}

// forgetAndRemove forgets the message's rejected recipients, so that the
// next attempt tries them, and removes the letter.
func (a *Admin) forgetAndRemove(ctx context.Context, dl *ledger.DeadLetter) error {
	if dl.MessageID != "" {
		if err := a.ledger.ForgetRejections(ctx, dl.MessageID); err != nil {
			return err
		}
	}
	return a.removeLetter(ctx, dl.ID)
}

// removeLetter removes the letter; one already gone (a concurrent requeue)
// is no error.
func (a *Admin) removeLetter(ctx context.Context, id string) error {
	if err := a.ledger.RemoveDeadLetter(ctx, id); err != nil && !errors.Is(err, ledger.ErrNotFound) {
		return err
	}
	return nil
}

// thenRestore runs forgetAndRemove, then queue; when queue fails, it writes
// the letter back so that the mail is not lost from the operator's view.
func (a *Admin) thenRestore(ctx context.Context, dl *ledger.DeadLetter, queue func() error) error {
	if err := a.forgetAndRemove(ctx, dl); err != nil {
		return err
	}
	err := queue()
	if err == nil {
		return nil
	}
	if rerr := a.ledger.AddDeadLetter(context.WithoutCancel(ctx), dl); rerr != nil {
		return fmt.Errorf("%w (and writing the dead letter back failed: %w)", err, rerr)
	}
	return err
}

// enqueueLetter enqueues the letter's payload as the task rq names (a new
// ID when rq.TaskID is empty) and records the ID asynq gave it.
func (a *Admin) enqueueLetter(ctx context.Context, rq *Requeued, dl *ledger.DeadLetter) error {
	if len(dl.Payload) == 0 {
		return errors.New("the dead letter holds no payload to enqueue")
	}
	opts := []asynq.Option{asynq.Queue(rq.Queue), asynq.Retention(DefaultRetention)}
	if rq.TaskID != "" {
		opts = append(opts, asynq.TaskID(rq.TaskID))
	}
	info, err := a.client.EnqueueContext(ctx, asynq.NewTask(TypeSendEmail, dl.Payload, opts...))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		// Enqueued concurrently, by another requeue of the message.
		rq.Action = RequeueQueued
		return nil
	}
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	rq.TaskID = info.ID
	return nil
}

// requeueTaskID derives the task ID of the requeue of a message's rejected
// recipients from its Message-ID.
func requeueTaskID(messageID string) string {
	h := sha256.Sum256([]byte("sendq requeue\x00" + messageID))
	return "requeue-" + hex.EncodeToString(h[:16])
}
