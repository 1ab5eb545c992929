package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"golang.org/x/oauth2"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// The README promises that access tokens, refresh tokens, client secrets and
// message bodies never appear in logs or errors. TestLogsNeverCarrySecrets
// checks it end to end: it runs a worker through sends that exercise every
// token path (a plain send, a refresh after expiry, logins refused with
// Google's 334 challenge then 535, refresh-token rotation, a revoked refresh
// token) and the failures that write errors an operator reads (a retry, a
// dead letter, a refused recipient), then drives a smtpoauth.Sender with its
// wire trace on through the same paths (the worker cannot turn the trace
// on), and scans everything captured for every secret in play.

// secret is a value that must never appear in captured output; kind names
// it in a failure ("refresh token", "message body").
type secret struct{ kind, value string }

// capture is one stream of captured output; source names it in a failure.
type capture struct{ source, text string }

// leak is a secret found in a line of captured output. text is the line
// with every secret replaced by its kind, so that a failure shows where
// without printing the secret.
type leak struct {
	kind, source string
	line         int
	text         string
}

func (l leak) String() string {
	return fmt.Sprintf("%s found in %s, line %d: %s", l.kind, l.source, l.line, l.text)
}

// scanForSecrets returns every occurrence of a secret in a line of the
// captures.
func scanForSecrets(captures []capture, secrets []secret) []leak {
	var leaks []leak
	for _, c := range captures {
		for i, line := range strings.Split(c.text, "\n") {
			for _, s := range secrets {
				if s.value != "" && strings.Contains(line, s.value) {
					leaks = append(leaks, leak{kind: s.kind, source: c.source, line: i + 1, text: maskSecrets(line, secrets)})
				}
			}
		}
	}
	return leaks
}

func maskSecrets(line string, secrets []secret) string {
	for _, s := range secrets {
		if s.value != "" {
			line = strings.ReplaceAll(line, s.value, "<"+s.kind+">")
		}
	}
	return line
}

// xoauth2InitialResponse is the base64 argument of "AUTH XOAUTH2" for user
// and an access token.
func xoauth2InitialResponse(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

// logScanUser is the mailbox of the scan's account and direct sender.
const logScanUser = "user@example.com"

func TestLogsNeverCarrySecrets(t *testing.T) {
	t.Parallel()
	nonce := randomHex()
	body := "BODY-CANARY-" + nonce + " the quarterly numbers are confidential"
	clientSecret := "CLIENT-SECRET-" + nonce

	// The scanner itself must find what is planted, or the test proves
	// nothing.
	planted := scanForSecrets([]capture{{"planted", "clean line\n{\"msg\":\"x\",\"text\":\"" + body + "\"}\nclean again"}},
		[]secret{{"client secret", clientSecret}, {"message body", body}})
	if len(planted) != 1 || planted[0].kind != "message body" || planted[0].line != 2 || strings.Contains(planted[0].text, body) {
		t.Fatalf("scanner self-check: got %v, want the message body on line 2 of planted, masked", planted)
	}

	// AccessTokenLifetime is longer than the refresh margin (so a token is
	// reused until the provider's clock, moved with Advance, expires it)
	// but shorter than the default, and the provider rotates refresh tokens
	// on every refresh, as Microsoft does.
	providerLog := &lockedWriter{w: &bytes.Buffer{}}
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{
		AccessTokenLifetime: 30 * time.Minute,
		RotateRefreshTokens: true,
		Logger:              slog.New(slog.NewJSONHandler(providerLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	t.Cleanup(srv.Close)
	srv.AddClient("delegated-client", clientSecret)
	tokenKey := make([]byte, ledger.TokenKeySize)
	rand.Read(tokenKey)

	workerLog := &lockedWriter{w: &bytes.Buffer{}}
	b, stop := startLogScanWorker(t, srv, clientSecret, tokenKey, slog.New(slog.NewJSONHandler(workerLog, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx := context.Background()
	var taskIDs []string
	send := func(to ...string) string {
		t.Helper()
		enq, err := b.client.Enqueue(ctx, &tasks.Email{AccountID: "delegated", From: logScanUser, To: to,
			Subject: "log scan", Text: body, HTML: "<p>" + body + "</p>"}, tasks.Queue(b.queue))
		if err != nil {
			t.Fatal(err)
		}
		taskIDs = append(taskIDs, enq.TaskID)
		return enq.TaskID
	}
	// dropPooled makes the provider close the pooled connection as idle,
	// so that the next send dials and logs in again.
	dropPooled := func() {
		if _, err := srv.TimeOutIdleConnections(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	lastIssued := func(kind string) string {
		all := srv.IssuedTokens()
		for i := len(all) - 1; i >= 0; i-- {
			if all[i].Kind == kind {
				return all[i].Token
			}
		}
		t.Fatalf("no %s token issued", kind)
		return ""
	}

	// A plain send: the first refresh, which rotates the seed.
	waitCompleted(t, b.testBundle, send("alice@example.net"))
	// The access token expires for the provider: the login is refused
	// (334 challenge, 535), the worker refreshes (rotation) and sends.
	srv.Advance(31 * time.Minute)
	dropPooled()
	waitCompleted(t, b.testBundle, send("bob@example.net"))
	// A revoked access token: refused the same way, refreshed again.
	srv.Revoke(lastIssued(smtpoauthtest.IssuedAccess))
	dropPooled()
	waitCompleted(t, b.testBundle, send("carol@example.net"))
	// Errors an operator reads: a retried 451, a refused recipient, a
	// message dead-lettered with a 554.
	srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 451, Enhanced: [3]int{4, 3, 0}, Text: "Try again later", Times: 1})
	waitCompleted(t, b.testBundle, send("dave@example.net"))
	srv.SetRcptReply("nobody@example.net", 550, [3]int{5, 1, 1}, "The email account that you tried to reach does not exist.")
	waitCompleted(t, b.testBundle, send("erin@example.net", "nobody@example.net"))
	srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Code: 554, Enhanced: [3]int{5, 6, 0}, Text: "Message refused", Times: 1})
	b.waitState(t, send("frank@example.net"), asynq.TaskStateArchived)
	// The refresh token is revoked (with every access token of its line):
	// the login is refused, the refresh answers invalid_grant, the mail is
	// deferred.
	srv.Revoke(lastIssued(smtpoauthtest.IssuedRefresh))
	dropPooled()
	b.waitDeferred(t, send("grace@example.net"), "invalid_grant")

	// What an operator sees of each task and dead letter.
	var captures []capture
	for _, id := range taskIDs {
		info, err := b.insp.GetTaskInfo(b.queue, id)
		if err != nil {
			t.Fatal(err)
		}
		captures = append(captures, capture{"task " + id + " last error", info.LastErr}, capture{"task " + id + " result", string(info.Result)})
		st, err := b.admin.Status(ctx, b.queue, id)
		if err != nil {
			t.Fatal(err)
		}
		j, _ := json.Marshal(st)
		captures = append(captures, capture{"task " + id + " status", string(j)})
	}
	dls, _, err := b.admin.DeadLetters(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 {
		t.Errorf("%d dead letters, want 2 (the 554 message, the refused recipient)", len(dls))
	}
	for _, dl := range dls {
		dl.Payload = nil // the payload carries the body by design
		j, _ := json.Marshal(dl)
		captures = append(captures, capture{"dead letter " + dl.ID, string(j)})
	}
	stop()

	// The same paths through a Sender with its wire trace, on the same
	// provider.
	traced, bogus := traceSends(t, srv, clientSecret, body)
	captures = append(captures, traced...)
	srv.Close()
	captures = append(captures, capture{"worker log", bufferText(workerLog)}, capture{"provider log", bufferText(providerLog)})

	// The scan saw what it should have: the paths ran, and left traces.
	var accessTokens, refreshTokens int
	secrets := []secret{
		{"client secret", clientSecret},
		{"client secret (basic auth)", base64.StdEncoding.EncodeToString([]byte("delegated-client:" + clientSecret))},
		{"message body", body},
		{"token encryption key", base64.StdEncoding.EncodeToString(tokenKey)},
		{"token encryption key", base64.RawURLEncoding.EncodeToString(tokenKey)},
		{"access token (never issued)", bogus},
		{"XOAUTH2 initial response", xoauth2InitialResponse(logScanUser, bogus)},
	}
	for _, it := range srv.IssuedTokens() {
		switch it.Kind {
		case smtpoauthtest.IssuedAccess:
			accessTokens++
			secrets = append(secrets, secret{"access token", it.Token},
				secret{"XOAUTH2 initial response", xoauth2InitialResponse(logScanUser, it.Token)})
		case smtpoauthtest.IssuedRefresh:
			refreshTokens++
			secrets = append(secrets, secret{"refresh token", it.Token})
		}
	}
	// Worker: 3 refreshes (each rotating) on the seed. Sender: 3 more on
	// its own seed.
	if accessTokens < 6 || refreshTokens < 8 {
		t.Errorf("provider issued %d access and %d refresh tokens, want at least 6 and 8: a path did not run", accessTokens, refreshTokens)
	}
	if st := srv.Stats(); st.FailedLogins < 6 {
		t.Errorf("%d failed logins, want at least 6 (expired, revoked, dead line: worker and sender; and a bogus token)", st.FailedLogins)
	}
	if got := srv.Messages(); len(got) == 0 || !bytes.Contains(got[0].Data, []byte(nonce)) {
		t.Error("the body canary never reached the provider")
	}
	joined := func(source string) string {
		var sb strings.Builder
		for _, c := range captures {
			if c.source == source {
				sb.WriteString(c.text)
			}
		}
		return sb.String()
	}
	for source, wants := range map[string][]string{
		"worker log": {`"msg":"delivered"`, `"msg":"dead-lettered"`, `"msg":"recipients rejected"`, `"msg":"authentication failing: the account's mail is deferred"`, `"msg":"send failed, will retry"`},
		"wire trace": {"AUTH XOAUTH2", "334 ", "535 ", "250 "},
	} {
		for _, want := range wants {
			if !strings.Contains(joined(source), want) {
				t.Errorf("%s has no %s: the scan would not cover that path", source, want)
			}
		}
	}
	checkTaskLogAttrs(t, bufferText(workerLog))

	for _, l := range scanForSecrets(captures, secrets) {
		t.Errorf("leak: %s", l)
	}
}

// smtpReplyInText matches an SMTP reply quoted in a reason or an error:
// "550 5.1.1 …" or go-smtp's "SMTP error 451: …".
var smtpReplyInText = regexp.MustCompile(`\b[2-5]\d\d[ -][2-5]\.\d{1,3}\.\d{1,3}\b|SMTP error [2-5]\d\d\b`)

// checkTaskLogAttrs checks that every per-task line of the worker log
// carries the task, account, Message-ID and attempt, and the class and
// SMTP code where they apply: a failure's class always, its code when its
// reason or error quotes a reply (a dropped connection has none).
func checkTaskLogAttrs(t *testing.T, log string) {
	t.Helper()
	for i, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("worker log line %d is not JSON: %v", i+1, err)
			continue
		}
		if _, ok := rec["task_id"]; !ok {
			continue
		}
		var missing []string
		want := []string{"account", "message_id", "attempt"}
		switch rec["msg"] {
		case "dead-lettered", "recipients rejected", "recipients deferred, will retry", "send failed, will retry",
			"account throttled", "connection lost after the message was sent: retrying, possible duplicate":
			want = append(want, "class")
			if smtpReplyInText.MatchString(fmt.Sprint(rec["reason"], " ", rec["error"])) {
				want = append(want, "smtp_code")
			}
		case "delivered":
			want = append(want, "smtp_code")
		case "authentication failing: the account's mail is deferred":
			want = append(want, "class") // invalid_grant has no SMTP code
		}
		for _, k := range want {
			if _, ok := rec[k]; !ok {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			t.Errorf("worker log line %d has no %s: %s", i+1, strings.Join(missing, ", "), line)
		}
	}
}

// startLogScanWorker runs a worker with logger on a queue of the test's own,
// with one account, "delegated", whose client secret is clientSecret, until
// stop is called (or the test ends).
func startLogScanWorker(t *testing.T, srv *smtpoauthtest.Server, clientSecret string, tokenKey []byte, logger *slog.Logger) (b *failureBundle, stop func()) {
	t.Helper()
	queue := redistest.Queue(t, redisDB)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	refresh := srv.NewRefreshToken("delegated-client", logScanUser)
	host, port, _ := net.SplitHostPort(srv.SMTPAddr)
	yaml := fmt.Sprintf(`accounts:
  - id: delegated
    provider: generic
    username: %s
    smtp: {host: %s, port: %s, tls: starttls, ca_file: ca.pem}
    oauth:
      grant: refresh_token
      client_id: delegated-client
      client_secret_env: DELEGATED_SECRET
      refresh_token_env: DELEGATED_REFRESH
      token_url: %s
`, logScanUser, host, port, srv.TokenURL)
	env := map[string]string{"DELEGATED_SECRET": clientSecret, "DELEGATED_REFRESH": refresh}
	file, err := accounts.Parse([]byte(yaml), accounts.ParseOptions{Name: "accounts.yaml", BaseDir: dir, Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ledger.NewKeyring("scan", map[string][]byte{"scan": tokenKey})
	if err != nil {
		t.Fatal(err)
	}
	ledgerOpts := ledger.Options{Prefix: "test:" + randomHex() + ":", TokenKeys: keys}
	rdb := redistest.Client(t, redisDB)
	t.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, ledgerOpts.Prefix+"*", 500).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	w, err := New(Config{
		Redis:        redistest.ConnOpt(redisDB),
		Accounts:     file,
		Queues:       map[string]int{queue: 1},
		Concurrency:  1,
		Retry:        fastRetry,
		Ledger:       ledgerOpts,
		TokenKeys:    keys,
		Logger:       logger,
		pollInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}
	t.Cleanup(stop)

	client := tasks.NewClient(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { client.Close() })
	insp := asynq.NewInspector(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { insp.Close() })
	admin, err := tasks.NewAdmin(redistest.ConnOpt(redisDB), ledgerOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	tb := &testBundle{srv: srv, queue: queue, client: client, insp: insp, ledger: ledgerOpts, refreshToken: refresh}
	return &failureBundle{testBundle: tb, admin: admin}, stop
}

// bufferText returns what w's buffer holds, read under w's lock: a
// goroutine of the code under test may still be writing.
func bufferText(w *lockedWriter) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.(*bytes.Buffer).String()
}

// traceSends sends through a smtpoauth.Sender with DebugWriter and a JSON
// debug logger: a plain send, a refresh after expiry, a revoked access
// token, a token the provider never issued (returned as bogus), and a
// revoked refresh token. It returns the trace, the log and the errors, once
// the senders are closed.
func traceSends(t *testing.T, srv *smtpoauthtest.Server, clientSecret, body string) (captures []capture, bogus string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// One writer per buffer: the senders write from their own goroutines
	// too (the QUIT of a connection they retire).
	var trace, log bytes.Buffer
	traceW, logW := &lockedWriter{w: &trace}, &lockedWriter{w: &log}
	logger := slog.New(slog.NewJSONHandler(logW, &slog.HandlerOptions{Level: slog.LevelDebug}))
	host, portStr, _ := net.SplitHostPort(srv.SMTPAddr)
	port, _ := strconv.Atoi(portStr)
	var senders []*smtpoauth.Sender
	newSender := func(ts oauth2.TokenSource) *smtpoauth.Sender {
		s, err := smtpoauth.NewSender(smtpoauth.Config{
			Host: host, Port: port, TLS: smtpoauth.TLSStartTLS, RootCAs: srv.CertPool(),
			Username: logScanUser, TokenSource: ts, DisablePooling: true,
			DebugWriter: traceW, Logger: logger,
		})
		if err != nil {
			t.Fatal(err)
		}
		senders = append(senders, s)
		return s
	}
	conf := &oauth2.Config{ClientID: "delegated-client", ClientSecret: clientSecret,
		Endpoint: oauth2.Endpoint{TokenURL: srv.TokenURL}, Scopes: []string{"https://mail.google.com/"}}
	seed := srv.NewRefreshToken("delegated-client", logScanUser)
	var current string // the sender's refresh token, after rotations
	source := smtpoauth.NewRefreshTokenSource(ctx, conf, seed, func(rt string) { current = rt })
	sender := newSender(smtpoauth.NewTokenCache(source, 0))
	msg := &smtpoauth.Message{From: logScanUser, To: []string{"trace@example.net"},
		Data: []byte("From: " + logScanUser + "\r\nTo: trace@example.net\r\nSubject: trace\r\n\r\n" + body + "\r\n")}

	var errs []string
	sendOK := func(what string) {
		if _, err := sender.Send(ctx, msg); err != nil {
			t.Errorf("direct send, %s: %v", what, err)
			errs = append(errs, err.Error())
		}
	}
	sendOK("plain")
	srv.Advance(31 * time.Minute)
	sendOK("after the token expired")
	issued := srv.IssuedTokens()
	srv.Revoke(issued[len(issued)-1].Token) // the access token in use
	sendOK("with a revoked access token")

	bogus = "ya29.never-issued-" + randomHex()
	if _, err := newSender(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: bogus})).Send(ctx, msg); err == nil {
		t.Error("direct send with a token never issued: no error")
	} else {
		errs = append(errs, err.Error())
	}
	srv.Revoke(current)
	if _, err := sender.Send(ctx, msg); err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("direct send with a revoked refresh token: %v, want invalid_grant", err)
	} else {
		errs = append(errs, err.Error())
	}
	for _, s := range senders {
		s.Close()
	}
	return []capture{
		{"wire trace", bufferText(traceW)},
		{"sender log", bufferText(logW)},
		{"sender errors", strings.Join(errs, "\n")},
	}, bogus
}
