package opsweb_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sendq/sendq/opsweb"
	"github.com/sendq/sendq/tasks"
)

// payloadJSON marshals an email:send payload around e.
func payloadJSON(t testing.TB, e tasks.Email) []byte {
	t.Helper()
	b, err := json.Marshal(tasks.Payload{Version: tasks.PayloadVersion, MessageID: "<m1@example.com>",
		Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Email: e})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFormatPayload(t *testing.T) {
	t.Parallel()
	full := tasks.Email{
		AccountID: "support",
		From:      "Support <support@example.com>",
		To:        []string{"Alice Liddell <alice.liddell@Example.NET>", "bob.builder@example.org"},
		Cc:        []string{"carol.singer@example.net", "ALICE.LIDDELL@example.net"}, // a duplicate
		Bcc:       []string{`"dave quoted"@bcc.example`},
		ReplyTo:   []string{"replies.desk@example.com"},
		Subject:   "Your order, as asked by erin.asker@partner.example",
		Text:      "plain-body-secret",
		HTML:      "<p>html-body-secret</p>",
		Headers:   []tasks.Header{{Name: "X-Note", Value: "header-secret"}},
		Attachments: []tasks.Attachment{
			{Filename: "invoice.pdf", Data: []byte("attachment-secret-1")},
			{Filename: "logo.png", Data: []byte("attachment-secret-2"), ContentID: "logo"},
		},
	}
	never := []string{"plain-body-secret", "html-body-secret", "header-secret", "attachment-secret",
		"YXR0YWNobWVudC1zZWNyZXQ", // base64 of the attachment
		"invoice.pdf", "alice", "ALICE", "bob.builder", "carol.singer", "dave", "replies.desk", "erin.asker", "support@"}

	for _, tc := range []struct {
		name     string
		taskType string
		payload  []byte
		want     string
	}{
		{name: "EmailShowsOnlyTheSummary", taskType: tasks.TypeSendEmail, payload: payloadJSON(t, full),
			want: `{"account_id":"support","recipients":4,"recipient_domains":["example.net","example.org","bcc.example"],` +
				`"subject":"Your order, as asked by *@partner.example","message_id":"<m1@example.com>","attachments":2}`},
		{name: "NoRecipients", taskType: tasks.TypeSendEmail, payload: payloadJSON(t, tasks.Email{AccountID: "a"}),
			want: `{"account_id":"a","recipients":0,"recipient_domains":[],"subject":"","message_id":"<m1@example.com>","attachments":0}`},
		{name: "UnparseableAddressIsCountedNotShown", taskType: tasks.TypeSendEmail,
			payload: payloadJSON(t, tasks.Email{AccountID: "a", To: []string{"frank.unparsed@@bad", "gina@ok.example"}}),
			want:    `{"account_id":"a","recipients":2,"recipient_domains":["ok.example"],"subject":"","message_id":"<m1@example.com>","attachments":0}`},
		{name: "LongSubjectIsCut", taskType: tasks.TypeSendEmail,
			payload: payloadJSON(t, tasks.Email{AccountID: "a", Subject: strings.Repeat("é", 300)}),
			want:    `{"account_id":"a","recipients":0,"recipient_domains":[],"subject":"` + strings.Repeat("é", 200) + `…","message_id":"<m1@example.com>","attachments":0}`},
		{name: "OtherTaskType", taskType: "report:build", payload: []byte(`{"v":1,"text":"plain-body-secret"}`), want: opsweb.PayloadHidden},
		{name: "NotJSON", taskType: tasks.TypeSendEmail, payload: []byte("plain-body-secret"), want: opsweb.PayloadHidden},
		{name: "Empty", taskType: tasks.TypeSendEmail, payload: nil, want: opsweb.PayloadHidden},
		{name: "JSONArray", taskType: tasks.TypeSendEmail, payload: []byte(`["plain-body-secret"]`), want: opsweb.PayloadHidden},
		{name: "NoVersion", taskType: tasks.TypeSendEmail, payload: []byte(`{"account_id":"a","text":"plain-body-secret"}`), want: opsweb.PayloadHidden},
		{name: "NewerVersion", taskType: tasks.TypeSendEmail, payload: []byte(`{"v":2,"account_id":"a","text":"plain-body-secret"}`), want: opsweb.PayloadHidden},
		{name: "WrongFieldType", taskType: tasks.TypeSendEmail, payload: []byte(`{"v":1,"to":"alice@example.net","text":"plain-body-secret"}`), want: opsweb.PayloadHidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := opsweb.FormatPayload(tc.taskType, tc.payload)
			if got != tc.want {
				t.Errorf("FormatPayload =\n%s\nwant\n%s", got, tc.want)
			}
			for _, s := range never {
				if strings.Contains(got, s) {
					t.Errorf("FormatPayload shows %q: %s", s, got)
				}
			}
		})
	}
}

func TestFormatResult(t *testing.T) {
	t.Parallel()
	result := func(r tasks.Result) []byte {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	full := tasks.Result{
		MessageID: "<m1@example.com>",
		Accepted:  []string{"alice.liddell@example.net", "bob.builder@Example.ORG", "carol.singer@example.net"},
		Rejected:  []tasks.Rejection{{Address: "dave.gone@gone.example", Reply: "550 5.1.1 <dave.gone@gone.example>: user unknown"}},
		Reply:     "250 2.0.0 OK queued for <alice.liddell@example.net>",
	}
	never := []string{"alice", "bob.builder", "carol", "dave", "user unknown"}
	for _, tc := range []struct {
		name     string
		taskType string
		result   []byte
		want     string
	}{
		{name: "CountsDomainsAndReply", taskType: tasks.TypeSendEmail, result: result(full),
			want: `{"message_id":"<m1@example.com>","accepted":3,"accepted_domains":["example.net","example.org"],"rejected":1,` +
				`"rejected_domains":["gone.example"],"reply":"250 2.0.0 OK queued for <*@example.net>"}`},
		{name: "TaskPagePassesNoType", taskType: "", result: result(tasks.Result{MessageID: "<m2@example.com>", Reply: "250 OK", PossibleDuplicate: true}),
			want: `{"message_id":"<m2@example.com>","accepted":0,"accepted_domains":[],"rejected":0,"rejected_domains":[],"reply":"250 OK","possible_duplicate":true}`},
		{name: "Empty", taskType: tasks.TypeSendEmail, result: nil, want: ""},
		{name: "OtherTaskType", taskType: "report:build", result: result(full), want: opsweb.ResultHidden},
		{name: "NotJSON", taskType: tasks.TypeSendEmail, result: []byte("alice@example.net"), want: opsweb.ResultHidden},
		{name: "UnknownField", taskType: "", result: []byte(`{"message_id":"<m>","text":"alice@example.net"}`), want: opsweb.ResultHidden},
		{name: "NoMessageID", taskType: "", result: []byte(`{"accepted":["alice@example.net"]}`), want: opsweb.ResultHidden},
		{name: "TrailingData", taskType: "", result: []byte(`{"message_id":"<m>"} "alice@example.net"`), want: opsweb.ResultHidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := opsweb.FormatResult(tc.taskType, tc.result)
			if got != tc.want {
				t.Errorf("FormatResult =\n%s\nwant\n%s", got, tc.want)
			}
			for _, s := range never {
				if strings.Contains(got, s) {
					t.Errorf("FormatResult shows %q: %s", s, got)
				}
			}
		})
	}
}

// FuzzPayloadFormatter feeds FormatPayload untrusted bytes, and real payloads
// built around fuzzed strings whose bodies and local parts carry markers that
// must never come out.
func FuzzPayloadFormatter(f *testing.F) {
	f.Add([]byte(`{"v":1,"account_id":"a","to":["x@y.z"],"text":"hi"}`), "body", "local", "example.org", "subject")
	f.Add([]byte(`{"v":1,"to":null,"attachments":[{"data":"!!"}]}`), "", "a.b+c", "xn--bcher-kva.example", "")
	f.Add([]byte(`{"v":1.0,"subject":"\u0000\n"}`), "<p>x</p>", `"quoted local"`, "[192.0.2.1]", "to alice@x.y")
	f.Add([]byte(`[]`), "\xff\xfe", "ü", "é.example", "\r\n")
	f.Add([]byte(`{"v":1,"message_id":"`+strings.Repeat("a", 300)+`"}`), "b", "l", "d", strings.Repeat("s", 500))

	f.Fuzz(func(t *testing.T, raw []byte, body, local, domain, subject string) {
		check := func(in []byte, got string) {
			t.Helper()
			if strings.ContainsAny(got, "\r\n") {
				t.Fatalf("FormatPayload is not one line: %q", got)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("FormatPayload is not UTF-8: %q", got)
			}
			// Shown strings are cut; only the domains grow with the input,
			// by at most their JSON escaping.
			if len(got) > 6*len(in)+2048 {
				t.Fatalf("FormatPayload made %d bytes of %d", len(got), len(in))
			}
		}
		check(raw, opsweb.FormatPayload(tasks.TypeSendEmail, raw))
		check(raw, opsweb.FormatPayload("other:type", raw))
		_ = opsweb.FormatResult("", raw)

		const bodyMark, localMark = "zqxbodymark", "zqxlocalmark"
		e := tasks.Email{
			AccountID: "acct",
			From:      "from@example.com",
			To:        []string{localMark + local + "@" + domain, "Name <" + localMark + "@" + domain + ">"},
			Cc:        []string{`"` + localMark + local + `"@` + domain},
			Bcc:       []string{localMark + "@example.org"},
			Subject:   subject,
			Text:      bodyMark + body,
			HTML:      "<p>" + bodyMark + body + "</p>",
			Attachments: []tasks.Attachment{
				{Filename: bodyMark + ".txt", Data: []byte(bodyMark + body)},
			},
		}
		if strings.Contains(subject, "zqx") || strings.Contains(domain, "zqx") {
			t.Skip("the subject and the domains are shown by design")
		}
		in := payloadJSON(t, e)
		got := opsweb.FormatPayload(tasks.TypeSendEmail, in)
		check(in, got)
		if got == opsweb.PayloadHidden {
			t.Fatalf("a marshalled payload was hidden: %s", payloadJSON(t, e))
		}
		for _, mark := range []string{bodyMark, localMark} {
			if strings.Contains(got, mark) {
				t.Fatalf("FormatPayload shows %s: %s", mark, got)
			}
		}
	})
}
