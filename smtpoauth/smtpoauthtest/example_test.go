package smtpoauthtest_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// xoauth2 is a minimal XOAUTH2 client for the example; real code uses
// smtpoauth.NewXOAUTH2Client.
type xoauth2 struct{ user, token string }

func (a xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + a.user + "\x01auth=Bearer " + a.token + "\x01\x01"), nil
}

func (a xoauth2) Next([]byte) ([]byte, error) { return []byte{}, nil }

var _ sasl.Client = xoauth2{}

func ExampleNewServer() {
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	defer srv.Close()

	// What the user's consent would have produced.
	srv.AddClient("my-app", "s3cret")
	refreshToken := srv.NewRefreshToken("my-app", "alice@example.com")

	// An ordinary x/oauth2 client gets an access token from TokenURL.
	conf := &oauth2.Config{
		ClientID:     "my-app",
		ClientSecret: "s3cret",
		Endpoint:     oauth2.Endpoint{TokenURL: srv.TokenURL},
	}
	ctx := context.Background()
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
	if err != nil {
		fmt.Println("token:", err)
		return
	}

	// Submit over STARTTLS, trusting the server's generated CA.
	c, err := smtp.DialStartTLS(srv.SMTPAddr, &tls.Config{RootCAs: srv.CertPool(), ServerName: "localhost"})
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.Close()
	if err := c.Auth(xoauth2{"alice@example.com", tok.AccessToken}); err != nil {
		fmt.Println("auth:", err)
		return
	}
	msg := "Subject: hello\r\n\r\nHi Bob.\r\n"
	if err := c.SendMail("alice@example.com", []string{"bob@example.net"}, strings.NewReader(msg)); err != nil {
		fmt.Println("send:", err)
		return
	}
	c.Quit()

	msgs, err := srv.WaitMessages(ctx, 1)
	if err != nil {
		fmt.Println("wait:", err)
		return
	}
	m := msgs[0]
	fmt.Println(m.Username, m.From, m.To)
	fmt.Printf("%q\n", m.Data)
	st := srv.Stats()
	fmt.Println("grants:", st.TokenGrants[smtpoauthtest.GrantRefreshToken], "logins:", st.Logins)
	// Output:
	// alice@example.com alice@example.com [bob@example.net]
	// "Subject: hello\r\n\r\nHi Bob.\r\n"
	// grants: 1 logins: 1
}
