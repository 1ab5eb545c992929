package smtpoauth

import (
	"fmt"
	"log/slog"
)

// redacted is what a Secret prints instead of its value.
const redacted = "[redacted]"

// Secret is a string that must not be printed: a client secret, a refresh
// token, an access token or a private key. Its String, GoString, LogValue,
// Format and MarshalText methods all produce "[redacted]", so a Secret is
// safe in log attributes, error messages, %v/%+v/%#v output and encoded
// configuration. Convert it with string(s) only at the point where the value
// is sent.
type Secret string

var (
	_ fmt.Stringer   = Secret("")
	_ fmt.GoStringer = Secret("")
	_ fmt.Formatter  = Secret("")
	_ slog.LogValuer = Secret("")
)

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]", for %#v.
func (Secret) GoString() string { return redacted }

// LogValue implements slog.LogValuer: the attribute's value is "[redacted]".
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// Format implements fmt.Formatter so every verb, including %x and %d,
// prints "[redacted]" rather than the bytes of the secret.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalText returns "[redacted]", so encoding/json and YAML encoders
// never write the value.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s == "" }
