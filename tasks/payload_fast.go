package tasks

import (
	"encoding/base64"
	"unicode/utf8"
)

// decodeCanonical decodes data into p, in one pass and without reflection,
// when data is a payload in the form encodePayload writes: one JSON object
// whose keys are Payload's JSON field names spelled exactly, each at most
// once; strings without \u escapes, in valid UTF-8; no nulls; the version a
// plain integer. It reports false for anything else, valid or not, and then
// p holds a partial decode to be thrown away: encoding/json decides.
//
// Whatever it accepts, encoding/json's strict decode (DecodePayloadLimits)
// accepts too, with an equal result: FuzzDecodeCanonical checks that. It
// exists because encoding/json reads a payload twice (one pass to find its
// end or check it, one to decode) and a byte at a time, and the worker
// decodes every task it takes (26 µs of each message in the worker's CPU
// profile at concurrency 10; this path takes a fifth of that).
func decodeCanonical(data []byte, p *Payload) bool {
	r := canonicalReader{b: data}
	ok := r.object(func(key []byte) (bit uint32, ok bool) {
		switch string(key) {
		case "v":
			bit = 1 << 0
			p.Version, ok = r.smallInt()
		case "message_id":
			bit = 1 << 1
			p.MessageID, ok = r.str()
		case "date":
			bit = 1 << 2
			var raw []byte
			if raw, ok = r.rawStr(); ok {
				ok = p.Date.UnmarshalJSON(raw) == nil
			}
		case "idempotency_key":
			bit = 1 << 3
			p.IdempotencyKey, ok = r.str()
		case "account_id":
			bit = 1 << 4
			p.AccountID, ok = r.str()
		case "from":
			bit = 1 << 5
			p.From, ok = r.str()
		case "to":
			bit = 1 << 6
			p.To, ok = r.strs()
		case "cc":
			bit = 1 << 7
			p.Cc, ok = r.strs()
		case "bcc":
			bit = 1 << 8
			p.Bcc, ok = r.strs()
		case "reply_to":
			bit = 1 << 9
			p.ReplyTo, ok = r.strs()
		case "subject":
			bit = 1 << 10
			p.Subject, ok = r.str()
		case "text":
			bit = 1 << 11
			p.Text, ok = r.str()
		case "html":
			bit = 1 << 12
			p.HTML, ok = r.str()
		case "headers":
			bit = 1 << 13
			p.Headers, ok = r.headers()
		case "attachments":
			bit = 1 << 14
			p.Attachments, ok = r.attachments()
		}
		return bit, ok
	})
	if !ok {
		return false
	}
	r.space()
	return r.i == len(r.b)
}

// canonicalReader reads the JSON that decodeCanonical accepts; every method
// skips the whitespace before its token and reports false where that JSON
// ends.
type canonicalReader struct {
	b []byte
	i int
}

func (r *canonicalReader) space() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// consume reads the byte c.
func (r *canonicalReader) consume(c byte) bool {
	r.space()
	if r.i < len(r.b) && r.b[r.i] == c {
		r.i++
		return true
	}
	return false
}

// key reads an object key without escapes and the colon after it.
func (r *canonicalReader) key() ([]byte, bool) {
	raw, ok := r.rawStr()
	if !ok || !r.consume(':') {
		return nil, false
	}
	key := raw[1 : len(raw)-1]
	for _, c := range key {
		if c == '\\' {
			return nil, false
		}
	}
	return key, true
}

// smallInt reads a non-negative integer of at most nine digits, without
// sign, fraction or exponent.
func (r *canonicalReader) smallInt() (int, bool) {
	r.space()
	n, digits := 0, 0
	for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
		if digits > 0 && n == 0 || digits == 9 {
			return 0, false // a leading zero, or too long
		}
		n = n*10 + int(r.b[r.i]-'0')
		digits++
		r.i++
	}
	if digits == 0 || r.i < len(r.b) && (r.b[r.i] == '.' || r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		return 0, false
	}
	return n, true
}

// rawStr reads a string without escapes, in valid UTF-8, and returns it
// with its quotes.
func (r *canonicalReader) rawStr() ([]byte, bool) {
	r.space()
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return nil, false
	}
	start := r.i
	i := start + 1
	i += plainRun(r.b[i:], false)
	if i == len(r.b) || r.b[i] != '"' || !utf8.Valid(r.b[start+1:i]) {
		return nil, false
	}
	r.i = i + 1
	return r.b[start:r.i], true
}

// str reads a string whose escapes are the two-character ones (\" \\ \/ \b
// \f \n \r \t), in valid UTF-8.
func (r *canonicalReader) str() (string, bool) {
	r.space()
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return "", false
	}
	i := r.i + 1
	start := i
	i += plainRun(r.b[i:], false)
	if i < len(r.b) && r.b[i] == '"' {
		if !utf8.Valid(r.b[start:i]) {
			return "", false
		}
		r.i = i + 1
		return string(r.b[start:i]), true
	}
	// Escapes: the plain runs are copied, each escape replaced. An escape
	// yields ASCII, which cannot complete a broken UTF-8 sequence, so the
	// whole is valid exactly when every run was.
	buf := make([]byte, 0, i-start+64)
	buf = append(buf, r.b[start:i]...)
	for i < len(r.b) {
		c := r.b[i]
		switch {
		case c == '"':
			if !utf8.Valid(buf) {
				return "", false
			}
			r.i = i + 1
			return string(buf), true
		case c == '\\' && i+1 < len(r.b):
			e, ok := shortEscape(r.b[i+1])
			if !ok {
				return "", false
			}
			buf = append(buf, e)
			i += 2
		case c < 0x20 || c == '\\':
			return "", false // a raw control character, or \ at the end
		default:
			j := i + 1 + plainRun(r.b[i+1:], false)
			buf = append(buf, r.b[i:j]...)
			i = j
		}
	}
	return "", false
}

// shortEscape returns the byte that the escape \c stands for.
func shortEscape(c byte) (byte, bool) {
	switch c {
	case '"', '\\', '/':
		return c, true
	case 'b':
		return '\b', true
	case 'f':
		return '\f', true
	case 'n':
		return '\n', true
	case 'r':
		return '\r', true
	case 't':
		return '\t', true
	}
	return 0, false
}

// strs reads an array of strings ([] is an empty, non-nil slice, as
// encoding/json makes it).
func (r *canonicalReader) strs() ([]string, bool) {
	if !r.consume('[') {
		return nil, false
	}
	out := []string{}
	if r.consume(']') {
		return out, true
	}
	for {
		s, ok := r.str()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if r.consume(']') {
			return out, true
		}
		if !r.consume(',') {
			return nil, false
		}
	}
}

// object reads an object, calling field for each of its keys; field reads
// the value and returns the key's bit (0 for an unknown key) and whether the
// value was read. A key seen twice fails.
func (r *canonicalReader) object(field func(key []byte) (uint32, bool)) bool {
	if !r.consume('{') {
		return false
	}
	if r.consume('}') {
		return true
	}
	var seen uint32
	for {
		key, ok := r.key()
		if !ok {
			return false
		}
		bit, ok := field(key)
		if !ok || bit == 0 || seen&bit != 0 {
			return false
		}
		seen |= bit
		if r.consume('}') {
			return true
		}
		if !r.consume(',') {
			return false
		}
	}
}

// objects reads an array of objects, calling start before each and field
// for its keys, as object does.
func (r *canonicalReader) objects(start func(), field func(key []byte) (uint32, bool)) bool {
	if !r.consume('[') {
		return false
	}
	if r.consume(']') {
		return true
	}
	for {
		start()
		if !r.object(field) {
			return false
		}
		if r.consume(']') {
			return true
		}
		if !r.consume(',') {
			return false
		}
	}
}

// list reads an array of objects into a slice of T; field reads the value of
// one key into the element and returns the key's bit, as objects says.
func list[T any](r *canonicalReader, field func(e *T, key []byte) (uint32, bool)) ([]T, bool) {
	out := []T{}
	ok := r.objects(func() { out = append(out, *new(T)) }, func(key []byte) (uint32, bool) {
		return field(&out[len(out)-1], key)
	})
	return out, ok
}

func (r *canonicalReader) headers() ([]Header, bool) {
	return list(r, func(h *Header, key []byte) (uint32, bool) {
		switch string(key) {
		case "name":
			return 1, r.strInto(&h.Name)
		case "value":
			return 2, r.strInto(&h.Value)
		}
		return 0, false
	})
}

func (r *canonicalReader) attachments() ([]Attachment, bool) {
	return list(r, func(a *Attachment, key []byte) (uint32, bool) {
		switch string(key) {
		case "filename":
			return 1, r.strInto(&a.Filename)
		case "content_type":
			return 2, r.strInto(&a.ContentType)
		case "data":
			var ok bool
			a.Data, ok = r.base64()
			return 4, ok
		case "content_id":
			return 8, r.strInto(&a.ContentID)
		}
		return 0, false
	})
}

// strInto reads a string, as str does, into dst.
func (r *canonicalReader) strInto(dst *string) bool {
	var ok bool
	*dst, ok = r.str()
	return ok
}

// base64 reads a string and decodes it as encoding/json decodes a []byte.
func (r *canonicalReader) base64() ([]byte, bool) {
	s, ok := r.str()
	if !ok {
		return nil, false
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(b, []byte(s))
	if err != nil {
		return nil, false
	}
	return b[:n], true
}
