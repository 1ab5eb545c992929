package smtpoauthtest_test

import (
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

var (
	sessionLimitReply = []string{"432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"}
	loginRateReply    = []string{"454 4.7.0 Too many login attempts, please try again later."}
)

// authWire opens a session over implicit TLS and returns it with the
// reply to AUTH XOAUTH2 for user with token.
func authWire(t *testing.T, srv *smtpoauthtest.Server, user, token string) (*wire, []string) {
	t.Helper()
	w, _ := dialWireTLS(t, srv)
	w.cmd("EHLO client.example")
	return w, w.cmd("AUTH XOAUTH2 " + xoauth2IR(user, token))
}

// quit ends w's session and waits until the server has closed the
// connection, which it does after the session ended.
func (w *wire) quit() {
	w.t.Helper()
	equalLines(w.t, "QUIT", w.cmd("QUIT"), []string{"221 2.0.0 Bye"})
	if _, err := io.Copy(io.Discard, w.r); err != nil {
		w.t.Fatalf("read to EOF after QUIT: %v", err)
	}
}

var authOK = []string{"235 2.0.0 Authentication succeeded"}

func TestMaxSessionsPerUser(t *testing.T) {
	t.Parallel()
	const user = "printer@example.com"

	t.Run("FourthConcurrentSessionGets432", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, MaxSessionsPerUser: 3})
		const clients = 4
		var (
			wg                 sync.WaitGroup
			mu                 sync.Mutex
			authed             []*smtp.Client
			refusals           []error
			release            = make(chan struct{})
			allAuthedOrRefused sync.WaitGroup
		)
		allAuthedOrRefused.Add(clients)
		for range clients {
			wg.Go(func() {
				c, err := authClient(b.srv, true, user, b.srv.IssueAccessToken(user))
				mu.Lock()
				if err != nil {
					refusals = append(refusals, err)
				} else {
					authed = append(authed, c)
				}
				mu.Unlock()
				allAuthedOrRefused.Done()
				if c != nil {
					<-release // keep the session open until all four tried
					c.Close()
				}
			})
		}
		allAuthedOrRefused.Wait()
		mu.Lock()
		nAuthed, nRefused := len(authed), len(refusals)
		var refusal error
		if nRefused > 0 {
			refusal = refusals[0]
		}
		mu.Unlock()
		close(release)
		wg.Wait()
		if nAuthed != 3 || nRefused != 1 {
			t.Fatalf("%d authenticated, %d refused, want 3 and 1", nAuthed, nRefused)
		}
		wantSMTPError(t, "fourth AUTH", refusal, 432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded")
		st := b.srv.Stats()
		if st.PeakSessions[user] != 3 || st.LoginsByUser[user] != 3 || st.Logins != 3 || st.FailedLogins != 1 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("ExactReplyOnTheWireWhateverTheFlavor", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{MaxSessionsPerUser: 1})
		w1, got := authWire(t, b.srv, user, b.srv.IssueAccessToken(user))
		equalLines(t, "first AUTH", got, authOK)
		w2, got := authWire(t, b.srv, user, b.srv.IssueAccessToken(user))
		equalLines(t, "second AUTH", got, sessionLimitReply)
		// The refused session stays open, unauthenticated.
		equalLines(t, "MAIL", w2.cmd("MAIL FROM:<"+user+">"), []string{
			"530-5.7.0 Authentication Required. For more information, go to",
			"530 5.7.0  https://support.google.com/mail/?p=WantAuthError",
		})
		// A closed session frees its slot.
		w1.quit()
		equalLines(t, "AUTH after the first session closed", w2.cmd("AUTH XOAUTH2 "+xoauth2IR(user, b.srv.IssueAccessToken(user))), authOK)
		if st := b.srv.Stats(); st.PeakSessions[user] != 1 || st.LoginsByUser[user] != 2 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("UsersHaveTheirOwnLimit", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{MaxSessionsPerUser: 1})
		_, got := authWire(t, b.srv, user, b.srv.IssueAccessToken(user))
		equalLines(t, "user", got, authOK)
		_, got = authWire(t, b.srv, "Other@Example.com", b.srv.IssueAccessToken("other@example.com"))
		equalLines(t, "other user", got, authOK)
		// Compared case-insensitively.
		_, got = authWire(t, b.srv, strings.ToUpper(user), b.srv.IssueAccessToken(user))
		equalLines(t, "user in capitals", got, sessionLimitReply)
	})

	t.Run("FailedAuthTakesNoSlot", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, MaxSessionsPerUser: 1})
		_, got := authWire(t, b.srv, user, "bad-token")
		equalLines(t, "bad token", got, microsoft535)
		_, got = authWire(t, b.srv, user, b.srv.IssueAccessToken(user))
		equalLines(t, "good token", got, authOK)
	})

	t.Run("PeakSessionsAndMessagesPerLogin", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{})
		const sessions, perSession = 4, 3
		var clients []*smtp.Client
		for range sessions {
			clients = append(clients, dialClient(t, b.srv, true, user, b.srv.IssueAccessToken(user)))
		}
		for _, c := range clients {
			for range perSession {
				if err := send(c, user, "bob@example.net"); err != nil {
					t.Fatal(err)
				}
			}
		}
		st := b.srv.Stats()
		if st.PeakSessions[user] != sessions || st.LoginsByUser[user] != sessions || st.MessagesByUser[user] != sessions*perSession {
			t.Errorf("stats: %+v", st)
		}
		if st.Sessions[user] != sessions {
			t.Errorf("Sessions[%s] = %d open now, want %d", user, st.Sessions[user], sessions)
		}
		// Quit waits until the server has closed the connection.
		for _, c := range clients[1:] {
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
		}
		if st := b.srv.Stats(); st.Sessions[user] != 1 || st.PeakSessions[user] != sessions {
			t.Errorf("after 3 quit: Sessions %d, PeakSessions %d; want 1 and %d", st.Sessions[user], st.PeakSessions[user], sessions)
		}
		// Sessions that follow one another do not raise the peak: quit
		// waits until the server closed the connection.
		for range 2 {
			w, got := authWire(t, b.srv, "other@example.com", b.srv.IssueAccessToken("other@example.com"))
			equalLines(t, "AUTH", got, authOK)
			w.quit()
		}
		if st := b.srv.Stats(); st.PeakSessions["other@example.com"] != 1 || st.LoginsByUser["other@example.com"] != 2 {
			t.Errorf("stats: %+v", st)
		}
		// Stats returns copies.
		st.PeakSessions[user] = 99
		if b.srv.Stats().PeakSessions[user] == 99 {
			t.Error("Stats shares its maps")
		}
	})
}

func TestMaxLoginsPerMinute(t *testing.T) {
	t.Parallel()
	const user = "alice@example.com"

	t.Run("ThirdLoginInAMinuteGets454UntilTheWindowPasses", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{MaxLoginsPerMinute: 2})
		tok := b.srv.IssueAccessToken(user)
		_, got := authWire(t, b.srv, user, tok)
		equalLines(t, "first", got, authOK)
		b.clock.Advance(30 * time.Second)
		_, got = authWire(t, b.srv, user, tok)
		equalLines(t, "second", got, authOK)
		_, got = authWire(t, b.srv, user, tok)
		equalLines(t, "third", got, loginRateReply)
		// Another user is not limited.
		_, got = authWire(t, b.srv, "bob@example.com", b.srv.IssueAccessToken("bob@example.com"))
		equalLines(t, "other user", got, authOK)
		// A minute after the first attempt, one more is allowed.
		b.clock.Advance(30 * time.Second)
		_, got = authWire(t, b.srv, user, tok)
		equalLines(t, "after the first left the window", got, authOK)
		_, got = authWire(t, b.srv, user, tok)
		equalLines(t, "again", got, loginRateReply)
		if st := b.srv.Stats(); st.LoginsByUser[user] != 3 || st.FailedLogins != 2 {
			t.Errorf("stats: %+v", st)
		}
	})

	t.Run("FailedAttemptsCountAndTheClientSeesA454", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{MaxLoginsPerMinute: 1})
		_, got := authWire(t, b.srv, user, "bad-token")
		equalLines(t, "bad token", got, []string{googleChallenge})
		_, err := authClient(b.srv, false, user, b.srv.IssueAccessToken(user))
		wantSMTPError(t, "good token", err, 454, smtp.EnhancedCode{4, 7, 0}, "Too many login attempts, please try again later.")
		b.srv.Advance(time.Minute) // the server's own clock works too
		c, err := authClient(b.srv, false, user, b.srv.IssueAccessToken(user))
		if err != nil {
			t.Fatalf("after a minute: %v", err)
		}
		c.Close()
	})
}

func TestLimitConfig(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		field string
		cfg   smtpoauthtest.Config
	}{
		{"Config.MaxSessionsPerUser", smtpoauthtest.Config{MaxSessionsPerUser: -1}},
		{"Config.MaxLoginsPerMinute", smtpoauthtest.Config{MaxLoginsPerMinute: -1}},
	} {
		t.Run("Negative"+strings.TrimPrefix(tt.field, "Config.")+"IsAnError", func(t *testing.T) {
			t.Parallel()
			_, err := smtpoauthtest.Start(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("err = %v", err)
			}
		})
	}
}
