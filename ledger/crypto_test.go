package ledger

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestKeyringSealOpen(t *testing.T) {
	t.Parallel()
	const token = "1//0gSECRET-refresh-token"
	key := randomKey()
	ring, err := NewKeyring("k1", map[string][]byte{"k1": key})
	if err != nil {
		t.Fatal(err)
	}
	ad := []byte("sendq:{accounts}:token:acct\x00token")
	sealed := ring.Seal([]byte(token), ad)

	t.Run("RoundTrips", func(t *testing.T) {
		t.Parallel()
		got, err := ring.Open(sealed, ad)
		if err != nil || string(got) != token {
			t.Fatalf("Open() = %q, %v", got, err)
		}
		if !strings.HasPrefix(sealed, "v1:k1:") {
			t.Errorf("sealed value %q does not start with v1:k1:", sealed)
		}
	})

	t.Run("HidesTheToken", func(t *testing.T) {
		t.Parallel()
		if strings.Contains(sealed, "SECRET") || strings.Contains(sealed, base64.RawStdEncoding.EncodeToString([]byte(token))[:16]) {
			t.Errorf("sealed value shows the token: %q", sealed)
		}
		if again := ring.Seal([]byte(token), ad); again == sealed {
			t.Error("sealing twice gave the same value: the nonce is not fresh")
		}
	})

	t.Run("FailsWithAnotherAAD", func(t *testing.T) {
		t.Parallel()
		_, err := ring.Open(sealed, []byte("sendq:{accounts}:token:other\x00token"))
		if !errors.Is(err, ErrTokenUnreadable) || !strings.Contains(err.Error(), "authentication failed") {
			t.Errorf("Open with another AAD: %v, want an authentication failure", err)
		}
	})

	t.Run("FailsWithAnotherKeyUnderTheSameID", func(t *testing.T) {
		t.Parallel()
		other, _ := NewKeyring("k1", map[string][]byte{"k1": randomKey()})
		if _, err := other.Open(sealed, ad); !errors.Is(err, ErrTokenUnreadable) {
			t.Errorf("Open with another key: %v, want ErrTokenUnreadable", err)
		}
	})

	t.Run("FailsWithTheKeyUnderAnotherID", func(t *testing.T) {
		t.Parallel()
		renamed, _ := NewKeyring("k2", map[string][]byte{"k2": key})
		_, err := renamed.Open(sealed, ad)
		if !errors.Is(err, ErrTokenUnreadable) || !strings.Contains(err.Error(), `key "k1"`) {
			t.Errorf("Open with the key filed as k2: %v, want one naming the missing key k1", err)
		}
	})

	t.Run("FailsWhenAltered", func(t *testing.T) {
		t.Parallel()
		b := []byte(sealed)
		i := len(b) - 5
		b[i] ^= 'A' ^ 'B'
		if b[i] == sealed[i] {
			b[i] = 'C'
		}
		for _, v := range []string{string(b), sealed[:len(sealed)-4], "v1:k1", "v2:k1:AAAA", "plain:" + token, "v1:k1:!!!"} {
			got, err := ring.Open(v, ad)
			if !errors.Is(err, ErrTokenUnreadable) {
				t.Errorf("Open(%q) = %q, %v; want ErrTokenUnreadable", v, got, err)
			}
			if err != nil && strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error shows the token: %v", err)
			}
		}
	})
}

func TestKeyringRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := randomKey(), randomKey()
	before, _ := NewKeyring("2025", map[string][]byte{"2025": oldKey})
	after, err := NewKeyring("2026", map[string][]byte{"2026": newKey, "2025": oldKey})
	if err != nil {
		t.Fatal(err)
	}
	ad := []byte("aad")
	old := before.Seal([]byte("old-token"), ad)
	if got, err := after.Open(old, ad); err != nil || string(got) != "old-token" {
		t.Errorf("new keyring opening an old value = %q, %v", got, err)
	}
	fresh := after.Seal([]byte("new-token"), ad)
	if !strings.HasPrefix(fresh, "v1:2026:") {
		t.Errorf("new value %q is not sealed with the current key 2026", fresh)
	}
	if _, err := before.Open(fresh, ad); !errors.Is(err, ErrTokenUnreadable) {
		t.Errorf("old keyring opening a new value: %v, want ErrTokenUnreadable", err)
	}
	if got := after.IDs(); !slices.Equal(got, []string{"2026", "2025"}) || after.Current() != "2026" {
		t.Errorf("IDs() = %q, Current() = %q", got, after.Current())
	}
}

func TestParseKeyring(t *testing.T) {
	t.Parallel()
	k1, k2 := randomKey(), randomKey()
	std := base64.StdEncoding.EncodeToString
	for _, tc := range []struct {
		name    string
		spec    string
		want    []string // ids, current first
		wantErr string
	}{
		{name: "OneBareKey", spec: std(k1), want: []string{DeriveKeyID(k1)}},
		{name: "NamedKeys", spec: "new:" + std(k2) + ",old:" + std(k1), want: []string{"new", "old"}},
		{name: "NewlinesAndSpaces", spec: "\n new:" + std(k2) + "\n\n old:" + std(k1) + " \n", want: []string{"new", "old"}},
		{name: "URLAlphabetUnpadded", spec: "u:" + base64.RawURLEncoding.EncodeToString(k1), want: []string{"u"}},
		{name: "Empty", spec: " , ", wantErr: "no key"},
		{name: "ShortKey", spec: "a:" + std(k1[:16]), wantErr: `entry 1 (id "a"): not the base64 of 32 bytes`},
		{name: "NotBase64", spec: "a:" + std(k1) + ",zz%%", wantErr: "entry 2: not the base64"},
		{name: "DuplicateID", spec: "a:" + std(k1) + ",a:" + std(k2), wantErr: `key id "a" given twice`},
		{name: "BadID", spec: "a b/c:" + std(k1), wantErr: "entry 1"},
		{name: "EmptyID", spec: ":" + std(k1), wantErr: `key id ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ring, err := ParseKeyring(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				for _, k := range [][]byte{k1, k2} {
					if strings.Contains(err.Error(), std(k)[:12]) {
						t.Errorf("error shows key material: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ring.IDs(); !slices.Equal(got, tc.want) {
				t.Errorf("IDs() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoadKeyring(t *testing.T) {
	t.Parallel()
	key := base64.StdEncoding.EncodeToString(randomKey())
	dir := t.TempDir()
	file := filepath.Join(dir, "token.keys")
	if err := os.WriteFile(file, []byte("2026:"+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    string // current id; "" for no keyring
		wantErr string
	}{
		{name: "NoneSet"},
		{name: "Keys", env: map[string]string{EnvTokenKeys: "a:" + key}, want: "a"},
		{name: "Key", env: map[string]string{EnvTokenKey: "b:" + key}, want: "b"},
		{name: "File", env: map[string]string{EnvTokenKeyFile: file}, want: "2026"},
		{name: "TwoSet", env: map[string]string{EnvTokenKey: key, EnvTokenKeys: "a:" + key}, wantErr: "set only one of SENDQ_TOKEN_KEYS, SENDQ_TOKEN_KEY"},
		{name: "MissingFile", env: map[string]string{EnvTokenKeyFile: filepath.Join(dir, "nope")}, wantErr: "SENDQ_TOKEN_KEY_FILE: open"},
		{name: "BadKey", env: map[string]string{EnvTokenKey: "c:" + key[:20]}, wantErr: `SENDQ_TOKEN_KEY: parse keyring: entry 1 (id "c")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ring, err := LoadKeyring(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), key[:12]) {
					t.Errorf("error shows key material: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if ring != nil {
					t.Errorf("LoadKeyring() = %v, want nil", ring)
				}
				return
			}
			if ring == nil || ring.Current() != tc.want {
				t.Errorf("LoadKeyring() = %v, want current key %s", ring, tc.want)
			}
		})
	}
}

func TestKeyringNeverPrintsKeys(t *testing.T) {
	t.Parallel()
	key := randomKey()
	ring, _ := NewKeyring("k1", map[string][]byte{"k1": key, "k0": randomKey()})
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("keys", "ring", ring)
	out := fmt.Sprintf("%v %+v %#v %s %x %v", ring, ring, ring, ring, ring, *ring) + logs.String()
	if want := "keyring(current k1; k1, k0)"; !strings.Contains(out, want) {
		t.Errorf("output %q lacks %q", out, want)
	}
	for _, enc := range []string{string(key), fmt.Sprintf("%x", key[:8]), base64.StdEncoding.EncodeToString(key)[:12], fmt.Sprint(key[:8])} {
		if strings.Contains(out, enc) {
			t.Fatalf("output shows the key: %q", out)
		}
	}
	if strings.Contains(out, "aead") || strings.Contains(out, "0x") {
		t.Errorf("output shows internals: %q", out)
	}
}

func TestNewKeyringRejectsBadKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		current string
		keys    map[string][]byte
		wantErr string
	}{
		{"CurrentMissing", "a", map[string][]byte{"b": randomKey()}, `current key id "a" has no key`},
		{"ShortKey", "a", map[string][]byte{"a": make([]byte, 16)}, "16 bytes, want 32"},
		{"BadID", "a:b", map[string][]byte{"a:b": randomKey()}, `key id "a:b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NewKeyring(tc.current, tc.keys); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzKeyringOpen: values read from Redis are untrusted; Open must fail
// cleanly on anything it did not seal.
func FuzzKeyringOpen(f *testing.F) {
	ring, _ := NewKeyring("k1", map[string][]byte{"k1": bytes.Repeat([]byte{7}, TokenKeySize)})
	f.Add(ring.Seal([]byte("token"), []byte("aad")), []byte("aad"))
	f.Add("v1:k1:", []byte(""))
	f.Add("v1::AAAA", []byte("x"))
	f.Add("plain:token", []byte("aad"))
	f.Fuzz(func(t *testing.T, v string, ad []byte) {
		pt, err := ring.Open(v, ad)
		if err == nil && string(ad) != "aad" {
			t.Fatalf("Open(%q, %q) = %q without error", v, ad, pt)
		}
		if err != nil && !errors.Is(err, ErrTokenUnreadable) {
			t.Fatalf("Open error %v does not wrap ErrTokenUnreadable", err)
		}
	})
}

// FuzzParseKeyring: a keyring specification comes from the environment or
// a file; parsing must never panic, and what it accepts must seal and open.
func FuzzParseKeyring(f *testing.F) {
	f.Add("a:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)))
	f.Add(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32)) + ",b:xx")
	f.Add(":,::,")
	f.Fuzz(func(t *testing.T, spec string) {
		ring, err := ParseKeyring(spec)
		if err != nil {
			return
		}
		got, err := ring.Open(ring.Seal([]byte("x"), nil), nil)
		if err != nil || string(got) != "x" {
			t.Fatalf("round trip through %v: %q, %v", ring, got, err)
		}
	})
}
