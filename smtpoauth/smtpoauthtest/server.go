package smtpoauthtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Defaults of Config.
const (
	// DefaultAccessTokenLifetime is the lifetime of issued access tokens
	// when Config.AccessTokenLifetime is zero, as at Google and Microsoft.
	DefaultAccessTokenLifetime = time.Hour
	// DefaultHostname is the name the server greets with and the
	// certificate covers when Config.Hostname is empty.
	DefaultHostname = "localhost"
)

// ErrServerClosed is returned by WaitMessages when the server is closed
// before enough messages arrived.
var ErrServerClosed = errors.New("smtpoauthtest: server closed")

// Config configures a Server. The zero value is a Google-flavored server.
type Config struct {
	// Flavor selects whose wire behaviour is imitated. Default FlavorGoogle.
	Flavor Flavor
	// AccessTokenLifetime is the lifetime of every access token issued,
	// reported as expires_in in whole seconds, rounded up (x/oauth2 would
	// read 0 as "never expires"). Default DefaultAccessTokenLifetime (1 h).
	AccessTokenLifetime time.Duration
	// RotateRefreshTokens makes every refresh_token grant return a new
	// refresh token and kill the old one at once, as Microsoft does.
	// Default false (Google keeps the refresh token).
	RotateRefreshTokens bool
	// Logger receives what the server sees (usernames, envelopes, sizes,
	// grant types); never tokens, secrets or message bodies. Default nil:
	// quiet.
	Logger *slog.Logger
	// Hostname is the name used in the SMTP greeting; the certificate
	// covers it, "localhost", 127.0.0.1 and ::1. Default DefaultHostname.
	Hostname string
	// NowFunc is the server's clock, used for token issue and expiry times
	// and message timestamps. Default time.Now. See also Server.Advance.
	// JWT assertions and TLS certificates are checked against the wall
	// clock, since clients produce them with it.
	NowFunc func() time.Time
	// MaxSessionsPerUser limits the SMTP sessions authenticated as the
	// same mailbox at once, as Exchange Online does (at most 3): an AUTH
	// that would exceed it is answered with
	// "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
	// whatever the flavor. A session counts from its successful AUTH until
	// its connection closes. Default 0: unlimited.
	MaxSessionsPerUser int
	// MaxLoginsPerMinute limits the AUTH attempts naming the same mailbox
	// within any minute of the server's clock (NowFunc plus Advance), as
	// Gmail does: the attempt that would exceed it is answered with
	// "454 4.7.0 Too many login attempts, please try again later.",
	// whatever the flavor, and is not counted. Default 0: unlimited.
	MaxLoginsPerMinute int
	// ListenHost is the address the three listeners bind to. Default
	// "127.0.0.1"; a standalone sandbox in a container uses "0.0.0.0".
	ListenHost string
	// HTTPPort, SMTPPort and SMTPSPort fix the ports of the token
	// endpoint, the STARTTLS listener and the implicit-TLS listener.
	// Default 0: ephemeral ports.
	HTTPPort, SMTPPort, SMTPSPort int
	// HTTPS serves the OAuth2 endpoints over TLS with the same generated
	// certificate as the SMTP listeners, as real providers do; URL and
	// TokenURL then start with https. Default false: plain http.
	HTTPS bool
}

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Flavor == "" {
		c.Flavor = FlavorGoogle
	}
	if c.AccessTokenLifetime == 0 {
		c.AccessTokenLifetime = DefaultAccessTokenLifetime
	}
	if c.Hostname == "" {
		c.Hostname = DefaultHostname
	}
	if c.NowFunc == nil {
		c.NowFunc = time.Now
	}
	return c
}

func (c Config) validate() error {
	switch c.Flavor {
	case FlavorGoogle, FlavorMicrosoft:
	default:
		return fmt.Errorf("smtpoauthtest: Config.Flavor: unknown flavor %q", c.Flavor)
	}
	if c.AccessTokenLifetime < 0 {
		return fmt.Errorf("smtpoauthtest: Config.AccessTokenLifetime: negative (%v)", c.AccessTokenLifetime)
	}
	if c.MaxSessionsPerUser < 0 {
		return fmt.Errorf("smtpoauthtest: Config.MaxSessionsPerUser: negative (%d)", c.MaxSessionsPerUser)
	}
	if c.MaxLoginsPerMinute < 0 {
		return fmt.Errorf("smtpoauthtest: Config.MaxLoginsPerMinute: negative (%d)", c.MaxLoginsPerMinute)
	}
	return nil
}

// Server is an in-process OAuth2 provider and SMTP submission server: a
// token endpoint plus a STARTTLS listener and an implicit-TLS listener, all
// on 127.0.0.1 with ephemeral ports. Create it with NewServer or Start and
// Close it when done. Its methods are safe for concurrent use.
type Server struct {
	// URL is the base URL of the OAuth2 endpoints, "http://127.0.0.1:PORT"
	// (https with Config.HTTPS).
	URL string
	// TokenURL is the OAuth2 token endpoint, URL + "/token".
	TokenURL string
	// AuthURL is the OAuth2 authorization endpoint, URL + "/authorize",
	// where a user approves at once as SetConsent says.
	AuthURL string
	// DeviceAuthURL is the device authorization endpoint (RFC 8628),
	// URL + "/device/code".
	DeviceAuthURL string
	// SMTPAddr is the submission listener ("127.0.0.1:PORT"), plaintext
	// greeting then STARTTLS, like port 587.
	SMTPAddr string
	// SMTPSAddr is the implicit-TLS listener ("127.0.0.1:PORT"), like
	// port 465.
	SMTPSAddr string
	// CACertPEM is the PEM-encoded certificate of the CA, generated at
	// start, that signed the server's certificate.
	CACertPEM []byte

	cfg   Config
	spec  *flavorSpec
	log   *slog.Logger
	certs *certificates

	httpSrv  *http.Server
	httpConn sync.WaitGroup // open HTTP connections
	smtpSrv  *smtp.Server
	smtpLns  []*trackingListener
	httpLoop sync.WaitGroup // http.Server.Serve
	smtpLoop sync.WaitGroup // smtp.Server.Serve, one per listener

	closeOnce sync.Once
	closed    chan struct{}

	mu       sync.Mutex
	offset   time.Duration // Advance
	clients  map[string]*oauthClient
	refresh  map[string]*refreshGrant
	access   map[string]*accessToken
	issued   []IssuedToken              // every token handed out: IssuedTokens
	accounts map[string]*serviceAccount // by client_email
	consent  consentState               // SetConsent, authorization and device codes
	messages []Message
	changed  chan struct{} // closed and replaced when messages grow
	stats    Stats
	faults   faults
	tokenFlt []*tokenFaultEntry
	hangs    tokenHangs
	freeze   freezer
	users    userLimits
}

// NewServer starts a server, like httptest.NewServer. It panics if the
// server cannot start.
func NewServer(cfg Config) *Server {
	s, err := Start(cfg)
	if err != nil {
		panic(err)
	}
	return s
}

// Start starts a server: it generates the CA and server certificate and
// listens on three ephemeral ports of 127.0.0.1.
func Start(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	certs, err := newCertificates(cfg.Hostname)
	if err != nil {
		return nil, fmt.Errorf("smtpoauthtest: %w", err)
	}
	s := &Server{
		CACertPEM: certs.caPEM,
		cfg:       cfg,
		spec:      specFor(cfg.Flavor),
		log:       logger,
		certs:     certs,
		closed:    make(chan struct{}),
		clients:   make(map[string]*oauthClient),
		refresh:   make(map[string]*refreshGrant),
		access:    make(map[string]*accessToken),
		accounts:  make(map[string]*serviceAccount),
		changed:   make(chan struct{}),
		stats:     newStats(),
		freeze:    freezer{changed: make(chan struct{})},
		users:     newUserLimits(),
	}

	var lns []net.Listener
	fail := func(err error) (*Server, error) {
		for _, l := range lns {
			l.Close()
		}
		return nil, fmt.Errorf("smtpoauthtest: %w", err)
	}
	host := cfg.ListenHost
	if host == "" {
		host = "127.0.0.1"
	}
	for _, port := range []int{cfg.HTTPPort, cfg.SMTPPort, cfg.SMTPSPort} {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return fail(err)
		}
		lns = append(lns, l)
	}

	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{certs.server},
		MinVersion:   tls.VersionTLS12,
	}

	// OAuth2 endpoints.
	if cfg.HTTPS {
		lns[0] = tls.NewListener(lns[0], tlsConfig)
		s.URL = "https://" + lns[0].Addr().String()
	} else {
		s.URL = "http://" + lns[0].Addr().String()
	}
	s.TokenURL = s.URL + "/token"
	s.AuthURL = s.URL + "/authorize"
	s.DeviceAuthURL = s.URL + "/device/code"
	mux := http.NewServeMux()
	mux.HandleFunc("/token", s.handleToken)
	mux.HandleFunc("/authorize", s.handleAuthorize)
	mux.HandleFunc("/device/code", s.handleDeviceAuth)
	s.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				s.httpConn.Add(1)
			case http.StateClosed, http.StateHijacked:
				s.httpConn.Done()
			}
		},
	}

	// SMTP: one go-smtp server behind both listeners.
	s.smtpSrv = smtp.NewServer(&backend{s: s})
	s.smtpSrv.Domain = cfg.Hostname
	s.smtpSrv.TLSConfig = tlsConfig
	s.smtpSrv.MaxMessageBytes = s.spec.maxMessageBytes
	// AUTH before TLS is refused by the session with the provider's reply
	// (go-smtp's own refusal is "523 5.7.10", which neither provider
	// sends); the session hides the mechanisms until TLS is up.
	s.smtpSrv.AllowInsecureAuth = true
	s.smtpSrv.ReadTimeout = 10 * time.Minute
	s.smtpSrv.WriteTimeout = time.Minute
	s.smtpSrv.ErrorLog = smtpErrorLog{logger}

	starttls := newTrackingListener(lns[1], nil, s.park)
	implicit := newTrackingListener(lns[2], tlsConfig, s.park)
	s.smtpLns = []*trackingListener{starttls, implicit}
	s.SMTPAddr = lns[1].Addr().String()
	s.SMTPSAddr = lns[2].Addr().String()

	s.httpLoop.Add(1)
	go func() {
		defer s.httpLoop.Done()
		if err := s.httpSrv.Serve(lns[0]); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("token endpoint stopped", "error", err)
		}
	}()
	s.smtpLoop.Add(len(s.smtpLns))
	for _, l := range s.smtpLns {
		go func() {
			defer s.smtpLoop.Done()
			if err := s.smtpSrv.Serve(l); err != nil && !s.isClosed() {
				s.log.Warn("smtp listener stopped", "addr", l.Addr().String(), "error", err)
			}
		}()
	}
	s.log.Info("smtpoauthtest started", "flavor", string(cfg.Flavor),
		"token_url", s.TokenURL, "smtp_addr", s.SMTPAddr, "smtps_addr", s.SMTPSAddr)
	return s, nil
}

// CertPool returns a new pool holding only the CA that signed the server's
// certificate; use it as tls.Config.RootCAs.
func (s *Server) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.certs.caCert)
	return p
}

// Flavor returns the flavor the server imitates.
func (s *Server) Flavor() Flavor { return s.cfg.Flavor }

// Close shuts the server down: it closes the listeners and every open
// connection and waits for the goroutines serving them. It is safe to call
// more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closed)
		// SMTP: closing the tracking listeners ends the Serve loops and
		// closes every connection they accepted (even mid-handshake).
		// Once the loops are gone no connection can start, so Shutdown
		// only waits for the goroutines of the closed connections.
		for _, l := range s.smtpLns {
			l.Close()
		}
		s.smtpLoop.Wait()
		s.smtpSrv.Shutdown(context.Background())
		// HTTP: Close closes the listener and every connection; wait for
		// the Serve loop, then for the connections' goroutines.
		s.httpSrv.Close()
		s.httpLoop.Wait()
		s.httpConn.Wait()
		s.log.Info("smtpoauthtest closed")
	})
}

func (s *Server) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// now is the server's clock: Config.NowFunc plus Advance.
func (s *Server) now() time.Time {
	s.mu.Lock()
	off := s.offset
	s.mu.Unlock()
	return s.cfg.NowFunc().Add(off)
}

// Advance moves the server's clock forward by d, so that access tokens
// expire without waiting. It adds to whatever Config.NowFunc returns.
func (s *Server) Advance(d time.Duration) {
	s.mu.Lock()
	s.offset += d
	s.mu.Unlock()
}

// Message is a message the SMTP server accepted.
type Message struct {
	// Username is the authenticated mailbox (the XOAUTH2 user= or
	// OAUTHBEARER a=).
	Username string
	// Mechanism is the SASL mechanism used to authenticate.
	Mechanism string
	// From is the MAIL FROM address, To the accepted RCPT TO addresses in
	// order, both without angle brackets.
	From string
	To   []string
	// Data is the message as received, CRLF line endings, dot-unstuffed.
	Data []byte
	// ReceivedAt is the server's clock when the final "." arrived.
	ReceivedAt time.Time
}

func (m Message) clone() Message {
	m.To = slices.Clone(m.To)
	m.Data = slices.Clone(m.Data)
	return m
}

// Messages returns a copy of the messages accepted so far, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.messagesLocked()
}

func (s *Server) messagesLocked() []Message {
	out := make([]Message, len(s.messages))
	for i, m := range s.messages {
		out[i] = m.clone()
	}
	return out
}

// WaitMessages waits until at least n messages have been accepted and
// returns them all. It returns early with the messages so far and an error
// wrapping ctx.Err() when ctx is done, or ErrServerClosed when the server
// is closed.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	for {
		s.mu.Lock()
		if len(s.messages) >= n {
			out := s.messagesLocked()
			s.mu.Unlock()
			return out, nil
		}
		changed := s.changed
		s.mu.Unlock()

		select {
		case <-changed:
		case <-ctx.Done():
			got := s.Messages()
			return got, fmt.Errorf("wait for %d messages, got %d: %w", n, len(got), ctx.Err())
		case <-s.closed:
			got := s.Messages()
			return got, fmt.Errorf("wait for %d messages, got %d: %w", n, len(got), ErrServerClosed)
		}
	}
}

func (s *Server) addMessage(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	s.stats.Messages++
	s.stats.MessagesByUser[normalizeAddress(m.Username)]++
	close(s.changed)
	s.changed = make(chan struct{})
}

// ResetMessages forgets the messages captured so far.
func (s *Server) ResetMessages() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = nil
}

// Stats counts what the server did since it started.
type Stats struct {
	// TokenGrants counts the access tokens issued by the token endpoint,
	// by grant type (GrantRefreshToken, GrantClientCredentials,
	// GrantJWTBearer, GrantAuthorizationCode, GrantDeviceCode).
	// IssueAccessToken is not counted.
	TokenGrants map[string]int
	// TokenGrantsTotal is the sum of TokenGrants.
	TokenGrantsTotal int
	// TokenErrors counts token requests answered with an error.
	TokenErrors int
	// Logins counts successful SMTP AUTH exchanges.
	Logins int
	// FailedLogins counts rejected SMTP AUTH exchanges.
	FailedLogins int
	// Messages counts accepted messages (ResetMessages does not reset it).
	Messages int

	// The per-user counters are keyed by the lower-cased mailbox the
	// client authenticated as. Messages per login, the reuse of
	// connections, is MessagesByUser[u] / LoginsByUser[u].

	// LoginsByUser counts successful SMTP AUTH exchanges per user.
	LoginsByUser map[string]int
	// MessagesByUser counts accepted messages per authenticated user.
	MessagesByUser map[string]int
	// PeakSessions is the highest number of SMTP sessions authenticated
	// as the same user at once, per user (see Config.MaxSessionsPerUser).
	PeakSessions map[string]int
	// Sessions is the number of SMTP sessions authenticated as each user
	// open now (users with none are left out).
	Sessions map[string]int
}

func newStats() Stats {
	return Stats{
		TokenGrants:    make(map[string]int),
		LoginsByUser:   make(map[string]int),
		MessagesByUser: make(map[string]int),
		PeakSessions:   make(map[string]int),
	}
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.TokenGrants = maps.Clone(s.stats.TokenGrants)
	st.LoginsByUser = maps.Clone(s.stats.LoginsByUser)
	st.MessagesByUser = maps.Clone(s.stats.MessagesByUser)
	st.PeakSessions = maps.Clone(s.stats.PeakSessions)
	st.Sessions = maps.Clone(s.users.sessions)
	if st.Sessions == nil {
		st.Sessions = make(map[string]int)
	}
	return st
}

// smtpErrorLog adapts slog to go-smtp's Logger; go-smtp reports connection
// errors (failed TLS handshakes and the like) through it.
type smtpErrorLog struct{ l *slog.Logger }

func (e smtpErrorLog) Printf(format string, v ...any) {
	e.l.Debug("smtp server", "detail", fmt.Sprintf(format, v...))
}

func (e smtpErrorLog) Println(v ...any) {
	e.l.Debug("smtp server", "detail", fmt.Sprintln(v...))
}
