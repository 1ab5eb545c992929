package ledger

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
)

// This file is the encryption of tokens at rest: a Keyring of AES-256-GCM
// keys, one current key that seals and any number of older keys that still
// open what they sealed, so that keys can rotate without a flag day.

// Environment variables read by LoadKeyring. Each holds a keyring
// specification (see ParseKeyring); at most one may be set.
const (
	// EnvTokenKeys holds a keyring: "id1:base64,id2:base64", the first
	// entry being the current key.
	EnvTokenKeys = "SENDQ_TOKEN_KEYS"
	// EnvTokenKey holds a single key, base64 of TokenKeySize bytes (or any
	// keyring specification).
	EnvTokenKey = "SENDQ_TOKEN_KEY"
	// EnvTokenKeyFile names a file holding a keyring specification; commas,
	// spaces and newlines separate its entries.
	EnvTokenKeyFile = "SENDQ_TOKEN_KEY_FILE"
)

// TokenKeySize is the size in bytes of a token key: AES-256.
const TokenKeySize = 32

// Errors of the token store's encryption.
var (
	// ErrNoTokenKeys is returned by the token methods of a Store configured
	// with neither Options.TokenKeys nor Options.InsecurePlaintextTokens.
	ErrNoTokenKeys = errors.New("no token encryption key configured")
	// ErrTokenUnreadable is wrapped by errors reading a stored token that
	// cannot be opened: sealed with a key the keyring does not hold, moved
	// from another Redis key, altered, stored in plaintext while
	// plaintext is not allowed, or of an unknown format.
	ErrTokenUnreadable = errors.New("stored token unreadable")
)

// sealedPrefix starts every value a Keyring seals; the format is
// "v1:<key id>:<base64 of nonce, ciphertext and tag>".
const sealedPrefix = "v1:"

// validKeyID is the syntax of a key id: it must not contain the separators
// of a keyring specification or of a sealed value.
var validKeyID = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Keyring holds the AES-256-GCM keys tokens are sealed with. Seal uses the
// current key and writes its id into the sealed value; Open finds the key by
// that id, so values sealed with an older key stay readable after a new key
// becomes current. Rotate keys by making a new key current and keeping the
// old ones until every value they sealed has been rewritten (access tokens
// within their lifetime, about an hour; refresh tokens when they rotate or
// are re-authorized).
//
// A Keyring is safe for concurrent use. Printing or logging it shows only
// the key ids.
type Keyring struct {
	ids   []string // ids[0] is the current key
	aeads map[string]cipher.AEAD
}

var (
	_ fmt.Formatter  = Keyring{}
	_ slog.LogValuer = Keyring{}
)

// NewKeyring returns a keyring whose current key is keys[current]; the other
// keys open values sealed with them. Every key must be TokenKeySize bytes and
// every id match [A-Za-z0-9_.-]{1,64}. The keys are copied.
func NewKeyring(current string, keys map[string][]byte) (*Keyring, error) {
	if _, ok := keys[current]; !ok {
		return nil, fmt.Errorf("new keyring: current key id %q has no key", current)
	}
	k := &Keyring{ids: []string{current}, aeads: make(map[string]cipher.AEAD, len(keys))}
	for id := range keys {
		if id != current {
			k.ids = append(k.ids, id)
		}
	}
	slices.Sort(k.ids[1:]) // older keys in a stable order, for String
	for _, id := range k.ids {
		if err := k.add(id, keys[id]); err != nil {
			return nil, fmt.Errorf("new keyring: %w", err)
		}
	}
	return k, nil
}

// add installs key under id.
func (k *Keyring) add(id string, key []byte) error {
	if !validKeyID.MatchString(id) {
		return fmt.Errorf("key id %q: want 1 to 64 of A-Z a-z 0-9 _ . -", id)
	}
	if len(key) != TokenKeySize {
		return fmt.Errorf("key %q: %d bytes, want %d", id, len(key), TokenKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return fmt.Errorf("key %q: %w", id, err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return fmt.Errorf("key %q: %w", id, err)
	}
	k.aeads[id] = aead
	return nil
}

// ParseKeyring reads a keyring specification: entries separated by commas,
// spaces or newlines, each either "id:base64" or a bare "base64", the base64
// (standard or URL alphabet, padded or not) of TokenKeySize random bytes, as
// `openssl rand -base64 32` prints. The first entry is the current key. A
// bare key's id is derived from the key: "k" and the first 10 hex digits of
// a SHA-256 of it. Errors never contain key material.
//
//	SENDQ_TOKEN_KEYS="2026-03:8oY0...=,2025-09:Qm4L...="
func ParseKeyring(spec string) (*Keyring, error) {
	entries := strings.FieldsFunc(spec, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
	if len(entries) == 0 {
		return nil, errors.New("parse keyring: no key")
	}
	k := &Keyring{aeads: make(map[string]cipher.AEAD, len(entries))}
	for i, e := range entries {
		id, b64, named := strings.Cut(e, ":")
		if !named {
			b64 = e
		}
		key, ok := decodeKey(b64)
		if !ok {
			if named {
				return nil, fmt.Errorf("parse keyring: entry %d (id %q): not the base64 of %d bytes", i+1, id, TokenKeySize)
			}
			return nil, fmt.Errorf("parse keyring: entry %d: not the base64 of %d bytes", i+1, TokenKeySize)
		}
		if !named {
			id = DeriveKeyID(key)
		}
		if _, dup := k.aeads[id]; dup {
			return nil, fmt.Errorf("parse keyring: entry %d: key id %q given twice", i+1, id)
		}
		if err := k.add(id, key); err != nil {
			return nil, fmt.Errorf("parse keyring: entry %d: %w", i+1, err)
		}
		k.ids = append(k.ids, id)
	}
	return k, nil
}

// decodeKey decodes the base64 of a key in any of the usual alphabets.
func decodeKey(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == TokenKeySize {
			return b, true
		}
	}
	return nil, false
}

// DeriveKeyID returns the id ParseKeyring gives a key written without one:
// "k" and the first 10 hex digits of SHA-256("sendq token key id" || key).
// It reveals nothing useful about the key.
func DeriveKeyID(key []byte) string {
	h := sha256.New()
	io.WriteString(h, "sendq token key id\x00")
	h.Write(key)
	return "k" + hex.EncodeToString(h.Sum(nil))[:10]
}

// LoadKeyring reads the keyring from the environment through getenv (nil
// means os.Getenv): from EnvTokenKeys, EnvTokenKey, or the file named by
// EnvTokenKeyFile, all in ParseKeyring's syntax. It returns nil and no error
// when none of them is set, and an error when more than one is. Errors name
// the variable (and the file) but never contain key material.
func LoadKeyring(getenv func(string) string) (*Keyring, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var set []string
	for _, name := range []string{EnvTokenKeys, EnvTokenKey, EnvTokenKeyFile} {
		if strings.TrimSpace(getenv(name)) != "" {
			set = append(set, name)
		}
	}
	switch len(set) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("token keys: set only one of %s", strings.Join(set, ", "))
	}
	name := set[0]
	spec := getenv(name)
	if name == EnvTokenKeyFile {
		path := strings.TrimSpace(spec)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		spec = string(data)
		name += " " + path
	}
	k, err := ParseKeyring(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return k, nil
}

// Current returns the id of the key Seal uses.
func (k *Keyring) Current() string { return k.ids[0] }

// IDs returns the ids of every key, the current one first.
func (k *Keyring) IDs() []string { return append([]string(nil), k.ids...) }

// Seal encrypts plaintext with the current key, binding it to aad
// (associated data: Open must be given the same), and returns
// "v1:<key id>:<base64>". Each call draws a fresh random nonce, so sealing
// the same plaintext twice gives different values.
func (k *Keyring) Seal(plaintext, aad []byte) string {
	id := k.ids[0]
	ct := k.aeads[id].Seal(nil, nil, plaintext, aad)
	return sealedPrefix + id + ":" + base64.RawStdEncoding.EncodeToString(ct)
}

// Open decrypts a value made by Seal with the same aad. The error wraps
// ErrTokenUnreadable when the value is malformed, names a key id the keyring
// does not hold, or fails authentication (another key under the same id, a
// different aad, or an altered value). Errors never contain the value.
func (k *Keyring) Open(sealed string, aad []byte) ([]byte, error) {
	rest, ok := strings.CutPrefix(sealed, sealedPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: not a sealed value", ErrTokenUnreadable)
	}
	id, b64, ok := strings.Cut(rest, ":")
	if !ok {
		return nil, fmt.Errorf("%w: malformed sealed value", ErrTokenUnreadable)
	}
	aead, ok := k.aeads[id]
	if !ok {
		return nil, fmt.Errorf("%w: sealed with key %q, which the keyring (%s) does not hold", ErrTokenUnreadable, id, strings.Join(k.ids, ", "))
	}
	ct, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed sealed value", ErrTokenUnreadable)
	}
	pt, err := aead.Open(nil, nil, ct, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed with key %q (another key under that id, a value moved from another Redis key, or altered)", ErrTokenUnreadable, id)
	}
	return pt, nil
}

// String returns "keyring(current <id>; <id>, …)": ids, never keys.
func (k Keyring) String() string {
	if len(k.ids) == 0 {
		return "keyring(none)"
	}
	return fmt.Sprintf("keyring(current %s; %s)", k.ids[0], strings.Join(k.ids, ", "))
}

// Format prints String for every verb, so that %#v and %+v never show the
// keys' expanded state, whether given a Keyring or a *Keyring.
func (k Keyring) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// LogValue implements slog.LogValuer: the current id and every id.
func (k Keyring) LogValue() slog.Value {
	if len(k.ids) == 0 {
		return slog.StringValue("none")
	}
	return slog.GroupValue(slog.String("current", k.ids[0]), slog.String("ids", strings.Join(k.ids, ",")))
}
