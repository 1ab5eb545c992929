package tasks

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"path"
	"strings"

	"github.com/sendq/sendq/smtpoauth"
)

// part is one node of the MIME tree: a leaf with a body or a multipart with
// children.
type part struct {
	contentType string
	params      map[string]string
	extra       [][2]string // more header fields of the part, in order
	body        []byte      // leaf only
	children    []*part     // multipart only
}

// BuildMIME renders the payload as an RFC 5322 message whose every line,
// the last one included, ends in CRLF, ready for SMTP DATA or BDAT. It
// refuses a payload that does not validate (size limits aside: they are
// policy, checked by Validate and DecodePayload).
//
// Headers: Date, From, To, Cc, Reply-To, Subject, Message-ID and
// MIME-Version, then the extra Headers in order. Never Bcc. Non-ASCII subject
// and display names are RFC 2047 encoded (so is a subject that would not
// survive a round trip otherwise), extra header values likewise when they
// are not ASCII.
//
// Structure: text only is a text/plain part, html only a text/html part, both
// a multipart/alternative. Inline attachments (with a ContentID) and an HTML
// body make a multipart/related around the body. Other attachments make a
// multipart/mixed around all that; inline attachments without an HTML body
// go there too, keeping their Content-ID. Text parts are quoted-printable
// UTF-8, attachments base64.
func (p *Payload) BuildMIME() ([]byte, error) {
	if err := p.ValidateLimits(Limits{MaxRecipients: math.MaxInt, MaxBytes: math.MaxInt64}); err != nil {
		return nil, fmt.Errorf("build mime: %w", err)
	}
	return p.buildMIME()
}

// buildMIME is BuildMIME without the validation, for a payload that
// DecodePayload has just validated (under stricter limits): the handler's.
func (p *Payload) buildMIME() ([]byte, error) {
	root := p.tree()
	fields := p.headerFields()

	// Room for the headers and the bodies, quoted-printable or base64,
	// at once rather than by doubling.
	size := 1024 + len(p.Text) + len(p.HTML)
	for _, a := range p.Attachments {
		size += 256 + len(a.Data)*4/3
	}
	var b bytes.Buffer
	b.Grow(size + size/16)
	if err := writePart(&b, root, fields); err != nil {
		return nil, fmt.Errorf("build mime: %w", err)
	}
	if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		// The last line ends like the others: BDAT sends the message
		// as it is (DATA would add the CRLF).
		b.WriteString("\r\n")
	}
	return b.Bytes(), nil
}

// headerFields returns the message header's fields, in order, with their
// values encoded for the header.
func (p *Payload) headerFields() [][2]string {
	fields := [][2]string{{"Date", p.Date.Format("Mon, 02 Jan 2006 15:04:05 -0700")}}
	from, _ := parseMailAddress(p.From) // validated
	fields = append(fields, [2]string{"From", formatAddress(from)})
	for _, f := range []struct {
		name string
		list []string
	}{{"To", p.To}, {"Cc", p.Cc}, {"Reply-To", p.ReplyTo}} {
		if v := formatAddressList(f.list); v != "" {
			fields = append(fields, [2]string{f.name, v})
		}
	}
	if p.Subject != "" {
		fields = append(fields, [2]string{"Subject", encodeSubject(p.Subject)})
	}
	fields = append(fields, [2]string{"Message-ID", p.MessageID}, [2]string{"MIME-Version", "1.0"})
	for _, h := range p.Headers {
		fields = append(fields, [2]string{h.Name, mime.QEncoding.Encode("utf-8", h.Value)})
	}
	return fields
}

// Message returns the payload as a submission: Envelope's addresses and
// BuildMIME's bytes.
func (p *Payload) Message() (*smtpoauth.Message, error) {
	data, err := p.BuildMIME()
	if err != nil {
		return nil, err
	}
	from, rcpts := p.Envelope()
	return &smtpoauth.Message{From: from, To: rcpts, Data: data}, nil
}

// tree lays out the MIME structure.
func (p *Payload) tree() *part {
	var body *part
	textPart := func(sub, s string) *part {
		return &part{
			contentType: "text/" + sub,
			params:      map[string]string{"charset": "utf-8"},
			extra:       [][2]string{{"Content-Transfer-Encoding", "quoted-printable"}},
			body:        []byte(s),
		}
	}
	switch {
	case p.Text != "" && p.HTML != "":
		body = &part{contentType: "multipart/alternative", children: []*part{textPart("plain", p.Text), textPart("html", p.HTML)}}
	case p.Text != "":
		body = textPart("plain", p.Text)
	case p.HTML != "":
		body = textPart("html", p.HTML)
	}

	var inline, mixed []*part
	for _, a := range p.Attachments {
		ap := attachmentPart(a, a.ContentID != "")
		if a.ContentID != "" && p.HTML != "" {
			inline = append(inline, ap)
		} else {
			mixed = append(mixed, ap)
		}
	}
	if len(inline) > 0 {
		body = &part{
			contentType: "multipart/related",
			params:      map[string]string{"type": body.contentType},
			children:    append([]*part{body}, inline...),
		}
	}
	if len(mixed) == 0 {
		return body
	}
	root := &part{contentType: "multipart/mixed"}
	if body != nil {
		root.children = append(root.children, body)
	}
	root.children = append(root.children, mixed...)
	return root
}

func attachmentPart(a Attachment, inline bool) *part {
	ct := a.ContentType
	if ct == "" {
		ct = mime.TypeByExtension(path.Ext(a.Filename))
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || ct == "" {
		mt, params = "application/octet-stream", nil
	}
	if a.ContentType == "" {
		// The system's type table is a guess; keep its type, not its
		// parameters (a charset we could not vouch for).
		params = nil
	}
	disp := "attachment"
	if inline {
		disp = "inline"
	}
	p := &part{contentType: mt, params: params, body: a.Data}
	p.extra = append(p.extra,
		[2]string{"Content-Disposition", formatParams(disp, map[string]string{"filename": a.Filename})},
		[2]string{"Content-Transfer-Encoding", "base64"})
	if inline {
		p.extra = append(p.extra, [2]string{"Content-ID", "<" + a.ContentID + ">"})
	}
	return p
}

// writePart writes p to w: its header (after the leading fields, the
// message header for the root), a blank line, then its body in the
// Content-Transfer-Encoding it names, or its children between boundaries
// (RFC 2046). The bytes are those go-message's Writer wrote for the same
// header fields, straight into w.
func writePart(w *bytes.Buffer, p *part, leading [][2]string) error {
	params := p.params
	var boundary string
	if p.children != nil {
		// Our own boundary, in the Content-Type we write.
		boundary = newBoundary()
		params = make(map[string]string, len(p.params)+1)
		maps.Copy(params, p.params)
		params["boundary"] = boundary
	}
	ct := formatParams(p.contentType, params)
	if ct == "" {
		return fmt.Errorf("cannot format content type %q with its parameters", p.contentType)
	}
	for _, f := range leading {
		w.Write(appendField(w.AvailableBuffer(), f[0], f[1]))
	}
	w.Write(appendField(w.AvailableBuffer(), "Content-Type", ct))
	encoding := ""
	for _, f := range p.extra {
		w.Write(appendField(w.AvailableBuffer(), f[0], f[1]))
		if f[0] == "Content-Transfer-Encoding" {
			encoding = f[1]
		}
	}
	w.WriteString("\r\n")

	if p.children == nil {
		return writeBody(w, encoding, p.body)
	}
	for i, c := range p.children {
		if i > 0 {
			w.WriteString("\r\n")
		}
		w.WriteString("--" + boundary + "\r\n")
		if err := writePart(w, c, nil); err != nil {
			return err
		}
	}
	w.WriteString("\r\n--" + boundary + "--\r\n")
	return nil
}

// writeBody writes body to w in the transfer encoding enc: quoted-printable
// (mime/quotedprintable, line breaks as CRLF) or base64 in lines of 76
// characters.
func writeBody(w *bytes.Buffer, enc string, body []byte) error {
	switch enc {
	case "quoted-printable":
		qw := quotedprintable.NewWriter(w)
		if _, err := qw.Write(body); err != nil {
			return err
		}
		return qw.Close()
	case "base64":
		const lineBytes = 57 // encode to 76 characters
		for len(body) > 0 {
			n := min(len(body), lineBytes)
			b := base64.StdEncoding.AppendEncode(w.AvailableBuffer(), body[:n])
			if body = body[n:]; len(body) > 0 {
				b = append(b, "\r\n"...)
			}
			w.Write(b)
		}
		return nil
	}
	return fmt.Errorf("unknown transfer encoding %q", enc)
}

// formatParams formats a media type or disposition with parameters, RFC 2047
// encoding non-ASCII values as go-message does (the form mail clients read
// for filenames).
func formatParams(v string, params map[string]string) string {
	enc := make(map[string]string, len(params))
	for k, p := range params {
		enc[k] = encodeText(p, false)
	}
	return mime.FormatMediaType(v, enc)
}

// appendField appends to b a header field as "Name: value" CRLF, folding lines
// longer than 76 characters at single spaces between words, so that any
// parser's unfolding restores the value exactly; a first word too long for the
// first line goes to a continuation line ("Name:" CRLF " word"). Validation
// guarantees values without CR or LF and without unbreakable runs over 998
// characters.
func appendField(b []byte, name, value string) []byte {
	const preferred = 76
	base := len(b)
	b = append(b, name...)
	b = append(b, ':')
	if value == "" {
		return append(b, "\r\n"...)
	}
	b = append(b, ' ')
	lineLen := len(b) - base
	start := 0 // start of the pending chunk, which begins with its space
	flush := func(end int) {
		chunk := value[start:end]
		switch {
		case start == 0 && lineLen+len(chunk) > preferred:
			// The first word does not fit after the name (a 75-character
			// encoded word): start it on a continuation line.
			b = append(b[:len(b)-1], "\r\n "...)
			lineLen = 1
		case start > 0 && lineLen+len(chunk) > preferred:
			b = append(b, "\r\n"...)
			lineLen = 0
		}
		b = append(b, chunk...)
		lineLen += len(chunk)
		start = end
	}
	for i := 1; i < len(value)-1; i++ {
		if value[i] == ' ' && !isWSP(value[i-1]) && !isWSP(value[i+1]) {
			flush(i)
		}
	}
	flush(len(value))
	return append(b, "\r\n"...)
}

func isWSP(b byte) bool { return b == ' ' || b == '\t' }

// formatAddress formats one validated address for a header: the bare address,
// or the display name (RFC 2047 encoded if not ASCII) and the address in
// angle brackets.
func formatAddress(a *mail.Address) string {
	if a.Name == "" {
		return bareAddress(a)
	}
	return a.String()
}

func formatAddressList(list []string) string {
	out := make([]string, 0, len(list))
	for _, s := range list {
		a, err := parseMailAddress(s)
		if err != nil {
			continue // validated
		}
		out = append(out, formatAddress(a))
	}
	return strings.Join(out, ", ")
}

// encodeSubject encodes a subject so that it reads back unchanged, leading
// and trailing white space included (header parsers trim it).
func encodeSubject(s string) string {
	return encodeText(s, strings.TrimSpace(s) != s)
}

// encodeText RFC 2047 encodes s when it is not printable ASCII, when it holds
// text that a reader would decode as an encoded word ("=?"), or when force is
// set.
func encodeText(s string, force bool) string {
	if enc := mime.QEncoding.Encode("utf-8", s); enc != s {
		return enc
	}
	if !force && !strings.Contains(s, "=?") {
		return s
	}
	// s is printable ASCII here: force base64 encoded words of at most 45
	// bytes (75 characters).
	var words []string
	for s != "" {
		n := min(len(s), 45)
		words = append(words, "=?utf-8?b?"+base64.StdEncoding.EncodeToString([]byte(s[:n]))+"?=")
		s = s[n:]
	}
	return strings.Join(words, " ")
}

func newBoundary() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return "sendq-" + hex.EncodeToString(b[:])
}
