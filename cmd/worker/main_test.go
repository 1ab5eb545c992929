package main

import (
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/metrics"
)

func TestParseFlags(t *testing.T) {
	t.Parallel()
	raw := make([]byte, ledger.TokenKeySize)
	rand.Read(raw)
	key := base64.StdEncoding.EncodeToString(raw)
	keyFile := filepath.Join(t.TempDir(), "token.keys")
	if err := os.WriteFile(keyFile, []byte("2026-03:"+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	passwordFile := filepath.Join(t.TempDir(), "http.password")
	if err := os.WriteFile(passwordFile, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withKey := func(env map[string]string) map[string]string {
		out := map[string]string{"SENDQ_TOKEN_KEY": key}
		maps.Copy(out, env)
		return out
	}
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    func(options) bool
		wantErr string
	}{
		{name: "Defaults", args: []string{"-accounts", "a.yaml"}, env: withKey(nil),
			want: func(o options) bool {
				return o.accountsFile == "a.yaml" && o.concurrency == 10 && maps.Equal(o.queues, map[string]int{"email": 1}) &&
					o.shutdownTimeout == 30*time.Second && o.redisDesc == "redis://127.0.0.1:6379/0" && o.logFormat == "text" && o.logLevel == slog.LevelInfo
			}},
		{name: "EnvironmentDefaults", env: withKey(map[string]string{"SENDQ_ACCOUNTS": "b.yaml", "SENDQ_CONCURRENCY": "50",
			"SENDQ_QUEUES": "critical=6,email=3,low", "REDIS_URL": "rediss://user:pw@redis:6380/2", "SENDQ_LOG_FORMAT": "json"}),
			want: func(o options) bool {
				return o.accountsFile == "b.yaml" && o.concurrency == 50 &&
					maps.Equal(o.queues, map[string]int{"critical": 6, "email": 3, "low": 1}) &&
					o.redisDesc == "rediss://redis:6380/2" && o.logFormat == "json"
			}},
		{name: "FlagsBeatEnvironment", args: []string{"-accounts", "c.yaml", "-concurrency", "3"},
			env:  withKey(map[string]string{"SENDQ_ACCOUNTS": "b.yaml", "SENDQ_CONCURRENCY": "50"}),
			want: func(o options) bool { return o.accountsFile == "c.yaml" && o.concurrency == 3 }},
		{name: "RetryPolicyFromFlagsAndEnvironment", args: []string{"-accounts", "a", "-dev-insecure-token-store", "-retry-base", "30s", "-max-attempts", "50"},
			env: map[string]string{"SENDQ_RETRY_CAP": "2h", "SENDQ_QUEUE_LIFETIME": "72h", "SENDQ_LEDGER_PREFIX": "mail:"},
			want: func(o options) bool {
				return o.retry.Base == 30*time.Second && o.retry.Cap == 2*time.Hour && o.retry.MaxAttempts == 50 &&
					o.retry.Lifetime == 72*time.Hour && o.ledgerPrefix == "mail:"
			}},
		{name: "RetryCapBelowBase", args: []string{"-accounts", "a", "-dev-insecure-token-store", "-retry-base", "2h", "-retry-cap", "1h"}, wantErr: "-retry-cap 1h0m0s is below -retry-base 2h0m0s"},
		{name: "BadMaxAttempts", args: []string{"-accounts", "a", "-dev-insecure-token-store", "-max-attempts", "0"}, wantErr: "-max-attempts"},
		{name: "AccountsRequired", wantErr: "-accounts: an accounts file is required"},
		{name: "BadConcurrency", args: []string{"-accounts", "a", "-concurrency", "0"}, wantErr: "-concurrency"},
		{name: "BadQueueWeight", args: []string{"-accounts", "a", "-queues", "email=x"}, wantErr: `-queues: queue "email": weight "x"`},
		{name: "BadLogFormat", args: []string{"-accounts", "a", "-log-format", "xml"}, wantErr: "-log-format"},
		{name: "BadShutdownTimeout", args: []string{"-accounts", "a", "-shutdown-timeout", "soon"}, wantErr: "-shutdown-timeout"},
		{name: "StrayArgument", args: []string{"-accounts", "a", "extra"}, wantErr: `unexpected argument "extra"`},
		{name: "TokenKeyFromEnvironment", args: []string{"-accounts", "a"}, env: withKey(nil),
			want: func(o options) bool {
				return o.tokenKeys != nil && o.tokenKeys.Current() == ledger.DeriveKeyID(raw) && !o.devInsecureTokenStore
			}},
		{name: "TokenKeyring", args: []string{"-accounts", "a"}, env: map[string]string{"SENDQ_TOKEN_KEYS": "new:" + key + ",old:" + key},
			want: func(o options) bool {
				return o.tokenKeys != nil && slices.Equal(o.tokenKeys.IDs(), []string{"new", "old"})
			}},
		{name: "TokenKeyFile", args: []string{"-accounts", "a"}, env: map[string]string{"SENDQ_TOKEN_KEY_FILE": keyFile},
			want: func(o options) bool { return o.tokenKeys != nil && o.tokenKeys.Current() == "2026-03" }},
		{name: "NoTokenKeyIsRefused", args: []string{"-accounts", "a"},
			wantErr: "-dev-insecure-token-store (SENDQ_DEV_INSECURE_TOKEN_STORE=1)"},
		{name: "DevFlagAllowsNoKey", args: []string{"-accounts", "a", "-dev-insecure-token-store"},
			want: func(o options) bool { return o.tokenKeys == nil && o.devInsecureTokenStore }},
		{name: "DevEnvironmentAllowsNoKey", args: []string{"-accounts", "a"}, env: map[string]string{"SENDQ_DEV_INSECURE_TOKEN_STORE": "1"},
			want: func(o options) bool { return o.tokenKeys == nil && o.devInsecureTokenStore }},
		{name: "DevFlagBeatsEnvironment", args: []string{"-accounts", "a", "-dev-insecure-token-store=false"},
			env: map[string]string{"SENDQ_DEV_INSECURE_TOKEN_STORE": "true"}, wantErr: "no token encryption key"},
		{name: "KeyWithDevFlagEncrypts", args: []string{"-accounts", "a", "-dev-insecure-token-store"}, env: withKey(nil),
			want: func(o options) bool { return o.tokenKeys != nil && o.devInsecureTokenStore }},
		{name: "BadDevEnvironment", args: []string{"-accounts", "a"}, env: map[string]string{"SENDQ_DEV_INSECURE_TOKEN_STORE": "yes please"},
			wantErr: `SENDQ_DEV_INSECURE_TOKEN_STORE: "yes please" is not a boolean`},
		{name: "TwoKeySources", args: []string{"-accounts", "a"}, env: withKey(map[string]string{"SENDQ_TOKEN_KEY_FILE": keyFile}),
			wantErr: "set only one of SENDQ_TOKEN_KEY, SENDQ_TOKEN_KEY_FILE"},
		{name: "HTTPListenerDefaults", args: []string{"-accounts", "a"}, env: withKey(nil),
			want: func(o options) bool {
				return o.httpAddr == "127.0.0.1:8080" && o.httpPassword.IsZero() && !o.monitoringReadOnly
			}},
		{name: "HTTPListenerFromEnvironment", args: []string{"-accounts", "a"},
			env: withKey(map[string]string{"SENDQ_HTTP_ADDR": "0.0.0.0:9090", "SENDQ_HTTP_USER": "ops",
				"SENDQ_HTTP_PASSWORD_FILE": passwordFile, "SENDQ_MONITORING_READONLY": "1"}),
			want: func(o options) bool {
				return o.httpAddr == "0.0.0.0:9090" && o.httpUser == "ops" && !o.httpPassword.IsZero() && o.monitoringReadOnly
			}},
		{name: "PollInterval", args: []string{"-accounts", "a", "-poll-interval", "200ms"}, env: withKey(nil),
			want: func(o options) bool { return o.pollInterval == 200*time.Millisecond }},
		{name: "BadPollInterval", args: []string{"-accounts", "a", "-poll-interval", "0s"}, env: withKey(nil), wantErr: "-poll-interval"},
		{name: "HTTPListenerOff", args: []string{"-accounts", "a", "-http", ""}, env: withKey(map[string]string{"SENDQ_HTTP_ADDR": "0.0.0.0:9090"}),
			want: func(o options) bool { return o.httpAddr == "" }},
		{name: "BadTokenKey", args: []string{"-accounts", "a"}, env: map[string]string{"SENDQ_TOKEN_KEY": key[:20]},
			wantErr: "SENDQ_TOKEN_KEY: parse keyring: entry 1: not the base64 of 32 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o, err := parseFlags(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), key[:12]) {
					t.Errorf("error shows key material: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(o) {
				t.Errorf("options %+v", o)
			}
		})
	}
}

func TestOpsListenerOffLoopbackNeedsAPassword(t *testing.T) {
	t.Parallel()
	raw := make([]byte, ledger.TokenKeySize)
	rand.Read(raw)
	env := map[string]string{"SENDQ_TOKEN_KEY": base64.StdEncoding.EncodeToString(raw)}
	o, err := parseFlags([]string{"-accounts", "a", "-http", "0.0.0.0:0"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var loaded atomic.Bool
	stop, err := startOpsListener(o, metrics.New(), &loaded, slog.New(slog.DiscardHandler))
	if err == nil {
		stop()
		t.Fatal("the listener started on every interface without a password")
	}
	if !strings.Contains(err.Error(), "-http 0.0.0.0:0") {
		t.Errorf("error %q does not name the flag", err)
	}
}
