package smtpoauth_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/sendq/sendq/smtpoauth"
)

func TestSecretNeverPrintsItsValue(t *testing.T) {
	t.Parallel()
	const value = "hunter2-very-secret"
	s := smtpoauth.Secret(value)
	type config struct {
		User   string
		Secret smtpoauth.Secret
	}
	cfg := config{User: "alice", Secret: s}

	tests := []struct {
		name string
		out  func() string
	}{
		{"PercentS", func() string { return fmt.Sprintf("%s", s) }},
		{"PercentV", func() string { return fmt.Sprintf("%v", s) }},
		{"PercentPlusV", func() string { return fmt.Sprintf("%+v", s) }},
		{"PercentSharpV", func() string { return fmt.Sprintf("%#v", s) }},
		{"PercentQ", func() string { return fmt.Sprintf("%q", s) }},
		{"PercentX", func() string { return fmt.Sprintf("%x", s) }},
		{"PercentD", func() string { return fmt.Sprintf("%d", s) }},
		{"String", s.String},
		{"GoString", s.GoString},
		{"InStructPlusV", func() string { return fmt.Sprintf("%+v", cfg) }},
		{"InStructSharpV", func() string { return fmt.Sprintf("%#v", cfg) }},
		{"InError", func() string { return fmt.Errorf("login with %v", s).Error() }},
		{"JSON", func() string {
			b, err := json.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}},
		{"SlogText", func() string {
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("token", "secret", s)
			return buf.String()
		}},
		{"SlogJSON", func() string {
			var buf bytes.Buffer
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("token", slog.Any("secret", s))
			return buf.String()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := tt.out()
			if strings.Contains(out, value) {
				t.Errorf("output contains the secret: %s", out)
			}
			if !strings.Contains(out, "[redacted]") {
				t.Errorf("output does not say [redacted]: %s", out)
			}
		})
	}
}

func TestSecretConvertsBackToItsValue(t *testing.T) {
	t.Parallel()
	s := smtpoauth.Secret("abc")
	if string(s) != "abc" {
		t.Errorf("string(s) = %q, want abc", string(s))
	}
	if s.IsZero() || !smtpoauth.Secret("").IsZero() {
		t.Error("IsZero is wrong")
	}
}
