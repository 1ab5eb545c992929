package smtpoauth

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"sync"
)

// maxTraceLine bounds the partial line a redactWriter buffers. SMTP lines
// are at most 1000 bytes (RFC 5321); longer data can only be message
// content, which is counted, not shown.
const maxTraceLine = 4096

// redactWriter is the wire trace of one SMTP session: it receives the bytes
// sent and received, in order (go-smtp's Client.DebugWriter, which would
// otherwise print the AUTH line with the bearer token), and writes them to
// the configured DebugWriter a whole line at a time with the secrets
// removed:
//
//   - the AUTH command keeps its mechanism, its initial response becomes
//     [redacted];
//   - during the SASL exchange, the server's 334 challenges and the
//     client's base64 responses become [redacted];
//   - the message content between the 354 reply to DATA and the final ".",
//     and the chunk that follows a BDAT command (RFC 3030), is replaced by
//     a line giving its size.
//
// The trace has no direction markers: SMTP is a lock-step dialogue, so the
// lines alternate command, reply, command. The redactWriter follows that
// dialogue to know which lines belong to the SASL exchange or the message.
//
// Write never fails: a broken debug writer must not break the session
// (go-smtp writes the trace and the connection through one io.MultiWriter).
type redactWriter struct {
	mu *sync.Mutex // shared by a Sender's sessions; serialises writes to w
	w  io.Writer

	buf   []byte
	state traceState
	body  int // bytes of message content withheld so far
	chunk int // bytes of a BDAT chunk still to come
	skip  int // lines to drop: the greeting replayed to go-smtp
}

type traceState int

const (
	traceCommand    traceState = iota // ordinary dialogue
	traceAuthReply                    // next line is the server's reply in a SASL exchange
	traceAuthAnswer                   // next line is the client's SASL response
	traceDataReply                    // next line is the reply to DATA
	traceBody                         // message content until "."
)

func newRedactWriter(mu *sync.Mutex, w io.Writer) *redactWriter {
	return &redactWriter{mu: mu, w: w}
}

// Write implements io.Writer. It always reports success.
func (r *redactWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if r.chunk > 0 {
			// A chunk is counted by size, not by lines.
			k := min(r.chunk, len(p))
			r.body += k
			r.chunk -= k
			p = p[k:]
			if r.chunk == 0 {
				r.contentShown()
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.buf = append(r.buf, p...)
			if len(r.buf) > maxTraceLine {
				r.overflow()
			}
			break
		}
		r.buf = append(r.buf, p[:i+1]...)
		p = p[i+1:]
		r.line(r.buf)
		r.buf = r.buf[:0]
	}
	return n, nil
}

// overflow handles a partial line longer than any SMTP line: message
// content is counted, anything else is cut to what was buffered.
func (r *redactWriter) overflow() {
	if r.state == traceBody {
		r.body += len(r.buf)
		r.buf = r.buf[:0]
		return
	}
	r.line(append(r.buf, "\r\n"...))
	r.buf = r.buf[:0]
}

// flush writes out a pending partial line (the connection ended in the
// middle of one).
func (r *redactWriter) flush() {
	if len(r.buf) > 0 {
		r.line(append(r.buf, "\r\n"...))
		r.buf = r.buf[:0]
	}
	if r.body > 0 {
		r.contentShown()
	}
	r.chunk = 0
}

// contentShown writes the line that stands for the message content
// withheld so far.
func (r *redactWriter) contentShown() {
	r.emit(fmt.Appendf(nil, "[%d bytes of message content not shown]\r\n", r.body))
	r.body = 0
}

// line handles one complete line, terminator included.
func (r *redactWriter) line(l []byte) {
	if r.skip > 0 {
		r.skip--
		return
	}
	text := bytes.TrimRight(l, "\r\n")
	eol := l[len(text):]
	switch r.state {
	case traceCommand:
		switch {
		case hasPrefixFold(text, "AUTH "):
			fields := bytes.Fields(text)
			if len(fields) > 2 {
				l = fmt.Appendf(nil, "%s %s %s%s", fields[0], fields[1], redacted, eol)
			}
			r.state = traceAuthReply
		case bytes.EqualFold(bytes.TrimSpace(text), []byte("DATA")):
			r.state = traceDataReply
		case hasPrefixFold(text, "BDAT "):
			if fields := bytes.Fields(text); len(fields) >= 2 {
				if size, err := strconv.Atoi(string(fields[1])); err == nil && size > 0 {
					r.chunk = size
				}
			}
		}
	case traceAuthReply:
		if bytes.HasPrefix(text, []byte("334")) {
			l = fmt.Appendf(nil, "334 %s%s", redacted, eol)
			r.state = traceAuthAnswer
		} else if lastReplyLine(text) {
			r.state = traceCommand
		}
	case traceAuthAnswer:
		l = fmt.Appendf(nil, "%s%s", redacted, eol)
		r.state = traceAuthReply
	case traceDataReply:
		if lastReplyLine(text) {
			r.state = traceCommand
			if bytes.HasPrefix(text, []byte("354")) {
				r.state = traceBody
			}
		}
	case traceBody:
		if !bytes.Equal(text, []byte(".")) {
			r.body += len(l)
			return
		}
		r.contentShown()
		r.state = traceCommand
	}
	r.emit(l)
}

func (r *redactWriter) emit(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.w.Write(b)
}

// lastReplyLine reports whether a reply line is the last of its reply
// ("250 ok" rather than "250-ok").
func lastReplyLine(text []byte) bool {
	return len(text) < 4 || text[3] != '-'
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && bytes.EqualFold(b[:len(prefix)], []byte(prefix))
}
