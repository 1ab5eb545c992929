package tasks

import (
	"net/mail"
	"strings"
)

// Email is what a producer fills in: one message to send through one
// account. The zero value is not valid; see [Email.Validate] for the rules.
//
// Addresses are RFC 5322 addresses as parsed by net/mail: a bare
// "alice@example.org" or one with a display name, "Alice <alice@example.org>".
// Each slice element holds exactly one address.
type Email struct {
	// AccountID names the sending account in the accounts file. Required.
	AccountID string `json:"account_id"`
	// From is the author address. Required. Its domain is also the right-hand
	// side of the generated Message-ID.
	From string `json:"from"`
	// To, Cc and Bcc are the recipients; together they need at least one
	// address and at most Limits.MaxRecipients distinct ones. Bcc addresses
	// receive the message but never appear in its headers.
	To  []string `json:"to,omitempty"`
	Cc  []string `json:"cc,omitempty"`
	Bcc []string `json:"bcc,omitempty"`
	// ReplyTo becomes the Reply-To header when not empty.
	ReplyTo []string `json:"reply_to,omitempty"`
	// Subject may be empty; non-ASCII text is RFC 2047 encoded.
	Subject string `json:"subject,omitempty"`
	// Text and HTML are the bodies, UTF-8. At least one of Text, HTML or an
	// attachment is required. Both together make a multipart/alternative.
	Text string `json:"text,omitempty"`
	HTML string `json:"html,omitempty"`
	// Headers are extra header fields, written in this order after the ones
	// sendq generates. They cannot replace a generated header.
	Headers []Header `json:"headers,omitempty"`
	// Attachments are written after the bodies. Those with a ContentID are
	// inline parts referenced from the HTML body as "cid:<ContentID>".
	Attachments []Attachment `json:"attachments,omitempty"`
}

// Header is one extra header field. Name must be an RFC 5322 field name that
// sendq does not generate itself; Value is unstructured text (non-ASCII is
// RFC 2047 encoded) on a single line.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Attachment is a file sent with the message, base64 encoded on the wire.
type Attachment struct {
	// Filename is required; it may contain non-ASCII characters.
	Filename string `json:"filename"`
	// ContentType is a MIME type such as "application/pdf". Empty means the
	// type registered for the Filename extension, or
	// "application/octet-stream". multipart/* and message/* are refused.
	ContentType string `json:"content_type,omitempty"`
	// Data is the content; in JSON it is base64 (standard encoding).
	Data []byte `json:"data"`
	// ContentID, without angle brackets, makes the attachment an inline part
	// (Content-Disposition: inline, Content-ID: <ContentID>) that the HTML
	// body references as "cid:ContentID". Unique within the email.
	ContentID string `json:"content_id,omitempty"`
}

// Envelope returns the SMTP envelope: the bare From address and the bare
// recipient addresses, To then Cc then Bcc, deduplicated case-insensitively
// keeping the first spelling. Bare means without display name or angle
// brackets; a local part that needs quoting stays quoted ("a b"@example.org).
// Addresses that do not parse are left out, so call it on a validated email.
func (e *Email) Envelope() (from string, rcpts []string) {
	if a, err := parseMailAddress(e.From); err == nil {
		from = bareAddress(a)
	}
	return from, e.recipients()
}

// bareAddress returns the addr-spec of a, its local part quoted if needed
// (net/mail unquotes it in Address.Address).
func bareAddress(a *mail.Address) string {
	if at := strings.LastIndexByte(a.Address, '@'); at >= 0 && isDotAtom(a.Address[:at]) {
		return a.Address // a local part that needs no quotes, as String writes it
	}
	s := (&mail.Address{Address: a.Address}).String() // "<addr-spec>"
	return s[1 : len(s)-1]
}

// recipients returns the deduplicated bare recipient addresses.
func (e *Email) recipients() []string {
	var rcpts []string
	seen := make(map[string]bool)
	for _, list := range [][]string{e.To, e.Cc, e.Bcc} {
		for _, s := range list {
			a, err := parseMailAddress(s)
			if err != nil {
				continue
			}
			bare := bareAddress(a)
			k := strings.ToLower(bare)
			if seen[k] {
				continue
			}
			seen[k] = true
			rcpts = append(rcpts, bare)
		}
	}
	return rcpts
}

// parseMailAddress is mail.ParseAddress, with a shortcut for the two forms
// most addresses take: a bare dot-atom address ("a.b@example.com") and one
// after a display name of words of ASCII letters and digits separated by
// single spaces ("Jane Doe <a.b@example.com>"). Those need no unquoting or
// decoding, and net/mail spends a dozen allocations on each; every other
// form goes to net/mail. FuzzParseMailAddress checks that the shortcut
// returns what net/mail does.
func parseMailAddress(s string) (*mail.Address, error) {
	if name, addr, ok := simpleAddress(s); ok {
		return &mail.Address{Name: name, Address: addr}, nil
	}
	return mail.ParseAddress(s)
}

// simpleAddress is parseMailAddress's shortcut: the display name and the
// address of s, and true, when s takes one of the two simple forms.
func simpleAddress(s string) (name, addr string, ok bool) {
	addr = s
	if strings.HasSuffix(s, ">") {
		lt := strings.IndexByte(s, '<')
		if lt < 2 || s[lt-1] != ' ' || !isSimplePhrase(s[:lt-1]) {
			return "", "", false
		}
		name, addr = s[:lt-1], s[lt+1:len(s)-1]
	}
	if at := strings.LastIndexByte(addr, '@'); at < 0 || !isDotAtom(addr[:at]) || !isDotAtom(addr[at+1:]) {
		return "", "", false
	}
	return name, addr, true
}

// isSimplePhrase reports whether s is words of ASCII letters and digits
// separated by single spaces.
func isSimplePhrase(s string) bool {
	if s == "" || s[0] == ' ' || s[len(s)-1] == ' ' {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == ' ' && s[i-1] != ' ':
		default:
			return false
		}
	}
	return true
}
