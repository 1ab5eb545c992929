package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// redisDB is this package's Redis database; see internal/redistest.
const redisDB = 10

func TestParseFlags(t *testing.T) {
	t.Parallel()
	raw := make([]byte, ledger.TokenKeySize)
	rand.Read(raw)
	key := base64.StdEncoding.EncodeToString(raw)
	withKey := map[string]string{"SENDQ_TOKEN_KEY": key}
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    func(options) bool
		wantErr string
	}{
		{name: "Defaults", args: []string{"-accounts", "a.yaml", "-account", "support"}, env: withKey,
			want: func(o options) bool {
				return o.accountsFile == "a.yaml" && o.account == "support" && !o.device && !o.check && o.port == 0 &&
					o.timeout == DefaultTimeout && o.redisDesc == "redis://127.0.0.1:6379/0" && o.ledgerPrefix == "" &&
					o.tokenKeys != nil && o.tokenKeys.Current() == ledger.DeriveKeyID(raw)
			}},
		{name: "Environment", args: []string{"-device"},
			env: map[string]string{"SENDQ_ACCOUNTS": "b.yaml", "SENDQ_TOKEN_KEYS": "new:" + key, "REDIS_URL": "redis://redis:6380/4", "SENDQ_LEDGER_PREFIX": "mail:"},
			want: func(o options) bool {
				return o.accountsFile == "b.yaml" && o.device && o.redisDesc == "redis://redis:6380/4" && o.ledgerPrefix == "mail:" &&
					slices.Equal(o.tokenKeys.IDs(), []string{"new"})
			}},
		{name: "CheckWithAFixedPort", args: []string{"-accounts", "a", "-check", "-port", "8085", "-timeout", "2m"}, env: withKey,
			want: func(o options) bool { return o.check && o.port == 8085 && o.timeout == 2*time.Minute }},
		{name: "DevInsecureTokenStore", args: []string{"-accounts", "a"}, env: map[string]string{"SENDQ_DEV_INSECURE_TOKEN_STORE": "1"},
			want: func(o options) bool { return o.tokenKeys == nil && o.devInsecureTokenStore }},
		{name: "AccountsRequired", env: withKey, wantErr: "-accounts: an accounts file is required"},
		{name: "DeviceOrCheck", args: []string{"-accounts", "a", "-device", "-check"}, env: withKey, wantErr: "-device and -check: choose one"},
		{name: "BadPort", args: []string{"-accounts", "a", "-port", "70000"}, env: withKey, wantErr: "-port: 70000 is out of range"},
		{name: "BadTimeout", args: []string{"-accounts", "a", "-timeout", "0s"}, env: withKey, wantErr: "-timeout"},
		{name: "StrayArgument", args: []string{"-accounts", "a", "support"}, env: withKey, wantErr: `unexpected argument "support"`},
		{name: "NoTokenKeyIsRefused", args: []string{"-accounts", "a"}, wantErr: "no token encryption key"},
		{name: "BadDevFlag", args: []string{"-accounts", "a"}, env: map[string]string{"SENDQ_DEV_INSECURE_TOKEN_STORE": "maybe"}, wantErr: "is not a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o, err := parseFlags(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case !tc.want(o):
				t.Errorf("options %+v", o)
			}
		})
	}
}

// testBundle is a provider, an accounts file for it, and a Redis key prefix
// of the test's own holding the token store the command and the workers
// share.
type testBundle struct {
	srv    *smtpoauthtest.Server
	dir    string
	env    map[string]string
	keys   *ledger.Keyring
	prefix string
	rdb    *redis.Client
	admin  *ledger.Store // what an operator's tools see
}

func setup(t *testing.T, cfg smtpoauthtest.Config) *testBundle {
	t.Helper()
	srv := smtpoauthtest.NewServer(cfg)
	t.Cleanup(srv.Close)
	b := &testBundle{srv: srv, dir: t.TempDir(), rdb: redistest.Client(t, redisDB)}
	if err := os.WriteFile(filepath.Join(b.dir, "ca.pem"), srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	var r [6]byte
	rand.Read(r[:])
	b.prefix = "test:" + hex.EncodeToString(r[:]) + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		if keys, _ := b.rdb.Keys(ctx, b.prefix+"*").Result(); len(keys) > 0 {
			b.rdb.Del(ctx, keys...)
		}
	})
	raw := make([]byte, ledger.TokenKeySize)
	rand.Read(raw)
	var err error
	if b.keys, err = ledger.NewKeyring("test", map[string][]byte{"test": raw}); err != nil {
		t.Fatal(err)
	}
	b.env = map[string]string{
		"SENDQ_TOKEN_KEYS":    "test:" + base64.StdEncoding.EncodeToString(raw),
		"REDIS_URL":           redistest.URL(redisDB),
		"SENDQ_LEDGER_PREFIX": b.prefix,
	}
	b.admin = ledger.New(b.rdb, ledger.Options{Prefix: b.prefix, TokenKeys: b.keys})
	return b
}

func (b *testBundle) getenv(k string) string { return b.env[k] }

// writeAccounts writes accounts.yaml, whose text may use {{smtp}} (the
// STARTTLS listener, with the provider's CA), {{token_url}}, {{auth_url}}
// and {{device_url}}, and returns its path.
func (b *testBundle) writeAccounts(t *testing.T, text string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(b.srv.SMTPAddr)
	text = strings.NewReplacer(
		"{{smtp}}", fmt.Sprintf("{host: %s, port: %s, ca_file: ca.pem}", host, port),
		"{{token_url}}", b.srv.TokenURL,
		"{{auth_url}}", b.srv.AuthURL,
		"{{device_url}}", b.srv.DeviceAuthURL,
	).Replace(text)
	path := filepath.Join(b.dir, "accounts.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// run runs the command to the end and returns what it printed.
func (b *testBundle) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := run(ctx, args, b.getenv, &out, &errOut)
	if errOut.Len() > 0 {
		t.Logf("stderr:\n%s", errOut.String())
	}
	return out.String(), err
}

// start runs the command in the background. Its output's lines arrive on
// lines; wait returns its error and everything it printed.
func (b *testBundle) start(t *testing.T, args ...string) (lines <-chan string, wait func() (string, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	pr, pw := io.Pipe()
	ch := make(chan string, 100)
	var (
		mu  sync.Mutex
		all strings.Builder
	)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer close(ch)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			all.WriteString(sc.Text() + "\n")
			mu.Unlock()
			ch <- sc.Text()
		}
	}()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, b.getenv, pw, io.Discard)
		pw.Close()
		done <- err
	}()
	var once sync.Once
	var err error
	wait = func() (string, error) {
		once.Do(func() {
			err = <-done
			cancel()
			for range ch {
			}
			<-scanned
		})
		mu.Lock()
		defer mu.Unlock()
		return all.String(), err
	}
	t.Cleanup(func() { wait() })
	return ch, wait
}

func TestRunRefusesAnUnknownAccount(t *testing.T) {
	t.Parallel()
	b := setup(t, smtpoauthtest.Config{})
	path := b.writeAccounts(t, `accounts:
  - {id: a, provider: google, username: a@example.com, oauth: {grant: refresh_token, client_id: c, refresh_token_in_store: true}}
  - {id: b, provider: google, username: b@example.com, oauth: {grant: refresh_token, client_id: c, refresh_token_in_store: true}}
`)
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"-accounts", path, "-account", "nope"}, `-account: no account "nope" in the accounts file`},
		{[]string{"-accounts", path}, "-account: required, the accounts file has 2 accounts"},
	} {
		if _, err := b.run(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.wantErr)
		}
	}
}

func TestLoadAccountsSkipsOtherAccountsProblems(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "accounts.yaml")
	text := `accounts:
  - id: ready
    provider: google
    username: a@example.com
    oauth: {grant: refresh_token, client_id: c, client_secret_env: READY_SECRET, refresh_token_in_store: true}
  - id: other
    provider: google
    username: b@example.com
    oauth: {grant: refresh_token, client_id: c, client_secret_env: OTHER_SECRET, refresh_token_in_store: true}
`
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	getenv := func(k string) string { return map[string]string{"READY_SECRET": "s"}[k] }
	f, err := loadAccounts(path, "ready", getenv)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := f.Account("ready"); !ok || a.Username != "a@example.com" || len(f.Accounts()) != 1 {
		t.Errorf("accounts %v", f.Accounts())
	}
	// The account's own problem, and the whole file without an account,
	// are reported with the file's lines.
	for _, id := range []string{"other", ""} {
		if _, err := loadAccounts(path, id, getenv); err == nil || !strings.Contains(err.Error(), "OTHER_SECRET is not set") {
			t.Errorf("account %q: err = %v, want OTHER_SECRET's", id, err)
		}
	}
}
