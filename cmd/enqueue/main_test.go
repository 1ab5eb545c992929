package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

// TestEverySubcommandAnswersHelp runs each subcommand with -h: it must print
// its usage and its flags to stderr, nothing to stdout, return
// flag.ErrHelp (exit status 0) and touch no Redis (REDIS_URL points at a
// closed port).
func TestEverySubcommandAnswersHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args  []string
		usage string
		flags []string
	}{
		{nil, "usage: enqueue [send]", []string{"-account", "-to", "-queue", "-idempotency-key"}},
		{[]string{"send"}, "usage: enqueue [send]", []string{"-account", "-to", "-queue", "-idempotency-key"}},
		{[]string{"status"}, "usage: enqueue status", []string{"-queue", "-json"}},
		{[]string{"dead"}, "usage: enqueue dead", []string{"-limit", "-offset", "-json"}},
		{[]string{"requeue"}, "usage: enqueue requeue", []string{"-all"}},
		{[]string{"account"}, "usage: enqueue account status", []string{"enqueue account list", "enqueue account resume"}},
		{[]string{"account", "status"}, "usage: enqueue account status", []string{"-json"}},
		{[]string{"account", "list"}, "usage: enqueue account status", []string{"-json"}},
		{[]string{"account", "resume"}, "usage: enqueue account status", nil},
		{[]string{"stats"}, "usage: enqueue stats", []string{"-queue", "-accounts", "-json"}},
	} {
		for _, h := range []string{"-h", "-help", "--help"} {
			args := append(append([]string(nil), tc.args...), h)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				var stdout, stderr bytes.Buffer
				e := env{getenv: func(k string) string {
					if k == "REDIS_URL" {
						return "redis://127.0.0.1:1/0"
					}
					return ""
				}, stdin: strings.NewReader("")}
				err := run(context.Background(), args, e, &stdout, &stderr)
				if !errors.Is(err, flag.ErrHelp) {
					t.Errorf("error %v, want flag.ErrHelp", err)
				}
				if code := exitStatus(err, &bytes.Buffer{}); code != 0 {
					t.Errorf("exit status %d, want 0", code)
				}
				if stdout.Len() > 0 {
					t.Errorf("printed to stdout: %q", stdout.String())
				}
				if !strings.HasPrefix(stderr.String(), tc.usage) {
					t.Errorf("stderr does not start with %q:\n%s", tc.usage, stderr.String())
				}
				for _, f := range tc.flags {
					if !strings.Contains(stderr.String(), f) {
						t.Errorf("usage does not mention %s:\n%s", f, stderr.String())
					}
				}
			})
		}
	}
	if _, ok := subcommands["stats"]; !ok || len(subcommands) != 6 {
		t.Errorf("subcommands %v: a new one needs a row here", subcommands)
	}
}

func TestExitStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err    error
		status int
		stderr string
	}{
		{nil, 0, ""},
		{flag.ErrHelp, 0, ""},
		{fmt.Errorf("account: %w", flag.ErrHelp), 0, ""},
		{errors.New("status: no task ID given"), 1, "enqueue: status: no task ID given\n"},
	} {
		var stderr bytes.Buffer
		if got := exitStatus(tc.err, &stderr); got != tc.status || stderr.String() != tc.stderr {
			t.Errorf("exitStatus(%v) = %d, stderr %q; want %d, %q", tc.err, got, stderr.String(), tc.status, tc.stderr)
		}
	}
}
