package tasks

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// encodePayloadJSON is the reference encodePayload must match byte for
// byte: encoding/json without HTML escaping.
func encodePayloadJSON(p *Payload) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// checkEncodesAsJSON fails t unless encodePayload writes what
// encodePayloadJSON writes, or both fail.
func checkEncodesAsJSON(t *testing.T, p *Payload) {
	t.Helper()
	got, err := encodePayload(p)
	want, wantErr := encodePayloadJSON(p)
	switch {
	case (err != nil) != (wantErr != nil):
		t.Fatalf("encodePayload error %v, encoding/json error %v", err, wantErr)
	case !bytes.Equal(got, want):
		t.Fatalf("encodePayload and encoding/json differ:\n%s\n%s", got, want)
	}
}

func TestEncodePayloadIsEncodingJSON(t *testing.T) {
	t.Parallel()
	cases := canonicalPayloads()
	odd := canonicalPayloads()["EveryField"]
	odd.Version = -12
	odd.Text = "ctrl \x00\x01\x1f\x7f, bad UTF-8 \xff\xc3 and \xe2\x82, separators \u2028\u2029, <&> kept"
	odd.Subject = "\u2027\u202a\U0001F600"
	odd.Headers = []Header{{Name: "X-\"Q\"", Value: "a\\b"}}
	odd.Attachments = []Attachment{{Filename: "nil.bin"}, {Filename: "a", Data: []byte("abcd"), ContentType: "text/plain"}}
	cases["OddStringsAndNilData"] = odd
	long := canonicalPayloads()["Minimal"]
	long.Version = 1234567
	long.Text = strings.Repeat("x\"y\n", 10000)
	long.To = make([]string, 100)
	for i := range long.To {
		long.To[i] = "r@example.org"
	}
	cases["LongTextManyRecipients"] = long
	yearTenThousand := canonicalPayloads()["Minimal"]
	yearTenThousand.Date = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	cases["DateOutOfRange"] = yearTenThousand
	cases["Zero"] = &Payload{}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			checkEncodesAsJSON(t, p)
		})
	}
}

// FuzzEncodePayload checks encodePayload against encoding/json on payloads
// with arbitrary strings, times and attachment data.
func FuzzEncodePayload(f *testing.F) {
	f.Add(1, "<a@b.example>", int64(1700000000), int64(0), 3600, "key", "acct", "A <a@b.example>", "c@d.example",
		"subj", "text", "<p>html</p>", "X-A", "v", "f.txt", "text/plain", []byte("data"), "cid", false)
	f.Add(-1, "\u2028", int64(-62135596800), int64(999999999), -7200, "", "", "\x00", "\xff",
		"\t", "\r\n", "\"\\", "", "", "", "", []byte(nil), "", true)
	f.Fuzz(func(t *testing.T, v int, msgID string, sec, nsec int64, offset int, key, acct, from, to,
		subject, text, html, hname, hvalue, filename, ctype string, data []byte, cid string, nilData bool) {
		p := &Payload{
			Version:        v,
			MessageID:      msgID,
			Date:           time.Unix(sec, nsec).In(time.FixedZone("", offset%(24*3600))),
			IdempotencyKey: key,
			Email: Email{
				AccountID: acct, From: from, To: []string{to}, Cc: []string{from, to}, Subject: subject, Text: text, HTML: html,
				Headers:     []Header{{Name: hname, Value: hvalue}},
				Attachments: []Attachment{{Filename: filename, ContentType: ctype, Data: data, ContentID: cid}},
			},
		}
		if nilData {
			p.Attachments[0].Data = nil
			p.Headers, p.Cc = nil, []string{}
		}
		checkEncodesAsJSON(t, p)
	})
}

func BenchmarkEncodePayload(b *testing.B) {
	p := canonicalPayloads()["Minimal"]
	p.Text = strings.Repeat("lorem ipsum ", 85)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodePayload(p); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPlainRunStopsAtTheFirstByteToEscape puts each byte that ends a plain
// run at every position of strings long enough to take the eight-byte path.
func TestPlainRunStopsAtTheFirstByteToEscape(t *testing.T) {
	t.Parallel()
	naive := func(s string, ascii bool) int {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c == '"' || c == '\\' || (ascii && c >= 0x80) {
				return i
			}
		}
		return len(s)
	}
	for n := 0; n <= 20; n++ {
		for pos := 0; pos <= n; pos++ {
			for _, c := range []byte{0x00, 0x1f, '"', '\\', 0x80, 0xc3, 0xff, 0x20, 0x7f, '!', '#', '[', ']'} {
				b := []byte(strings.Repeat("~", n))
				if pos < n {
					b[pos] = c
				}
				for _, ascii := range []bool{false, true} {
					if got, want := plainRun(string(b), ascii), naive(string(b), ascii); got != want {
						t.Errorf("plainRun(%q, %v) = %d, want %d", b, ascii, got, want)
					}
					if got, want := plainRun(b, ascii), naive(string(b), ascii); got != want {
						t.Errorf("plainRun([]byte %q, %v) = %d, want %d", b, ascii, got, want)
					}
				}
			}
		}
	}
}
