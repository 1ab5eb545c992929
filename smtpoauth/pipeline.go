package smtpoauth

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// pipelining reports whether the server's EHLO offered PIPELINING (RFC
// 2920), so that deliver may send MAIL, the RCPTs and DATA in one write.
func (ss *session) pipelining() bool {
	ok, _ := ss.c.Extension("PIPELINING")
	return ok
}

// mailCommand is the MAIL FROM line go-smtp's Client.Mail sends for from
// and opts (the parameters deliver uses: BODY=8BITMIME and SIZE when the
// server offers them, SMTPUTF8 when asked for), so that a pipelined
// transaction says exactly what a lock-step one says.
func (ss *session) mailCommand(from string, opts *smtp.MailOptions) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "MAIL FROM:<%s>", from)
	if ok, _ := ss.c.Extension("8BITMIME"); ok {
		sb.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := ss.c.Extension("SIZE"); ok && opts.Size != 0 {
		fmt.Fprintf(&sb, " SIZE=%d", opts.Size)
	}
	if opts.UTF8 {
		sb.WriteString(" SMTPUTF8")
	}
	return sb.String()
}

// deliverPipelined is deliver's transaction on a server that offers
// PIPELINING: two round trips instead of 3+N. MAIL, a RCPT per recipient
// and DATA go out in one write; their replies are read in order and judged
// as deliver judges go-smtp's answers. Then the message, dot-stuffed, and
// the final "." go out and the reply to it is read. Send has already
// refused addresses with line breaks.
//
// The commands bypass go-smtp's Client, which therefore never sees this
// transaction: its state stays "no transaction", which is right once the
// transaction has ended, for the RSET (sent by reset) and QUIT it may send
// later.
//
// The trace shows every command and reply, but each pipelined command is
// written to it just before its reply, so that it reads as the lock-step
// dialogue redactWriter follows (and a pipelined transcript reads like a
// lock-step one).
//
// ss.dirty is set before anything is sent and cleared only by a 250 to the
// final "."; first is as for deliver.
func (ss *session) deliverPipelined(ctx context.Context, m *Message, opts *smtp.MailOptions, first bool) (*Result, bool, error) {
	cfg := ss.s.cfg
	cmds := make([]string, 0, len(m.To)+2)
	cmds = append(cmds, ss.mailCommand(m.From, opts))
	for _, to := range m.To {
		cmds = append(cmds, "RCPT TO:<"+to+">")
	}
	cmds = append(cmds, "DATA")
	var burst strings.Builder
	for _, c := range cmds {
		burst.WriteString(c)
		burst.WriteString("\r\n")
	}

	ss.dirty = true
	defer ss.rc.SetDeadline(time.Time{})
	ss.rc.SetDeadline(time.Now().Add(cfg.CommandTimeout))
	start := time.Now()
	if _, err := io.WriteString(ss.rc, burst.String()); err != nil {
		if ss.trace != nil {
			io.WriteString(ss.trace, burst.String())
		}
		ss.s.observe(StageMail, start)
		return nil, first, ss.fail(ctx, StageMail, err)
	}
	// next reads the reply to cmds[0], then to cmds[1], and so on.
	i := 0
	next := func() (code int, text string, err error) {
		if ss.trace != nil {
			io.WriteString(ss.trace, cmds[i]+"\r\n")
		}
		i++
		ss.rc.SetDeadline(time.Now().Add(cfg.CommandTimeout))
		code, text, _, err = ss.readReply(ss.br)
		return code, text, err
	}

	code, text, err := next()
	ss.s.observe(StageMail, start)
	if err != nil {
		return nil, first, ss.fail(ctx, StageMail, err)
	}
	if code != 250 {
		// The server answers the RCPTs and DATA too (503, bad sequence
		// of commands): read them so the next command meets its own
		// reply.
		for i < len(cmds) {
			code, _, err := next()
			if err == nil && i == len(cmds) && code == 354 {
				err = ss.endEmptyData()
			}
			if err != nil {
				ss.broken = true
				break
			}
		}
		return nil, first, ss.fail(ctx, StageMail, replyError(code, text))
	}

	res, firstRejection, err := ss.readRcptReplies(ctx, m.To, next)
	if err != nil {
		return nil, false, ss.fail(ctx, StageRcpt, err)
	}

	start = time.Now()
	code, text, err = next()
	if len(res.Accepted()) == 0 {
		// As in lock-step, where DATA is not sent, the transaction fails
		// at StageRcpt and StageData is not observed. A server that still
		// answers DATA with 354 gets an empty message, which it must
		// refuse (RFC 2920, section 3.1).
		if err == nil && code == 354 {
			err = ss.endEmptyData()
		}
		if err != nil {
			ss.broken = true
		}
		return res, false, ss.fail(ctx, StageRcpt, firstRejection)
	}
	if err != nil {
		ss.s.observe(StageData, start)
		return res, false, ss.fail(ctx, StageData, err)
	}
	if code != 354 {
		ss.s.observe(StageData, start)
		return res, false, ss.fail(ctx, StageData, replyError(code, text))
	}

	// As with go-smtp, only ctx bounds writing the content.
	ss.rc.SetDeadline(time.Time{})
	var w io.Writer = ss.rc
	if ss.trace != nil {
		w = io.MultiWriter(ss.rc, ss.trace)
	}
	final, err := writeData(w, m.Data)
	if err != nil && !final {
		ss.s.observe(StageData, start)
		return res, false, ss.fail(ctx, StageData, err)
	}
	ss.s.observe(StageData, start)
	// From here on a lost reply means the message may have been delivered:
	// the write that failed, if one did, carried the final ".".
	start = time.Now()
	if err == nil {
		ss.rc.SetDeadline(time.Now().Add(cfg.SubmissionTimeout))
		code, text, _, err = ss.readReply(ss.br)
		if err == nil && code != 250 {
			err = replyError(code, text)
		}
	}
	ss.s.observe(StageDataEnd, start)
	if err != nil {
		return res, false, ss.fail(ctx, StageDataEnd, err)
	}
	ss.dirty = false
	res.Reply = replyError(250, text)
	ss.accepted(ctx, m, res)
	return res, false, nil
}

// readRcptReplies reads, with next, the replies to the pipelined RCPTs of
// the addresses to, in order, and records them in a Result as deliver
// records go-smtp's answers (which have no text for a positive reply).
// firstRejection is the first refusal; err, the failure to read a reply.
func (ss *session) readRcptReplies(ctx context.Context, to []string, next func() (int, string, error)) (res *Result, firstRejection *smtp.SMTPError, err error) {
	res = &Result{Recipients: make([]RecipientResult, 0, len(to))}
	for _, addr := range to {
		start := time.Now()
		code, text, err := next()
		ss.s.observe(StageRcpt, start)
		if err != nil {
			return nil, nil, err
		}
		if code/10 == 25 {
			res.Recipients = append(res.Recipients, RecipientResult{Address: addr, Accepted: true, Reply: &smtp.SMTPError{Code: 250}})
			continue
		}
		reply := replyError(code, text)
		res.Recipients = append(res.Recipients, RecipientResult{Address: addr, Reply: reply})
		if firstRejection == nil {
			firstRejection = reply
		}
		ss.s.log.LogAttrs(ctx, slog.LevelDebug, "smtp recipient rejected",
			append(ss.s.attrs(), replyAttrs(reply)...)...)
	}
	return res, firstRejection, nil
}

// endEmptyData ends, with the final "." alone, the message a server
// accepted with 354 although no recipient was, and reads the reply, a
// refusal or not: the transaction is over either way.
func (ss *session) endEmptyData() error {
	if ss.trace != nil {
		io.WriteString(ss.trace, ".\r\n")
	}
	ss.rc.SetDeadline(time.Now().Add(ss.s.cfg.CommandTimeout))
	if _, err := io.WriteString(ss.rc, ".\r\n"); err != nil {
		return err
	}
	_, _, _, err := ss.readReply(ss.br)
	return err
}
