package opsweb_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendq/sendq/opsweb"
	"github.com/sendq/sendq/smtpoauth"
)

// secret converts a test string to a Secret.
func secret(s string) smtpoauth.Secret { return smtpoauth.Secret(s) }

func TestPasswordFromEnv(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "password")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    string
		wantErr string
	}{
		{name: "Unset"},
		{name: "FromEnvironment", env: map[string]string{opsweb.EnvPassword: "from-env"}, want: "from-env"},
		{name: "FromFileWithoutTrailingNewline", env: map[string]string{opsweb.EnvPasswordFile: file}, want: "from-file"},
		{name: "BothSet", env: map[string]string{opsweb.EnvPassword: "a", opsweb.EnvPasswordFile: file}, wantErr: "are both set"},
		{name: "MissingFile", env: map[string]string{opsweb.EnvPasswordFile: filepath.Join(dir, "nope")}, wantErr: "SENDQ_HTTP_PASSWORD_FILE: open"},
		{name: "EmptyFile", env: map[string]string{opsweb.EnvPasswordFile: empty}, wantErr: "is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := opsweb.PasswordFromEnv(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("PasswordFromEnv = %v, want error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("PasswordFromEnv = %q, %v; want %q", string(got), err, tc.want)
			}
			if tc.want != "" && strings.Contains(fmt.Sprint(got), tc.want) {
				t.Errorf("the password prints as %v", got)
			}
		})
	}
}
