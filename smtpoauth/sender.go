package smtpoauth

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// TLSMode says how a Sender protects the connection.
type TLSMode string

// The TLS modes.
const (
	// TLSStartTLS connects in plaintext and upgrades with STARTTLS before
	// authenticating (submission, port 587). A server that does not offer
	// STARTTLS is refused.
	TLSStartTLS TLSMode = "starttls"
	// TLSImplicit starts TLS at once (submissions, port 465).
	TLSImplicit TLSMode = "implicit"
	// TLSNone never encrypts. Since the bearer token would cross the
	// network in the clear, it is allowed only with
	// Config.AllowInsecureLoopback and a Host that resolves to loopback
	// addresses only: for a local test server.
	TLSNone TLSMode = "none"
)

// Defaults of Config.
const (
	// DefaultLocalName is the EHLO name when Config.LocalName is empty.
	DefaultLocalName = "localhost"
	// DefaultDialTimeout bounds the TCP connect when Config.DialTimeout is
	// zero.
	DefaultDialTimeout = 30 * time.Second
	// DefaultCommandTimeout bounds the wait for each reply when
	// Config.CommandTimeout is zero (RFC 5321 recommends 5 minutes, as
	// go-smtp does).
	DefaultCommandTimeout = 5 * time.Minute
	// DefaultSubmissionTimeout bounds the wait for the reply to the final
	// "." of DATA when Config.SubmissionTimeout is zero (RFC 5321
	// recommends 10 minutes).
	DefaultSubmissionTimeout = 10 * time.Minute
	// DefaultMaxIdleConns is how many authenticated connections a Sender
	// keeps between messages when Config.MaxIdleConns is zero: enough for
	// a steady stream with some overlap, fewer than the 3 concurrent
	// sessions Exchange Online allows a mailbox.
	DefaultMaxIdleConns = 2
	// DefaultMaxMessagesPerConn is how many messages a connection carries
	// before it is closed when Config.MaxMessagesPerConn is zero. Gmail and
	// Exchange accept many more; a bound spreads the load and limits what
	// a long-lived session can accumulate.
	DefaultMaxMessagesPerConn = 1000
	// DefaultIdleTimeout is how long an idle connection is kept when
	// Config.IdleTimeout is zero. Postfix reuses connections for up to
	// 300 s, but providers drop idle sessions sooner, and an idle session
	// still counts against a mailbox's concurrent-session limit.
	DefaultIdleTimeout = 60 * time.Second
)

// ErrMechanismNotOffered is returned (inside a *SendError at StageAuth) when
// the server's EHLO reply does not list Config.Mechanism, before any token
// is sent.
var ErrMechanismNotOffered = errors.New("server does not offer the SASL mechanism")

// ErrInvalidMessage is returned by Send, before connecting, for a message
// that cannot be submitted: nil, without a recipient, or with a line break
// in an address. It is also returned inside a *SendError at StageMail when
// an address is not ASCII and the server does not offer SMTPUTF8.
var ErrInvalidMessage = errors.New("invalid message")

// Config configures a Sender. Zero fields take the defaults their comments
// give.
type Config struct {
	// Host is the submission server, such as "smtp.gmail.com". Required.
	Host string
	// Port is the server's port, such as 587 or 465. Required.
	Port int
	// TLS is how the connection is protected. Default TLSImplicit when
	// Port is 465, TLSStartTLS otherwise.
	TLS TLSMode
	// RootCAs verifies the server's certificate. Default nil: the system
	// roots. See LoadCertPool.
	RootCAs *x509.CertPool
	// ServerName is the name the server's certificate must cover. Default
	// Host.
	ServerName string
	// Username is the mailbox the token was issued for, sent as XOAUTH2's
	// "user=" or OAUTHBEARER's "a=". Required.
	Username string
	// Mechanism is the SASL mechanism, MechXOAUTH2 or MechOAuthBearer.
	// Default MechXOAUTH2.
	Mechanism string
	// TokenSource supplies access tokens; it is called once per
	// connection, so it should cache (see TokenCache). If it also has a
	// method Invalidate(*oauth2.Token), a token the server rejects is
	// invalidated and the submission retried once with a fresh token.
	// Required.
	TokenSource oauth2.TokenSource
	// AllowInsecureLoopback permits TLSNone, and then only when Host
	// resolves to loopback addresses only. Default false: TLSNone is
	// refused with ErrInsecureTransport.
	AllowInsecureLoopback bool
	// LocalName is the name given in EHLO. Default DefaultLocalName.
	LocalName string
	// DialTimeout bounds the TCP connect. Default DefaultDialTimeout.
	DialTimeout time.Duration
	// CommandTimeout bounds the wait for each reply, the TLS handshake
	// included. Default DefaultCommandTimeout.
	CommandTimeout time.Duration
	// SubmissionTimeout bounds the wait for the reply to the final "." of
	// DATA. Default DefaultSubmissionTimeout.
	SubmissionTimeout time.Duration
	// Logger receives debug events with attributes such as stage and
	// smtp_code, and a warning when a token is rejected and retried; never
	// tokens or message content. Default nil: quiet.
	Logger *slog.Logger
	// MaxConns limits the connections the Sender has open at once (in
	// use, idle or being closed): a Send that finds them all busy waits
	// for one, for as long as its ctx allows. Exchange Online allows 3
	// concurrent sessions per mailbox; this limit is per Sender, that is
	// per process. Default 0: unlimited.
	MaxConns int
	// ConnLimiter, if set, bounds the connections to the mailbox across
	// every Sender that shares it, in this process and others: each
	// connection holds one of its slots from before the dial until it is
	// closed. A Send that gets no slot waits for one of this Sender's own
	// connections if it has any, and otherwise fails with an error
	// wrapping ErrConnLimit. Default nil: no limit beyond MaxConns.
	ConnLimiter ConnLimiter
	// MaxIdleConns is how many authenticated connections are kept open
	// between messages, for the next Send to reuse without a new login.
	// When more Sends run at once, the surplus connections are closed after
	// their message and new ones dialled at the next burst: match it to
	// the Sends the mailbox sees at once (at most MaxConns) to avoid those
	// logins. Default DefaultMaxIdleConns.
	MaxIdleConns int
	// MaxMessagesPerConn is how many messages (transactions, failed ones
	// included) a connection carries before it is closed. Default
	// DefaultMaxMessagesPerConn.
	MaxMessagesPerConn int
	// IdleTimeout is how long a connection may stay idle before it is
	// closed instead of reused. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// DisablePooling makes every Send use a connection of its own, closed
	// (with QUIT) after its message: one login per message. MaxConns still
	// applies. Default false: connections are pooled.
	DisablePooling bool
	// DebugWriter receives the SMTP dialogue as sent and received, with
	// the AUTH initial response, the SASL exchange and the message content
	// redacted. It is written a whole line at a time, from one goroutine at
	// a time, even when Sends run concurrently (their lines interleave).
	// Default nil: no trace.
	DebugWriter io.Writer
	// Observer, if set, hears how long each stage of a submission took,
	// each login and each reuse of a pooled connection (see Observer),
	// for metrics. Default nil: nothing is measured.
	Observer Observer
}

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.TLS == "" {
		c.TLS = TLSStartTLS
		if c.Port == 465 {
			c.TLS = TLSImplicit
		}
	}
	c.ServerName = cmp.Or(c.ServerName, c.Host)
	c.Mechanism = cmp.Or(c.Mechanism, MechXOAUTH2)
	c.LocalName = cmp.Or(c.LocalName, DefaultLocalName)
	c.DialTimeout = cmp.Or(c.DialTimeout, DefaultDialTimeout)
	c.CommandTimeout = cmp.Or(c.CommandTimeout, DefaultCommandTimeout)
	c.SubmissionTimeout = cmp.Or(c.SubmissionTimeout, DefaultSubmissionTimeout)
	c.MaxIdleConns = cmp.Or(c.MaxIdleConns, DefaultMaxIdleConns)
	c.MaxMessagesPerConn = cmp.Or(c.MaxMessagesPerConn, DefaultMaxMessagesPerConn)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, DefaultIdleTimeout)
	return c
}

// validate checks a Config that has its defaults; its errors name the field.
func (c Config) validate() error {
	switch {
	case c.Host == "":
		return errors.New("Config.Host is required")
	case strings.ContainsAny(c.Host, " \t\r\n/"):
		return fmt.Errorf("Config.Host %q is not a host name or address", c.Host)
	case strings.Contains(c.Host, ":") && !isIPv6Literal(c.Host):
		return fmt.Errorf("Config.Host %q must not include a port: set Config.Port", c.Host)
	case c.Port < 1 || c.Port > 65535:
		return fmt.Errorf("Config.Port %d is out of range 1-65535", c.Port)
	case c.Username == "":
		return errors.New("Config.Username is required")
	case strings.ContainsAny(c.Username, "\x01\r\n"):
		return errors.New("Config.Username contains a control character")
	case c.TokenSource == nil:
		return errors.New("Config.TokenSource is required")
	case c.Mechanism != MechXOAUTH2 && c.Mechanism != MechOAuthBearer:
		return fmt.Errorf("Config.Mechanism %q is not %s or %s", c.Mechanism, MechXOAUTH2, MechOAuthBearer)
	case strings.ContainsAny(c.LocalName, " \t\r\n"):
		return fmt.Errorf("Config.LocalName %q is not a host name", c.LocalName)
	case c.DialTimeout < 0:
		return errors.New("Config.DialTimeout is negative")
	case c.CommandTimeout < 0:
		return errors.New("Config.CommandTimeout is negative")
	case c.SubmissionTimeout < 0:
		return errors.New("Config.SubmissionTimeout is negative")
	case c.MaxConns < 0:
		return errors.New("Config.MaxConns is negative")
	case c.MaxIdleConns < 0:
		return errors.New("Config.MaxIdleConns is negative: set Config.DisablePooling to keep no connection")
	case c.MaxMessagesPerConn < 0:
		return errors.New("Config.MaxMessagesPerConn is negative")
	case c.IdleTimeout < 0:
		return errors.New("Config.IdleTimeout is negative")
	}
	switch c.TLS {
	case TLSStartTLS, TLSImplicit:
	case TLSNone:
		if !c.AllowInsecureLoopback {
			return fmt.Errorf("Config.TLS %q needs Config.AllowInsecureLoopback: %w", c.TLS, ErrInsecureTransport)
		}
		if ip, err := netip.ParseAddr(strings.Trim(c.Host, "[]")); err == nil && !ip.Unmap().IsLoopback() {
			return fmt.Errorf("Config.TLS %q with Config.Host %s, not a loopback address: %w", c.TLS, c.Host, ErrInsecureTransport)
		}
	default:
		return fmt.Errorf("Config.TLS %q is not %q, %q or %q", c.TLS, TLSStartTLS, TLSImplicit, TLSNone)
	}
	return nil
}

// Sender submits messages to one SMTP server as one mailbox, authenticating
// with an OAuth2 bearer token. It is safe for concurrent use.
//
// A Sender pools its connections: after a message, the authenticated
// connection waits (see Config.MaxIdleConns, Config.IdleTimeout) for the
// next Send, which goes on with MAIL FROM without a new login, so logins
// per message fall far below one (providers throttle logins: Gmail's
// 454 4.7.0). No connection serves two Sends at once. A pooled connection
// stays authenticated after the access token it logged in with has
// expired (servers check the token at AUTH only); MaxMessagesPerConn and
// IdleTimeout bound its life. Call Close when done with the Sender to
// close the idle connections.
type Sender struct {
	cfg     Config
	tls     *tls.Config
	log     *slog.Logger
	traceMu sync.Mutex
	pool    *pool

	// Test hooks; nil means the net package's.
	dialFunc   func(ctx context.Context, network, addr string) (net.Conn, error)
	lookupFunc func(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// NewSender validates cfg and returns a Sender. It does no I/O.
func NewSender(cfg Config) (*Sender, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("new sender: %w", err)
	}
	s := &Sender{
		cfg: cfg,
		tls: &tls.Config{
			ServerName: cfg.ServerName,
			RootCAs:    cfg.RootCAs,
			MinVersion: tls.VersionTLS12,
		},
		log: cfg.Logger,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.pool = newPool(s)
	return s, nil
}

// Send submits m: it takes an authenticated connection, an idle one from the
// pool or a new one (connect, protect the connection, authenticate with a
// token from the TokenSource), then sends MAIL FROM, a RCPT TO for every
// recipient (a rejected recipient is recorded in the Result, not an abort),
// and DATA when at least one recipient was accepted. It returns the
// server's reply to the final "." in Result.Reply as soon as it has read
// it: the connection goes back to the pool, with no QUIT on the way.
//
// On a reused connection, MAIL FROM comes first when the previous
// transaction ended with a 250 to the final "." (RFC 5321 section 4.1.1.4:
// the end of the data clears the server's buffers); after any other end
// (every recipient rejected, DATA or the message refused) RSET comes
// first. When a reused connection fails at that first command because the
// server closed it while idle (EOF, a reset or closed connection, a 421
// reply; not a timeout), Send discards it and tries once more on a new
// connection: nothing of the message had been sent, so nothing can be
// delivered twice. A new connection is never retried this way. A
// connection that failed otherwise (a network error, a 421, ctx ending) is
// closed, not reused.
//
// A message that cannot be sent (see ErrInvalidMessage) is refused before
// connecting. Other errors are *SendError, naming the stage that failed:
//   - StageConnect wraps ctx's error when ctx ends while Send waits for a
//     connection (Config.MaxConns);
//   - StageToken wraps the TokenSource's error (an *oauth2.RetrieveError
//     from the token endpoint);
//   - StageAuth wraps an *AuthError when the server answered the SASL
//     exchange with a failure reply, or ErrMechanismNotOffered. When the
//     TokenSource can Invalidate and the failure is about the token (an
//     error challenge, 535 other than 5.7.139, or 5.5.127), Send first
//     invalidates it and retries once, at once, on a new connection;
//   - StageTLS wraps ErrInsecureTransport when the connection would not be
//     encrypted (TLSStartTLS to a server that does not offer STARTTLS,
//     TLSNone to an address that is not loopback);
//   - StageReset wraps the failure of RSET on a reused connection;
//   - StageRcpt wraps the first rejection (a *smtp.SMTPError) when every
//     recipient was rejected;
//   - StageDataEnd wraps the failure of the reply to the final "." (or to
//     BDAT LAST): a *smtp.SMTPError when the server refused the message, a
//     network error when the reply was lost and the message may have been
//     delivered. When the whole transaction went in one write (CHUNKING),
//     a connection lost before any of its replies is reported here too,
//     unless a reply already read showed nothing could be delivered.
//
// Whenever every RCPT was answered, the Result is returned too, error or
// not. Send honours ctx: its deadline bounds every step, waiting for a
// connection included, and cancelling it closes the connection; the error
// then satisfies errors.Is(err, ctx.Err()).
func (s *Sender) Send(ctx context.Context, m *Message) (*Result, error) {
	if err := checkMessage(m); err != nil {
		return nil, err
	}
	sess, err := s.pool.get(ctx)
	if err != nil {
		return nil, err
	}
	if sess.uses > 0 && s.cfg.Observer != nil {
		s.cfg.Observer.ConnectionReused()
	}
	res, first, err := sess.deliver(ctx, m)
	if err != nil && first && sess.reused && redialable(ctx, err) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "smtp reused connection was closed by the server, redialing",
			append(s.attrs(), slog.Bool("reused", true))...)
		if sess, err = s.pool.replace(ctx, sess); err != nil {
			return nil, err
		}
		res, _, err = sess.deliver(ctx, m)
	}
	s.pool.put(sess, err)
	return res, err
}

// Close closes the idle connections, each with a QUIT, and waits for the
// connections already being closed. A Send still running, or called
// later, works as with Config.DisablePooling: its connection is closed
// after its message. Close always returns nil; calling it again does
// nothing more.
func (s *Sender) Close() error {
	s.pool.close()
	return nil
}

// tokenInvalidator is the optional method of a TokenSource (TokenCache has
// it) that drops a token the server rejected.
type tokenInvalidator interface {
	Invalidate(*oauth2.Token)
}

// open returns an authenticated session. When the server rejects the token
// and the TokenSource can invalidate it, it retries once with a fresh token
// on a new connection.
func (s *Sender) open(ctx context.Context) (*session, error) {
	inv, canInvalidate := s.cfg.TokenSource.(tokenInvalidator)
	for attempt := 1; ; attempt++ {
		tok, err := s.token(ctx)
		if err != nil {
			return nil, err
		}
		sess, err := s.dial(ctx, tok)
		if err == nil {
			return sess, nil
		}
		var ae *AuthError
		if attempt > 1 || !canInvalidate || !errors.As(err, &ae) || !tokenRejected(ae) || ctx.Err() != nil {
			return nil, err
		}
		inv.Invalidate(tok)
		s.log.LogAttrs(ctx, slog.LevelWarn, "smtp token rejected, retrying with a fresh token",
			append(s.attrs(), replyAttrs(ae.Reply)...)...)
	}
}

// tokenRejected reports whether an authentication failure is about the
// token, so that a fresh one may succeed: the server sent an error
// challenge, replied 535 (Google 5.7.8, Microsoft 5.7.3; but not 5.7.139,
// SMTP AUTH disabled for the mailbox), or said the token expires too soon
// (Microsoft 501 5.5.127).
func tokenRejected(ae *AuthError) bool {
	if ae.Status != "" {
		return true
	}
	r := ae.Reply
	switch {
	case r == nil:
		return true
	case r.Code == 535:
		return r.EnhancedCode != [3]int{5, 7, 139}
	case r.EnhancedCode == [3]int{5, 5, 127}:
		return true
	}
	return false
}

// token gets an access token, giving up when ctx ends (an
// oauth2.TokenSource takes no ctx; the call then finishes in the
// background).
func (s *Sender) token(ctx context.Context) (*oauth2.Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, &SendError{Stage: StageToken, Err: err}
	}
	type result struct {
		tok *oauth2.Token
		err error
	}
	var r result
	defer s.observe(StageToken, time.Now())
	if ctx.Done() == nil {
		r.tok, r.err = s.cfg.TokenSource.Token()
	} else {
		ch := make(chan result, 1)
		go func() {
			tok, err := s.cfg.TokenSource.Token()
			ch <- result{tok, err}
		}()
		select {
		case r = <-ch:
		case <-ctx.Done():
			return nil, &SendError{Stage: StageToken, Err: ctx.Err()}
		}
	}
	if r.err != nil {
		return nil, &SendError{Stage: StageToken, Err: r.err}
	}
	if r.tok == nil || r.tok.AccessToken == "" {
		return nil, &SendError{Stage: StageToken, Err: errors.New("token source returned no access token")}
	}
	return r.tok, nil
}

// attrs are the log attributes every event of s carries.
func (s *Sender) attrs() []slog.Attr {
	return []slog.Attr{
		slog.String("host", s.cfg.Host),
		slog.Int("port", s.cfg.Port),
		slog.String("mechanism", s.cfg.Mechanism),
	}
}

func (s *Sender) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if s.dialFunc != nil {
		return s.dialFunc(ctx, network, addr)
	}
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	return d.DialContext(ctx, network, addr)
}

func (s *Sender) lookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if s.lookupFunc != nil {
		return s.lookupFunc(ctx, network, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, network, host)
}

func isIPv6Literal(host string) bool {
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && ip.Is6()
}

// checkMessage rejects what no server would accept, before connecting.
func checkMessage(m *Message) error {
	switch {
	case m == nil:
		return fmt.Errorf("send: %w: nil message", ErrInvalidMessage)
	case len(m.To) == 0:
		return fmt.Errorf("send: %w: no recipients", ErrInvalidMessage)
	case strings.ContainsAny(m.From, "\r\n"):
		return fmt.Errorf("send: %w: line break in From", ErrInvalidMessage)
	}
	for i, to := range m.To {
		if to == "" || strings.ContainsAny(to, "\r\n") {
			return fmt.Errorf("send: %w: recipient %d is empty or has a line break", ErrInvalidMessage, i)
		}
	}
	return nil
}

// LoadCertPool returns the system's root certificates plus those of the PEM
// file caFile, for Config.RootCAs (a private CA, or smtpoauthtest's).
func LoadCertPool(caFile string) (*x509.CertPool, error) {
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("load cert pool: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("load cert pool: no PEM certificate in %s", caFile)
	}
	return pool, nil
}
