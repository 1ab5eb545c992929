package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if raw := os.Getenv(workerProcessEnv); raw != "" {
		os.Exit(runWorkerProcess(raw))
	}
	os.Exit(m.Run())
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name    string
		args    []string
		getenv  func(string) string
		check   func(t *testing.T, c config)
		wantErr string
	}{
		{name: "DefaultsAreTheFullRun", getenv: env(), check: func(t *testing.T, c config) {
			if c.Messages != DefaultMessages || c.Rounds != DefaultRounds || !slices.Equal(c.Concurrency, []int{10, 50}) ||
				c.DB != DefaultDB || c.RedisAddr != DefaultRedisAddr || c.Out != DefaultOut || c.Smoke {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "EnvironmentSetsMessagesAndRedis", getenv: env("SENDQ_BENCH_N", "500", "REDIS_ADDR", "10.0.0.1:6380"), check: func(t *testing.T, c config) {
			if c.Messages != 500 || c.RedisAddr != "10.0.0.1:6380" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "FlagsWinOverEnvironment", args: []string{"-n", "2000", "-c", "4, 8,100"}, getenv: env("SENDQ_BENCH_N", "500"), check: func(t *testing.T, c config) {
			if c.Messages != 2000 || !slices.Equal(c.Concurrency, []int{4, 8, 100}) {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "SmokeIsSmallOneRoundAndWritesNothing", args: []string{"-smoke"}, getenv: env(), check: func(t *testing.T, c config) {
			if c.Messages != smokeMessages || c.EnqueueN != smokeEnqueueN || c.Rounds != 1 || c.IdleSamples != 1 || c.Out != "" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "SmokeKeepsExplicitFlags", args: []string{"-smoke", "-n", "50", "-rounds", "2"}, getenv: env(), check: func(t *testing.T, c config) {
			if c.Messages != 50 || c.Rounds != 2 {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "BadEnvironmentNamesTheVariable", getenv: env("SENDQ_BENCH_N", "many"), wantErr: "SENDQ_BENCH_N"},
		{name: "ZeroMessagesNamesTheFlag", args: []string{"-n", "0"}, getenv: env(), wantErr: "-n: 0"},
		{name: "BadConcurrencyNamesTheFlag", args: []string{"-c", "10,x"}, getenv: env(), wantErr: `-c: "x"`},
		{name: "EndToEndOnlyWritesNoFile", args: []string{"-e2e-only", "sendq, naive"}, getenv: env(), check: func(t *testing.T, c config) {
			if !slices.Equal(c.EndToEndOnly, []string{"sendq", "naive"}) || c.Out != "" {
				t.Errorf("EndToEndOnly %q, Out %q; want [sendq naive] and no file", c.EndToEndOnly, c.Out)
			}
		}},
		{name: "EndToEndOnlyNamesAnUnknownConsumer", args: []string{"-e2e-only", "sendq,fast"}, getenv: env(), wantErr: `-e2e-only: "fast"`},
		{name: "StrayArgumentIsRefused", args: []string{"extra"}, getenv: env(), wantErr: "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseFlags(tc.args, tc.getenv, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestParseVmHWM(t *testing.T) {
	t.Parallel()
	status := "Name:\tbench\nVmPeak:\t  812345 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n"
	got, err := parseVmHWM(strings.NewReader(status))
	if err != nil || got != 23456*1024 {
		t.Fatalf("parseVmHWM = %d, %v; want %d", got, err, 23456*1024)
	}
	if _, err := parseVmHWM(strings.NewReader("Name:\tbench\n")); err == nil {
		t.Fatal("no VmHWM line: want an error")
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(d, tc.p); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
}

// TestSmoke runs the whole benchmark in smoke mode against the test Redis,
// so that it keeps compiling and working.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the benchmark in smoke mode: a few hundred messages")
	}
	var out, errs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Fewer messages than -smoke's own and one concurrency, for the race
	// detector's sake: every worker takes a second or so to stop.
	if err := run(ctx, []string{"-smoke", "-n", "100", "-enqueue-n", "100", "-c", "10"}, &out, &errs); err != nil {
		t.Fatalf("bench -smoke: %v\n%s", err, errs.String())
	}
	table := out.String()
	for _, want := range []string{
		"| Enqueue, one goroutine: tasks.Client.Enqueue |",
		"| End to end, concurrency 10, vs naive pooled go-smtp |",
		"| CPU per message (bench process + Redis), concurrency 10:",
		"| Token grants per account per token lifetime (3 worker processes) |",
		"| Worker peak RSS",
		"| Idle pickup",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table has no %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "PASS") || strings.Contains(table, "MISS") {
		t.Errorf("smoke mode judged targets:\n%s", table)
	}
	t.Logf("\n%s", table)
}

func TestKeptNotesSurviveANewRun(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "RESULTS.md")
	if got := keptNotes(path); got != "" {
		t.Errorf("keptNotes of a missing file = %q", got)
	}
	if err := os.WriteFile(path, []byte("| old table |\n\n"+notesMarker+"\n## Before and after\nfigures\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := keptNotes(path), "\n"+notesMarker+"\n## Before and after\nfigures\n"; got != want {
		t.Errorf("keptNotes = %q, want %q", got, want)
	}
}
