package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// TypeSendEmail is the asynq task type of an email submission.
const TypeSendEmail = "email:send"

// DefaultQueue is the asynq queue emails are enqueued on unless the [Queue]
// option names another.
const DefaultQueue = "email"

// PayloadVersion is the version of the payload this build writes and the
// only one it reads. It is stored in the "v" field.
const PayloadVersion = 1

// ErrInvalidPayload is matched (errors.Is) by every error DecodePayload
// returns: malformed JSON, an unknown field, an unsupported version or an
// invalid email. Retrying cannot fix such a task.
var ErrInvalidPayload = errors.New("invalid payload")

// ErrUnsupportedVersion is matched by the DecodePayload error for a payload
// whose "v" is not PayloadVersion, such as one written by a newer producer.
var ErrUnsupportedVersion = errors.New("unsupported payload version")

// Payload is the versioned wire form of a task: the Email plus what is fixed
// at enqueue time so that every retry sends the same message. Its JSON is
// flat: the Email fields sit next to "v", "message_id", "date" and
// "idempotency_key".
type Payload struct {
	// Version is PayloadVersion.
	Version int `json:"v"`
	// MessageID is the Message-ID header value, angle brackets included:
	// "<id@domain>".
	MessageID string `json:"message_id"`
	// Date is the Date header, fixed when the task was created.
	Date time.Time `json:"date"`
	// IdempotencyKey is the producer's key, if it gave one (see the
	// IdempotencyKey option).
	IdempotencyKey string `json:"idempotency_key,omitempty"`

	// Email is the message itself; its fields are promoted, in Go and in
	// the JSON.
	Email
}

// DecodePayload decodes and validates a task payload with the default
// [Limits]; see [DecodePayloadLimits].
func DecodePayload(data []byte) (*Payload, error) {
	return DecodePayloadLimits(data, Limits{})
}

// DecodePayloadLimits decodes a task payload strictly and validates it
// against l (zero fields mean the defaults). Every error matches
// ErrInvalidPayload:
//   - a payload whose version is not PayloadVersion also matches
//     ErrUnsupportedVersion, and is recognised before any other field is
//     looked at;
//   - unknown fields, trailing data and malformed JSON are refused;
//   - a payload that fails [Payload.ValidateLimits] also matches
//     ErrInvalidEmail and carries a *ValidationError.
//
// JSON field names are matched case-insensitively, as encoding/json does.
func DecodePayloadLimits(data []byte, l Limits) (*Payload, error) {
	// One pass reads a payload of this version: decodeCanonical the form
	// this package writes, encoding/json any other. Only when that fails
	// is the version looked at on its own, so that a newer payload fails
	// as "unsupported version", not as "unknown field".
	p := new(Payload)
	var err error
	if !decodeCanonical(data, p) {
		p, err = decodeStrict(data)
	}
	if err != nil || p.Version != PayloadVersion {
		if verr := checkPayloadVersion(data); verr != nil {
			return nil, verr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPayload, err)
	}
	if err := p.ValidateLimits(l); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPayload, err)
	}
	return p, nil
}

// decodeStrict decodes data with encoding/json, refusing unknown fields and
// trailing data.
func decodeStrict(data []byte) (*Payload, error) {
	p := new(Payload)
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(p)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	return p, err
}

// checkPayloadVersion reads only the version field "v" of a payload and
// says whether this build reads it.
func checkPayloadVersion(data []byte) error {
	var head struct {
		V json.RawMessage `json:"v"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidPayload, err)
	}
	if head.V == nil || bytes.Equal(head.V, []byte("null")) {
		return fmt.Errorf("%w: missing version field \"v\"", ErrInvalidPayload)
	}
	var v int
	if err := json.Unmarshal(head.V, &v); err != nil {
		return fmt.Errorf("%w: version field \"v\" is not an integer", ErrInvalidPayload)
	}
	if v != PayloadVersion {
		return fmt.Errorf("%w: %w %d (this build reads version %d)",
			ErrInvalidPayload, ErrUnsupportedVersion, v, PayloadVersion)
	}
	return nil
}
