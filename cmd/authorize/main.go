// Command authorize obtains the refresh token of a mailbox by its owner's
// consent and stores it, encrypted, in the token store in Redis that every
// worker reads; with -check it proves that an account works.
//
// Usage:
//
//	authorize -accounts accounts.yaml -account support           # browser on this machine
//	authorize -accounts accounts.yaml -account support -device   # headless: a code to enter elsewhere
//	authorize -accounts accounts.yaml -account support -check    # token + XOAUTH2 login, no mail sent
//
// The default flow is OAuth2's authorization-code flow with PKCE (RFC 7636)
// and a loopback redirect (RFC 8252): authorize listens on a random port of
// 127.0.0.1 (-port fixes it, for an SSH tunnel), prints the URL to open,
// and never opens a browser itself. The google preset asks for offline
// access with a consent prompt (access_type=offline, prompt=consent), so a
// refresh token comes back even for a user who consented before; the
// microsoft preset asks for the offline_access scope. -device uses the
// device authorization grant (RFC 8628) instead: it prints a URL and a code
// to enter on any device with a browser, and waits. Google does not allow
// the https://mail.google.com/ scope in the device flow: use the default
// flow, from any machine that reaches the same Redis.
//
// The refresh token goes to the token store (ledger.Store.SetRefreshToken),
// encrypted with the key of SENDQ_TOKEN_KEY, SENDQ_TOKEN_KEYS or
// SENDQ_TOKEN_KEY_FILE, as the worker reads it; every worker uses it from
// its next refresh, before the accounts file's, and an account held for
// re-authorization resumes at once. An account whose only refresh token is
// the stored one says so in the accounts file with
// oauth.refresh_token_in_store: true.
//
// -check obtains a new access token from the token endpoint (whatever the
// grant: refresh_token, client_credentials or a Google service account's
// jwt), logs in to the SMTP server with it as a worker would and says QUIT.
// It prints what failed, the failure's class (smtpoauth.Classify) and what
// to do about it, and exits with status 1 on failure.
//
// Redis is found through REDIS_URL (default redis://127.0.0.1:6379/0) and
// the other variables of the worker; SENDQ_LEDGER_PREFIX must match the
// worker's if it sets one.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"gopkg.in/yaml.v3"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redisconn"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "authorize:", err)
		os.Exit(1)
	}
}

// Defaults of the flags.
const (
	// DefaultTimeout is how long authorize waits for the user to consent.
	DefaultTimeout = 10 * time.Minute
	// DefaultCheckTimeout bounds -check: the token request and the login.
	DefaultCheckTimeout = time.Minute
)

// options are authorize's settings after flags and environment.
type options struct {
	accountsFile string
	account      string // "" when the file has a single account
	device       bool
	check        bool
	port         int // loopback port of the redirect; 0: random
	timeout      time.Duration
	verbose      bool

	redis                 asynq.RedisConnOpt
	redisDesc             string // for messages: no password
	ledgerPrefix          string
	tokenKeys             *ledger.Keyring // nil only with devInsecureTokenStore
	devInsecureTokenStore bool
}

// parseFlags reads args with defaults from getenv. It is a pure function so
// the flag and environment rules can be table-tested.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("authorize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.accountsFile, "accounts", getenv("SENDQ_ACCOUNTS"), "accounts file (env SENDQ_ACCOUNTS)")
	fs.StringVar(&o.account, "account", "", "id of the account to authorize or check (default: the file's only account)")
	fs.BoolVar(&o.device, "device", false, "use the device flow: a code to enter on another device (RFC 8628)")
	fs.BoolVar(&o.check, "check", false, "get an access token and log in to the SMTP server, sending nothing; print what is wrong")
	fs.IntVar(&o.port, "port", 0, "port of the loopback redirect on 127.0.0.1 (default: random)")
	fs.DurationVar(&o.timeout, "timeout", DefaultTimeout, "how long to wait for the consent")
	fs.BoolVar(&o.verbose, "v", false, "log what happens (tokens and secrets never appear) to stderr")
	devInsecure := false
	if v := getenv(worker.EnvDevInsecureTokenStore); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("%s: %q is not a boolean (1, true, 0, false)", worker.EnvDevInsecureTokenStore, v)
		}
		devInsecure = b
	}
	fs.BoolVar(&o.devInsecureTokenStore, "dev-insecure-token-store", devInsecure,
		"DEVELOPMENT ONLY: without a token key, store the refresh token in Redis in plaintext (env "+worker.EnvDevInsecureTokenStore+"=1)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: authorize -accounts FILE -account ID [-device | -check]\n\n"+
			"Redis: REDIS_URL (default %s)\nToken encryption key (one of): %s, %s, %s\n\n",
			redisconn.DefaultURL, ledger.EnvTokenKey, ledger.EnvTokenKeys, ledger.EnvTokenKeyFile)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.accountsFile == "":
		return o, errors.New("-accounts: an accounts file is required (or set SENDQ_ACCOUNTS)")
	case o.device && o.check:
		return o, errors.New("-device and -check: choose one")
	case o.port < 0 || o.port > 65535:
		return o, fmt.Errorf("-port: %d is out of range 0-65535", o.port)
	case o.timeout <= 0:
		return o, fmt.Errorf("-timeout: %v is not positive", o.timeout)
	}
	var err error
	if o.redis, o.redisDesc, err = redisconn.FromEnv(getenv); err != nil {
		return o, err
	}
	o.ledgerPrefix = getenv("SENDQ_LEDGER_PREFIX")
	if o.tokenKeys, err = ledger.LoadKeyring(getenv); err != nil {
		return o, err
	}
	if o.tokenKeys == nil && !o.devInsecureTokenStore {
		return o, errNoTokenKeys
	}
	return o, nil
}

// errNoTokenKeys says how to give authorize the workers' token key.
var errNoTokenKeys = errors.New("no token encryption key: set the workers' key in " + ledger.EnvTokenKey + ", " +
	ledger.EnvTokenKeys + " or " + ledger.EnvTokenKeyFile + "; or, with workers run with -dev-insecure-token-store, run with it too (" +
	worker.EnvDevInsecureTokenStore + "=1)")

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if o.verbose {
		logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	file, err := loadAccounts(o.accountsFile, o.account, getenv)
	if err != nil {
		return err
	}
	a, err := pickAccount(file, o.account)
	if err != nil {
		return err
	}

	rdb, err := redisconn.Client(o.redis)
	if err != nil {
		return err
	}
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return fmt.Errorf("redis at %s: %w (REDIS_URL says where it is)", o.redisDesc, err)
	}
	store := ledger.New(rdb, ledger.Options{
		Prefix:                  o.ledgerPrefix,
		TokenKeys:               o.tokenKeys,
		InsecurePlaintextTokens: o.devInsecureTokenStore,
	})
	if o.check {
		return check(ctx, o, file, a, store, logger, stdout)
	}
	return authorize(ctx, o, a, store, stdout)
}

// loadAccounts reads the accounts file like the worker, with secrets from
// getenv. When the file has problems and id is set, it tries again with
// account id alone, so that another account's missing secret does not stop
// this one's onboarding; if that fails too, the whole file's problems are
// reported.
func loadAccounts(path, id string, getenv func(string) string) (*accounts.File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	opts := accounts.ParseOptions{Name: path, BaseDir: filepath.Dir(path), Getenv: getenv}
	f, err := accounts.Parse(data, opts)
	if err == nil || id == "" {
		return f, err
	}
	if only, ok := onlyAccount(data, id); ok {
		if f, err2 := accounts.Parse(only, opts); err2 == nil {
			return f, nil
		}
	}
	return nil, err
}

// onlyAccount returns the accounts file data with account id alone in its
// accounts list.
func onlyAccount(data []byte, id string) ([]byte, bool) {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, false
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, false
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "accounts" || top.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		list := top.Content[i+1]
		for _, item := range list.Content {
			var a struct {
				ID string `yaml:"id"`
			}
			if item.Decode(&a) == nil && a.ID == id {
				list.Content = []*yaml.Node{item}
				var buf bytes.Buffer
				enc := yaml.NewEncoder(&buf)
				if enc.Encode(&doc) != nil || enc.Close() != nil {
					return nil, false
				}
				return buf.Bytes(), true
			}
		}
	}
	return nil, false
}

// pickAccount returns account id of f, or f's only account when id is "".
func pickAccount(f *accounts.File, id string) (*accounts.Account, error) {
	if id == "" {
		all := f.Accounts()
		if len(all) != 1 {
			return nil, fmt.Errorf("-account: required, the accounts file has %d accounts", len(all))
		}
		return all[0], nil
	}
	a, ok := f.Account(id)
	if !ok {
		return nil, fmt.Errorf("-account: no account %q in the accounts file", id)
	}
	return a, nil
}
