package smtpoauthtest_test

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

const (
	sender   = "alice@example.com"
	faultMsg = "From: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
)

// gmailDailyLimit is Gmail's quota reply text, multi-line.
const gmailDailyLimit = "Daily user sending limit exceeded. For more information on Gmail\n" +
	" sending limits go to\n" +
	" https://support.google.com/a/answer/166852"

// wantSMTPError checks that err is an *smtp.SMTPError with the code,
// enhanced code and message (as go-smtp's client reports them: the codes
// stripped from every line).
func wantSMTPError(t *testing.T, what string, err error, code int, ec smtp.EnhancedCode, msg string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != ec || se.Message != msg {
		t.Errorf("%s: err = %#v, want %d %v %q", what, err, code, ec, msg)
	}
}

// wantDropped checks that err is a connection error, not an SMTP reply.
func wantDropped(t *testing.T, what string, err error) {
	t.Helper()
	var se *smtp.SMTPError
	if err == nil || errors.As(err, &se) {
		t.Errorf("%s: err = %v, want a dropped connection", what, err)
	}
}

// send runs one transaction on c and returns the first error.
func send(c *smtp.Client, from string, to ...string) error {
	return c.SendMail(from, to, strings.NewReader(faultMsg))
}

func TestAddFault(t *testing.T) {
	t.Parallel()

	t.Run("TransientRcptFaultFiresTwiceThenDisappears", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{
			Stage: smtpoauthtest.StageRcpt, Address: "Bob@Example.net",
			Code: 450, Enhanced: [3]int{4, 2, 1}, Text: "The user you are trying to contact is receiving mail too quickly.",
			Times: 2,
		})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(sender, b.srv.IssueAccessToken(sender)))
		equalLines(t, "MAIL", w.cmd("MAIL FROM:<"+sender+">"), []string{"250 2.0.0 Roger, accepting mail from <" + sender + ">"})
		for range 2 {
			equalLines(t, "RCPT", w.cmd("RCPT TO:<bob@example.net>"),
				[]string{"450 4.2.1 The user you are trying to contact is receiving mail too quickly."})
		}
		equalLines(t, "third RCPT", w.cmd("RCPT TO:<bob@example.net>"), []string{"250 2.0.0 I'll make sure <bob@example.net> gets this"})
	})

	t.Run("PermanentRcptFaultRejectsOnlyThatRecipientUntilRemoved", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		remove := b.srv.AddFault(smtpoauthtest.Fault{
			Stage: smtpoauthtest.StageRcpt, Address: "nobody@example.net",
			Code: 550, Enhanced: [3]int{5, 1, 1}, Text: "The email account that you tried to reach does not exist.",
		})
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		for range 2 {
			if err := c.Mail(sender, nil); err != nil {
				t.Fatal(err)
			}
			wantSMTPError(t, "RCPT nobody", c.Rcpt("nobody@example.net", nil), 550, smtp.EnhancedCode{5, 1, 1},
				"The email account that you tried to reach does not exist.")
			if err := c.Rcpt("bob@example.net", nil); err != nil {
				t.Fatalf("RCPT bob: %v", err)
			}
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
		}
		remove()
		remove() // idempotent
		if err := send(c, sender, "nobody@example.net"); err != nil {
			t.Errorf("after remove: %v", err)
		}
	})

	t.Run("DataFaultRejectsTheMessageAndStoresNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{
			Stage: smtpoauthtest.StageData,
			Code:  552, Enhanced: [3]int{5, 3, 4}, Text: "Message size exceeds fixed maximum message size",
		})
		c := dialClient(t, b.srv, false, sender, b.srv.IssueAccessToken(sender))
		wantSMTPError(t, "send", send(c, sender, "bob@example.net"), 552, smtp.EnhancedCode{5, 3, 4},
			"Message size exceeds fixed maximum message size")
		if st := b.srv.Stats(); st.Messages != 0 || len(b.srv.Messages()) != 0 {
			t.Errorf("a rejected message was stored: %+v", st)
		}
	})

	t.Run("GmailDailyLimitAtDataIsMultiLineOnTheWire", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Code: 550, Enhanced: [3]int{5, 4, 5}, Text: gmailDailyLimit})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(sender, b.srv.IssueAccessToken(sender)))
		w.cmd("MAIL FROM:<" + sender + ">")
		w.cmd("RCPT TO:<bob@example.net>")
		equalLines(t, "DATA", w.cmd("DATA"), []string{"354 Go ahead. End your data with <CR><LF>.<CR><LF>"})
		equalLines(t, "final dot", w.cmd(faultMsg+"."), []string{
			"550-5.4.5 Daily user sending limit exceeded. For more information on Gmail",
			"550-5.4.5  sending limits go to",
			"550 5.4.5  https://support.google.com/a/answer/166852",
		})
		// The go-smtp client gets the text back.
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		wantSMTPError(t, "send", send(c, sender, "bob@example.net"), 550, smtp.EnhancedCode{5, 4, 5}, gmailDailyLimit)
	})

	t.Run("MailFaultIsKeyedBySender", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Address: sender, Code: 550, Enhanced: [3]int{5, 4, 5}, Text: gmailDailyLimit})
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		wantSMTPError(t, "MAIL alice", c.Mail(sender, nil), 550, smtp.EnhancedCode{5, 4, 5}, gmailDailyLimit)
		if err := send(c, "other@example.com", "bob@example.net"); err != nil {
			t.Errorf("another sender: %v", err)
		}
	})

	t.Run("TransientMailFaultForEveryTransaction", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 421, Enhanced: [3]int{4, 7, 0},
			Text: "Try again later, closing connection.", Times: 1})
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		wantSMTPError(t, "first MAIL", c.Mail("anyone@example.com", nil), 421, smtp.EnhancedCode{4, 7, 0}, "Try again later, closing connection.")
		if err := send(c, sender, "bob@example.net"); err != nil {
			t.Errorf("second transaction: %v", err)
		}
	})

	t.Run("DataFaultIsKeyedByAnyRecipient", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Address: "carol@example.org",
			Code: 554, Enhanced: [3]int{5, 7, 0}, Text: "Message rejected."})
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		wantSMTPError(t, "bob and carol", send(c, sender, "bob@example.net", "carol@example.org"), 554, smtp.EnhancedCode{5, 7, 0}, "Message rejected.")
		if err := send(c, sender, "bob@example.net"); err != nil {
			t.Errorf("bob alone: %v", err)
		}
	})

	t.Run("ZeroEnhancedCodeIsSentAsClassZeroZero", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Code: 451, Text: "Try\nlater"})
		w, _ := dialWireTLS(t, b.srv)
		w.cmd("EHLO client.example")
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(sender, b.srv.IssueAccessToken(sender)))
		w.cmd("MAIL FROM:<" + sender + ">")
		equalLines(t, "RCPT", w.cmd("RCPT TO:<bob@example.net>"), []string{"451-4.0.0 Try", "451 4.0.0 later"})
	})

	t.Run("FaultsAreTriedInTheOrderAdded", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: "bob@example.net", Code: 550, Enhanced: [3]int{5, 1, 1}, Text: "first", Times: 1})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Code: 452, Enhanced: [3]int{4, 5, 3}, Text: "second"})
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		if err := c.Mail(sender, nil); err != nil {
			t.Fatal(err)
		}
		wantSMTPError(t, "first RCPT", c.Rcpt("bob@example.net", nil), 550, smtp.EnhancedCode{5, 1, 1}, "first")
		wantSMTPError(t, "second RCPT", c.Rcpt("bob@example.net", nil), 452, smtp.EnhancedCode{4, 5, 3}, "second")
	})

	t.Run("ClearFaultsRemovesThemAllIncludingSetRcptReply", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.SetRcptReply("bob@example.net", 550, [3]int{5, 1, 1}, "no")
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 421, Text: "no"})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true})
		b.srv.ClearFaults()
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		if err := send(c, sender, "bob@example.net"); err != nil {
			t.Errorf("after ClearFaults: %v", err)
		}
		// SetRcptReply still works after ClearFaults.
		b.srv.SetRcptReply("bob@example.net", 550, [3]int{5, 1, 1}, "no")
		b.srv.SetRcptReply("bob@example.net", 551, [3]int{5, 1, 6}, "replaced")
		if err := c.Mail(sender, nil); err != nil {
			t.Fatal(err)
		}
		wantSMTPError(t, "RCPT", c.Rcpt("bob@example.net", nil), 551, smtp.EnhancedCode{5, 1, 6}, "replaced")
	})

	t.Run("TimesIsCountedOnceAcrossConcurrentSessions", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		const sessions, times = 12, 5
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: "bob@example.net",
			Code: 450, Enhanced: [3]int{4, 2, 1}, Text: "busy", Times: times})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true, StoreBeforeDrop: true, Times: times})
		var (
			wg                       sync.WaitGroup
			mu                       sync.Mutex
			rejected, dropped, other int
		)
		for range sessions {
			wg.Go(func() {
				c, err := authClient(b.srv, true, sender, b.srv.IssueAccessToken(sender))
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				err = send(c, sender, "bob@example.net")
				var se *smtp.SMTPError
				mu.Lock()
				defer mu.Unlock()
				switch {
				case errors.As(err, &se) && se.Code == 450:
					rejected++
				case err != nil && !errors.As(err, &se):
					dropped++
				case err != nil:
					other++
					t.Errorf("send: %v", err)
				}
			})
		}
		wg.Wait()
		if rejected != times || dropped != times || other != 0 {
			t.Errorf("%d rejected at RCPT, %d dropped after DATA, want %d each", rejected, dropped, times)
		}
		// Every message that got past RCPT was stored, the dropped ones too.
		if n := len(b.srv.Messages()); n != sessions-times {
			t.Errorf("%d messages stored, want %d", n, sessions-times)
		}
	})

	t.Run("InvalidFaultsPanic", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		for name, f := range map[string]smtpoauthtest.Fault{
			"Fault.Stage":           {Code: 550},
			"Fault.Code":            {Stage: smtpoauthtest.StageRcpt, Code: 250},
			"Fault.Times":           {Stage: smtpoauthtest.StageRcpt, Code: 550, Times: -1},
			"Fault.StoreBeforeDrop": {Stage: smtpoauthtest.StageRcpt, Drop: true, StoreBeforeDrop: true},
		} {
			func() {
				defer func() {
					if r := recover(); r == nil || !strings.Contains(r.(string), name) {
						t.Errorf("%s: panic %v", name, r)
					}
				}()
				b.srv.AddFault(f)
			}()
		}
	})
}

func TestDropFaults(t *testing.T) {
	t.Parallel()

	for _, implicit := range []bool{false, true} {
		port := "STARTTLS"
		if implicit {
			port = "ImplicitTLS"
		}

		t.Run("DropAfterDataDiscardsTheMessageOn"+port, func(t *testing.T) {
			t.Parallel()
			b := setup(t, smtpoauthtest.Config{})
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true})
			c := dialClient(t, b.srv, implicit, sender, b.srv.IssueAccessToken(sender))
			wantDropped(t, "send", send(c, sender, "bob@example.net"))
			// The server decided not to store before it closed the
			// connection, so this is not racy.
			if n := len(b.srv.Messages()); n != 0 {
				t.Errorf("%d messages stored, want 0", n)
			}
		})

		t.Run("DropAfterDataWithStoreBeforeDropIsAmbiguousOn"+port, func(t *testing.T) {
			t.Parallel()
			b := setup(t, smtpoauthtest.Config{})
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true, StoreBeforeDrop: true, Times: 1})
			c := dialClient(t, b.srv, implicit, sender, b.srv.IssueAccessToken(sender))
			wantDropped(t, "send", send(c, sender, "bob@example.net"))
			// Stored before the connection closed: visible at once.
			msgs := b.srv.Messages()
			if len(msgs) != 1 || string(msgs[0].Data) != faultMsg || !slices.Equal(msgs[0].To, []string{"bob@example.net"}) {
				t.Errorf("messages: %+v", msgs)
			}
			// The retry on a new connection is delivered again: a duplicate.
			c2 := dialClient(t, b.srv, implicit, sender, b.srv.IssueAccessToken(sender))
			if err := send(c2, sender, "bob@example.net"); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if n := len(b.srv.Messages()); n != 2 {
				t.Errorf("%d messages, want 2", n)
			}
		})
	}

	t.Run("DropAtRcptClosesWithoutReply", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: "bob@example.net", Drop: true})
		w, _ := dialWire(t, b.srv)
		w.startTLS(b.srv)
		w.cmd("AUTH XOAUTH2 " + xoauth2IR(sender, b.srv.IssueAccessToken(sender)))
		w.cmd("MAIL FROM:<" + sender + ">")
		if _, err := w.conn.Write([]byte("RCPT TO:<bob@example.net>\r\n")); err != nil {
			t.Fatal(err)
		}
		if line, err := w.r.ReadString('\n'); err == nil {
			t.Errorf("got a reply %q, want the connection closed", line)
		}
	})

	t.Run("DropAtMailClosesWithoutReply", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Drop: true, Times: 1})
		c := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		wantDropped(t, "MAIL", c.Mail(sender, nil))
		c2 := dialClient(t, b.srv, true, sender, b.srv.IssueAccessToken(sender))
		if err := send(c2, sender, "bob@example.net"); err != nil {
			t.Errorf("next connection: %v", err)
		}
	})
}
