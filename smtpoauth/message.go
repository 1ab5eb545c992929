package smtpoauth

import "github.com/emersion/go-smtp"

// Message is one submission: the SMTP envelope and the raw RFC 5322 bytes.
// Data is sent as is (CRLF line endings); it is a byte slice rather than a
// reader so a submission can be retried on a fresh connection.
type Message struct {
	From string   // MAIL FROM address, bare (no angle brackets)
	To   []string // RCPT TO addresses, bare, in order
	Data []byte
}

// Result is what the server said about a submission, recipient by recipient.
type Result struct {
	// Recipients holds one entry per Message.To address, in the same order.
	Recipients []RecipientResult
	// Reply is the server's reply to the final "." of DATA; nil when DATA
	// was not reached (for example, every recipient was rejected).
	Reply *smtp.SMTPError
}

// RecipientResult is the server's answer to one RCPT TO.
type RecipientResult struct {
	Address  string
	Accepted bool
	// Reply is the RCPT reply: 250 when accepted, the rejection otherwise.
	Reply *smtp.SMTPError
}

// Accepted returns the addresses the server accepted.
func (r *Result) Accepted() []string {
	var out []string
	for _, rr := range r.Recipients {
		if rr.Accepted {
			out = append(out, rr.Address)
		}
	}
	return out
}

// Rejected returns the recipients the server refused, with their replies.
func (r *Result) Rejected() []RecipientResult {
	var out []RecipientResult
	for _, rr := range r.Recipients {
		if !rr.Accepted {
			out = append(out, rr)
		}
	}
	return out
}
