package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RecipientState is what became of one recipient of a message.
type RecipientState string

// The recipient states. A recipient with no state has not been delivered yet.
const (
	// RecipientAccepted: the server accepted the recipient and answered the
	// end of DATA with 250. Never send the message to it again.
	RecipientAccepted RecipientState = "accepted"
	// RecipientRejected: the server refused the recipient for good (5xx at
	// RCPT). Do not retry it unless an operator calls ForgetRejections.
	RecipientRejected RecipientState = "rejected"
)

// RecipientStatus is the recorded outcome for one recipient.
type RecipientStatus struct {
	// Address is the address as last recorded, in its original case.
	Address string
	// State is accepted or rejected.
	State RecipientState
	// Reply is the server's reply: the reply to the end of DATA for an
	// accepted recipient ("250 2.0.0 OK"), the RCPT reply for a rejected
	// one ("550 5.1.1 user unknown").
	Reply string
	// TaskID is the task whose attempt recorded the outcome.
	TaskID string
	// At is when the outcome was recorded.
	At time.Time
}

// Rejection is a recipient the server refused for good, with its reply.
type Rejection struct {
	// Address is the refused recipient.
	Address string `json:"address"`
	// Reply is the server's reply to RCPT TO, "550 5.1.1 user unknown".
	Reply string `json:"reply"`
}

// Receipt is the proof that a message is complete: every recipient was either
// accepted or rejected for good. A message with a receipt must not be sent
// again; a retry of its task completes without sending.
type Receipt struct {
	// MessageID is the message's Message-ID.
	MessageID string `json:"message_id"`
	// TaskID is the task whose attempt completed the message.
	TaskID string `json:"task_id"`
	// Accepted lists the accepted recipients. When read back from the
	// store it lists every recipient accepted in any attempt, sorted by
	// lower-cased address.
	Accepted []string `json:"accepted"`
	// Rejected lists the recipients refused for good, read back like
	// Accepted.
	Rejected []Rejection `json:"rejected,omitempty"`
	// Reply is the server's reply to the end of DATA, "250 2.0.0 OK …".
	Reply string `json:"reply"`
	// PossibleDuplicate is set when some attempt lost its connection after
	// the final "." of DATA: the message may have been delivered twice.
	// Read back, it is also set when MarkPossibleDuplicate was called for
	// the message.
	PossibleDuplicate bool `json:"possible_duplicate,omitempty"`
	// At is when the message was completed. WriteReceipt uses the store's
	// clock when it is zero.
	At time.Time `json:"at"`
}

// Delivery is what the store knows about one message across all its
// attempts, retries and re-enqueues.
type Delivery struct {
	// MessageID is the message's Message-ID, the key of its state.
	MessageID string
	// Recipients maps the lower-cased address of every recipient with an
	// outcome to that outcome. It is empty, never nil, for an unknown
	// message.
	Recipients map[string]RecipientStatus
	// Receipt is nil until the message is complete.
	Receipt *Receipt
	// PossibleDuplicate is set when some attempt lost its connection after
	// the final "." of DATA (see MarkPossibleDuplicate).
	PossibleDuplicate bool
	// RequeuedAt is when an operator last requeued the message (see
	// ForgetRejections); zero if never.
	RequeuedAt time.Time
	// LastAttempt is the task that last started an attempt of the message
	// (StartAttempt) before this read, nil if none did.
	LastAttempt *Attempt
}

// Attempt names a task attempting to deliver a message, as StartAttempt
// records it.
type Attempt struct {
	// Queue and TaskID name the asynq task.
	Queue  string `json:"queue"`
	TaskID string `json:"task_id"`
	// At is when the attempt started. StartAttempt uses the store's clock
	// when it is zero.
	At time.Time `json:"at"`
}

// Status returns the outcome recorded for addr, compared case-insensitively,
// and whether there is one.
func (d *Delivery) Status(addr string) (RecipientStatus, bool) {
	st, ok := d.Recipients[strings.ToLower(addr)]
	return st, ok
}

// Pending returns the recipients of rcpts that have no outcome yet: neither
// accepted nor rejected for good. These are the ones to send to. The order of
// rcpts is kept.
func (d *Delivery) Pending(rcpts []string) []string {
	var out []string
	for _, r := range rcpts {
		if _, done := d.Status(r); !done {
			out = append(out, r)
		}
	}
	return out
}

// Fields of a delivery hash; see the package documentation.
const (
	fieldRecipientPrefix = "rcpt:"
	fieldReceipt         = "receipt"
	fieldDuplicate       = "duplicate"
	fieldRequeued        = "requeued"
	fieldAttempt         = "attempt"
)

// recipientRecord is the JSON value of a recipient field.
type recipientRecord struct {
	Address string         `json:"address"`
	State   RecipientState `json:"state"`
	Reply   string         `json:"reply,omitempty"`
	TaskID  string         `json:"task_id,omitempty"`
	At      time.Time      `json:"at"`
}

// receiptRecord is the JSON value of the receipt field. The recipient lists
// are not stored in it: they are the recipient fields.
type receiptRecord struct {
	TaskID            string    `json:"task_id"`
	Reply             string    `json:"reply"`
	PossibleDuplicate bool      `json:"possible_duplicate,omitempty"`
	At                time.Time `json:"at"`
}

// duplicateRecord is the JSON value of the duplicate field.
type duplicateRecord struct {
	TaskID string    `json:"task_id"`
	At     time.Time `json:"at"`
}

var errEmptyMessageID = errors.New("empty message id")

// Delivery returns the delivery state of the message with the given
// Message-ID in one round trip. For an unknown message it returns an empty
// Delivery, not nil: no recipient done, no receipt.
func (s *Store) Delivery(ctx context.Context, messageID string) (*Delivery, error) {
	if messageID == "" {
		return nil, fmt.Errorf("load delivery: %w", errEmptyMessageID)
	}
	h, err := s.rdb.HGetAll(ctx, s.deliveryKey(messageID)).Result()
	if err != nil {
		return nil, fmt.Errorf("load delivery of %s: %w", messageID, err)
	}
	d, err := decodeDelivery(messageID, h)
	if err != nil {
		return nil, fmt.Errorf("load delivery of %s: %w", messageID, err)
	}
	return d, nil
}

func decodeDelivery(messageID string, h map[string]string) (*Delivery, error) {
	d := &Delivery{MessageID: messageID, Recipients: make(map[string]RecipientStatus)}
	var receipt *receiptRecord
	for f, v := range h {
		switch {
		case strings.HasPrefix(f, fieldRecipientPrefix):
			var rec recipientRecord
			if err := json.Unmarshal([]byte(v), &rec); err != nil {
				return nil, fmt.Errorf("decode field %s: %w", f, err)
			}
			d.Recipients[strings.TrimPrefix(f, fieldRecipientPrefix)] = RecipientStatus(rec)
		case f == fieldReceipt:
			receipt = new(receiptRecord)
			if err := json.Unmarshal([]byte(v), receipt); err != nil {
				return nil, fmt.Errorf("decode field %s: %w", f, err)
			}
		case f == fieldDuplicate:
			d.PossibleDuplicate = true
		case f == fieldRequeued:
			if v, err := strconv.ParseInt(v, 10, 64); err == nil {
				d.RequeuedAt = fromMS(v)
			}
		case f == fieldAttempt:
			a := new(Attempt)
			if err := json.Unmarshal([]byte(v), a); err != nil {
				return nil, fmt.Errorf("decode field %s: %w", f, err)
			}
			d.LastAttempt = a
		}
	}
	if receipt != nil {
		r := &Receipt{
			MessageID:         messageID,
			TaskID:            receipt.TaskID,
			Reply:             receipt.Reply,
			PossibleDuplicate: receipt.PossibleDuplicate || d.PossibleDuplicate,
			At:                receipt.At,
		}
		keys := make([]string, 0, len(d.Recipients))
		for k := range d.Recipients {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			switch st := d.Recipients[k]; st.State {
			case RecipientAccepted:
				r.Accepted = append(r.Accepted, st.Address)
			case RecipientRejected:
				r.Rejected = append(r.Rejected, Rejection{Address: st.Address, Reply: st.Reply})
			}
		}
		d.Receipt = r
	}
	return d, nil
}

// RecordRecipients records the outcome of an attempt that ended with a 250 to
// DATA for the accepted recipients while others were deferred (4xx) and will
// be retried: the accepted and the rejected recipients are done, and a retry
// must not send to them again (see Delivery.Pending). acceptedReply is the
// reply to the end of DATA. It takes one round trip.
//
// An acceptance always overwrites an earlier outcome; a rejection never
// overwrites one, so a recipient once accepted stays accepted.
func (s *Store) RecordRecipients(ctx context.Context, messageID, taskID string, accepted []string, acceptedReply string, rejected []Rejection) error {
	if messageID == "" {
		return fmt.Errorf("record recipients: %w", errEmptyMessageID)
	}
	f, err := encodeRecipients(taskID, accepted, acceptedReply, rejected, s.now())
	if err != nil {
		return fmt.Errorf("record recipients of %s: %w", messageID, err)
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		s.queueRecipients(ctx, p, messageID, f)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record recipients of %s: %w", messageID, err)
	}
	return nil
}

// recipientFields are the delivery-hash fields recording recipients'
// outcomes: set holds field-value pairs for HSET (acceptances, and any other
// field written with them), setNX the rejections' pairs, each set only if
// the recipient has no outcome yet.
type recipientFields struct {
	set   []any
	setNX []fieldValue
}

// fieldValue is one field of a hash and its value.
type fieldValue struct {
	field string
	value []byte
}

// encodeRecipients returns the fields recording accepted and rejected at
// at, or an error for an empty address.
func encodeRecipients(taskID string, accepted []string, acceptedReply string, rejected []Rejection, at time.Time) (recipientFields, error) {
	var f recipientFields
	for _, a := range accepted {
		if a == "" {
			return f, errors.New("empty recipient address")
		}
		v, err := json.Marshal(recipientRecord{Address: a, State: RecipientAccepted, Reply: acceptedReply, TaskID: taskID, At: at})
		if err != nil {
			return f, err
		}
		f.set = append(f.set, fieldRecipientPrefix+strings.ToLower(a), v)
	}
	for _, r := range rejected {
		if r.Address == "" {
			return f, errors.New("empty recipient address")
		}
		v, err := json.Marshal(recipientRecord{Address: r.Address, State: RecipientRejected, Reply: r.Reply, TaskID: taskID, At: at})
		if err != nil {
			return f, err
		}
		f.setNX = append(f.setNX, fieldValue{fieldRecipientPrefix + strings.ToLower(r.Address), v})
	}
	return f, nil
}

// queueRecipients queues on p the commands writing f to the delivery hash
// of messageID and refreshing its expiry.
func (s *Store) queueRecipients(ctx context.Context, p redis.Pipeliner, messageID string, f recipientFields) {
	key := s.deliveryKey(messageID)
	if len(f.set) > 0 {
		p.HSet(ctx, key, f.set...)
	}
	for _, fv := range f.setNX {
		p.HSetNX(ctx, key, fv.field, fv.value)
	}
	p.PExpire(ctx, key, s.opts.DeliveryTTL)
}

// WriteReceipt records that the message r.MessageID is complete, and records
// every recipient of r.Accepted and r.Rejected as RecordRecipients does, in
// one round trip (a MULTI transaction, which it may share with other
// callers' reads and receipts). Write it after the server's 250 to DATA;
// from then on the message's tasks complete without sending.
//
// The transaction also sets the hash fields of also, keys outside the
// ledger on the same Redis database, each only if its hash exists: a worker
// writes its asynq task's result there, in the same round trip, and a hash
// that asynq deleted on completion (no retention) stays deleted.
func (s *Store) WriteReceipt(ctx context.Context, r *Receipt, also ...HashField) error {
	if r == nil {
		return errors.New("write receipt: nil receipt")
	}
	if r.MessageID == "" {
		return fmt.Errorf("write receipt: %w", errEmptyMessageID)
	}
	for _, f := range also {
		if f.Key == "" || f.Field == "" {
			return fmt.Errorf("write receipt of %s: a hash field with an empty key or field name", r.MessageID)
		}
	}
	at := r.At
	if at.IsZero() {
		at = s.now()
	}
	rec, err := json.Marshal(receiptRecord{TaskID: r.TaskID, Reply: r.Reply, PossibleDuplicate: r.PossibleDuplicate, At: at})
	if err != nil {
		return fmt.Errorf("write receipt of %s: %w", r.MessageID, err)
	}
	f, err := encodeRecipients(r.TaskID, r.Accepted, r.Reply, r.Rejected, at)
	if err != nil {
		return fmt.Errorf("write receipt of %s: %w", r.MessageID, err)
	}
	f.set = append([]any{fieldReceipt, rec}, f.set...)
	write := func(p redis.Pipeliner) {
		s.queueRecipients(ctx, p, r.MessageID, f)
		for _, h := range also {
			p.EvalSha(ctx, hsetIfExistsScript.Hash(), []string{h.Key}, h.Field, h.Value)
		}
	}
	err = s.shared(ctx, write)
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		// The server lost its scripts (a restart): the receipt is in,
		// the hash fields are not. Load the script and write again.
		if err = hsetIfExistsScript.Load(ctx, s.rdb).Err(); err == nil {
			err = s.shared(ctx, write)
		}
	}
	if err != nil {
		return fmt.Errorf("write receipt of %s: %w", r.MessageID, err)
	}
	return nil
}

// HashField is one field of a Redis hash that is not the ledger's, set by
// WriteReceipt in its transaction if the hash exists.
type HashField struct {
	Key, Field string
	Value      []byte
}

// hsetIfExistsScript sets the field ARGV[1] of the hash KEYS[1] to ARGV[2]
// if the hash exists. WriteReceipt calls it by its digest (EVALSHA: EVAL,
// which sends and hashes the script each time, cost the server 10-15 µs more
// per receipt) inside the receipt's transaction.
var hsetIfExistsScript = redis.NewScript(`if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 0`)

// MarkPossibleDuplicate records that an attempt of task taskID lost its
// connection after the final "." of DATA: the server may have delivered the
// message. The flag stays for the life of the delivery state and shows in
// Delivery.PossibleDuplicate and in the receipt. One round trip.
func (s *Store) MarkPossibleDuplicate(ctx context.Context, messageID, taskID string) error {
	if messageID == "" {
		return fmt.Errorf("mark possible duplicate: %w", errEmptyMessageID)
	}
	v, err := json.Marshal(duplicateRecord{TaskID: taskID, At: s.now()})
	if err != nil {
		return fmt.Errorf("mark possible duplicate of %s: %w", messageID, err)
	}
	key := s.deliveryKey(messageID)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, fieldDuplicate, v)
		p.PExpire(ctx, key, s.opts.DeliveryTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark possible duplicate of %s: %w", messageID, err)
	}
	return nil
}

// ForgetRejections prepares the message for a requeue by an operator, once
// its rejected recipients were fixed: it forgets every rejected recipient, so
// that the next attempt sends to them again, and, when it forgot any, deletes
// the receipt, so that the next attempt sends at all. Accepted recipients are
// kept: the requeued message goes ONLY to the previously rejected recipients
// (and to any never tried), never again to an accepted one. A message that was
// complete without rejections keeps its receipt, and a requeue of it
// completes without sending. When it deletes the receipt it also forgets
// the message's last attempt (Delivery.LastAttempt): the task that completed
// it delivered nothing to the recipients the requeue is for. It also
// records the time of the requeue
// (Delivery.RequeuedAt), from which the queue lifetime counts again. One
// round trip (a Lua script).
func (s *Store) ForgetRejections(ctx context.Context, messageID string) error {
	if messageID == "" {
		return fmt.Errorf("forget rejections: %w", errEmptyMessageID)
	}
	err := forgetRejectionsScript.Run(ctx, s.rdb, []string{s.deliveryKey(messageID)},
		fieldRecipientPrefix, fieldReceipt, s.opts.DeliveryTTL.Milliseconds(), fieldRequeued, ms(s.now()), fieldAttempt).Err()
	if err != nil {
		return fmt.Errorf("forget rejections of %s: %w", messageID, err)
	}
	return nil
}

// forgetRejectionsScript deletes the rejected recipient fields of a delivery
// hash and, if there were any, its receipt and attempt fields.
//
// KEYS[1] delivery hash; ARGV[1] recipient field prefix, ARGV[2] receipt
// field, ARGV[3] TTL in ms, ARGV[4] requeued field, ARGV[5] now in ms,
// ARGV[6] attempt field.
// Returns the number of recipients forgotten.
var forgetRejectionsScript = redis.NewScript(`
local h = redis.call('HGETALL', KEYS[1])
local plen = string.len(ARGV[1])
local n = 0
for i = 1, #h, 2 do
  if string.sub(h[i], 1, plen) == ARGV[1] then
    local ok, rec = pcall(cjson.decode, h[i + 1])
    if ok and type(rec) == 'table' and rec.state == 'rejected' then
      redis.call('HDEL', KEYS[1], h[i])
      n = n + 1
    end
  end
end
if n > 0 then
  redis.call('HDEL', KEYS[1], ARGV[2], ARGV[6])
end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
`)

// DeliveryAndAccount returns what Delivery(messageID) and Account(account)
// return, in one round trip (a pipeline): what a worker reads before each
// attempt.
func (s *Store) DeliveryAndAccount(ctx context.Context, messageID, account string) (*Delivery, AccountStatus, error) {
	switch {
	case messageID == "":
		return nil, AccountStatus{}, fmt.Errorf("load delivery: %w", errEmptyMessageID)
	case account == "":
		return nil, AccountStatus{}, fmt.Errorf("load account: %w", errEmptyAccount)
	}
	return s.deliveryAndAccount(ctx, messageID, account, nil)
}

// StartAttempt returns what DeliveryAndAccount returns and records, in the
// same round trip, that the task a is attempting the message: the next
// reader finds it in Delivery.LastAttempt. A worker calls it before each
// send, so that a task of a message whose receipt is missing can tell
// whether another task of it was acknowledged (see tasks.HandlerConfig's
// AsyncReceipt).
func (s *Store) StartAttempt(ctx context.Context, messageID, account string, a Attempt) (*Delivery, AccountStatus, error) {
	switch {
	case messageID == "":
		return nil, AccountStatus{}, fmt.Errorf("start attempt: %w", errEmptyMessageID)
	case account == "":
		return nil, AccountStatus{}, fmt.Errorf("start attempt: %w", errEmptyAccount)
	case a.TaskID == "":
		return nil, AccountStatus{}, errors.New("start attempt: empty task id")
	}
	if a.At.IsZero() {
		a.At = s.now()
	}
	rec, err := json.Marshal(a)
	if err != nil {
		return nil, AccountStatus{}, fmt.Errorf("start attempt of %s: %w", messageID, err)
	}
	return s.deliveryAndAccount(ctx, messageID, account, rec)
}

// deliveryAndAccount reads the delivery state of messageID and the health
// of account in one round trip, and records attempt as the message's last
// attempt unless it is nil.
func (s *Store) deliveryAndAccount(ctx context.Context, messageID, account string, attempt []byte) (*Delivery, AccountStatus, error) {
	key := s.deliveryKey(messageID)
	var dh, ah *redis.MapStringStringCmd
	err := s.shared(ctx, func(p redis.Pipeliner) {
		dh = p.HGetAll(ctx, key)
		ah = p.HGetAll(ctx, s.accountKey(account))
		if attempt != nil {
			p.HSet(ctx, key, fieldAttempt, attempt)
			p.PExpire(ctx, key, s.opts.DeliveryTTL)
		}
	})
	if err != nil {
		return nil, AccountStatus{}, fmt.Errorf("load delivery of %s and account %s: %w", messageID, account, err)
	}
	d, err := decodeDelivery(messageID, dh.Val())
	if err != nil {
		return nil, AccountStatus{}, fmt.Errorf("load delivery of %s: %w", messageID, err)
	}
	return d, decodeAccount(account, ah.Val()), nil
}
