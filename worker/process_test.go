package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// processEnv names the environment variable that turns the test binary into
// a worker process: tests that need real processes (to kill one with
// SIGKILL) start the test binary again with it set to a processConfig.
const processEnv = "SENDQ_TEST_WORKER_PROCESS"

// processConfig is what a worker process started by startProcess runs with.
type processConfig struct {
	AccountsFile string            `json:"accounts_file"`
	Env          map[string]string `json:"env"` // secrets named by the accounts file
	Queue        string            `json:"queue"`
	LedgerPrefix string            `json:"ledger_prefix"`
	Concurrency  int               `json:"concurrency"`
	RetryBase    time.Duration     `json:"retry_base"`
	RetryCap     time.Duration     `json:"retry_cap"`
	HeldRecheck  time.Duration     `json:"held_recheck"`
	AuthBackoff  time.Duration     `json:"auth_backoff"`
	GrantWindow  time.Duration     `json:"grant_window"`
	RedisAddr    string            `json:"redis_addr"` // default: the shared test server, DB redisDB
	SessionLease time.Duration     `json:"session_lease"`
	TokenLockTTL time.Duration     `json:"token_lock_ttl"`
}

func TestMain(m *testing.M) {
	if cfg := os.Getenv(processEnv); cfg != "" {
		os.Exit(runProcess(cfg))
	}
	os.Exit(m.Run())
}

// runProcess is the main of a worker process started by startProcess.
func runProcess(raw string) int {
	var pc processConfig
	if err := json.Unmarshal([]byte(raw), &pc); err != nil {
		fmt.Fprintln(os.Stderr, "worker process:", err)
		return 2
	}
	file, err := accounts.Load(pc.AccountsFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker process:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var redisOpt asynq.RedisConnOpt = redistest.ConnOpt(redisDB)
	if pc.RedisAddr != "" {
		redisOpt = asynq.RedisClientOpt{Addr: pc.RedisAddr}
	}
	w, err := New(Config{
		Redis:       redisOpt,
		Accounts:    file,
		Queues:      map[string]int{pc.Queue: 1},
		Concurrency: pc.Concurrency,
		Retry:       tasks.RetryPolicy{Base: pc.RetryBase, Cap: pc.RetryCap, HeldRecheck: pc.HeldRecheck},
		Ledger: ledger.Options{Prefix: pc.LedgerPrefix, AuthBackoff: pc.AuthBackoff,
			MaxAuthBackoff: 4 * pc.AuthBackoff, InsecurePlaintextTokens: true, SessionLease: pc.SessionLease},
		TokenSharing:          accounts.RegistryOptions{TokenLockTTL: pc.TokenLockTTL},
		InvalidGrantWindow:    pc.GrantWindow,
		DevInsecureTokenStore: true,
		Logger:                slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: processLogLevel()})),
		ShutdownTimeout:       5 * time.Second,
		pollInterval:          50 * time.Millisecond,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker process:", err)
		return 2
	}
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "worker process:", err)
		return 1
	}
	return 0
}

// process is a worker process started by startProcess.
type process struct {
	cmd  *exec.Cmd
	done chan error
}

// startProcess runs the test binary as a worker process with pc until the
// test ends (SIGTERM) or it is killed.
func startProcess(t *testing.T, pc processConfig, logs io.Writer) *process {
	t.Helper()
	raw, err := json.Marshal(pc)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), processEnv+"="+string(raw))
	for k, v := range pc.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// signal sends sig to the process (SIGSTOP and SIGCONT pause and resume
// it).
func (p *process) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// kill ends the process with SIGKILL, as a crash would.
func (p *process) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
	p.done <- nil // for the cleanup
}

// writeProcessAccounts registers one delegated account per user ("acct-"+user,
// mailbox user@example.com) with srv and writes the accounts file worker
// processes load. It returns the file and the environment holding its
// secrets.
func writeProcessAccounts(t *testing.T, srv *smtpoauthtest.Server, users ...string) (string, map[string]string) {
	t.Helper()
	return writeProcessAccountsWith(t, srv, nil, users...)
}

// writeProcessAccountsWith is writeProcessAccounts with extra YAML lines
// (such as a limits block) for some users' accounts.
func writeProcessAccountsWith(t *testing.T, srv *smtpoauthtest.Server, extra map[string]string, users ...string) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	srv.AddClient("client", "secret")
	env := map[string]string{"CLIENT_SECRET": "secret"}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), srv.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(srv.SMTPAddr)
	var yaml strings.Builder
	yaml.WriteString("accounts:\n")
	for _, u := range users {
		env["RT_"+strings.ToUpper(u)] = srv.NewRefreshToken("client", u+"@example.com")
		fmt.Fprintf(&yaml, `  - id: acct-%[1]s
    provider: generic
    username: %[1]s@example.com
    smtp: {host: %[2]s, port: %[3]s, tls: starttls, ca_file: ca.pem}
    oauth: {grant: refresh_token, client_id: client, client_secret_env: CLIENT_SECRET, refresh_token_env: RT_%[4]s, token_url: %[5]s}
`, u, host, port, strings.ToUpper(u), srv.TokenURL)
		if x := extra[u]; x != "" {
			fmt.Fprintf(&yaml, "    %s\n", x)
		}
	}
	file := filepath.Join(dir, "accounts.yaml")
	if err := os.WriteFile(file, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, env
}

// processLogLevel is the worker processes' log level: warnings, or what
// SENDQ_TEST_PROCESS_LOG names (debug, info) when a run needs a closer look.
func processLogLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("SENDQ_TEST_PROCESS_LOG"))); err != nil {
		return slog.LevelWarn
	}
	return l
}
