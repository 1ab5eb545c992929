package tasks

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// canonicalPayloads are payloads as producers make them, each encoded by
// encodePayload in the tests below.
func canonicalPayloads() map[string]*Payload {
	base := func() *Payload {
		return &Payload{
			Version:   PayloadVersion,
			MessageID: "<abc@example.com>",
			Date:      time.Date(2024, 3, 1, 12, 30, 0, 123, time.FixedZone("", 3600)),
			Email: Email{
				AccountID: "support",
				From:      "Support <s@example.com>",
				To:        []string{"a@example.org"},
				Subject:   "Hi",
				Text:      "Hello",
			},
		}
	}
	full := base()
	full.IdempotencyKey = "order-1"
	full.Cc = []string{"c@example.org", `"Doe, J." <d@example.org>`}
	full.Bcc = []string{"b@example.org"}
	full.ReplyTo = []string{"r@example.org"}
	full.HTML = `<p class="x">a &amp; b</p>`
	full.Headers = []Header{{Name: "X-A", Value: "1"}, {Name: "X-B", Value: ""}}
	full.Attachments = []Attachment{
		{Filename: "a.png", ContentType: "image/png", Data: []byte{0, 1, 2, 0xff}, ContentID: "a"},
		{Filename: "empty.txt", Data: []byte{}},
	}
	escapes := base()
	escapes.Text = "line 1\r\nline 2\n\ttab \"quoted\" back\\slash / slash\b\f"
	escapes.Subject = "Grüße, 日本語 and 🎉"
	utc := base()
	utc.Date = time.Date(2025, 12, 31, 23, 59, 59, 0, time.UTC)
	utc.Text = ""
	utc.HTML = "<p>only html</p>"
	return map[string]*Payload{"Minimal": base(), "EveryField": full, "Escapes": escapes, "UTCAndHTMLOnly": utc}
}

func TestDecodeCanonicalReadsWhatTheProducerWrites(t *testing.T) {
	t.Parallel()
	for name, p := range canonicalPayloads() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			data, err := encodePayload(p)
			if err != nil {
				t.Fatal(err)
			}
			got := new(Payload)
			if !decodeCanonical(data, got) {
				t.Fatalf("decodeCanonical refused the producer's encoding:\n%s", data)
			}
			want, err := decodeStrict(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decodeCanonical = %+v\nencoding/json = %+v", got, want)
			}
			if !got.Date.Equal(p.Date) || got.Text != p.Text || got.Subject != p.Subject {
				t.Errorf("decodeCanonical changed the payload: %+v, want %+v", got, p)
			}
		})
	}
}

// TestDecodeCanonicalLeavesTheRestToEncodingJSON checks that what the fast
// path does not read, valid or not, is left to encoding/json, and that
// DecodePayload still reads the valid ones.
func TestDecodeCanonicalLeavesTheRestToEncodingJSON(t *testing.T) {
	t.Parallel()
	const tail = `"message_id":"<a@b.example>","date":"2024-01-01T00:00:00Z","account_id":"a","from":"a@b.example","to":["c@d.example"]`
	tests := []struct {
		name  string
		data  string
		valid bool // DecodePayload reads it
	}{
		{"KeyInOtherCase", `{"V":1,` + tail + `,"text":"x"}`, true},
		{"UnicodeEscape", `{"v":1,` + tail + `,"text":"\u00e9"}`, true},
		{"LineSeparatorAsEncodingJSONWritesIt", `{"v":1,` + tail + `,"text":"a\u2028b"}`, true},
		{"NullList", `{"v":1,` + tail + `,"cc":null,"text":"x"}`, true},
		{"EscapedKey", `{"v":1,` + tail + `,"te\u0078t":"x"}`, true},
		{"InvalidUTF8", "{\"v\":1," + tail + ",\"text\":\"\xff\"}", true},
		{"UnknownField", `{"v":1,` + tail + `,"text":"x","priority":1}`, false},
		{"DuplicateField", `{"v":1,` + tail + `,"text":"x","text":"y"}`, true},
		{"DuplicateHeaderField", `{"v":1,` + tail + `,"text":"x","headers":[{"name":"X-A","name":"X-B","value":"1"}]}`, true},
		{"FractionalVersion", `{"v":1.0,` + tail + `,"text":"x"}`, false},
		{"LeadingZeroVersion", `{"v":01,` + tail + `,"text":"x"}`, false},
		{"NegativeVersion", `{"v":-1,` + tail + `,"text":"x"}`, false},
		{"TrailingData", `{"v":1,` + tail + `,"text":"x"}{}`, false},
		{"RawControlCharacter", "{\"v\":1," + tail + ",\"text\":\"a\x01b\"}", false},
		{"BadDate", `{"v":1,"message_id":"<a@b.example>","date":"yesterday","account_id":"a","from":"a@b.example","to":["c@d.example"],"text":"x"}`, false},
		{"BadBase64", `{"v":1,` + tail + `,"text":"x","attachments":[{"filename":"f","data":"%%"}]}`, false},
		{"Unterminated", `{"v":1,` + tail + `,"text":"x`, false},
		{"Array", `[]`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if decodeCanonical([]byte(tt.data), new(Payload)) {
				t.Fatalf("decodeCanonical accepted %s", tt.data)
			}
			_, err := DecodePayload([]byte(tt.data))
			if tt.valid && err != nil {
				t.Errorf("DecodePayload() = %v, want it read through encoding/json", err)
			}
			if !tt.valid && err == nil {
				t.Errorf("DecodePayload() accepted %s", tt.data)
			}
		})
	}
}

// FuzzDecodeCanonical checks the fast path against encoding/json: whatever
// decodeCanonical accepts, the strict decode accepts with an equal result.
func FuzzDecodeCanonical(f *testing.F) {
	for _, p := range canonicalPayloads() {
		data, err := encodePayload(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(` { "v" : 1 , "to" : [ ] , "headers" : [ { } ] , "attachments" : [ ] } `))
	f.Add([]byte(`{"v":0,"text":"a\/b\\\"","attachments":[{"data":"AA=\nA"}]}`))
	f.Add([]byte(`{"v":123456789,"date":"2024-01-01T00:00:00.5-07:00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got := new(Payload)
		if !decodeCanonical(data, got) {
			return
		}
		want, err := decodeStrict(data)
		if err != nil {
			t.Fatalf("decodeCanonical accepted what encoding/json refuses (%v):\n%q", err, data)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeCanonical and encoding/json differ on %q:\n%+v\n%+v", data, got, want)
		}
	})
}

func BenchmarkDecodeCanonical(b *testing.B) {
	p := canonicalPayloads()["Minimal"]
	p.Text = strings.Repeat("lorem ipsum ", 85)
	data, err := encodePayload(p)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if !decodeCanonical(data, new(Payload)) {
			b.Fatal("refused")
		}
	}
}
