package smtpoauth_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func ExampleNewXOAUTH2Client() {
	c := smtpoauth.NewXOAUTH2Client("alice@example.com", "ya29.token")
	mech, ir, err := c.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(mech)
	fmt.Printf("%q\n", ir)
	fmt.Println(base64.StdEncoding.EncodeToString(ir))

	// Gmail's answer to a stale token: a JSON error challenge. The client
	// answers with an empty response, so the server sends its final reply.
	resp, err := c.Next([]byte(`{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`))
	fmt.Printf("%q %v\n", resp, err)
	// Output:
	// XOAUTH2
	// "user=alice@example.com\x01auth=Bearer ya29.token\x01\x01"
	// dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnRva2VuAQE=
	// "" <nil>
}

func ExampleNewOAuthBearerClient() {
	c := smtpoauth.NewOAuthBearerClient("alice@example.com", "ya29.token", "smtp.gmail.com", 587)
	mech, ir, _ := c.Start()
	fmt.Println(mech)
	fmt.Printf("%q\n", ir)

	// On the error challenge RFC 7628 has the client send 0x01, "AQ==" on
	// the wire.
	resp, _ := c.Next([]byte(`{"status":"invalid_token"}`))
	fmt.Println(base64.StdEncoding.EncodeToString(resp))
	// Output:
	// OAUTHBEARER
	// "n,a=alice@example.com,\x01host=smtp.gmail.com\x01port=587\x01auth=Bearer ya29.token\x01\x01"
	// AQ==
}

func ExampleConfig_WithDefaults() {
	cfg := smtpoauth.Config{Host: "smtp.gmail.com", Port: 465}.WithDefaults()
	fmt.Println(cfg.TLS, cfg.ServerName, cfg.Mechanism, cfg.LocalName)
	fmt.Println(cfg.DialTimeout, cfg.CommandTimeout, cfg.SubmissionTimeout)
	fmt.Println(cfg.MaxConns, cfg.MaxIdleConns, cfg.MaxMessagesPerConn, cfg.IdleTimeout)

	cfg = smtpoauth.Config{Host: "smtp.office365.com", Port: 587}.WithDefaults()
	fmt.Println(cfg.TLS)
	// Output:
	// implicit smtp.gmail.com XOAUTH2 localhost
	// 30s 5m0s 10m0s
	// 0 2 1000 1m0s
	// starttls
}

func ExampleSender_Send() {
	// An in-process stand-in for smtp.gmail.com and its token endpoint.
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	defer srv.Close()
	srv.AddClient("sendq", "s3cret")
	refreshToken := srv.NewRefreshToken("sendq", "alice@example.com")
	srv.SetRcptReply("nobody@example.com", 550, [3]int{5, 1, 1}, "No such user")

	// The process-lifetime context: the token source keeps it.
	ctx := context.Background()
	oauthCfg := &oauth2.Config{
		ClientID:     "sendq",
		ClientSecret: "s3cret",
		Endpoint:     oauth2.Endpoint{TokenURL: srv.TokenURL},
	}
	tokens := smtpoauth.NewTokenCache(smtpoauth.NewRefreshTokenSource(ctx, oauthCfg, refreshToken, nil), 0)

	host, port, _ := net.SplitHostPort(srv.SMTPAddr)
	portNum, _ := strconv.Atoi(port)
	sender, err := smtpoauth.NewSender(smtpoauth.Config{
		Host:        host,
		Port:        portNum,
		TLS:         smtpoauth.TLSStartTLS,
		RootCAs:     srv.CertPool(),
		Username:    "alice@example.com",
		TokenSource: tokens,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// The connection stays open for the next Send; Close ends it.
	defer sender.Close()

	res, err := sender.Send(ctx, &smtpoauth.Message{
		From: "alice@example.com",
		To:   []string{"bob@example.net", "nobody@example.com"},
		Data: []byte("From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHi Bob.\r\n"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("accepted:", res.Accepted())
	for _, r := range res.Rejected() {
		fmt.Println("rejected:", r.Address, smtpoauth.FormatReply(r.Reply))
	}
	fmt.Println("reply:", res.Reply.Code)
	// Output:
	// accepted: [bob@example.net]
	// rejected: nobody@example.com 550 5.1.1 No such user
	// reply: 250
}

func ExampleAuthError() {
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorGoogle})
	defer srv.Close()
	host, port, _ := net.SplitHostPort(srv.SMTPSAddr)
	portNum, _ := strconv.Atoi(port)
	sender, _ := smtpoauth.NewSender(smtpoauth.Config{
		Host:        host,
		Port:        portNum,
		TLS:         smtpoauth.TLSImplicit,
		RootCAs:     srv.CertPool(),
		Username:    "alice@example.com",
		TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "ya29.expired"}),
	})

	_, err := sender.Send(context.Background(), &smtpoauth.Message{
		From: "alice@example.com",
		To:   []string{"bob@example.net"},
		Data: []byte("Subject: hello\r\n\r\nHi.\r\n"),
	})
	var ae *smtpoauth.AuthError
	if errors.As(err, &ae) {
		fmt.Println("status:", ae.Status)
		fmt.Println("reply:", ae.Reply.Code, ae.Reply.EnhancedCode)
	}
	fmt.Println(err)
	// Output:
	// status: 400
	// reply: 535 [5 7 8]
	// smtp auth: XOAUTH2 authentication rejected: 535 5.7.8 Username and Password not accepted. For more information, go to https://support.google.com/mail/?p=BadCredentials (challenge status 400)
}
