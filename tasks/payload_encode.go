package tasks

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// encodePayload returns p as JSON: what json.Marshal writes, except that it
// does not escape <, > and &, so that a Message-ID or an HTML body reads as
// itself in Redis and in asynqmon. The producer's payloads are in this form,
// which decodeCanonical reads back.
//
// It writes the fields itself, in Payload's order, into one buffer of the
// right size: encoding/json's reflection took 8 µs of each enqueue in the
// producer's CPU profile (a tenth of the round trip to Redis), this a fifth
// of that. TestEncodePayloadIsEncodingJSON and FuzzEncodePayload check that
// the bytes are encoding/json's.
func encodePayload(p *Payload) ([]byte, error) {
	b := make([]byte, 0, encodedSizeHint(p))
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(p.Version), 10)
	b = appendJSONField(b, "message_id", p.MessageID)
	b = append(b, `,"date":"`...)
	b, err := p.Date.AppendText(b)
	if err != nil {
		return nil, fmt.Errorf("encode payload: date: %w", err)
	}
	b = append(b, '"')
	if p.IdempotencyKey != "" {
		b = appendJSONField(b, "idempotency_key", p.IdempotencyKey)
	}
	b = appendJSONField(b, "account_id", p.AccountID)
	b = appendJSONField(b, "from", p.From)
	b = appendJSONList(b, "to", p.To)
	b = appendJSONList(b, "cc", p.Cc)
	b = appendJSONList(b, "bcc", p.Bcc)
	b = appendJSONList(b, "reply_to", p.ReplyTo)
	for _, f := range [...]struct{ name, value string }{{"subject", p.Subject}, {"text", p.Text}, {"html", p.HTML}} {
		if f.value != "" {
			b = appendJSONField(b, f.name, f.value)
		}
	}
	if len(p.Headers) > 0 {
		b = append(b, `,"headers":[`...)
		for i, h := range p.Headers {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"name":`...)
			b = appendJSONString(b, h.Name)
			b = appendJSONField(b, "value", h.Value)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if len(p.Attachments) > 0 {
		b = append(b, `,"attachments":[`...)
		for i, a := range p.Attachments {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"filename":`...)
			b = appendJSONString(b, a.Filename)
			if a.ContentType != "" {
				b = appendJSONField(b, "content_type", a.ContentType)
			}
			b = append(b, `,"data":`...)
			if a.Data == nil {
				b = append(b, "null"...)
			} else {
				b = append(b, '"')
				b = base64.StdEncoding.AppendEncode(b, a.Data)
				b = append(b, '"')
			}
			if a.ContentID != "" {
				b = appendJSONField(b, "content_id", a.ContentID)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// encodedSizeHint is about the size of p encoded: its strings, the base64 of
// its attachments, and room for the names, quotes and a few escapes.
func encodedSizeHint(p *Payload) int {
	n := 256 + len(p.MessageID) + len(p.IdempotencyKey) + len(p.AccountID) + len(p.From) +
		len(p.Subject) + len(p.Text) + len(p.HTML)
	for _, list := range [...][]string{p.To, p.Cc, p.Bcc, p.ReplyTo} {
		for _, s := range list {
			n += len(s) + 3
		}
	}
	for _, h := range p.Headers {
		n += len(h.Name) + len(h.Value) + 24
	}
	for _, a := range p.Attachments {
		n += len(a.Filename) + len(a.ContentType) + len(a.ContentID) + base64.StdEncoding.EncodedLen(len(a.Data)) + 64
	}
	return n + n/64
}

// appendJSONField appends `,"name":` and value as a JSON string.
func appendJSONField(b []byte, name, value string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendJSONString(b, value)
}

// appendJSONList appends `,"name":` and list as a JSON array of strings, or
// nothing for an empty list (omitempty).
func appendJSONList(b []byte, name string, list []string) []byte {
	if len(list) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':', '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// plainRun returns the length of the run of bytes at the start of s that a
// JSON string holds as they are: no '"', no '\\', no control character and,
// when ascii is set, no byte of a multi-byte UTF-8 sequence (what
// encoding/json checks before it copies one). It looks at eight bytes at a
// time: a message body is most of a payload, and mostly plain.
func plainRun[S string | []byte](s S, ascii bool) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	var stop uint64 // bytes with their high bit set stop the run
	if ascii {
		stop = highs
	}
	i := 0
	for ; i+8 <= len(s); i += 8 {
		x := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		quote, backslash := x^(ones*'"'), x^(ones*'\\')
		// A byte below 0x20, or equal to '"' or '\\' (zero after the
		// xor), sets its high bit in these differences (the classic
		// "has less than" and "has zero byte" tests).
		if ((x-ones*0x20)&^x|(quote-ones)&^quote|(backslash-ones)&^backslash)&highs|x&stop != 0 {
			break
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || (ascii && c >= utf8.RuneSelf) {
			break
		}
	}
	return i
}

// appendJSONString appends s as a JSON string escaped as encoding/json escapes
// it with SetEscapeHTML(false): \" \\ \b \f \n \r \t, \u00XX for the other
// control characters, \ufffd for each byte of invalid UTF-8, \u2028 and
// \u2029 for the line and paragraph separators.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		i += plainRun(s[i:], true)
		if i == len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
