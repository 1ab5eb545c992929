package tasks_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"

	"github.com/sendq/sendq/tasks"
)

// node is a parsed MIME entity.
type node struct {
	header   message.Header
	typ      string
	body     []byte // decoded, leaves only
	children []*node
}

// shape renders the structure as "multipart/mixed[text/plain application/pdf]".
func (n *node) shape() string {
	if n.children == nil {
		return n.typ
	}
	parts := make([]string, len(n.children))
	for i, c := range n.children {
		parts[i] = c.shape()
	}
	return n.typ + "[" + strings.Join(parts, " ") + "]"
}

// leaves returns the leaf parts in order.
func (n *node) leaves() []*node {
	if n.children == nil {
		return []*node{n}
	}
	var out []*node
	for _, c := range n.children {
		out = append(out, c.leaves()...)
	}
	return out
}

// parseMIME reads raw back with go-message, decoding transfer encodings.
func parseMIME(t testing.TB, raw []byte) *node {
	t.Helper()
	e, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("message.Read: %v", err)
	}
	return walk(t, e)
}

func walk(t testing.TB, e *message.Entity) *node {
	t.Helper()
	typ, _, err := e.Header.ContentType()
	if err != nil {
		t.Fatalf("Content-Type %q: %v", e.Header.Get("Content-Type"), err)
	}
	n := &node{header: e.Header, typ: typ}
	if mr := e.MultipartReader(); mr != nil {
		n.children = []*node{}
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("NextPart: %v", err)
			}
			n.children = append(n.children, walk(t, p))
		}
		return n
	}
	if n.body, err = io.ReadAll(e.Body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	return n
}

// checkCRLF fails on a bare LF or a bare CR, and on a last line without
// its CRLF (BDAT sends the message as it is).
func checkCRLF(t testing.TB, raw []byte) {
	t.Helper()
	if !bytes.HasSuffix(raw, []byte("\r\n")) {
		t.Fatalf("the message ends in %q, not a CRLF", raw[max(0, len(raw)-20):])
	}
	for i, b := range raw {
		if b == '\n' && (i == 0 || raw[i-1] != '\r') {
			t.Fatalf("bare LF at byte %d: %q", i, raw[max(0, i-20):i+1])
		}
		if b == '\r' && (i+1 == len(raw) || raw[i+1] != '\n') {
			t.Fatalf("bare CR at byte %d: %q", i, raw[max(0, i-20):min(len(raw), i+2)])
		}
	}
}

// headerLines returns the message header's lines (folded lines separately).
func headerLines(raw []byte) []string {
	head, _, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
	return strings.Split(string(head), "\r\n")
}

func build(t testing.TB, p *tasks.Payload) []byte {
	t.Helper()
	raw, err := p.BuildMIME()
	if err != nil {
		t.Fatalf("BuildMIME() = %v", err)
	}
	checkCRLF(t, raw)
	return raw
}

func TestBuildMIMEStructure(t *testing.T) {
	t.Parallel()
	att := tasks.Attachment{Filename: "report.pdf", ContentType: "application/pdf", Data: []byte("%PDF-1.4")}
	logo := tasks.Attachment{Filename: "logo.png", ContentType: "image/png", Data: []byte{0x89, 'P', 'N', 'G'}, ContentID: "logo"}
	tests := []struct {
		name   string
		change func(p *tasks.Payload)
		want   string
	}{
		{"TextOnly", func(p *tasks.Payload) { p.Text = "hi" }, "text/plain"},
		{"HTMLOnly", func(p *tasks.Payload) { p.Text, p.HTML = "", "<p>hi</p>" }, "text/html"},
		{"TextAndHTML", func(p *tasks.Payload) { p.HTML = "<p>hi</p>" }, "multipart/alternative[text/plain text/html]"},
		{"TextWithAttachment", func(p *tasks.Payload) { p.Attachments = []tasks.Attachment{att} },
			"multipart/mixed[text/plain application/pdf]"},
		{"AlternativeWithAttachments", func(p *tasks.Payload) {
			p.HTML = "<p>hi</p>"
			p.Attachments = []tasks.Attachment{att, att}
		}, "multipart/mixed[multipart/alternative[text/plain text/html] application/pdf application/pdf]"},
		{"HTMLWithInlineImage", func(p *tasks.Payload) {
			p.Text, p.HTML = "", `<img src="cid:logo">`
			p.Attachments = []tasks.Attachment{logo}
		}, "multipart/related[text/html image/png]"},
		{"AlternativeWithInlineImage", func(p *tasks.Payload) {
			p.HTML = `<img src="cid:logo">`
			p.Attachments = []tasks.Attachment{logo}
		}, "multipart/related[multipart/alternative[text/plain text/html] image/png]"},
		{"InlineAndAttachment", func(p *tasks.Payload) {
			p.HTML = `<img src="cid:logo">`
			p.Attachments = []tasks.Attachment{att, logo}
		}, "multipart/mixed[multipart/related[multipart/alternative[text/plain text/html] image/png] application/pdf]"},
		{"InlineWithoutHTMLGoesToMixed", func(p *tasks.Payload) { p.Attachments = []tasks.Attachment{logo} },
			"multipart/mixed[text/plain image/png]"},
		{"AttachmentsOnly", func(p *tasks.Payload) {
			p.Text = ""
			p.Attachments = []tasks.Attachment{att, logo}
		}, "multipart/mixed[application/pdf image/png]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := validPayload()
			tt.change(p)
			root := parseMIME(t, build(t, p))
			if got := root.shape(); got != tt.want {
				t.Errorf("structure = %s, want %s", got, tt.want)
			}
			if root.header.Get("MIME-Version") != "1.0" {
				t.Errorf("MIME-Version = %q, want 1.0", root.header.Get("MIME-Version"))
			}
			for _, l := range root.leaves() {
				cte := l.header.Get("Content-Transfer-Encoding")
				switch {
				case strings.HasPrefix(l.typ, "text/") && l.header.Get("Content-Disposition") == "":
					_, params, _ := l.header.ContentType()
					if cte != "quoted-printable" || params["charset"] != "utf-8" {
						t.Errorf("%s body: encoding %q charset %q, want quoted-printable utf-8", l.typ, cte, params["charset"])
					}
				case cte != "base64":
					t.Errorf("attachment %s: encoding %q, want base64", l.typ, cte)
				}
			}
		})
	}
}

func TestBuildMIMEHeaders(t *testing.T) {
	t.Parallel()
	p := validPayload()
	p.Date = time.Date(2024, 3, 1, 12, 30, 5, 0, time.FixedZone("", -5*3600))
	p.From = "Jörg Müller <jorg@example.com>"
	p.To = []string{"alice@example.org", `"Smith, Bob" <bob@example.org>`}
	p.Cc = []string{"Carol <carol@example.org>"}
	p.Bcc = []string{"hidden@example.net", "Secret Name <secret@example.net>"}
	p.ReplyTo = []string{"help@example.com"}
	p.Headers = []tasks.Header{
		{Name: "X-Campaign", Value: "spring"},
		{Name: "List-Unsubscribe", Value: "<mailto:unsub@example.com>"},
		{Name: "X-Campaign", Value: "second"},
		{Name: "X-Note", Value: "café"},
	}
	raw := build(t, p)

	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("net/mail.ReadMessage: %v", err)
	}
	h := msg.Header
	if d, err := h.Date(); err != nil || !d.Equal(p.Date) {
		t.Errorf("Date = %v (%v), want %v", d, err, p.Date)
	}
	if got, want := h.Get("Date"), "Fri, 01 Mar 2024 12:30:05 -0500"; got != want {
		t.Errorf("Date header = %q, want %q", got, want)
	}
	if got := h.Get("Message-ID"); got != p.MessageID {
		t.Errorf("Message-ID = %q, want %q", got, p.MessageID)
	}
	if from, err := h.AddressList("From"); err != nil || len(from) != 1 || from[0].Name != "Jörg Müller" || from[0].Address != "jorg@example.com" {
		t.Errorf("From = %v (%v), want Jörg Müller <jorg@example.com>", from, err)
	}
	if got := h.Get("From"); !strings.HasPrefix(got, "=?utf-8?") {
		t.Errorf("From = %q, want an RFC 2047 encoded display name", got)
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 2 || to[0].Address != "alice@example.org" || to[1].Name != "Smith, Bob" {
		t.Errorf("To = %v (%v)", to, err)
	}
	if got, want := h.Get("To"), `alice@example.org, "Smith, Bob" <bob@example.org>`; got != want {
		t.Errorf("To header = %q, want %q", got, want)
	}
	if got, want := h.Get("Cc"), `"Carol" <carol@example.org>`; got != want {
		t.Errorf("Cc header = %q, want %q", got, want)
	}
	if got := h.Get("Reply-To"); got != "help@example.com" {
		t.Errorf("Reply-To = %q", got)
	}
	if got := h.Get("Subject"); got != "Hello" {
		t.Errorf("Subject = %q", got)
	}
	if _, ok := h["Bcc"]; ok {
		t.Errorf("message has a Bcc header")
	}
	for _, s := range []string{"hidden@example.net", "secret@example.net", "Secret Name"} {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("message contains Bcc address %q", s)
		}
	}

	var names []string
	for _, l := range headerLines(raw) {
		if name, _, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(l, " ") {
			names = append(names, name)
		}
	}
	want := []string{"Date", "From", "To", "Cc", "Reply-To", "Subject", "Message-ID", "MIME-Version",
		"X-Campaign", "List-Unsubscribe", "X-Campaign", "X-Note", "Content-Type", "Content-Transfer-Encoding"}
	if !slices.Equal(names, want) {
		t.Errorf("header fields = %q, want %q", names, want)
	}
	if got := h["X-Campaign"]; !slices.Equal(got, []string{"spring", "second"}) {
		t.Errorf("X-Campaign = %q, want both values in order", got)
	}
	dec := new(mime.WordDecoder)
	if got, err := dec.DecodeHeader(h.Get("X-Note")); err != nil || got != "café" {
		t.Errorf("X-Note decodes to %q (%v), want café", got, err)
	}
}

func TestBuildMIMESubjectRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, subject string
	}{
		{"ASCII", "Your order has shipped"},
		{"Accents", "Grüße aus Köln"},
		{"CJK", "ご注文ありがとうございます"},
		{"Emoji", "Launch 🚀 today"},
		{"LongNonASCII", strings.Repeat("Übergrößenträger ", 20)},
		{"LongASCII", strings.Repeat("word ", 150)},
		{"LongASCIIWithoutSpaces", strings.Repeat("x", 900)},
		{"LooksLikeEncodedWord", "=?utf-8?q?not_encoded?="},
		{"LeadingAndTrailingSpaces", "  padded  "},
		{"DoubleSpaces", "a  b   c"},
		{"Tab", "a\tb"},
		{"Quotes", `He said "hi" (twice); ok?`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := validPayload()
			p.Subject = tt.subject
			raw := build(t, p)

			h, err := gomail.CreateReader(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := h.Header.Subject(); err != nil || got != tt.subject {
				t.Errorf("go-message Subject() = %q (%v), want %q", got, err, tt.subject)
			}
			msg, err := mail.ReadMessage(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject")); err != nil || strings.TrimSpace(got) != strings.TrimSpace(tt.subject) {
				t.Errorf("net/mail Subject = %q (%v), want %q", got, err, tt.subject)
			}
			for _, l := range headerLines(raw) {
				if len(l) > 998 {
					t.Errorf("header line of %d characters", len(l))
				}
				if len(l) > 78 && tt.name != "LongASCIIWithoutSpaces" {
					t.Errorf("header line of %d characters (want <= 78): %q", len(l), l)
				}
			}
		})
	}
}

func TestBuildMIMEBodiesAndAttachments(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	blob := make([]byte, 10_000)
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	p := validPayload()
	p.Text = "line one\nline two\r\nline three with a very long tail " + strings.Repeat("é", 80) + "\n.\nend"
	p.HTML = `<p style="x">caf&eacute; <img src="cid:logo@example.com"></p>`
	p.Attachments = []tasks.Attachment{
		{Filename: "blob.bin", ContentType: "application/octet-stream", Data: blob},
		{Filename: "rapport été 2024 — version finale avec un nom vraiment très long.pdf", Data: []byte("%PDF")},
		{Filename: "logo.png", Data: []byte{1, 2, 3}, ContentID: "logo@example.com"},
		{Filename: "mystery.zzqx", Data: []byte("?")},
		{Filename: "empty.txt", ContentType: "text/plain; charset=utf-8"},
		{Filename: "=?utf-8?q?not_encoded?=.txt", ContentType: "text/plain"},
	}
	raw := build(t, p)
	root := parseMIME(t, raw)
	want := "multipart/mixed[multipart/related[multipart/alternative[text/plain text/html] image/png] application/octet-stream application/pdf application/octet-stream text/plain text/plain]"
	if got := root.shape(); got != want {
		t.Fatalf("structure = %s, want %s", got, want)
	}
	leaves := root.leaves()
	wantText := strings.ReplaceAll(strings.ReplaceAll(p.Text, "\r\n", "\n"), "\n", "\r\n")
	if got := string(leaves[0].body); got != wantText {
		t.Errorf("text body = %q, want %q", got, wantText)
	}
	if got := string(leaves[1].body); got != p.HTML {
		t.Errorf("html body = %q, want %q", got, p.HTML)
	}
	rel := root.children[0]
	if _, params, _ := rel.header.ContentType(); params["type"] != "multipart/alternative" {
		t.Errorf("multipart/related type = %q, want multipart/alternative", params["type"])
	}

	tests := []struct {
		leaf      *node
		att       tasks.Attachment
		wantDisp  string
		wantCID   string
		wantBytes []byte
	}{
		{leaves[2], p.Attachments[2], "inline", "<logo@example.com>", []byte{1, 2, 3}},
		{leaves[3], p.Attachments[0], "attachment", "", blob},
		{leaves[4], p.Attachments[1], "attachment", "", []byte("%PDF")},
		{leaves[5], p.Attachments[3], "attachment", "", []byte("?")},
		{leaves[6], p.Attachments[4], "attachment", "", nil},
		{leaves[7], p.Attachments[5], "attachment", "", nil},
	}
	for _, tt := range tests {
		ah := gomail.AttachmentHeader{Header: tt.leaf.header}
		disp, _, err := ah.ContentDisposition()
		if err != nil || disp != tt.wantDisp {
			t.Errorf("%s: disposition %q (%v), want %q", tt.att.Filename, disp, err, tt.wantDisp)
		}
		if name, err := ah.Filename(); err != nil || name != tt.att.Filename {
			t.Errorf("filename = %q (%v), want %q", name, err, tt.att.Filename)
		}
		if got := tt.leaf.header.Get("Content-ID"); got != tt.wantCID {
			t.Errorf("%s: Content-ID = %q, want %q", tt.att.Filename, got, tt.wantCID)
		}
		if !bytes.Equal(tt.leaf.body, tt.wantBytes) {
			t.Errorf("%s: %d bytes differ after the round trip (got %d)", tt.att.Filename, len(tt.wantBytes), len(tt.leaf.body))
		}
	}
	// Base64 lines of an attachment are at most 76 characters.
	for _, l := range strings.Split(string(raw), "\r\n") {
		if len(l) > 998 {
			t.Errorf("line of %d characters", len(l))
		}
	}
}

func TestBuildMIMERefusesInvalidPayload(t *testing.T) {
	t.Parallel()
	p := validPayload()
	p.Subject = "hi\r\nBcc: evil@example.net"
	if _, err := p.BuildMIME(); !errors.Is(err, tasks.ErrInvalidEmail) {
		t.Errorf("BuildMIME() = %v, want ErrInvalidEmail", err)
	}
	p = validPayload()
	p.MessageID = ""
	if _, err := p.BuildMIME(); err == nil || !strings.Contains(err.Error(), "message_id") {
		t.Errorf("BuildMIME() without Message-ID = %v, want a message_id error", err)
	}
}

func TestBuildMIMEIgnoresSizeLimits(t *testing.T) {
	t.Parallel()
	p := validPayload()
	p.To = addresses(300)
	if _, err := p.BuildMIME(); err != nil {
		t.Errorf("BuildMIME() with 300 recipients = %v, want nil (limits are for Validate)", err)
	}
}

func TestPayloadMessage(t *testing.T) {
	t.Parallel()
	p := validPayload()
	p.To = []string{"A <a@example.org>", "b@example.org"}
	p.Bcc = []string{"A@EXAMPLE.org", "c@example.org"}
	m, err := p.Message()
	if err != nil {
		t.Fatal(err)
	}
	if m.From != "support@example.com" || !slices.Equal(m.To, []string{"a@example.org", "b@example.org", "c@example.org"}) {
		t.Errorf("Message() envelope = %q -> %q", m.From, m.To)
	}
	if got := parseMIME(t, m.Data).shape(); got != "text/plain" {
		t.Errorf("Message().Data is %s, want text/plain", got)
	}
}
