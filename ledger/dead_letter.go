package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Kinds of dead letter, the values of DeadLetter.Kind.
const (
	// DeadLetterMessage: the whole task was given up (archived); Recipients
	// lists all the message's recipients.
	DeadLetterMessage = "message"
	// DeadLetterRecipients: the message was delivered to others, but these
	// recipients were refused for good.
	DeadLetterRecipients = "recipients"
)

// DefaultDeadLetterPage is the page size of DeadLetters when the limit given
// is zero or less.
const DefaultDeadLetterPage = 100

// DeadLetter is a durable record of mail given up, kept until
// RemoveDeadLetter: unlike asynq's archive, which drops the oldest tasks
// beyond 10,000 per queue or 90 days, the store never trims dead letters.
type DeadLetter struct {
	// ID is the task ID for a DeadLetterMessage letter, generated for a
	// DeadLetterRecipients one. AddDeadLetter fills it when empty.
	ID string `json:"id"`
	// Kind is DeadLetterMessage or DeadLetterRecipients.
	Kind string `json:"kind"`
	// TaskID and Queue name the asynq task that carried the mail.
	TaskID string `json:"task_id"`
	Queue  string `json:"queue"`
	// MessageID is the message's Message-ID, the key of its delivery
	// state (see ForgetRejections before a requeue).
	MessageID string `json:"message_id"`
	// Account is the id of the sending account.
	Account string `json:"account"`
	// Recipients are the recipients concerned: all of them for a
	// DeadLetterMessage letter.
	Recipients []string `json:"recipients"`
	// Reason is operator-readable, "recipient rejected: 550 5.1.1 user
	// unknown".
	Reason string `json:"reason"`
	// Class is the name of the failure's classification, such as
	// "permanent-recipient".
	Class string `json:"class"`
	// At is when the mail was given up. AddDeadLetter fills it from the
	// store's clock when zero.
	At time.Time `json:"at"`
	// Payload is the task payload, so the mail can be requeued even after
	// asynq trimmed its archive. DeadLetters leaves it out.
	Payload []byte `json:"payload,omitempty"`
}

// Fields of a dead-letter hash.
const (
	fieldMeta    = "meta"
	fieldPayload = "payload"
)

// deadLetterRecord is the JSON value of the meta field: the letter without
// its payload, which has a field of its own so listing never reads it.
type deadLetterRecord struct {
	ID         string    `json:"id"`
	Kind       string    `json:"kind"`
	TaskID     string    `json:"task_id,omitempty"`
	Queue      string    `json:"queue,omitempty"`
	MessageID  string    `json:"message_id,omitempty"`
	Account    string    `json:"account,omitempty"`
	Recipients []string  `json:"recipients,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Class      string    `json:"class,omitempty"`
	At         time.Time `json:"at"`
}

// AddDeadLetter stores d, in one round trip (a MULTI transaction): an entry
// in a sorted set by time and one hash for the letter. It fills d.ID when
// empty (with d.TaskID for a DeadLetterMessage letter that has one, a new
// UUID otherwise) and d.At when zero. A letter with the ID of a stored one
// replaces it.
func (s *Store) AddDeadLetter(ctx context.Context, d *DeadLetter) error {
	if d == nil {
		return errors.New("add dead letter: nil letter")
	}
	if d.Kind != DeadLetterMessage && d.Kind != DeadLetterRecipients {
		return fmt.Errorf("add dead letter: unknown kind %q", d.Kind)
	}
	if d.ID == "" {
		if d.Kind == DeadLetterMessage && d.TaskID != "" {
			d.ID = d.TaskID
		} else {
			d.ID = uuid.NewString()
		}
	}
	if d.At.IsZero() {
		d.At = s.now()
	}
	meta, err := json.Marshal(deadLetterRecord{
		ID: d.ID, Kind: d.Kind, TaskID: d.TaskID, Queue: d.Queue, MessageID: d.MessageID,
		Account: d.Account, Recipients: d.Recipients, Reason: d.Reason, Class: d.Class, At: d.At,
	})
	if err != nil {
		return fmt.Errorf("add dead letter %s: %w", d.ID, err)
	}
	key := s.deadKey(d.ID)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		if d.Payload != nil {
			p.HSet(ctx, key, fieldMeta, meta, fieldPayload, d.Payload)
		} else {
			p.HSet(ctx, key, fieldMeta, meta)
		}
		p.ZAdd(ctx, s.deadIndexKey(), redis.Z{Score: float64(d.At.UnixMilli()), Member: d.ID})
		return nil
	})
	if err != nil {
		return fmt.Errorf("add dead letter %s: %w", d.ID, err)
	}
	return nil
}

// DeadLetters returns a page of dead letters, newest first, without their
// payloads, and how many there are in all, in one round trip (a Lua script).
// offset counts from the newest; a limit of zero or less means
// DefaultDeadLetterPage.
func (s *Store) DeadLetters(ctx context.Context, offset, limit int) ([]*DeadLetter, int, error) {
	offset = max(offset, 0)
	if limit <= 0 {
		limit = DefaultDeadLetterPage
	}
	v, err := deadLettersScript.Run(ctx, s.rdb, []string{s.deadIndexKey()},
		offset, offset+limit-1, s.deadKeyPrefix()).Slice()
	if err != nil {
		return nil, 0, fmt.Errorf("list dead letters: %w", err)
	}
	if len(v) == 0 {
		return nil, 0, errors.New("list dead letters: empty script reply")
	}
	total, _ := v[0].(int64)
	out := make([]*DeadLetter, 0, len(v)-1)
	for _, m := range v[1:] {
		meta, _ := m.(string)
		if meta == "" {
			continue // an index entry without its letter
		}
		d, err := decodeDeadLetter(meta)
		if err != nil {
			return nil, 0, fmt.Errorf("list dead letters: %w", err)
		}
		out = append(out, d)
	}
	return out, int(total), nil
}

// deadLettersScript: KEYS[1] index; ARGV[1] start, ARGV[2] stop (ranks from
// the newest), ARGV[3] letter key prefix. Returns the index's size, then the
// meta field of each letter of the page ("" when missing). The letter keys
// share KEYS[1]'s hash slot.
var deadLettersScript = redis.NewScript(`
local out = {redis.call('ZCARD', KEYS[1])}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2])) do
  out[#out + 1] = redis.call('HGET', ARGV[3] .. id, 'meta') or ''
end
return out
`)

func decodeDeadLetter(meta string) (*DeadLetter, error) {
	var r deadLetterRecord
	if err := json.Unmarshal([]byte(meta), &r); err != nil {
		return nil, fmt.Errorf("decode dead letter: %w", err)
	}
	return &DeadLetter{
		ID: r.ID, Kind: r.Kind, TaskID: r.TaskID, Queue: r.Queue, MessageID: r.MessageID,
		Account: r.Account, Recipients: r.Recipients, Reason: r.Reason, Class: r.Class, At: r.At,
	}, nil
}

// DeadLetter returns the dead letter with the given id, payload included, in
// one round trip. It returns an error wrapping ErrNotFound when there is none.
func (s *Store) DeadLetter(ctx context.Context, id string) (*DeadLetter, error) {
	h, err := s.rdb.HGetAll(ctx, s.deadKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("load dead letter %s: %w", id, err)
	}
	meta, ok := h[fieldMeta]
	if !ok {
		return nil, fmt.Errorf("load dead letter %s: %w", id, ErrNotFound)
	}
	d, err := decodeDeadLetter(meta)
	if err != nil {
		return nil, fmt.Errorf("load dead letter %s: %w", id, err)
	}
	if p, ok := h[fieldPayload]; ok {
		d.Payload = []byte(p)
	}
	return d, nil
}

// RemoveDeadLetter deletes the dead letter with the given id, typically after
// it was requeued, in one round trip. It returns an error wrapping ErrNotFound
// when there was none.
func (s *Store) RemoveDeadLetter(ctx context.Context, id string) error {
	var del, rem *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.Del(ctx, s.deadKey(id))
		rem = p.ZRem(ctx, s.deadIndexKey(), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove dead letter %s: %w", id, err)
	}
	if del.Val() == 0 && rem.Val() == 0 {
		return fmt.Errorf("remove dead letter %s: %w", id, ErrNotFound)
	}
	return nil
}
