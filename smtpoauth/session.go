package smtpoauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"
)

// quitTimeout bounds the courtesy QUIT that ends a session.
const quitTimeout = 5 * time.Second

// maxReplySize bounds a reply this package reads itself (the greeting and
// the replies before STARTTLS).
const maxReplySize = 64 << 10

// session is one authenticated SMTP connection: open (dial) makes it, and
// deliver submits one message on it. The pool keeps it between messages.
type session struct {
	s     *Sender
	conn  *boundConn // the TCP connection, under TLS
	c     *smtp.Client
	trace *redactWriter // nil without Config.DebugWriter
	// rc is the protected connection go-smtp talks through, and br the
	// reader it reads from: RSET is sent and answered on them.
	rc *replayConn
	br *bufio.Reader

	// Owned by the Send using the session; while it is idle, by the pool.
	uses   int       // messages (transactions) started on the connection
	reused bool      // the current message is not the connection's first
	dirty  bool      // a transaction has not ended with a 250 to the final ".": RSET before the next
	broken bool      // the connection must not be reused
	lease  *ConnSlot // its slot of Config.ConnLimiter; nil without one
	// dialTook is how long the TCP connection took: StageConnect reports
	// it with the wait for the greeting.
	dialTook time.Duration

	// Guarded by the pool's mutex.
	idleSince time.Time   // when it went idle, by the pool's clock
	idleGen   int         // counts the idle periods, so a stale reaper does nothing
	idleTimer *time.Timer // closes it after Config.IdleTimeout idle
}

// dial connects, protects the connection, says EHLO and authenticates with
// tok. ctx bounds all of it.
func (s *Sender) dial(ctx context.Context, tok *oauth2.Token) (*session, error) {
	start := time.Now()
	addrs := []string{net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))}
	if s.cfg.TLS == TLSNone {
		var err error
		addrs, err = insecureLoopbackAddrs(ctx, s.lookup, s.cfg.Host, s.cfg.Port)
		if err != nil {
			stage := StageConnect
			if errors.Is(err, ErrInsecureTransport) {
				stage = StageTLS
			}
			return nil, s.fail(ctx, stage, err)
		}
	}
	var raw net.Conn
	var err error
	for _, addr := range addrs {
		raw, err = s.dialContext(ctx, "tcp", addr)
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		s.observe(StageConnect, start)
		return nil, s.fail(ctx, StageConnect, err)
	}
	ss := &session{s: s, conn: newBoundConn(raw), dialTook: time.Since(start)}
	if s.cfg.DebugWriter != nil {
		ss.trace = newRedactWriter(&s.traceMu, s.cfg.DebugWriter)
	}
	release := ss.conn.bind(ctx)
	defer release()
	if err := ss.start(ctx); err != nil {
		ss.end(ctx, err)
		return nil, err
	}
	if err := ss.auth(ctx, tok); err != nil {
		ss.end(ctx, err)
		return nil, err
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "smtp session authenticated",
		append(s.attrs(), slog.String("tls", string(s.cfg.TLS)))...)
	return ss, nil
}

// start runs the session up to the EHLO on the protected connection: the
// implicit TLS handshake, the greeting, and for STARTTLS the plaintext EHLO,
// STARTTLS and handshake. go-smtp has no exported STARTTLS and would say
// its first EHLO as "localhost", so this part is done here; the go-smtp
// Client then starts from a replay of the greeting.
func (ss *session) start(ctx context.Context) error {
	cfg := ss.s.cfg
	var conn net.Conn = ss.conn
	if cfg.TLS == TLSImplicit {
		start := time.Now()
		tc, err := ss.handshake(ctx)
		ss.s.observe(StageTLS, start)
		if err != nil {
			return err
		}
		conn = tc
	}

	conn.SetDeadline(time.Now().Add(cfg.CommandTimeout))
	br := bufio.NewReader(conn)
	start := time.Now()
	code, text, greeting, err := ss.readReply(br)
	if o := cfg.Observer; o != nil {
		o.ObserveStage(StageConnect, ss.dialTook+time.Since(start))
	}
	if err != nil {
		return ss.fail(ctx, StageConnect, err)
	}
	if code != 220 {
		return ss.fail(ctx, StageConnect, replyError(code, text))
	}
	var rest io.Reader = br
	if cfg.TLS == TLSStartTLS {
		start := time.Now()
		code, text, _, err := ss.command(conn, br, "EHLO "+cfg.LocalName)
		ss.s.observe(StageHello, start)
		if err == nil && code != 250 {
			err = replyError(code, text)
		}
		if err != nil {
			return ss.fail(ctx, StageHello, err)
		}
		if !hasExtension(text, "STARTTLS") {
			return ss.fail(ctx, StageTLS, fmt.Errorf("server does not offer STARTTLS: %w", ErrInsecureTransport))
		}
		start = time.Now()
		code, text, _, err = ss.command(conn, br, "STARTTLS")
		if err == nil && code != 220 {
			err = replyError(code, text)
		}
		if err != nil {
			ss.s.observe(StageTLS, start)
			return ss.fail(ctx, StageTLS, err)
		}
		if br.Buffered() > 0 {
			// Plaintext pipelined behind the 220 would be read as if it
			// came over TLS (STARTTLS command injection).
			return ss.fail(ctx, StageTLS, errors.New("server sent data after its STARTTLS reply"))
		}
		tc, err := ss.handshake(ctx)
		ss.s.observe(StageTLS, start)
		if err != nil {
			return err
		}
		conn, rest = tc, tc
	}
	conn.SetDeadline(time.Time{})

	ss.br = bufio.NewReader(io.MultiReader(bytes.NewReader(greeting), rest))
	ss.rc = &replayConn{Conn: conn, r: ss.br}
	c := smtp.NewClient(ss.rc)
	c.CommandTimeout = cfg.CommandTimeout
	c.SubmissionTimeout = cfg.SubmissionTimeout
	if ss.trace != nil {
		ss.trace.skip = bytes.Count(greeting, []byte("\n"))
		c.DebugWriter = ss.trace
	}
	ss.c = c
	start = time.Now()
	err = c.Hello(cfg.LocalName)
	ss.s.observe(StageHello, start)
	if err != nil {
		return ss.fail(ctx, StageHello, err)
	}
	return nil
}

// handshake runs the TLS client handshake on the TCP connection, verifying
// the server's certificate against Config.RootCAs and Config.ServerName.
func (ss *session) handshake(ctx context.Context) (*tls.Conn, error) {
	tc := tls.Client(ss.conn, ss.s.tls)
	tc.SetDeadline(time.Now().Add(ss.s.cfg.CommandTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, ss.fail(ctx, StageTLS, err)
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// auth runs the SASL exchange with tok.
func (ss *session) auth(ctx context.Context, tok *oauth2.Token) error {
	cfg := ss.s.cfg
	if !ss.c.SupportsAuth(cfg.Mechanism) {
		_, offered := ss.c.Extension("AUTH")
		return ss.fail(ctx, StageAuth, fmt.Errorf("%w: %s (AUTH %q)", ErrMechanismNotOffered, cfg.Mechanism, offered))
	}
	var sc sasl.Client
	switch cfg.Mechanism {
	case MechOAuthBearer:
		sc = NewOAuthBearerClient(cfg.Username, tok.AccessToken, cfg.Host, cfg.Port)
	default:
		sc = NewXOAUTH2Client(cfg.Username, tok.AccessToken)
	}
	// Our clients never return (nil, nil) from Next, so go-smtp cannot
	// report success on an unfinished exchange: Auth returns nil only on
	// the server's 235. On a failure reply go-smtp also sends "*", which
	// the server answers as an unknown command; harmless.
	if cfg.Observer != nil {
		cfg.Observer.Login()
	}
	start := time.Now()
	err := ss.c.Auth(sc)
	ss.s.observe(StageAuth, start)
	if err == nil {
		return nil
	}
	var reply *smtp.SMTPError
	if !errors.As(err, &reply) {
		return ss.fail(ctx, StageAuth, err)
	}
	ae := &AuthError{Mechanism: cfg.Mechanism, Reply: reply}
	if ec, ok := sc.(errorChallenger); ok {
		if ch, ok := ec.errorChallenge(); ok {
			ae.Status, ae.Schemes, ae.Scope = ch.Status, ch.Schemes, ch.Scope
		}
	}
	return ss.fail(ctx, StageAuth, ae)
}

// deliver submits m on the session: RSET when the previous transaction
// did not complete, MAIL, a RCPT for every recipient, and DATA when at
// least one was accepted; pipelined (deliverPipelined) when the server
// offers PIPELINING; in one round trip with BDAT (deliverChunked) when it
// offers CHUNKING too and m's lines all end in CRLF, once the server is
// seen to have sent nothing since its last reply. ctx bounds it. first
// reports that err is the failure of the first command sent (RSET, or
// MAIL when no RSET was needed): the message had not started.
func (ss *session) deliver(ctx context.Context, m *Message) (res *Result, first bool, err error) {
	release := ss.conn.bind(ctx)
	defer release()
	defer func() {
		// Cancelling ctx may have closed the connection under us.
		if contextError(ctx) != nil {
			ss.broken = true
		}
	}()
	ss.reused = ss.uses > 0
	ss.uses++

	first = true
	if ss.dirty {
		start := time.Now()
		err := ss.reset()
		ss.s.observe(StageReset, start)
		if err != nil {
			ss.broken = true
			return nil, true, ss.fail(ctx, StageReset, err)
		}
		ss.dirty = false
		first = false
	}
	opts := &smtp.MailOptions{Size: int64(len(m.Data))}
	if !isASCII(m.From) || !slicesAll(m.To, isASCII) {
		if ok, _ := ss.c.Extension("SMTPUTF8"); !ok {
			return nil, false, ss.fail(ctx, StageMail, fmt.Errorf("%w: an address is not ASCII and the server does not offer SMTPUTF8", ErrInvalidMessage))
		}
		opts.UTF8 = true
	}
	if ss.chunking() && chunkable(m.Data) {
		switch ss.peer() {
		case peerSilent:
			return ss.deliverChunked(ctx, m, opts, first)
		case peerSpoke:
			return nil, first, ss.closedWhileIdle(ctx)
		}
	}
	if ss.pipelining() {
		return ss.deliverPipelined(ctx, m, opts, first)
	}
	ss.dirty = true
	start := time.Now()
	err = ss.c.Mail(m.From, opts)
	ss.s.observe(StageMail, start)
	if err != nil {
		return nil, first, ss.fail(ctx, StageMail, err)
	}
	res = &Result{Recipients: make([]RecipientResult, 0, len(m.To))}
	var firstRejection *smtp.SMTPError
	for _, to := range m.To {
		start := time.Now()
		err := ss.c.Rcpt(to, nil)
		ss.s.observe(StageRcpt, start)
		var reply *smtp.SMTPError
		switch {
		case err == nil:
			// go-smtp does not return the text of a positive reply.
			res.Recipients = append(res.Recipients, RecipientResult{Address: to, Accepted: true, Reply: &smtp.SMTPError{Code: 250}})
		case errors.As(err, &reply):
			res.Recipients = append(res.Recipients, RecipientResult{Address: to, Reply: reply})
			if firstRejection == nil {
				firstRejection = reply
			}
			ss.s.log.LogAttrs(ctx, slog.LevelDebug, "smtp recipient rejected",
				append(ss.s.attrs(), replyAttrs(reply)...)...)
		default:
			return nil, false, ss.fail(ctx, StageRcpt, err)
		}
	}
	if len(res.Accepted()) == 0 {
		return res, false, ss.fail(ctx, StageRcpt, firstRejection)
	}

	start = time.Now()
	w, err := ss.c.Data()
	if err != nil {
		ss.s.observe(StageData, start)
		return res, false, ss.fail(ctx, StageData, err)
	}
	_, err = w.Write(m.Data)
	ss.s.observe(StageData, start)
	if err != nil {
		return res, false, ss.fail(ctx, StageData, err)
	}
	// From here on a lost reply means the message may have been delivered.
	start = time.Now()
	resp, err := w.CloseWithResponse()
	ss.s.observe(StageDataEnd, start)
	if err != nil {
		return res, false, ss.fail(ctx, StageDataEnd, err)
	}
	ss.dirty = false
	res.Reply = replyError(250, resp.StatusText)
	ss.accepted(ctx, m, res)
	return res, false, nil
}

// accepted logs the server's acceptance of m.
func (ss *session) accepted(ctx context.Context, m *Message, res *Result) {
	ss.s.log.LogAttrs(ctx, slog.LevelDebug, "smtp message accepted",
		append(ss.s.attrs(),
			slog.Int("smtp_code", res.Reply.Code),
			slog.Int("recipients", len(m.To)),
			slog.Int("rejected", len(m.To)-len(res.Accepted())),
			slog.Int("size", len(m.Data)),
			slog.Bool("reused", ss.reused))...)
}

// reset sends RSET and reads the reply itself: go-smtp's Client.Reset
// forgets the EHLO, so that its next MAIL FROM would say EHLO again, an
// extra round trip on an authenticated session.
func (ss *session) reset() error {
	ss.rc.SetDeadline(time.Now().Add(ss.s.cfg.CommandTimeout))
	defer ss.rc.SetDeadline(time.Time{})
	code, text, _, err := ss.command(ss.rc, ss.br, "RSET")
	if err == nil && code != 250 {
		err = replyError(code, text)
	}
	return err
}

// end finishes the session after err (nil: success). When the server is
// still talking to us (success, or a failure it replied to) it says QUIT,
// waiting at most quitTimeout; otherwise it just closes the connection.
func (ss *session) end(ctx context.Context, err error) {
	defer ss.close()
	var reply *smtp.SMTPError
	if ss.c == nil || (err != nil && !errors.As(err, &reply)) || contextError(ctx) != nil {
		return
	}
	release := ss.conn.bind(ctx)
	defer release()
	ss.conn.tighten(time.Now().Add(min(quitTimeout, ss.s.cfg.CommandTimeout)))
	_ = ss.c.Quit()
}

// quit ends a healthy session that is not to be reused: QUIT, waiting at
// most quitTimeout, then close.
func (ss *session) quit() { ss.end(context.Background(), nil) }

// close closes the connection and flushes the trace.
func (ss *session) close() {
	if ss.c != nil {
		ss.c.Close()
	} else {
		ss.conn.Close()
	}
	if ss.trace != nil {
		ss.trace.flush()
	}
}

// fail makes err a *SendError at stage, logs it at debug level with attrs,
// and, when ctx has ended, makes errors.Is(err, ctx.Err()) hold: the
// network error seen when the connection was closed or timed out says less
// than why.
func (s *Sender) fail(ctx context.Context, stage Stage, err error, attrs ...slog.Attr) error {
	var se *SendError
	if errors.As(err, &se) {
		return err
	}
	if cerr := contextError(ctx); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w: %w", cerr, err)
	}
	attrs = append(append(s.attrs(), slog.String("stage", string(stage))), attrs...)
	var reply *smtp.SMTPError
	if errors.As(err, &reply) {
		attrs = append(attrs, replyAttrs(reply)...)
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "smtp send failed", attrs...)
	return &SendError{Stage: stage, Err: err}
}

func (ss *session) fail(ctx context.Context, stage Stage, err error) error {
	return ss.s.fail(ctx, stage, err, slog.Bool("reused", ss.reused))
}

// contextError is ctx.Err(), or context.DeadlineExceeded once ctx's deadline
// has passed even if ctx's timer has not fired yet (the connection's
// deadline, set to the same instant, may fire first).
func contextError(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// replyAttrs are the log attributes of a server reply: its codes, not its
// text (which may echo addresses).
func replyAttrs(r *smtp.SMTPError) []slog.Attr {
	if r == nil {
		return nil
	}
	attrs := []slog.Attr{slog.Int("smtp_code", r.Code)}
	if ec := r.EnhancedCode; ec != (smtp.EnhancedCode{}) && ec != smtp.NoEnhancedCode {
		attrs = append(attrs, slog.String("enhanced_code", fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])))
	}
	return attrs
}

// command writes one command line and reads its reply (before go-smtp takes
// over the connection).
func (ss *session) command(w io.Writer, r *bufio.Reader, line string) (code int, text string, raw []byte, err error) {
	b := []byte(line + "\r\n")
	if ss.trace != nil {
		ss.trace.Write(b)
	}
	if _, err := w.Write(b); err != nil {
		return 0, "", nil, err
	}
	return ss.readReply(r)
}

// readReply reads one, possibly multi-line, reply: its code, its text (the
// lines without their codes, joined by "\n") and its bytes as received.
func (ss *session) readReply(r *bufio.Reader) (code int, text string, raw []byte, err error) {
	var lines []string
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return 0, "", nil, errors.New("malformed reply: line too long")
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return 0, "", nil, err
		}
		if ss.trace != nil {
			ss.trace.Write(line)
		}
		raw = append(raw, line...)
		if len(raw) > maxReplySize {
			return 0, "", nil, errors.New("malformed reply: too long")
		}
		l := strings.TrimRight(string(line), "\r\n")
		c, err := strconv.Atoi(l[:min(3, len(l))])
		if err != nil || len(l) < 3 || c < 100 || c > 599 || (len(l) > 3 && l[3] != ' ' && l[3] != '-') {
			return 0, "", nil, fmt.Errorf("malformed reply %q", oneReplyLine(l))
		}
		if code != 0 && c != code {
			return 0, "", nil, fmt.Errorf("malformed reply: code changed from %d to %d", code, c)
		}
		code = c
		if len(l) > 4 {
			lines = append(lines, l[4:])
		} else {
			lines = append(lines, "")
		}
		if len(l) == 3 || l[3] == ' ' {
			return code, strings.Join(lines, "\n"), raw, nil
		}
	}
}

// oneReplyLine shortens a malformed line for an error message.
func oneReplyLine(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// hasExtension reports whether the text of an EHLO reply lists ext.
func hasExtension(ehloText, ext string) bool {
	lines := strings.Split(ehloText, "\n")
	for _, l := range lines[1:] {
		if kw, _, _ := strings.Cut(l, " "); strings.EqualFold(kw, ext) {
			return true
		}
	}
	return false
}

// replyError makes a reply an *smtp.SMTPError the way go-smtp does: an
// enhanced status code (RFC 3463) leading the text is split off, and its
// repetitions at the start of further lines removed.
func replyError(code int, text string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: text}
	first, rest, ok := strings.Cut(text, " ")
	if !ok {
		return e
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e
		}
		ec[i] = n
	}
	e.EnhancedCode = ec
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func slicesAll(ss []string, f func(string) bool) bool {
	for _, s := range ss {
		if !f(s) {
			return false
		}
	}
	return true
}
