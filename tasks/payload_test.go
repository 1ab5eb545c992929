package tasks_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/tasks"
)

func fullPayload() *tasks.Payload {
	return &tasks.Payload{
		Version:        tasks.PayloadVersion,
		MessageID:      "<abc@example.com>",
		Date:           time.Date(2024, 3, 1, 12, 30, 0, 0, time.FixedZone("", 3600)),
		IdempotencyKey: "order-1",
		Email: tasks.Email{
			AccountID:   "support",
			From:        "s@example.com",
			To:          []string{"a@example.org"},
			Cc:          []string{"c@example.org"},
			Bcc:         []string{"b@example.org"},
			ReplyTo:     []string{"r@example.org"},
			Subject:     "Hi",
			Text:        "text",
			HTML:        "<p>html</p>",
			Headers:     []tasks.Header{{Name: "X-A", Value: "1"}},
			Attachments: []tasks.Attachment{{Filename: "a.png", ContentType: "image/png", Data: []byte{0, 1, 2}, ContentID: "a"}},
		},
	}
}

// mustJSON encodes v as the producer does, without HTML escaping.
func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

func TestPayloadJSONIsFlatSnakeCase(t *testing.T) {
	t.Parallel()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(mustJSON(t, fullPayload()), &m); err != nil {
		t.Fatal(err)
	}
	want := []string{"account_id", "attachments", "bcc", "cc", "date", "from", "headers", "html",
		"idempotency_key", "message_id", "reply_to", "subject", "text", "to", "v"}
	if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, want) {
		t.Errorf("JSON keys = %q, want %q", got, want)
	}
	if got, want := string(m["v"]), "1"; got != want {
		t.Errorf(`"v" = %s, want %s`, got, want)
	}
	var att []map[string]any
	if err := json.Unmarshal(m["attachments"], &att); err != nil {
		t.Fatal(err)
	}
	if got := att[0]["data"]; got != "AAEC" {
		t.Errorf("attachment data = %v, want base64 \"AAEC\"", got)
	}
	if got := slices.Sorted(maps.Keys(att[0])); !slices.Equal(got, []string{"content_id", "content_type", "data", "filename"}) {
		t.Errorf("attachment keys = %q", got)
	}
}

func TestDecodePayload(t *testing.T) {
	t.Parallel()
	valid := string(mustJSON(t, fullPayload()))
	withField := func(field string) string { return strings.Replace(valid, "{", "{"+field+",", 1) }
	tests := []struct {
		name        string
		data        string
		wantErr     string // substring; "" means success
		wantVersion bool   // errors.Is ErrUnsupportedVersion
		wantInvalid bool   // errors.Is ErrInvalidEmail
	}{
		{name: "Valid", data: valid},
		{name: "UnknownVersion", data: strings.Replace(valid, `"v":1`, `"v":2`, 1),
			wantErr: "invalid payload: unsupported payload version 2 (this build reads version 1)", wantVersion: true},
		{name: "UnknownVersionWithNewFields", data: `{"v":3,"priority":"high"}`,
			wantErr: "unsupported payload version 3", wantVersion: true},
		{name: "VersionZero", data: strings.Replace(valid, `"v":1`, `"v":0`, 1),
			wantErr: "unsupported payload version 0", wantVersion: true},
		{name: "MissingVersion", data: strings.Replace(valid, `"v":1,`, ``, 1),
			wantErr: `invalid payload: missing version field "v"`},
		{name: "NullVersion", data: strings.Replace(valid, `"v":1`, `"v":null`, 1),
			wantErr: `missing version field "v"`},
		{name: "VersionNotAnInteger", data: strings.Replace(valid, `"v":1`, `"v":"1"`, 1),
			wantErr: `version field "v" is not an integer`},
		{name: "VersionSpelledOut", data: strings.Replace(valid, `"v":1`, `"version":1`, 1),
			wantErr: `missing version field "v"`},
		{name: "UnknownField", data: withField(`"priority":"high"`),
			wantErr: `invalid payload: json: unknown field "priority"`},
		{name: "UnknownNestedField", data: strings.Replace(valid, `"name":"X-A"`, `"name":"X-A","extra":1`, 1),
			wantErr: `unknown field "extra"`},
		{name: "TrailingData", data: valid + `{}`, wantErr: "invalid payload"},
		{name: "TrailingGarbage", data: valid + ` x`, wantErr: "invalid payload"},
		{name: "NotJSON", data: `hello`, wantErr: "invalid payload: invalid character"},
		{name: "NotAnObject", data: `[1]`, wantErr: "invalid payload: json: cannot unmarshal array"},
		{name: "Null", data: `null`, wantErr: `missing version field "v"`},
		{name: "Empty", data: ``, wantErr: "invalid payload"},
		{name: "WrongType", data: strings.Replace(valid, `"to":["a@example.org"]`, `"to":"a@example.org"`, 1),
			wantErr: "cannot unmarshal string"},
		{name: "BadBase64", data: strings.Replace(valid, `"data":"AAEC"`, `"data":"!!"`, 1),
			wantErr: "illegal base64"},
		{name: "InvalidEmail", data: strings.Replace(valid, `"to":["a@example.org"]`, `"to":["nobody"]`, 1),
			wantErr: "invalid payload: invalid email: to[0]: missing '@'", wantInvalid: true},
		{name: "MissingMessageID", data: strings.Replace(valid, `"message_id":"<abc@example.com>",`, ``, 1),
			wantErr: "invalid email: message_id: required", wantInvalid: true},
		{name: "HeaderInjectionInSubject", data: strings.Replace(valid, `"subject":"Hi"`, `"subject":"Hi\r\nBcc: x@example.net"`, 1),
			wantErr: "invalid email: subject: contains a line break", wantInvalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := tasks.DecodePayload([]byte(tt.data))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("DecodePayload() = %v", err)
				}
				want := fullPayload()
				if !p.Date.Equal(want.Date) {
					t.Errorf("Date = %v, want %v", p.Date, want.Date)
				}
				p.Date = want.Date
				if !reflect.DeepEqual(p, want) {
					t.Errorf("DecodePayload() = %+v, want %+v", p, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodePayload() = nil error, want %q", tt.wantErr)
			}
			if p != nil {
				t.Errorf("DecodePayload() returned a payload with the error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("DecodePayload() = %q, want it to contain %q", err, tt.wantErr)
			}
			if !errors.Is(err, tasks.ErrInvalidPayload) {
				t.Errorf("error does not match ErrInvalidPayload")
			}
			if got := errors.Is(err, tasks.ErrUnsupportedVersion); got != tt.wantVersion {
				t.Errorf("errors.Is(err, ErrUnsupportedVersion) = %v, want %v", got, tt.wantVersion)
			}
			var ve *tasks.ValidationError
			if got := errors.Is(err, tasks.ErrInvalidEmail) && errors.As(err, &ve); got != tt.wantInvalid {
				t.Errorf("ErrInvalidEmail with *ValidationError = %v, want %v", got, tt.wantInvalid)
			}
		})
	}
}

func TestDecodePayloadLimits(t *testing.T) {
	t.Parallel()
	p := fullPayload()
	p.To = addresses(150)
	data := mustJSON(t, p)
	if _, err := tasks.DecodePayload(data); !errors.Is(err, tasks.ErrInvalidEmail) {
		t.Errorf("DecodePayload() with 152 recipients = %v, want ErrInvalidEmail", err)
	}
	if _, err := tasks.DecodePayloadLimits(data, tasks.Limits{MaxRecipients: 500}); err != nil {
		t.Errorf("DecodePayloadLimits(MaxRecipients: 500) = %v, want nil", err)
	}
}
