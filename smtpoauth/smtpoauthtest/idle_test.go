package smtpoauthtest_test

import (
	"errors"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func TestTimeOutIdleConnections(t *testing.T) {
	t.Parallel()
	b := setup(t, smtpoauthtest.Config{})
	clients := []*smtp.Client{
		dialClient(t, b.srv, false, sender, b.srv.IssueAccessToken(sender)),
		dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender)),
	}
	if err := send(clients[0], sender, "bob@example.net"); err != nil {
		t.Fatal(err)
	}

	n, err := b.srv.TimeOutIdleConnections(t.Context())
	if err != nil || n != 2 {
		t.Fatalf("TimeOutIdleConnections = %d, %v; want 2 connections closed", n, err)
	}
	for i, c := range clients {
		// The 421 waits on the connection: the next command reads it as
		// its reply, and the connection is closed after it.
		err := c.Mail(sender, nil)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 421 || se.EnhancedCode != (smtp.EnhancedCode{4, 4, 2}) {
			t.Errorf("client %d: MAIL after the idle timeout: %v, want 421 4.4.2", i, err)
		}
		wantDropped(t, "RSET after the 421", c.Reset())
	}
	if n, err := b.srv.TimeOutIdleConnections(t.Context()); err != nil || n != 0 {
		t.Errorf("TimeOutIdleConnections again = %d, %v; want 0: none is open", n, err)
	}
	c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
	if err := send(c, sender, "carol@example.net"); err != nil {
		t.Errorf("a new connection after the timeout: %v", err)
	}
}
