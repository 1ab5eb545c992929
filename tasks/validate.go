package tasks

import (
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"strings"
	"unicode/utf8"
)

// Default limits applied when a Limits field is zero.
const (
	// DefaultMaxRecipients is Gmail's per-message limit over SMTP.
	DefaultMaxRecipients = 100
	// DefaultMaxBytes (25 MiB) bounds the bodies plus the attachments,
	// before transfer encoding, which adds about a third.
	DefaultMaxBytes int64 = 25 << 20
)

// Limits on a single email, checked by validation. A zero or negative field
// means its default.
type Limits struct {
	// MaxRecipients is the most distinct To+Cc+Bcc addresses.
	// Default DefaultMaxRecipients.
	MaxRecipients int
	// MaxBytes is the most bytes of Text + HTML + attachment data.
	// Default DefaultMaxBytes.
	MaxBytes int64
}

// WithDefaults returns l with every unset field set to its default.
func (l Limits) WithDefaults() Limits {
	if l.MaxRecipients <= 0 {
		l.MaxRecipients = DefaultMaxRecipients
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	return l
}

// Size limits of single fields, chosen so that every header line sendq writes
// stays within RFC 5322's 998 characters without altering the value.
const (
	maxHeaderNameLen = 64  // extra header names
	maxAddressLen    = 512 // one address with its display name
	maxFilenameLen   = 255
	maxIDLen         = 250 // Message-ID, Content-ID, account, idempotency key
	maxLineLen       = 998
	maxProblems      = 10 // validation problems reported before "N more"
)

// ErrInvalidEmail is matched (errors.Is) by every *ValidationError.
var ErrInvalidEmail = errors.New("invalid email")

// ValidationError reports one problem with an Email or a Payload.
// Validation may report several problems joined with errors.Join; the first
// is a *ValidationError that errors.As finds.
type ValidationError struct {
	// Field is the JSON name of the offending field with its index, such as
	// "to[2]" or "headers[0].name"; "size" for the total size limit.
	Field string
	// Reason says what is wrong, in lower case.
	Reason string
}

// Error reads like "invalid email: to[2]: missing '@' or angle-addr".
func (e *ValidationError) Error() string {
	if e.Field == "" {
		return "invalid email: " + e.Reason
	}
	return "invalid email: " + e.Field + ": " + e.Reason
}

// Is reports whether target is ErrInvalidEmail.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidEmail }

// Validate checks the email with the default Limits; see ValidateLimits.
func (e *Email) Validate() error { return e.ValidateLimits(Limits{}) }

// ValidateLimits checks the email against l (zero fields mean the defaults)
// and returns nil, a *ValidationError, or several joined with errors.Join,
// the first naming its field. The rules:
//   - account_id and from are required; at least one of text, html or an
//     attachment is required.
//   - Every address (from, to, cc, bcc, reply_to) is one RFC 5322 address
//     that net/mail parses; display names are allowed; the address itself
//     must be ASCII (SMTPUTF8 is not supported).
//   - At least one recipient in to, cc or bcc and at most l.MaxRecipients
//     distinct ones (compared case-insensitively).
//   - Every string that ends up in a header (subject, addresses and their
//     display names, header names and values, filenames, content types and
//     IDs) is UTF-8 without CR, LF or other control characters except tab,
//     and fits on one header line. Bodies are valid UTF-8.
//   - Header names are RFC 5322 field names (printable ASCII but ':') and are
//     not one that sendq generates: From, To, Cc, Bcc, Reply-To, Subject,
//     Date, Message-ID, MIME-Version or Content-*.
//   - Attachments have a filename, a parseable content type that is neither
//     multipart/* nor message/* and whose charset, if any, is utf-8 or
//     us-ascii, and unique content IDs made of atext, '.' and '@'.
//   - Text + HTML + attachment data is at most l.MaxBytes.
func (e *Email) ValidateLimits(l Limits) error {
	var c checker
	e.check(&c, l.WithDefaults())
	return c.err()
}

// Validate checks the payload with the default Limits; see ValidateLimits.
func (p *Payload) Validate() error { return p.ValidateLimits(Limits{}) }

// ValidateLimits checks what the payload adds to the email (version,
// Message-ID, Date, idempotency key), then the email as
// Email.ValidateLimits does.
func (p *Payload) ValidateLimits(l Limits) error {
	var c checker
	if p.Version != PayloadVersion {
		c.add("v", fmt.Sprintf("version %d is not %d", p.Version, PayloadVersion))
	}
	if p.MessageID == "" {
		c.add("message_id", "required")
	} else if r := checkMessageID(p.MessageID); r != "" {
		c.add("message_id", r)
	}
	if p.Date.IsZero() {
		c.add("date", "required")
	}
	if p.IdempotencyKey != "" {
		if r := checkID(p.IdempotencyKey); r != "" {
			c.add("idempotency_key", r)
		}
	}
	p.Email.check(&c, l.WithDefaults())
	return c.err()
}

// checker collects validation problems.
type checker struct {
	errs []error
	more int
	// fromAddress is the address part of Email.From once check found it
	// valid ("a@example.com"), for the Message-ID's domain.
	fromAddress string
}

func (c *checker) add(field, reason string) {
	if len(c.errs) == maxProblems {
		c.more++
		return
	}
	c.errs = append(c.errs, &ValidationError{Field: field, Reason: reason})
}

func (c *checker) err() error {
	switch {
	case len(c.errs) == 0:
		return nil
	case len(c.errs) == 1:
		return c.errs[0]
	case c.more > 0:
		more := &ValidationError{Reason: fmt.Sprintf("%d more problems", c.more)}
		return errors.Join(append(c.errs, more)...)
	default:
		return errors.Join(c.errs...)
	}
}

func (e *Email) check(c *checker, l Limits) {
	if e.AccountID == "" {
		c.add("account_id", "required")
	} else if r := checkID(e.AccountID); r != "" {
		c.add("account_id", r)
	}

	if e.From == "" {
		c.add("from", "required")
	} else if a, r := parseAddress(e.From); r != "" {
		c.add("from", r)
	} else {
		c.fromAddress = a
	}
	lists := []struct {
		name string
		list []string
	}{{"to", e.To}, {"cc", e.Cc}, {"bcc", e.Bcc}, {"reply_to", e.ReplyTo}}
	for _, lst := range lists {
		for i, s := range lst.list {
			if r := checkAddress(s); r != "" {
				c.add(fmt.Sprintf("%s[%d]", lst.name, i), r)
			}
		}
	}
	switch n := len(e.To) + len(e.Cc) + len(e.Bcc); {
	case n == 0:
		c.add("to", "at least one recipient is required in to, cc or bcc")
	case n > l.MaxRecipients:
		// Distinct recipients are counted only when the lists could
		// exceed the limit: that parses every address again.
		if d := len(e.recipients()); d > l.MaxRecipients {
			c.add("to", fmt.Sprintf("%d distinct recipients in to, cc and bcc exceed the limit of %d", d, l.MaxRecipients))
		}
	}

	if r := checkHeaderText(e.Subject, len("Subject")); r != "" {
		c.add("subject", r)
	}
	if !utf8.ValidString(e.Text) {
		c.add("text", "not valid UTF-8")
	}
	if !utf8.ValidString(e.HTML) {
		c.add("html", "not valid UTF-8")
	}
	if e.Text == "" && e.HTML == "" && len(e.Attachments) == 0 {
		c.add("text", "one of text, html or attachments is required")
	}

	for i, h := range e.Headers {
		field := fmt.Sprintf("headers[%d]", i)
		if r := checkHeaderName(h.Name); r != "" {
			c.add(field+".name", r)
			continue
		}
		if r := checkHeaderText(h.Value, len(h.Name)); r != "" {
			c.add(field+".value", r)
		}
	}

	size := int64(len(e.Text)) + int64(len(e.HTML))
	cids := make(map[string]int)
	for i, a := range e.Attachments {
		field := fmt.Sprintf("attachments[%d]", i)
		size += int64(len(a.Data))
		switch {
		case a.Filename == "":
			c.add(field+".filename", "required")
		case len(a.Filename) > maxFilenameLen:
			c.add(field+".filename", fmt.Sprintf("longer than %d bytes", maxFilenameLen))
		default:
			if r := checkHeaderText(a.Filename, 0); r != "" {
				c.add(field+".filename", r)
			}
		}
		if a.ContentType != "" {
			if r := checkContentType(a.ContentType); r != "" {
				c.add(field+".content_type", r)
			}
		}
		if a.ContentID != "" {
			if r := checkContentID(a.ContentID); r != "" {
				c.add(field+".content_id", r)
			} else if j, dup := cids[a.ContentID]; dup {
				c.add(field+".content_id", fmt.Sprintf("%q is also the content ID of attachments[%d]", a.ContentID, j))
			} else {
				cids[a.ContentID] = i
			}
		}
	}
	if size > l.MaxBytes {
		c.add("size", fmt.Sprintf("bodies and attachments total %d bytes, over the limit of %d", size, l.MaxBytes))
	}
}

// checkHeaderText returns why s cannot be a header value, or "". nameLen is
// the length of the field name the value follows, to keep the line within
// 998 characters.
func checkHeaderText(s string, nameLen int) string {
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	if strings.ContainsAny(s, "\r\n") {
		return "contains a line break (CR or LF)"
	}
	for _, r := range s {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return fmt.Sprintf("contains the control character %U", r)
		}
	}
	if n := maxLineLen - nameLen - len(": "); len(s) > n {
		return fmt.Sprintf("longer than %d bytes, too long for a header line", n)
	}
	return ""
}

// checkAddress returns why s is not a single acceptable address, or "".
func checkAddress(s string) string {
	_, r := parseAddress(s)
	return r
}

// parseAddress is checkAddress that also returns the address part of s
// ("a@example.com") when s is valid.
func parseAddress(s string) (addr, reason string) {
	if r := checkHeaderText(s, 0); r != "" {
		return "", r
	}
	if len(s) > maxAddressLen {
		return "", fmt.Sprintf("longer than %d bytes", maxAddressLen)
	}
	if _, addr, ok := simpleAddress(s); ok {
		return addr, "" // printable ASCII, checked above
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", strings.TrimPrefix(err.Error(), "mail: ")
	}
	for i := 0; i < len(a.Address); i++ {
		if a.Address[i] >= utf8.RuneSelf {
			return "", "non-ASCII address (SMTPUTF8) is not supported; use punycode for the domain"
		}
	}
	if r := checkHeaderText(a.Name, 0); r != "" {
		return "", "display name " + r
	}
	return a.Address, ""
}

// generatedHeaders are written by BuildMIME and cannot be set as extra
// headers; the value says what to use instead.
var generatedHeaders = map[string]string{
	"from":         "use the from field",
	"to":           "use the to field",
	"cc":           "use the cc field",
	"bcc":          "use the bcc field",
	"reply-to":     "use the reply_to field",
	"subject":      "use the subject field",
	"date":         "it is fixed at enqueue time",
	"message-id":   "it is assigned at enqueue time",
	"mime-version": "it is always 1.0",
}

func checkHeaderName(name string) string {
	if name == "" {
		return "required"
	}
	if len(name) > maxHeaderNameLen {
		return fmt.Sprintf("longer than %d bytes", maxHeaderNameLen)
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; b < 33 || b > 126 || b == ':' {
			if b == '\r' || b == '\n' {
				return "contains a line break (CR or LF)"
			}
			return fmt.Sprintf("%q is not a valid header field name (printable ASCII except ':' and space)", name)
		}
	}
	lower := strings.ToLower(name)
	if hint, ok := generatedHeaders[lower]; ok {
		return fmt.Sprintf("%q is generated by sendq and cannot be overridden: %s", name, hint)
	}
	if strings.HasPrefix(lower, "content-") {
		return fmt.Sprintf("%q is generated by sendq and cannot be overridden: Content-* headers describe the MIME structure", name)
	}
	return ""
}

func checkContentType(ct string) string {
	if r := checkHeaderText(ct, len("Content-Type")); r != "" {
		return r
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Sprintf("%q is not a MIME type: %v", ct, err)
	}
	if !strings.Contains(mt, "/") {
		return fmt.Sprintf("%q is not a MIME type: want type/subtype", ct)
	}
	if strings.HasPrefix(mt, "multipart/") || strings.HasPrefix(mt, "message/") {
		return fmt.Sprintf("%q cannot be an attachment type; send it as application/octet-stream", mt)
	}
	switch cs := strings.ToLower(params["charset"]); cs {
	case "", "utf-8", "us-ascii":
	default:
		return fmt.Sprintf("charset %q is not supported: only utf-8 or us-ascii (or no charset)", cs)
	}
	return ""
}

// isAtext reports whether b is an RFC 5322 atext character.
func isAtext(b byte) bool { return atext[b] }

// atext is isAtext's table.
var atext = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!#$%&'*+-/=?^_`{|}~", byte(c)) >= 0
	}
	return t
}()

func checkContentID(id string) string {
	if len(id) > maxIDLen {
		return fmt.Sprintf("longer than %d bytes", maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if b := id[i]; !isAtext(b) && b != '.' && b != '@' {
			if b == '\r' || b == '\n' {
				return "contains a line break (CR or LF)"
			}
			return fmt.Sprintf("%q may only hold letters, digits, '.', '@' and !#$%%&'*+-/=?^_`{|}~ (no angle brackets)", id)
		}
	}
	return ""
}

// checkMessageID accepts "<left@right>" where both sides are dot-atom text and
// right may also be a [domain literal].
func checkMessageID(id string) string {
	const want = "want <left@right> of letters, digits, '.' and atext"
	if len(id) > maxIDLen {
		return fmt.Sprintf("longer than %d bytes", maxIDLen)
	}
	if strings.ContainsAny(id, "\r\n") {
		return "contains a line break (CR or LF)"
	}
	inner, ok := strings.CutPrefix(id, "<")
	if ok {
		inner, ok = strings.CutSuffix(inner, ">")
	}
	left, right, found := strings.Cut(inner, "@")
	if !ok || !found || !isDotAtom(left) {
		return fmt.Sprintf("%q is malformed: %s", id, want)
	}
	if lit, ok := strings.CutPrefix(right, "["); ok {
		lit, ok = strings.CutSuffix(lit, "]")
		if ok && lit != "" && !strings.ContainsFunc(lit, func(r rune) bool { return r < 33 || r > 126 || r == '[' || r == ']' || r == '\\' }) {
			return ""
		}
		return fmt.Sprintf("%q is malformed: %s", id, want)
	}
	if !isDotAtom(right) {
		return fmt.Sprintf("%q is malformed: %s", id, want)
	}
	return ""
}

// isDotAtom reports whether s is RFC 5322 dot-atom-text.
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAtext(s[i]) && s[i] != '.' {
			return false
		}
	}
	return true
}

// checkID checks an opaque identifier: the account or the idempotency key.
func checkID(s string) string {
	if len(s) > maxIDLen {
		return fmt.Sprintf("longer than %d bytes", maxIDLen)
	}
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Sprintf("contains the control character %U", r)
		}
	}
	return ""
}
