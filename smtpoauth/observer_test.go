package smtpoauth_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// recordingObserver counts what a Sender reports.
type recordingObserver struct {
	mu     sync.Mutex
	stages map[smtpoauth.Stage]int
	logins int
	reused int
}

func (o *recordingObserver) ObserveStage(stage smtpoauth.Stage, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if d < 0 {
		panic("negative duration")
	}
	if o.stages == nil {
		o.stages = map[smtpoauth.Stage]int{}
	}
	o.stages[stage]++
}

func (o *recordingObserver) Login() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.logins++
}

func (o *recordingObserver) ConnectionReused() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reused++
}

func (o *recordingObserver) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fmt.Sprintf("stages %v, %d logins, %d reused", o.stages, o.logins, o.reused)
}

func TestSenderReportsToTheObserver(t *testing.T) {
	t.Parallel()
	message := func(to ...string) *smtpoauth.Message {
		return &smtpoauth.Message{From: "alice@example.com", To: to, Data: []byte("Subject: hi\r\n\r\nhello\r\n")}
	}
	for _, tc := range []struct {
		name string
		tls  smtpoauth.TLSMode
		want string
	}{
		// The second message's only recipient is refused: the third
		// starts with RSET on the same connection. The server offers
		// CHUNKING: each message goes out in the write that carries MAIL
		// (StageData), the refused one too.
		{"STARTTLS", smtpoauth.TLSStartTLS, "stages map[auth:1 connect:1 data:3 data-end:2 ehlo:2 mail:3 rcpt:4 rset:1 tls:1 token:1], 1 logins, 2 reused"},
		{"ImplicitTLS", smtpoauth.TLSImplicit, "stages map[auth:1 connect:1 data:3 data-end:2 ehlo:1 mail:3 rcpt:4 rset:1 tls:1 token:1], 1 logins, 2 reused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupSendTest(t, smtpoauthtest.Config{})
			b.srv.SetRcptReply("gone@example.net", 550, [3]int{5, 1, 1}, "No such user")
			obs := &recordingObserver{}
			cfg := b.cfg
			cfg.TLS, cfg.Observer = tc.tls, obs
			if tc.tls == smtpoauth.TLSImplicit {
				cfg.Host, cfg.Port = splitHostPort(t, b.srv.SMTPSAddr)
			}
			s := newSender(t, cfg)
			defer s.Close()
			if _, err := s.Send(t.Context(), message("a@example.net", "b@example.net")); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Send(t.Context(), message("gone@example.net")); err == nil {
				t.Fatal("Send to a refused recipient succeeded")
			}
			if _, err := s.Send(t.Context(), message("c@example.net")); err != nil {
				t.Fatal(err)
			}
			if got := obs.String(); got != tc.want {
				t.Errorf("observer saw\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	t.Run("ConnectFailure", func(t *testing.T) {
		t.Parallel()
		b := setupSendTest(t, smtpoauthtest.Config{})
		obs := &recordingObserver{}
		cfg := b.cfg
		cfg.Observer = obs
		b.srv.Close() // nothing listens any more
		s := newSender(t, cfg)
		defer s.Close()
		if _, err := s.Send(t.Context(), message("a@example.net")); err == nil {
			t.Fatal("Send to a closed server succeeded")
		}
		if got, want := obs.String(), "stages map[connect:1 token:1], 0 logins, 0 reused"; got != want {
			t.Errorf("observer saw %s, want %s", got, want)
		}
	})
}
