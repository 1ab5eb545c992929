package smtpoauthtest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"slices"
	"sync"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// backend creates a session per connection (and a new one after STARTTLS).
type backend struct{ s *Server }

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	raw := c.Conn()
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	conn, _ := raw.(*trackedConn)
	return &session{s: b.s, tls: isTLS, conn: conn, remote: c.Conn().RemoteAddr().String()}, nil
}

// errDropped is what a session returns after dropping its connection;
// go-smtp's attempt to write it fails.
var errDropped = errors.New("connection dropped")

var (
	_ smtp.Backend     = (*backend)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// session is one SMTP session. go-smtp calls its methods from the
// connection's goroutine, except Data for BDAT, which runs in another
// goroutine while Reset may be called: hence the mutex.
type session struct {
	s      *Server
	tls    bool
	conn   *trackedConn // the raw connection; nil only if go-smtp hid it
	remote string

	mu       sync.Mutex
	username string // authenticated mailbox; "" before AUTH
	mech     string
	counted  bool // counted in Server.users.sessions until Logout
	from     string
	to       []string
}

// AuthMechanisms implements smtp.AuthSession. Nothing is advertised before
// TLS, as the providers do.
func (ss *session) AuthMechanisms() []string {
	if !ss.tls {
		return nil
	}
	return slices.Clone(ss.s.spec.mechanisms)
}

// Auth implements smtp.AuthSession.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	spec := ss.s.spec
	if !ss.tls {
		return nil, spec.authBeforeTLS()
	}
	var parse func([]byte) (string, string, error)
	switch {
	case mech == MechXOAUTH2 && slices.Contains(spec.mechanisms, mech):
		parse = parseXOAUTH2
	case mech == MechOAuthBearer && slices.Contains(spec.mechanisms, mech):
		parse = parseOAuthBearer
	default:
		return nil, spec.unknownMech()
	}
	return &oauthServer{mech: mech, parse: parse, authenticate: ss.authenticate, spec: spec}, nil
}

// authenticate checks the login rate, the token and the session limit,
// and records the outcome. A refusal by a limit comes with its reply.
func (ss *session) authenticate(mech, user, token string, parseErr error) (authReject, *smtp.SMTPError) {
	key := normalizeAddress(user)
	var (
		reason  authReject
		refusal *smtp.SMTPError
	)
	switch {
	case parseErr != nil:
		reason = rejectMalform
	default:
		if refusal = ss.s.authFault(user); refusal != nil {
			reason = rejectFault
			break
		}
		if refusal = ss.s.loginAttempt(key); refusal != nil {
			reason = rejectRate
			break
		}
		if reason = ss.s.checkAccessToken(user, token); reason != "" {
			break
		}
		// Counts the login when it succeeds.
		if refusal = ss.s.openSession(key); refusal != nil {
			reason = rejectSessions
		}
	}
	if reason != "" {
		ss.s.mu.Lock()
		ss.s.stats.FailedLogins++
		ss.s.mu.Unlock()
		ss.s.log.Info("smtp auth rejected", "mechanism", mech, "username", user,
			"reason", string(reason), "remote", ss.remote)
		return reason, refusal
	}
	ss.mu.Lock()
	ss.username, ss.mech, ss.counted = user, mech, true
	ss.mu.Unlock()
	ss.s.log.Info("smtp auth", "mechanism", mech, "username", user, "remote", ss.remote)
	return "", nil
}

// fault fires the first fault for stage st and the addresses: it returns
// the scripted reply, or drops the connection and returns errDropped.
// storeFirst, for StageData, stores the message when the fault says
// StoreBeforeDrop. It returns nil when no fault matches.
func (ss *session) fault(st Stage, storeFirst func(), addresses ...string) error {
	f := ss.s.takeFault(st, addresses...)
	if f == nil {
		return nil
	}
	if !f.Drop {
		r := f.reply()
		ss.s.log.Info("smtp fault", "stage", string(st), "smtp_code", r.Code, "remote", ss.remote)
		return r
	}
	if f.StoreBeforeDrop && storeFirst != nil {
		storeFirst()
	}
	ss.s.log.Info("smtp fault: connection dropped", "stage", string(st),
		"stored", f.StoreBeforeDrop, "remote", ss.remote)
	ss.drop()
	return errDropped
}

// drop closes the connection without a reply.
func (ss *session) drop() {
	if ss.conn != nil {
		ss.conn.drop()
	}
}

func (ss *session) authed() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.username != ""
}

// Mail implements smtp.Session.
func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if !ss.tls {
		return ss.s.spec.tlsRequired()
	}
	if !ss.authed() {
		return ss.s.spec.authRequired()
	}
	if err := ss.fault(StageMail, nil, from); err != nil {
		return err
	}
	ss.mu.Lock()
	ss.from = from
	ss.to = nil
	ss.mu.Unlock()
	return nil
}

// Rcpt implements smtp.Session.
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !ss.authed() {
		return ss.s.spec.authRequired()
	}
	if err := ss.fault(StageRcpt, nil, to); err != nil {
		ss.s.log.Info("smtp rcpt rejected", "recipient", to)
		return err
	}
	ss.mu.Lock()
	ss.to = append(ss.to, to)
	ss.mu.Unlock()
	return nil
}

// Data implements smtp.Session: the message is captured once fully read,
// unless Freeze or a fault says otherwise.
func (ss *session) Data(r io.Reader) error {
	if !ss.authed() {
		return ss.s.spec.authRequired()
	}
	ss.mu.Lock()
	msg := Message{Username: ss.username, Mechanism: ss.mech, From: ss.from, To: slices.Clone(ss.to)}
	ss.mu.Unlock()
	data, err := readMessage(r)
	if err != nil {
		return err // a bare *smtp.SMTPError such as ErrDataTooLarge keeps its code
	}
	if !ss.s.park("storing a message", nil) {
		ss.s.log.Info("smtp message discarded on thaw", "username", msg.Username, "remote", ss.remote)
		ss.drop()
		return errDropped
	}
	store := func() {
		msg.Data = data
		msg.ReceivedAt = ss.s.now()
		if ss.conn != nil {
			ss.conn.stored.Store(true)
		}
		ss.s.addMessage(msg)
		ss.s.log.Info("smtp message accepted", "username", msg.Username, "from", msg.From,
			"recipients", len(msg.To), "size", len(data))
	}
	if err := ss.fault(StageData, store, msg.To...); err != nil {
		return err
	}
	store()
	return nil
}

// readBuffers holds the scratch buffers readMessage reads into.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// readMessage reads r to its end, in pieces as large as a pooled 64 KiB
// buffer, not io.ReadAll's 512 bytes and up: go-smtp hands a BDAT chunk to
// Data through an io.Pipe, where every Read costs two goroutine switches
// (with io.ReadAll, eight per 1.3 KB message).
func readMessage(r io.Reader) ([]byte, error) {
	bp := readBuffers.Get().(*[]byte)
	buf := bytes.NewBuffer((*bp)[:0])
	_, err := buf.ReadFrom(r)
	var data []byte
	if err == nil {
		data = bytes.Clone(buf.Bytes())
	}
	if b := buf.Bytes(); cap(b) <= 1<<20 { // not a 35 MB message's
		*bp = b[:0]
		readBuffers.Put(bp)
	}
	return data, err
}

// Reset implements smtp.Session.
func (ss *session) Reset() {
	ss.mu.Lock()
	ss.from, ss.to = "", nil
	ss.mu.Unlock()
}

// Logout implements smtp.Session. go-smtp calls it when the connection
// closes, and on STARTTLS for the session before TLS.
func (ss *session) Logout() error {
	if ss.tls && ss.conn != nil {
		// The connection closes: the close_notify go-smtp's Close sends
		// is no reply and must not park.
		ss.conn.closing.Store(true)
	}
	ss.mu.Lock()
	counted, user := ss.counted, ss.username
	ss.counted = false
	ss.mu.Unlock()
	if counted {
		ss.s.closeSession(normalizeAddress(user))
	}
	return nil
}
