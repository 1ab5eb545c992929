package smtpoauthtest_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestFixedPortsAndHTTPS(t *testing.T) {
	t.Parallel()
	httpPort, smtpPort, smtpsPort := freePort(t), freePort(t), freePort(t)
	srv, err := smtpoauthtest.Start(smtpoauthtest.Config{
		ListenHost: "127.0.0.1", HTTPPort: httpPort, SMTPPort: smtpPort, SMTPSPort: smtpsPort, HTTPS: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if want := "https://127.0.0.1:" + strconv.Itoa(httpPort) + "/token"; srv.TokenURL != want {
		t.Errorf("TokenURL %q, want %q", srv.TokenURL, want)
	}
	if !strings.HasSuffix(srv.SMTPAddr, ":"+strconv.Itoa(smtpPort)) || !strings.HasSuffix(srv.SMTPSAddr, ":"+strconv.Itoa(smtpsPort)) {
		t.Errorf("SMTPAddr %s, SMTPSAddr %s: not on the ports asked for", srv.SMTPAddr, srv.SMTPSAddr)
	}

	srv.AddClient("c", "s")
	rt := srv.NewRefreshToken("c", "u@example.com")
	cfg := &oauth2.Config{ClientID: "c", ClientSecret: "s", Endpoint: oauth2.Endpoint{TokenURL: srv.TokenURL}}
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: srv.CertPool()}}}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, trusting)
	if _, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token(); err != nil {
		t.Errorf("token over https with the server's CA: %v", err)
	}
	if _, err := cfg.TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt}).Token(); err == nil {
		t.Error("token over https without trusting the CA succeeded")
	}
}
