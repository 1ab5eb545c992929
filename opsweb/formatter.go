package opsweb

import (
	"bytes"
	"encoding/json"
	"io"
	"net/mail"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/hibiken/asynqmon"

	"github.com/sendq/sendq/tasks"
)

// PayloadHidden is what [FormatPayload] shows for a payload it cannot read.
const PayloadHidden = "(payload hidden)"

// ResultHidden is what [FormatResult] shows for a result it cannot read.
const ResultHidden = "(result hidden)"

// maxShown caps the runes of one shown string field (a subject, a reply).
const maxShown = 200

// The formatters the web UI uses.
var (
	_ asynqmon.PayloadFormatter = asynqmon.PayloadFormatterFunc(FormatPayload)
	_ asynqmon.ResultFormatter  = asynqmon.ResultFormatterFunc(FormatResult)
)

// payloadSummary is the part of an email:send payload the web UI shows.
type payloadSummary struct {
	AccountID        string   `json:"account_id"`
	Recipients       int      `json:"recipients"`
	RecipientDomains []string `json:"recipient_domains"`
	Subject          string   `json:"subject"`
	MessageID        string   `json:"message_id"`
	Attachments      int      `json:"attachments"`
}

// FormatPayload is the web UI's view of a task payload. For an email:send
// task it returns one line of JSON with the account id, the number of
// distinct recipients, their domains (never a local part), the subject (with
// any address in it reduced to its domain), the Message-ID and the number of
// attachments. Bodies, headers, attachment contents and addresses are never
// shown. Any other task type, a payload that is not a version
// [tasks.PayloadVersion] JSON object, or an empty one gives PayloadHidden.
//
// It reads untrusted input and never panics.
func FormatPayload(taskType string, payload []byte) string {
	if taskType != tasks.TypeSendEmail {
		return PayloadHidden
	}
	var p tasks.Payload
	if err := json.Unmarshal(payload, &p); err != nil || p.Version != tasks.PayloadVersion {
		return PayloadHidden
	}
	s := payloadSummary{
		AccountID:        truncate(redactAddresses(p.AccountID)),
		RecipientDomains: []string{},
		Subject:          truncate(redactAddresses(p.Subject)),
		MessageID:        truncate(p.MessageID),
		Attachments:      len(p.Attachments),
	}
	seenAddr := map[string]bool{}
	seenDomain := map[string]bool{}
	for _, list := range [][]string{p.To, p.Cc, p.Bcc} {
		for _, raw := range list {
			a, err := mail.ParseAddress(raw)
			if err != nil {
				s.Recipients++ // counted, never shown
				continue
			}
			addr := strings.ToLower(a.Address)
			if seenAddr[addr] {
				continue
			}
			seenAddr[addr] = true
			s.Recipients++
			if d := domainOf(addr); d != "" && !seenDomain[d] {
				seenDomain[d] = true
				s.RecipientDomains = append(s.RecipientDomains, d)
			}
		}
	}
	return oneLineJSON(s, PayloadHidden)
}

// resultSummary is the part of a tasks.Result the web UI shows.
type resultSummary struct {
	MessageID         string   `json:"message_id"`
	Accepted          int      `json:"accepted"`
	AcceptedDomains   []string `json:"accepted_domains"`
	Rejected          int      `json:"rejected"`
	RejectedDomains   []string `json:"rejected_domains"`
	Reply             string   `json:"reply"`
	PossibleDuplicate bool     `json:"possible_duplicate,omitempty"`
}

// FormatResult is the web UI's view of a completed task's result. For a
// [tasks.Result] it returns one line of JSON with the Message-ID, the counts
// of accepted and rejected recipients, their domains and the server's final
// reply (any address in it reduced to its domain). An empty result gives "";
// anything else, or a result of a task type other than email:send, gives
// ResultHidden. The UI's task page passes an empty task type, which is read
// as email:send.
//
// It reads untrusted input and never panics.
func FormatResult(taskType string, result []byte) string {
	if len(result) == 0 {
		return ""
	}
	if taskType != tasks.TypeSendEmail && taskType != "" {
		return ResultHidden
	}
	dec := json.NewDecoder(bytes.NewReader(result))
	dec.DisallowUnknownFields()
	var r tasks.Result
	if err := dec.Decode(&r); err != nil || r.MessageID == "" {
		return ResultHidden
	}
	if _, err := dec.Token(); err != io.EOF {
		return ResultHidden
	}
	s := resultSummary{
		MessageID:         truncate(r.MessageID),
		Accepted:          len(r.Accepted),
		AcceptedDomains:   []string{},
		Rejected:          len(r.Rejected),
		RejectedDomains:   []string{},
		Reply:             truncate(redactAddresses(r.Reply)),
		PossibleDuplicate: r.PossibleDuplicate,
	}
	seen := map[string]bool{}
	for _, a := range r.Accepted {
		if d := domainOf(a); d != "" && !seen["a"+d] {
			seen["a"+d] = true
			s.AcceptedDomains = append(s.AcceptedDomains, d)
		}
	}
	for _, rj := range r.Rejected {
		if d := domainOf(rj.Address); d != "" && !seen["r"+d] {
			seen["r"+d] = true
			s.RejectedDomains = append(s.RejectedDomains, d)
		}
	}
	return oneLineJSON(s, ResultHidden)
}

// domainOf returns the lower-case domain of a bare address, the text after
// its last "@", or "" when there is none.
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 || i == len(addr)-1 {
		return ""
	}
	return strings.ToLower(addr[i+1:])
}

// addressRE matches what looks like an email address in free text, a quoted
// local part included; group 1 is the domain.
var addressRE = regexp.MustCompile(`(?:"[^"]*"|[^\s<>()\[\],;:"@]+)@([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)`)

// redactAddresses replaces the local part of every address in s with "*".
func redactAddresses(s string) string {
	return addressRE.ReplaceAllString(s, "*@$1")
}

// truncate cuts s to maxShown runes, marking the cut with "…".
func truncate(s string) string {
	if utf8.RuneCountInString(s) <= maxShown {
		return s
	}
	return string([]rune(s)[:maxShown]) + "…"
}

// oneLineJSON encodes v without HTML escaping (the UI escapes); on failure it
// returns fallback.
func oneLineJSON(v any, fallback string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fallback
	}
	return strings.TrimSuffix(buf.String(), "\n")
}
