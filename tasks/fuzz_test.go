package tasks_test

import (
	"bytes"
	"errors"
	"net/textproto"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"

	"github.com/sendq/sendq/tasks"
)

func FuzzDecodePayload(f *testing.F) {
	f.Add(mustJSON(f, fullPayload()))
	f.Add(mustJSON(f, validPayload()))
	f.Add([]byte(`{"v":1,"message_id":"<a@b>","date":"2024-01-01T00:00:00Z","account_id":"a","from":"a@b","to":["c@d"],"text":"x"}`))
	f.Add([]byte(`{"v":1,"message_id":"<a@b>","date":"2024-01-01T00:00:00+05:30","account_id":"a","from":"=?utf-8?q?J=C3=B6rg?= <a@b>","bcc":["c@d"],"attachments":[{"filename":"f","data":"AA==","content_id":"x"}],"html":"<p>"}`))
	f.Add([]byte(`{"v":2}`))
	f.Add([]byte(`{"v":1,"x":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := tasks.DecodePayload(data)
		if err != nil {
			if p != nil || !errors.Is(err, tasks.ErrInvalidPayload) {
				t.Fatalf("DecodePayload() = %v, %v; want nil and ErrInvalidPayload", p, err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("decoded payload does not validate: %v", err)
		}
		b1 := mustJSON(t, p)
		p2, err := tasks.DecodePayload(b1)
		if err != nil {
			t.Fatalf("re-encoded payload does not decode: %v\n%s", err, b1)
		}
		if b2 := mustJSON(t, p2); !bytes.Equal(b1, b2) {
			t.Fatalf("payload changed across a round trip:\n%s\n%s", b1, b2)
		}
		if !p2.Date.Equal(p.Date) {
			t.Fatalf("Date %v became %v", p.Date, p2.Date)
		}
		raw, err := p.BuildMIME()
		if err != nil {
			t.Fatalf("BuildMIME() of a decoded payload = %v", err)
		}
		checkCRLF(t, raw)
	})
}

// FuzzBuildMIME checks that whatever validates builds, with CRLF line
// endings, exactly the header fields expected (no injection) and contents
// that read back unchanged.
func FuzzBuildMIME(f *testing.F) {
	f.Add("Support <support@example.com>", "alice@example.org", "Hello", "Hi\n", "", "X-Tag", "v", "a.pdf", "", "", []byte("%PDF"))
	f.Add("=?utf-8?q?J=C3=B6rg?= <j@example.com>", `"Smith, Bob" <bob@example.org>`, "Grüße =?x?= ", "a\r\nb\rc\n", "<p>é</p>", "List-Unsubscribe", "<mailto:x@y>", "été.txt", "text/plain; charset=utf-8", "cid1", []byte{0, 1, 2, 255})
	f.Add("a@b.c", "d@e.f", strings.Repeat("long subject ", 20), strings.Repeat("x", 200), "", "X-Long", strings.Repeat("é", 100), strings.Repeat("ü", 100), "image/png", "logo@x", []byte{})
	f.Add("a@b.c", "d@e.f", "x\r\nBcc: evil@x", "t", "", "X-A", "b\nBcc: evil", "f", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, from, to, subject, text, html, hname, hvalue, filename, ctype, cid string, data []byte) {
		p := &tasks.Payload{
			Version:   tasks.PayloadVersion,
			MessageID: "<fuzz@example.com>",
			Date:      time.Date(2024, 3, 1, 12, 30, 0, 0, time.UTC),
			Email: tasks.Email{
				AccountID: "fuzz",
				From:      from,
				To:        []string{to},
				Bcc:       []string{"hidden-bcc@example.net"},
				Subject:   subject,
				Text:      text,
				HTML:      html,
			},
		}
		if hname != "" {
			p.Headers = []tasks.Header{{Name: hname, Value: hvalue}}
		}
		if filename != "" {
			p.Attachments = []tasks.Attachment{{Filename: filename, ContentType: ctype, Data: data, ContentID: cid}}
		}
		if p.Validate() != nil {
			return
		}
		raw, err := p.BuildMIME()
		if err != nil {
			t.Fatalf("BuildMIME() of a valid payload = %v", err)
		}
		checkCRLF(t, raw)
		if bytes.Contains(raw, []byte("hidden-bcc")) {
			t.Fatalf("Bcc address in the message")
		}

		e, err := message.Read(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("message.Read: %v", err)
		}
		var got []string
		for fields := e.Header.Fields(); fields.Next(); {
			got = append(got, textproto.CanonicalMIMEHeaderKey(fields.Key()))
		}
		want := []string{"Date", "From", "To", "Message-Id", "Mime-Version", "Content-Type"}
		if subject != "" {
			want = append(want, "Subject")
		}
		if hname != "" {
			want = append(want, textproto.CanonicalMIMEHeaderKey(hname))
		}
		if !strings.HasPrefix(e.Header.Get("Content-Type"), "multipart/") {
			want = append(want, "Content-Transfer-Encoding")
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("header fields %q, want %q:\n%s", got, want, raw)
		}

		h := gomail.Header{Header: e.Header}
		if s, err := h.Subject(); err != nil || s != subject {
			t.Fatalf("Subject reads back as %q (%v), want %q", s, err, subject)
		}
		wantFrom, wantTo := p.Envelope()
		if a, err := h.AddressList("From"); err != nil || len(a) != 1 || gomailBare(a[0]) != wantFrom {
			t.Fatalf("From reads back as %v (%v), want %s", a, err, wantFrom)
		}
		if a, err := h.AddressList("To"); err != nil || len(a) != 1 || gomailBare(a[0]) != wantTo[0] {
			t.Fatalf("To reads back as %v (%v), want %s", a, err, wantTo[0])
		}

		root := walk(t, e)
		leaves := root.leaves()
		if text != "" {
			want := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(text, "\r\n", "\n"), "\r", "\n"), "\n", "\r\n")
			if got := string(leaves[0].body); got != want {
				t.Fatalf("text reads back as %q, want %q", got, want)
			}
		}
		if filename != "" {
			att := leaves[len(leaves)-1]
			if !bytes.Equal(att.body, data) {
				t.Fatalf("attachment data changed: %q became %q", data, att.body)
			}
			if name, err := (&gomail.AttachmentHeader{Header: att.header}).Filename(); err != nil || name != filename {
				t.Fatalf("filename reads back as %q (%v), want %q", name, err, filename)
			}
		}
	})
}

// gomailBare is the bare address as Envelope spells it.
func gomailBare(a *gomail.Address) string {
	s := (&gomail.Address{Address: a.Address}).String()
	return s[1 : len(s)-1]
}
