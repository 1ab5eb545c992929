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
	if a, err := mail.ParseAddress(e.From); err == nil {
		from = bareAddress(a)
	}
	return from, e.recipients()
}

// bareAddress returns the addr-spec of a, its local part quoted if needed
// (net/mail unquotes it in Address.Address).
func bareAddress(a *mail.Address) string {
	s := (&mail.Address{Address: a.Address}).String() // "<addr-spec>"
	return s[1 : len(s)-1]
}

// recipients returns the deduplicated bare recipient addresses.
func (e *Email) recipients() []string {
	var rcpts []string
	seen := make(map[string]bool)
	for _, list := range [][]string{e.To, e.Cc, e.Bcc} {
		for _, s := range list {
			a, err := mail.ParseAddress(s)
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
