package main

import (
	"bufio"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/accounts"
)

// TestSandboxWritesUsableAccounts starts the sandbox, waits for its ready
// line, and checks that the accounts file it wrote loads and that each
// account can get a token from it.
func TestSandboxWritesUsableAccounts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-dir", dir, "-rotate"}, pw, io.Discard)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sandbox: %v", err)
		}
	})

	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	select {
	case l := <-lines:
		if !strings.HasPrefix(l, "ready ") {
			t.Fatalf("first line %q, want ready …", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ready line")
	}

	file, err := accounts.Load(filepath.Join(dir, "accounts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"demo", "demo-app"} {
		a, ok := file.Account(id)
		if !ok {
			t.Fatalf("no account %q", id)
		}
		ts, err := a.TokenSource(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ts.Token(); err != nil {
			t.Errorf("%s: token: %v", id, err)
		}
	}
}

func TestParseFlagsRejects(t *testing.T) {
	t.Parallel()
	for name, args := range map[string][]string{
		"UnknownFlavor": {"-flavor", "yahoo"},
		"ShortLifetime": {"-token-lifetime", "10ms"},
		"BadLogFormat":  {"-log-format", "xml"},
		"StrayArgument": {"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%s: %v accepted", name, args)
		}
	}
}
