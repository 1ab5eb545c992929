package smtpoauthtest_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func ExampleServer_AddFault() {
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	defer srv.Close()

	// Bob's mailbox is busy twice, then accepts mail.
	srv.AddFault(smtpoauthtest.Fault{
		Stage: smtpoauthtest.StageRcpt, Address: "bob@example.net",
		Code: 450, Enhanced: [3]int{4, 2, 1}, Text: "The user you are trying to contact is receiving mail too quickly.",
		Times: 2,
	})

	c, err := smtp.DialTLS(srv.SMTPSAddr, &tls.Config{RootCAs: srv.CertPool(), ServerName: "localhost"})
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.Close()
	if err := c.Auth(xoauth2{"alice@example.com", srv.IssueAccessToken("alice@example.com")}); err != nil {
		fmt.Println("auth:", err)
		return
	}
	for attempt := 1; attempt <= 3; attempt++ {
		err := c.SendMail("alice@example.com", []string{"bob@example.net"}, strings.NewReader("Subject: hi\r\n\r\nhi\r\n"))
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			fmt.Println(attempt, se.Code, se.EnhancedCode, se.Temporary())
			continue
		}
		fmt.Println(attempt, err)
	}
	// Output:
	// 1 450 [4 2 1] true
	// 2 450 [4 2 1] true
	// 3 <nil>
}

// A crash test: stop the server once the message is on the wire, so that
// the client can be killed at a known moment, then decide whether the
// server committed.
func ExampleServer_Freeze() {
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := smtp.DialTLS(srv.SMTPSAddr, &tls.Config{RootCAs: srv.CertPool(), ServerName: "localhost"})
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.Close()
	if err := c.Auth(xoauth2{"alice@example.com", srv.IssueAccessToken("alice@example.com")}); err != nil {
		fmt.Println("auth:", err)
		return
	}

	srv.Freeze()
	sent := make(chan error, 1)
	go func() {
		sent <- c.SendMail("alice@example.com", []string{"bob@example.net"}, strings.NewReader("Subject: hi\r\n\r\nhi\r\n"))
	}()
	// The session parks at its first reply, here the one to MAIL FROM.
	if err := srv.WaitParked(ctx, 1); err != nil {
		fmt.Println("wait:", err)
		return
	}
	fmt.Println("parked:", srv.Parked())
	// Here a test would SIGKILL the worker. Then: the connection dies
	// before the server said anything.
	srv.Thaw(true)
	fmt.Println("send failed:", <-sent != nil)
	fmt.Println("stored:", len(srv.Messages()))
	// Output:
	// parked: 1
	// send failed: true
	// stored: 0
}

// A pooled connection closed by the provider while idle: the client finds
// the 421 waiting when it next speaks.
func ExampleServer_TimeOutIdleConnections() {
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	defer srv.Close()

	c, err := smtp.DialTLS(srv.SMTPSAddr, &tls.Config{RootCAs: srv.CertPool(), ServerName: "localhost"})
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.Close()
	if err := c.Auth(xoauth2{"alice@example.com", srv.IssueAccessToken("alice@example.com")}); err != nil {
		fmt.Println("auth:", err)
		return
	}

	n, err := srv.TimeOutIdleConnections(context.Background())
	fmt.Println("closed:", n, err)
	err = c.Mail("alice@example.com", nil)
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		fmt.Println(se.Code, se.EnhancedCode)
	}
	// Output:
	// closed: 1 <nil>
	// 421 [4 4 2]
}
