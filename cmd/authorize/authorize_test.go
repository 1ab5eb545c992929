package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
	"github.com/sendq/sendq/worker"
)

// onboardingAccounts is the accounts file of a new mailbox: no refresh
// token anywhere yet, the provider's preset with its endpoints pointed at
// smtpoauthtest.
const onboardingAccounts = `accounts:
  - id: support
    provider: {{provider}}
    username: {{user}}
    smtp: {{smtp}}
    oauth:
      grant: refresh_token
      client_id: desktop-app
      client_secret_env: SUPPORT_CLIENT_SECRET
      refresh_token_in_store: true
      token_url: {{token_url}}
      auth_url: {{auth_url}}
      device_url: {{device_url}}
`

func TestOnboarding(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		flavor smtpoauthtest.Flavor
		user   string
		device bool
	}{
		{"GoogleCodeFlow", smtpoauthtest.FlavorGoogle, "alice@example.com", false},
		{"MicrosoftCodeFlow", smtpoauthtest.FlavorMicrosoft, "alice@contoso.com", false},
		{"MicrosoftDeviceFlow", smtpoauthtest.FlavorMicrosoft, "alice@contoso.com", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Microsoft rotates refresh tokens: the workers must keep up.
			b := setup(t, smtpoauthtest.Config{Flavor: tc.flavor, RotateRefreshTokens: tc.flavor == smtpoauthtest.FlavorMicrosoft})
			b.srv.AddClient("desktop-app", "desktop-secret")
			b.env["SUPPORT_CLIENT_SECRET"] = "desktop-secret"
			path := b.writeAccounts(t, strings.NewReplacer("{{provider}}", string(tc.flavor), "{{user}}", tc.user).Replace(onboardingAccounts))
			ctx := t.Context()

			// The account was held for re-authorization: its refresh token
			// died.
			if err := b.admin.Hold(ctx, "support", ledger.HoldReauthorize, "invalid_grant persisted"); err != nil {
				t.Fatal(err)
			}

			// 1. authorize.
			var out string
			if tc.device {
				b.srv.SetConsent(smtpoauthtest.Consent{Username: tc.user, PendingPolls: 1})
				var err error
				if out, err = b.run(t, "-accounts", path, "-account", "support", "-device"); err != nil {
					t.Fatalf("authorize -device: %v\n%s", err, out)
				}
				if !strings.Contains(out, b.srv.URL+"/device") || !strings.Contains(out, "enter the code ") {
					t.Errorf("output does not say where to enter which code:\n%s", out)
				}
				if st := b.srv.Stats(); st.TokenGrants[smtpoauthtest.GrantDeviceCode] != 1 {
					t.Errorf("stats %+v, want one device_code grant", st)
				}
			} else {
				out = authorizeInBrowser(t, b, "-accounts", path, "-account", "support")
				if st := b.srv.Stats(); st.TokenGrants[smtpoauthtest.GrantAuthorizationCode] != 1 {
					t.Errorf("stats %+v, want one authorization_code grant", st)
				}
			}
			if !strings.Contains(out, `Stored the refresh token of account "support" in Redis`) || !strings.Contains(out, `token key "test"`) {
				t.Errorf("output:\n%s", out)
			}

			// The refresh token is in the store, sealed: no Redis value
			// holds it in clear.
			rt, _, err := b.admin.RefreshToken(ctx, "support")
			if err != nil || rt == "" {
				t.Fatalf("stored refresh token %q, %v", rt, err)
			}
			requireSealed(t, b, rt)
			// The hold is released.
			if st, err := b.admin.Account(ctx, "support"); err != nil || st.State != ledger.AccountOK {
				t.Errorf("account %+v, %v: want ok", st, err)
			}

			// 2. authorize -check.
			out, err = b.run(t, "-accounts", path, "-account", "support", "-check")
			if err != nil || !strings.Contains(out, "OK: obtained an access token and logged in") {
				t.Fatalf("check: %v\n%s", err, out)
			}

			// 3. enqueue, and a worker delivers.
			queue := runWorker(t, b, path)
			client := tasks.NewClient(redistest.ConnOpt(redisDB))
			t.Cleanup(func() { client.Close() })
			if _, err := client.Enqueue(ctx, &tasks.Email{
				AccountID: "support", From: tc.user, To: []string{"bob@example.net"}, Subject: "Hello", Text: "It works.",
			}, tasks.Queue(queue)); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			msgs, err := b.srv.WaitMessages(wctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if msgs[0].Username != tc.user {
				t.Errorf("delivered as %s, want %s", msgs[0].Username, tc.user)
			}
		})
	}
}

// TestANewMailboxIsHeldUntilAuthorized: an account whose refresh token is
// only ever in the store holds its mail, saying to run authorize, until the
// first authorization; then the waiting mail goes by itself.
func TestANewMailboxIsHeldUntilAuthorized(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"
	b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorGoogle})
	b.srv.AddClient("desktop-app", "desktop-secret")
	b.env["SUPPORT_CLIENT_SECRET"] = "desktop-secret"
	path := b.writeAccounts(t, strings.NewReplacer("{{provider}}", "google", "{{user}}", user).Replace(onboardingAccounts))
	ctx := t.Context()

	queue := runWorker(t, b, path)
	client := tasks.NewClient(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { client.Close() })
	if _, err := client.Enqueue(ctx, &tasks.Email{
		AccountID: "support", From: user, To: []string{"bob@example.net"}, Subject: "Hello", Text: "Waiting for consent.",
	}, tasks.Queue(queue)); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var st ledger.AccountStatus
	tick := time.NewTicker(20 * time.Millisecond) // the hold is in Redis: no signal to wait on
	defer tick.Stop()
	for st.State != ledger.AccountHeld {
		select {
		case <-wctx.Done():
			t.Fatalf("account %+v, want held for authorization", st)
		case <-tick.C:
		}
		var err error
		if st, err = b.admin.Account(ctx, "support"); err != nil {
			t.Fatal(err)
		}
	}
	if st.Hold != ledger.HoldReauthorize || !strings.Contains(st.Reason, "run authorize") {
		t.Errorf("held %q: %q, want reauthorize saying to run authorize", st.Hold, st.Reason)
	}
	if n := len(b.srv.Messages()); n != 0 {
		t.Fatalf("%d messages sent before the authorization", n)
	}

	authorizeInBrowser(t, b, "-accounts", path, "-account", "support")
	msgs, err := b.srv.WaitMessages(wctx, 1)
	if err != nil {
		t.Fatalf("after the authorization: %v", err)
	}
	if msgs[0].Username != user {
		t.Errorf("delivered as %s, want %s", msgs[0].Username, user)
	}
}

// authorizeInBrowser runs authorize, opens the URL it prints as a browser
// would (following the redirects to its loopback listener), and returns
// its output once it has finished.
func authorizeInBrowser(t *testing.T, b *testBundle, args ...string) string {
	t.Helper()
	lines, wait := b.start(t, args...)
	var authURL string
	for l := range lines {
		if u := strings.TrimSpace(l); strings.HasPrefix(u, b.srv.AuthURL+"?") {
			authURL = u
			break
		}
	}
	if authURL == "" {
		out, err := wait()
		t.Fatalf("no authorization URL printed (%v):\n%s", err, out)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, authURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out, err := wait()
	if err != nil {
		t.Fatalf("authorize: %v\n%s", err, out)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Account support authorized") {
		t.Errorf("the browser shows %d %s", resp.StatusCode, page)
	}
	return out
}

// requireSealed fails if a value of the test's Redis keys contains token.
func requireSealed(t *testing.T, b *testBundle, token string) {
	t.Helper()
	ctx := t.Context()
	keys, err := b.rdb.Keys(ctx, b.prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if b.rdb.Type(ctx, k).Val() != "hash" {
			continue
		}
		for f, v := range b.rdb.HGetAll(ctx, k).Val() {
			if strings.Contains(v, token) {
				t.Errorf("%s %s holds the refresh token in clear", k, f)
			}
		}
	}
}

// runWorker runs a worker over the accounts file, with the token store of
// the test, until the test ends, and returns the queue it serves.
func runWorker(t *testing.T, b *testBundle, path string) string {
	t.Helper()
	file, err := loadAccounts(path, "", b.getenv)
	if err != nil {
		t.Fatal(err)
	}
	queue := redistest.Queue(t, redisDB)
	w, err := worker.New(worker.Config{
		Redis:     redistest.ConnOpt(redisDB),
		Accounts:  file,
		Queues:    map[string]int{queue: 1},
		Ledger:    ledger.Options{Prefix: b.prefix},
		TokenKeys: b.keys,
		// A held account's mail looks again soon after it resumes.
		Retry: tasks.RetryPolicy{HeldRecheck: 200 * time.Millisecond},
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
	return queue
}
