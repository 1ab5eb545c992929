package worker

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// redisDB is this package's Redis database; see internal/redistest.
const redisDB = 3

// testBundle is one worker wired to one smtpoauthtest server.
type testBundle struct {
	srv    *smtpoauthtest.Server
	queue  string
	client *tasks.Client
	insp   *asynq.Inspector
	logs   *bytes.Buffer
	// ledger is the worker's ledger options (for a tasks.Admin);
	// refreshToken is the "delegated" account's refresh token.
	ledger       ledger.Options
	refreshToken string
}

type setupOptions struct {
	server    smtpoauthtest.Config
	tls       string            // starttls (default) or implicit
	mechanism string            // XOAUTH2 (default) or OAUTHBEARER
	retry     tasks.RetryPolicy // the worker's Retry; zero: the defaults
	// concurrency and dequeueLoops are the worker's; zero: 4 and the
	// default.
	concurrency, dequeueLoops int
}

// setup starts a provider, writes an accounts file for it with two accounts
// ("delegated": refresh token; "app": client credentials), and runs a worker
// on a queue of the test's own until the test ends.
func setup(t *testing.T, o setupOptions) *testBundle {
	t.Helper()
	srv := smtpoauthtest.NewServer(o.server)
	t.Cleanup(srv.Close)
	queue := redistest.Queue(t, redisDB)

	dir := t.TempDir()
	srv.AddClient("delegated-client", "delegated-secret")
	srv.AddClient("app-client", "app-secret")
	srv.SetClientMailboxes("app-client", "app@example.com")
	refresh := srv.NewRefreshToken("delegated-client", "user@example.com")
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := srv.SMTPAddr
	tlsMode := "starttls"
	if o.tls == "implicit" {
		addr, tlsMode = srv.SMTPSAddr, "implicit"
	}
	mech := o.mechanism
	if mech == "" {
		mech = "XOAUTH2"
	}
	host, port, _ := net.SplitHostPort(addr)
	yaml := fmt.Sprintf(`accounts:
  - id: delegated
    provider: generic
    username: user@example.com
    mechanism: %[1]s
    smtp: {host: %[2]s, port: %[3]s, tls: %[4]s, ca_file: ca.pem}
    oauth:
      grant: refresh_token
      client_id: delegated-client
      client_secret_env: DELEGATED_SECRET
      refresh_token_env: DELEGATED_REFRESH
      token_url: %[5]s
  - id: app
    provider: generic
    username: app@example.com
    smtp: {host: %[2]s, port: %[3]s, tls: %[4]s, ca_file: ca.pem}
    oauth:
      grant: client_credentials
      client_id: app-client
      client_secret_env: APP_SECRET
      token_url: %[5]s
`, mech, host, port, tlsMode, srv.TokenURL)
	env := map[string]string{"DELEGATED_SECRET": "delegated-secret", "DELEGATED_REFRESH": refresh, "APP_SECRET": "app-secret"}
	file, err := accounts.Parse([]byte(yaml), accounts.ParseOptions{Name: "accounts.yaml", BaseDir: dir, Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}

	logs := &bytes.Buffer{}
	// The same key in the worker and in ledgerOpts, for the stores tests
	// open on the worker's state (an operator's re-authorization).
	ledgerOpts := ledger.Options{Prefix: "test:" + randomHex() + ":", TokenKeys: testKeyring(t)}
	w, err := New(Config{
		Redis:        redistest.ConnOpt(redisDB),
		Accounts:     file,
		Queues:       map[string]int{queue: 1},
		Concurrency:  cmp.Or(o.concurrency, 4),
		DequeueLoops: o.dequeueLoops,
		Retry:        o.retry,
		Ledger:       ledgerOpts,
		TokenKeys:    ledgerOpts.TokenKeys,
		Logger:       slog.New(slog.NewTextHandler(&lockedWriter{w: logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		pollInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})

	client := tasks.NewClient(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { client.Close() })
	insp := asynq.NewInspector(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { insp.Close() })
	return &testBundle{srv: srv, queue: queue, client: client, insp: insp, logs: logs, ledger: ledgerOpts, refreshToken: refresh}
}

// testKeyring returns a keyring of one random token key.
func testKeyring(t *testing.T) *ledger.Keyring {
	t.Helper()
	key := make([]byte, ledger.TokenKeySize)
	rand.Read(key)
	k, err := ledger.NewKeyring("test", map[string][]byte{"test": key})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randomHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// lockedWriter serialises writes from the worker's goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func waitMessages(t *testing.T, srv *smtpoauthtest.Server, n int) []smtpoauthtest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := srv.WaitMessages(ctx, n)
	if err != nil {
		t.Fatalf("waiting for %d messages: %v (got %d)", n, err, len(srv.Messages()))
	}
	return msgs
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts setupOptions
	}{
		{"XOAUTH2OverSTARTTLS", setupOptions{}},
		{"XOAUTH2OverImplicitTLS", setupOptions{tls: "implicit"}},
		{"OAUTHBEAREROverSTARTTLS", setupOptions{mechanism: "OAUTHBEARER"}},
		{"MicrosoftFlavor", setupOptions{server: smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.opts)
			ctx := context.Background()
			email := &tasks.Email{
				AccountID:   "delegated",
				From:        "Support Team <user@example.com>",
				To:          []string{"Alice <alice@example.net>"},
				Cc:          []string{"carol@example.net"},
				Bcc:         []string{"audit@example.net"},
				ReplyTo:     []string{"help@example.com"},
				Subject:     "Grüße — your order",
				Text:        "Plain text body\nsecond line",
				HTML:        "<p>HTML body</p>",
				Headers:     []tasks.Header{{Name: "X-Order", Value: "1234"}},
				Attachments: []tasks.Attachment{{Filename: "report.csv", ContentType: "text/csv", Data: []byte("a,b\n1,2\n")}},
			}
			enq, err := b.client.Enqueue(ctx, email, tasks.Queue(b.queue))
			if err != nil {
				t.Fatal(err)
			}
			msg := waitMessages(t, b.srv, 1)[0]

			if msg.Username != "user@example.com" || msg.From != "user@example.com" {
				t.Errorf("username %q, MAIL FROM %q; want user@example.com for both", msg.Username, msg.From)
			}
			wantRcpt := []string{"alice@example.net", "carol@example.net", "audit@example.net"}
			if strings.Join(msg.To, ",") != strings.Join(wantRcpt, ",") {
				t.Errorf("RCPT TO %v, want %v", msg.To, wantRcpt)
			}
			checkMessage(t, msg.Data, enq.MessageID)
			waitCompleted(t, b, enq.TaskID)
		})
	}
}

// checkMessage parses the delivered bytes and checks headers, both bodies
// and the attachment.
func checkMessage(t *testing.T, data []byte, messageID string) {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(data, []byte("\r\n"), nil), []byte("\n")) {
		t.Error("message has a bare LF")
	}
	mr, err := mail.CreateReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	h := mr.Header
	if subj, _ := h.Subject(); subj != "Grüße — your order" {
		t.Errorf("Subject %q", subj)
	}
	if id, _ := h.MessageID(); "<"+id+">" != messageID {
		t.Errorf("Message-ID <%s>, enqueue said %s", id, messageID)
	}
	if h.Get("Bcc") != "" || bytes.Contains(data, []byte("audit@example.net")) {
		t.Error("the Bcc recipient appears in the message")
	}
	if h.Get("X-Order") != "1234" || !strings.Contains(h.Get("Reply-To"), "help@example.com") || h.Get("Date") == "" {
		t.Errorf("headers X-Order %q, Reply-To %q, Date %q", h.Get("X-Order"), h.Get("Reply-To"), h.Get("Date"))
	}
	var text, html, attachment string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(p.Body)
		switch ph := p.Header.(type) {
		case *mail.InlineHeader:
			ct, _, _ := ph.ContentType()
			if ct == "text/html" {
				html = string(body)
			} else {
				text = string(body)
			}
		case *mail.AttachmentHeader:
			name, _ := ph.Filename()
			attachment = name + ":" + string(body)
		}
	}
	if strings.ReplaceAll(text, "\r\n", "\n") != "Plain text body\nsecond line" {
		t.Errorf("text part %q", text)
	}
	if html != "<p>HTML body</p>" {
		t.Errorf("html part %q", html)
	}
	if attachment != "report.csv:a,b\n1,2\n" {
		t.Errorf("attachment %q", attachment)
	}
}

// waitCompleted waits until asynq reports the task completed with its
// result (written with the receipt, which may follow the acknowledgement by
// a moment) and checks the result.
func waitCompleted(t *testing.T, b *testBundle, taskID string) *asynq.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := b.insp.GetTaskInfo(b.queue, taskID)
		if err == nil && info.State == asynq.TaskStateCompleted && len(info.Result) > 0 {
			if !bytes.Contains(info.Result, []byte(`"reply":"250`)) {
				t.Errorf("result %s has no 250 reply", info.Result)
			}
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s not completed: %+v %v", taskID, info, err)
		}
		time.Sleep(20 * time.Millisecond) // polling asynq's state: there is no signal to wait on
	}
}

func TestExpiredTokenIsRefreshedBetweenSends(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{server: smtpoauthtest.Config{AccessTokenLifetime: 2 * time.Second}})
	ctx := context.Background()
	send := func(n int) {
		_, err := b.client.Enqueue(ctx, &tasks.Email{AccountID: "delegated", From: "user@example.com",
			To: []string{fmt.Sprintf("r%d@example.net", n)}, Subject: "s", Text: "t"}, tasks.Queue(b.queue))
		if err != nil {
			t.Fatal(err)
		}
	}
	send(1)
	waitMessages(t, b.srv, 1)
	// The first token is now past its two seconds for the provider.
	b.srv.Advance(3 * time.Second)
	// The pooled connection, authenticated before, would carry the second
	// message without a login: the provider closes it as idle, so that the
	// sender redials (transparently) and logs in again.
	if _, err := b.srv.TimeOutIdleConnections(t.Context()); err != nil {
		t.Fatal(err)
	}
	send(2)
	waitMessages(t, b.srv, 2)
	if got := b.srv.Stats().TokenGrantsTotal; got != 2 {
		t.Errorf("token grants = %d, want 2 (one per token lifetime)", got)
	}
}

func TestAppOnlyAccount(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	_, err := b.client.Enqueue(context.Background(), &tasks.Email{AccountID: "app", From: "app@example.com",
		To: []string{"x@example.net"}, Subject: "s", Text: "t"}, tasks.Queue(b.queue))
	if err != nil {
		t.Fatal(err)
	}
	msg := waitMessages(t, b.srv, 1)[0]
	if msg.Username != "app@example.com" {
		t.Errorf("logged in as %q, want app@example.com", msg.Username)
	}
	if got := b.srv.Stats().TokenGrants[smtpoauthtest.GrantClientCredentials]; got != 1 {
		t.Errorf("client_credentials grants = %d, want 1", got)
	}
}

func TestInvalidInputIsRefusedAtEnqueue(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{})
	for name, e := range map[string]*tasks.Email{
		"NoRecipient":     {AccountID: "delegated", From: "user@example.com", Text: "t"},
		"BadAddress":      {AccountID: "delegated", From: "user@example.com", To: []string{"not an address"}, Text: "t"},
		"HeaderInjection": {AccountID: "delegated", From: "user@example.com", To: []string{"a@example.net"}, Subject: "hi\r\nBcc: evil@example.net", Text: "t"},
	} {
		if _, err := b.client.Enqueue(context.Background(), e, tasks.Queue(b.queue)); err == nil {
			t.Errorf("%s: enqueued, want a validation error", name)
		}
	}
	info, err := b.insp.GetQueueInfo(b.queue)
	if err == nil && info.Size > 0 {
		t.Errorf("queue holds %d tasks after invalid input, want 0", info.Size)
	}
}

func TestDequeueLoopsShareConcurrency(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ concurrency, loops int }{{1, 1}, {5, 1}, {6, 2}, {10, 2}, {50, 10}, {1000, 200}} {
		want := min(tc.loops, MaxDequeueLoopsPerCPU*runtime.GOMAXPROCS(0))
		if got := (Config{Concurrency: tc.concurrency}).WithDefaults().DequeueLoops; got != want {
			t.Errorf("default DequeueLoops for Concurrency %d on %d CPUs = %d, want %d", tc.concurrency, runtime.GOMAXPROCS(0), got, want)
		}
	}
	if err := (Config{Concurrency: 2, DequeueLoops: 3}).WithDefaults().validate(); err == nil || !strings.Contains(err.Error(), "DequeueLoops 3") {
		t.Errorf("validate with more loops than Concurrency = %v, want an error naming DequeueLoops", err)
	}

	b := setup(t, setupOptions{concurrency: 5, dequeueLoops: 2})
	// Two asynq servers take tasks from the queue: 3 and 2 of the 5.
	pollFor(t, "both dequeue loops to register", func() (bool, string) {
		servers, err := b.insp.Servers()
		if err != nil {
			return false, err.Error()
		}
		var got []int
		for _, s := range servers {
			if _, ok := s.Queues[b.queue]; ok {
				got = append(got, s.Concurrency)
			}
		}
		slices.Sort(got)
		return slices.Equal(got, []int{2, 3}), fmt.Sprintf("servers on the queue have concurrency %v, want [2 3]", got)
	})
	const n = 20
	for i := range n {
		if _, err := b.client.Enqueue(context.Background(), &tasks.Email{AccountID: "app", From: "app@example.com",
			To: []string{fmt.Sprintf("r%d@example.net", i)}, Subject: "s", Text: "t"}, tasks.Queue(b.queue)); err != nil {
			t.Fatal(err)
		}
	}
	msgs := waitMessages(t, b.srv, n)
	seen := map[string]int{}
	for _, m := range msgs {
		for _, to := range m.To {
			seen[to]++
		}
	}
	if len(seen) != n || len(msgs) != n {
		t.Errorf("%d messages to %d recipients, want each of %d once", len(msgs), len(seen), n)
	}
}

func TestNewRefusesWithoutTokenKey(t *testing.T) {
	t.Parallel()
	yaml := `accounts:
  - id: app
    provider: generic
    username: app@example.com
    smtp: {host: 127.0.0.1, port: 587}
    oauth: {grant: client_credentials, client_id: app, client_secret_env: APP_SECRET, token_url: "http://127.0.0.1:1/token"}
`
	file, err := accounts.Parse([]byte(yaml), accounts.ParseOptions{Name: "accounts.yaml", Getenv: func(string) string { return "secret" }})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Redis: redistest.ConnOpt(redisDB), Accounts: file})
	if !errors.Is(err, ErrNoTokenKeys) {
		t.Fatalf("New without a key = %v, want ErrNoTokenKeys", err)
	}
	for _, name := range []string{"-dev-insecure-token-store", "SENDQ_DEV_INSECURE_TOKEN_STORE", "SENDQ_TOKEN_KEY ", "SENDQ_TOKEN_KEYS", "SENDQ_TOKEN_KEY_FILE"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, strings.TrimSpace(name))
		}
	}

	t.Run("DevFlagStoresPlaintextAndWarns", func(t *testing.T) {
		t.Parallel()
		var logs bytes.Buffer
		w, err := New(Config{Redis: redistest.ConnOpt(redisDB), Accounts: file, DevInsecureTokenStore: true,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		w.rdb.Close()
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "plaintext") {
			t.Errorf("no warning about plaintext tokens:\n%s", logs.String())
		}
	})
}
