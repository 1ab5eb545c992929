package opsweb

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/sendq/sendq/smtpoauth"
)

// PasswordFromEnv reads the basic auth password from EnvPassword or from the
// file EnvPasswordFile names (one trailing newline is dropped). Neither set
// returns an empty Secret; both set is an error.
func PasswordFromEnv(getenv func(string) string) (smtpoauth.Secret, error) {
	pw, file := getenv(EnvPassword), getenv(EnvPasswordFile)
	switch {
	case pw != "" && file != "":
		return "", fmt.Errorf("%s and %s are both set: use one", EnvPassword, EnvPasswordFile)
	case pw != "":
		return smtpoauth.Secret(pw), nil
	case file == "":
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", EnvPasswordFile, err)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty", EnvPasswordFile, file)
	}
	return smtpoauth.Secret(s), nil
}

// basicAuth wraps next with HTTP basic auth for user and password, compared
// in constant time (over SHA-256 digests, so lengths do not leak either).
func (h *Handler) basicAuth(next http.Handler) http.Handler {
	if h.cfg.Password.IsZero() {
		return next
	}
	wantUser := sha256.Sum256([]byte(h.cfg.User))
	wantPass := sha256.Sum256([]byte(h.cfg.Password))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		gotUser := sha256.Sum256([]byte(user))
		gotPass := sha256.Sum256([]byte(pass))
		match := subtle.ConstantTimeCompare(gotUser[:], wantUser[:]) & subtle.ConstantTimeCompare(gotPass[:], wantPass[:])
		if !ok || match != 1 {
			if ok { // a browser's first request carries no credentials: not worth a log line
				h.log.Warn("opsweb: basic auth refused", "remote", r.RemoteAddr, "path", r.URL.Path)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="sendq", charset="UTF-8"`)
			http.Error(w, "401 unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
