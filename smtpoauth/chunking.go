package smtpoauth

import (
	"bytes"
	"context"
	"io"
	"strconv"
	"time"

	"github.com/emersion/go-smtp"
)

// chunking reports whether the server's EHLO offered CHUNKING (RFC 3030)
// as well as PIPELINING, so that deliver may send a whole transaction,
// message included, in one write.
func (ss *session) chunking() bool {
	ok, _ := ss.c.Extension("CHUNKING")
	return ok && ss.pipelining()
}

// peerState is what the server has sent since its last reply, as
// boundConn.peer finds it.
type peerState int

const (
	peerUnknown peerState = iota // cannot be told
	peerSilent                   // nothing: the connection was open
	peerSpoke                    // a reply, the end of the stream or a reset is waiting
)

// peer is what the server has sent since its last reply: what the reader
// holds already, or else what waits on the socket.
func (ss *session) peer() peerState {
	if ss.br.Buffered() > 0 {
		return peerSpoke
	}
	return ss.conn.peer()
}

// closedWhileIdle is deliver's failure when the server spoke, unasked,
// since its last reply: a server closes an idle connection that way (a
// 421, then the end of the stream). Nothing of the message has been sent.
// The error is what it said, a *smtp.SMTPError or the network error, at
// StageMail: for a 421 or a closed connection, Send redials.
func (ss *session) closedWhileIdle(ctx context.Context) error {
	ss.broken = true
	ss.rc.SetDeadline(time.Now().Add(ss.s.cfg.CommandTimeout))
	defer ss.rc.SetDeadline(time.Time{})
	code, text, _, err := ss.readReply(ss.br)
	if err == nil {
		err = replyError(code, text)
	}
	return ss.fail(ctx, StageMail, err)
}

// chunkable reports whether data may go as it is in a BDAT chunk: every
// line ends in CRLF, the last one included (BDAT sends the bytes as they
// are, while DATA would end the lines DotWriter's way).
func chunkable(data []byte) bool {
	return bytes.HasSuffix(data, crlf) && crlfLines(data)
}

// deliverChunked is deliver's transaction in one round trip, on a server
// that offers PIPELINING and CHUNKING: MAIL, a RCPT per recipient and
// "BDAT <size> LAST" followed by the message as it is go out in one write
// (RFC 3030 section 4.2 allows BDAT in a pipelined group); the replies are
// then read in order and judged as deliverPipelined judges them. A server
// that refused MAIL or every RCPT still reads the chunk (RFC 3030 section
// 2) and refuses BDAT too.
//
// Because the write carries the message, a connection lost before all the
// replies were read may have delivered it: the server may have taken the
// whole transaction and lost only its replies. Such a failure is therefore
// reported at StageDataEnd, whatever reply was missing, unless a reply
// already read showed that nothing can be delivered (MAIL or every RCPT
// refused). A write that failed sent less than the whole chunk, so nothing
// was delivered: it is reported at StageMail, with first as for deliver.
// deliver takes this path only when the connection was seen open just
// before the write (peerSilent), so that a pooled connection the server
// closed while idle is found out, and redialed, before anything is sent
// (closedWhileIdle).
//
// The trace shows each command just before its reply, as for
// deliverPipelined, and the chunk as a count of its bytes. StageData times
// the write, StageMail and StageRcpt the wait for their replies,
// StageDataEnd the wait for BDAT's.
func (ss *session) deliverChunked(ctx context.Context, m *Message, opts *smtp.MailOptions, first bool) (*Result, bool, error) {
	cfg := ss.s.cfg
	cmds := make([]string, 0, len(m.To)+2)
	cmds = append(cmds, ss.mailCommand(m.From, opts))
	for _, to := range m.To {
		cmds = append(cmds, "RCPT TO:<"+to+">")
	}
	cmds = append(cmds, "BDAT "+strconv.Itoa(len(m.Data))+" LAST")

	ss.dirty = true
	defer ss.rc.SetDeadline(time.Time{})
	// As with DATA, only ctx bounds writing the content: no deadline is
	// set for the write.
	start := time.Now()
	err := writeChunked(ss.rc, cmds, m.Data)
	ss.s.observe(StageData, start)
	if err != nil {
		for i := range cmds {
			ss.traceCommand(cmds, i, m.Data)
		}
		return nil, first, ss.fail(ctx, StageMail, err)
	}
	// next reads the reply to cmds[0], then to cmds[1], and so on.
	i := 0
	next := func(timeout time.Duration) (code int, text string, err error) {
		ss.traceCommand(cmds, i, m.Data)
		i++
		ss.rc.SetReadDeadline(time.Now().Add(timeout))
		code, text, _, err = ss.readReply(ss.br)
		return code, text, err
	}

	start = time.Now()
	code, text, err := next(cfg.CommandTimeout)
	ss.s.observe(StageMail, start)
	if err != nil {
		return nil, false, ss.fail(ctx, StageDataEnd, err)
	}
	if code != 250 {
		// The RCPTs and BDAT are refused too (503, bad sequence of
		// commands): read their replies so that the next command meets
		// its own.
		for i < len(cmds) {
			if _, _, err := next(cfg.CommandTimeout); err != nil {
				ss.broken = true
				break
			}
		}
		return nil, first, ss.fail(ctx, StageMail, replyError(code, text))
	}

	res, firstRejection, err := ss.readRcptReplies(ctx, m.To, func() (int, string, error) { return next(cfg.CommandTimeout) })
	if err != nil {
		// A recipient whose reply was lost may have been accepted.
		return nil, false, ss.fail(ctx, StageDataEnd, err)
	}

	start = time.Now()
	code, text, err = next(cfg.SubmissionTimeout)
	if len(res.Accepted()) == 0 {
		// Nothing can have been delivered, whatever BDAT's reply.
		if err != nil {
			ss.broken = true
		}
		return res, false, ss.fail(ctx, StageRcpt, firstRejection)
	}
	ss.s.observe(StageDataEnd, start)
	if err == nil && code != 250 {
		err = replyError(code, text)
	}
	if err != nil {
		return res, false, ss.fail(ctx, StageDataEnd, err)
	}
	ss.dirty = false
	res.Reply = replyError(250, text)
	ss.accepted(ctx, m, res)
	return res, false, nil
}

// writeChunked writes cmds, each ending in CRLF, and data after them (the
// last command being the BDAT that announces it), in as few writes as the
// buffer allows: one for a message of a few kilobytes.
func writeChunked(w io.Writer, cmds []string, data []byte) error {
	bw, release := dataWriter(w)
	defer release()
	for _, c := range cmds {
		bw.WriteString(c)
		bw.Write(crlf)
	}
	bw.Write(data)
	return bw.Flush()
}

// traceCommand writes cmds[i] to the trace, with the chunk after it when
// it is the BDAT command (the trace counts the chunk's bytes).
func (ss *session) traceCommand(cmds []string, i int, data []byte) {
	if ss.trace == nil {
		return
	}
	io.WriteString(ss.trace, cmds[i]+"\r\n")
	if i == len(cmds)-1 {
		ss.trace.Write(data)
	}
}
