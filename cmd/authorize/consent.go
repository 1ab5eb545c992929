package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/ledger"
)

// authorize obtains a's refresh token by consent, with the
// authorization-code flow or (o.device) the device flow, and stores it.
func authorize(ctx context.Context, o options, a *accounts.Account, store *ledger.Store, stdout io.Writer) error {
	cfg, err := a.ConsentConfig()
	if errors.Is(err, accounts.ErrNoConsent) {
		return fmt.Errorf("account %q uses grant %s, which needs no consent: test it with authorize -check -account %s",
			a.ID, a.OAuth.Grant, a.ID)
	}
	if err != nil {
		return err
	}
	httpCtx, err := a.HTTPContext(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(httpCtx, o.timeout)
	defer cancel()
	save := func(tok *oauth2.Token) error { return saveRefreshToken(ctx, o, a, store, tok, stdout) }
	if o.device {
		return deviceFlow(ctx, a, cfg, stdout, save)
	}
	return codeFlow(ctx, o, a, cfg, stdout, save)
}

// saveRefreshToken stores the refresh token of a consent and reports what
// it changes.
func saveRefreshToken(ctx context.Context, o options, a *accounts.Account, store *ledger.Store, tok *oauth2.Token, stdout io.Writer) error {
	if tok.RefreshToken == "" {
		return fmt.Errorf("the provider returned an access token but no refresh token: %s", noRefreshTokenHint(a))
	}
	version, err := store.SetRefreshToken(ctx, a.ID, tok.RefreshToken)
	if err != nil {
		return err
	}
	how := "IN PLAINTEXT (-dev-insecure-token-store)"
	if o.tokenKeys != nil {
		how = "encrypted with token key " + strconv.Quote(o.tokenKeys.Current())
	}
	fmt.Fprintf(stdout, "Stored the refresh token of account %q in Redis (%s, %s, version %d).\n", a.ID, o.redisDesc, how, version)
	fmt.Fprintln(stdout, "Every worker uses it from its next token refresh, before any refresh token of the accounts file.")
	st, err := store.Account(ctx, a.ID)
	if err != nil {
		return err
	}
	switch st.State {
	case ledger.AccountOK:
	case ledger.AccountHeld:
		fmt.Fprintf(stdout, "The account is still held (%s: %s): fix that, then run: enqueue account resume %s\n", st.Hold, st.Reason, a.ID)
	default:
		fmt.Fprintf(stdout, "The account is %s: %s\n", st.State, st.Reason)
	}
	fmt.Fprintf(stdout, "Next, prove it works: authorize -accounts %s -account %s -check\n", o.accountsFile, a.ID)
	return nil
}

// noRefreshTokenHint says why a provider may have returned no refresh token.
func noRefreshTokenHint(a *accounts.Account) string {
	switch a.Provider {
	case accounts.ProviderGoogle:
		return "Google returns one with access_type=offline and prompt=consent, which authorize sends: check that the OAuth client is of type Desktop app"
	case accounts.ProviderMicrosoft:
		return "Microsoft returns one for the offline_access scope: keep it in oauth.scopes"
	default:
		return "ask the provider for offline access, usually with a scope (oauth.scopes, such as offline_access)"
	}
}

// callback is what the browser brought back to the loopback redirect.
type callback struct {
	code string
	err  error
}

// codeFlow runs the authorization-code flow with PKCE and a loopback
// redirect, calls save with the tokens and shows its outcome in the
// browser.
func codeFlow(ctx context.Context, o options, a *accounts.Account, cfg *oauth2.Config, stdout io.Writer, save func(*oauth2.Token) error) error {
	if cfg.Endpoint.AuthURL == "" {
		return fmt.Errorf("account %q has no authorization endpoint (oauth.auth_url): use -device", a.ID)
	}
	lns, port, err := listenLoopback(o.port)
	if err != nil {
		return err
	}
	// Microsoft matches a loopback redirect registered as http://localhost
	// on any port; Google recommends 127.0.0.1.
	host := "127.0.0.1"
	if a.Provider == accounts.ProviderMicrosoft {
		host = "localhost"
	}
	cfg.RedirectURL = "http://" + net.JoinHostPort(host, strconv.Itoa(port))
	state := rand.Text()
	verifier := oauth2.GenerateVerifier()
	authURL := cfg.AuthCodeURL(state, append(a.ConsentOptions(), oauth2.S256ChallengeOption(verifier))...)

	results := make(chan callback, 1)
	outcome := make(chan error, 1)
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handleCallback(w, r, a, state, results, outcome) }),
	}
	for _, ln := range lns {
		go srv.Serve(ln)
	}
	defer srv.Close()

	fmt.Fprintf(stdout, "Open this URL in a browser and sign in as %s:\n\n  %s\n\n", a.Username, authURL)
	fmt.Fprintf(stdout, "Waiting for the browser to come back to %s (forward the port to use a browser on another machine: ssh -L %d:127.0.0.1:%d HOST).\n",
		cfg.RedirectURL, port, port)

	var cb callback
	select {
	case cb = <-results:
	case <-ctx.Done():
		return fmt.Errorf("no answer from the browser: %w", context.Cause(ctx))
	}
	err = cb.err
	if err == nil {
		var tok *oauth2.Token
		tok, err = cfg.Exchange(ctx, cb.code, oauth2.VerifierOption(verifier))
		if err != nil {
			err = fmt.Errorf("exchange the authorization code: %w", err)
		} else {
			err = save(tok)
		}
	}
	outcome <- err
	// Let the browser's request finish with the outcome page.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return err
}

// listenLoopback listens on port (0: a random one) of 127.0.0.1 and, if
// possible, on the same port of ::1, which "localhost" may resolve to.
func listenLoopback(port int) ([]net.Listener, int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, 0, fmt.Errorf("listen for the redirect: %w", err)
	}
	port = ln.Addr().(*net.TCPAddr).Port
	lns := []net.Listener{ln}
	if ln6, err := net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		lns = append(lns, ln6)
	}
	return lns, port, nil
}

// handleCallback takes the authorization response: the first one with the
// right state goes to results, and its request waits for the outcome to show
// it. Requests without the state (a favicon, a stray visit) change nothing.
func handleCallback(w http.ResponseWriter, r *http.Request, a *accounts.Account, state string, results chan<- callback, outcome <-chan error) {
	q := r.URL.Query()
	if q.Get("code") == "" && q.Get("error") == "" {
		http.NotFound(w, r)
		return
	}
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(state)) != 1 {
		http.Error(w, "This answer does not belong to the authorization authorize is waiting for (state mismatch).", http.StatusBadRequest)
		return
	}
	cb := callback{code: q.Get("code")}
	if e := q.Get("error"); e != "" {
		cb.err = fmt.Errorf("the provider refused the authorization: %s", e)
		if d := q.Get("error_description"); d != "" {
			cb.err = fmt.Errorf("%w: %s", cb.err, d)
		}
	}
	select {
	case results <- cb:
	default:
		http.Error(w, "authorize has had its answer already.", http.StatusConflict)
		return
	}
	var err error
	select {
	case err = <-outcome:
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "<!doctype html><title>sendq: authorization failed</title><h1>Authorization failed</h1><p>%s</p>", html.EscapeString(err.Error()))
		return
	}
	fmt.Fprintf(w, "<!doctype html><title>sendq: authorized</title><h1>Account %s authorized</h1><p>Its refresh token is stored. You can close this tab.</p>",
		html.EscapeString(a.ID))
}

// deviceFlow runs the device authorization grant (RFC 8628) and calls save
// with the tokens.
func deviceFlow(ctx context.Context, a *accounts.Account, cfg *oauth2.Config, stdout io.Writer, save func(*oauth2.Token) error) error {
	if cfg.Endpoint.DeviceAuthURL == "" {
		return fmt.Errorf("account %q has no device authorization endpoint (oauth.device_url): run authorize without -device", a.ID)
	}
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		return deviceError("device authorization", a, err)
	}
	fmt.Fprintf(stdout, "On any device with a browser, open\n\n  %s\n\nand enter the code %s, then sign in as %s.\n", da.VerificationURI, da.UserCode, a.Username)
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(stdout, "(Or open %s, which holds the code.)\n", da.VerificationURIComplete)
	}
	if !da.Expiry.IsZero() {
		fmt.Fprintf(stdout, "Waiting until %s.\n", da.Expiry.Local().Format(time.Kitchen))
	}
	tok, err := cfg.DeviceAccessToken(ctx, da)
	if err != nil {
		return deviceError("wait for the sign-in", a, err)
	}
	return save(tok)
}

// deviceError explains the failure of a step of the device flow.
func deviceError(step string, a *accounts.Account, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		switch re.ErrorCode {
		case "access_denied":
			return fmt.Errorf("%s: the sign-in was refused (access_denied)", step)
		case "expired_token":
			return fmt.Errorf("%s: the code expired before the sign-in: run authorize -device again", step)
		case "invalid_scope":
			if a.Provider == accounts.ProviderGoogle {
				return fmt.Errorf("%s: %w (Google does not allow the https://mail.google.com/ scope in the device flow: run authorize without -device, on any machine that reaches the same Redis)", step, err)
			}
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: no sign-in in time: %w", step, err)
	}
	return fmt.Errorf("%s: %w", step, err)
}
