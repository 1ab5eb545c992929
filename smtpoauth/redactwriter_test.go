package smtpoauth

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// traceDialogue is a session as go-smtp hands it to its DebugWriter:
// commands and replies in order, without direction markers.
const traceDialogue = "220 smtp.example.com ESMTP\r\n" +
	"EHLO localhost\r\n" +
	"250-smtp.example.com\r\n" +
	"250 AUTH XOAUTH2 OAUTHBEARER\r\n" +
	"AUTH XOAUTH2 dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciBTRUNSRVQBAQ==\r\n" +
	"334 eyJzdGF0dXMiOiI0MDAifQ==\r\n" +
	"\r\n" +
	"535-5.7.8 Username and Password not accepted.\r\n" +
	"535 5.7.8  https://support.google.com/mail/?p=BadCredentials\r\n" +
	"*\r\n" +
	"502 5.5.1 Unrecognized command.\r\n" +
	"AUTH OAUTHBEARER\r\n" +
	"334 \r\n" +
	"bixhPWFsaWNlLAFhdXRoPUJlYXJlciBTRUNSRVQBAQ==\r\n" +
	"235 2.7.0 Accepted\r\n" +
	"MAIL FROM:<alice@example.com>\r\n" +
	"250 2.1.0 OK\r\n" +
	"RCPT TO:<bob@example.com>\r\n" +
	"250 2.1.5 OK\r\n" +
	"DATA\r\n" +
	"354 Go ahead\r\n" +
	"Subject: the body is private\r\n" +
	"\r\n" +
	"..a dot-stuffed line\r\n" +
	"DATA\r\n" +
	".\r\n" +
	"250 2.0.0 OK queued\r\n" +
	"MAIL FROM:<alice@example.com>\r\n" +
	"250 2.1.0 OK\r\n" +
	"BDAT 52 LAST\r\n" +
	"Subject: chunked and private\r\n\r\nBDAT 5\r\n.no line end" + // a chunk need not end a line
	"250 2.0.0 OK queued\r\n" +
	"QUIT\r\n" +
	"221 2.0.0 closing\r\n"

const traceRedacted = "220 smtp.example.com ESMTP\r\n" +
	"EHLO localhost\r\n" +
	"250-smtp.example.com\r\n" +
	"250 AUTH XOAUTH2 OAUTHBEARER\r\n" +
	"AUTH XOAUTH2 [redacted]\r\n" +
	"334 [redacted]\r\n" +
	"[redacted]\r\n" +
	"535-5.7.8 Username and Password not accepted.\r\n" +
	"535 5.7.8  https://support.google.com/mail/?p=BadCredentials\r\n" +
	"*\r\n" +
	"502 5.5.1 Unrecognized command.\r\n" +
	"AUTH OAUTHBEARER\r\n" +
	"334 [redacted]\r\n" +
	"[redacted]\r\n" +
	"235 2.7.0 Accepted\r\n" +
	"MAIL FROM:<alice@example.com>\r\n" +
	"250 2.1.0 OK\r\n" +
	"RCPT TO:<bob@example.com>\r\n" +
	"250 2.1.5 OK\r\n" +
	"DATA\r\n" +
	"354 Go ahead\r\n" +
	"[60 bytes of message content not shown]\r\n" +
	".\r\n" +
	"250 2.0.0 OK queued\r\n" +
	"MAIL FROM:<alice@example.com>\r\n" +
	"250 2.1.0 OK\r\n" +
	"BDAT 52 LAST\r\n" +
	"[52 bytes of message content not shown]\r\n" +
	"250 2.0.0 OK queued\r\n" +
	"QUIT\r\n" +
	"221 2.0.0 closing\r\n"

func TestRedactWriter(t *testing.T) {
	t.Parallel()
	for _, chunk := range []int{1, 2, 3, 7, 64, len(traceDialogue)} {
		t.Run("InChunksOf"+strconv.Itoa(chunk), func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			w := newRedactWriter(new(sync.Mutex), &out)
			for s := traceDialogue; len(s) > 0; {
				n := min(chunk, len(s))
				if got, err := w.Write([]byte(s[:n])); got != n || err != nil {
					t.Fatalf("Write = %d, %v", got, err)
				}
				s = s[n:]
			}
			w.flush()
			if out.String() != traceRedacted {
				t.Errorf("trace:\n%s\nwant:\n%s", out.String(), traceRedacted)
			}
			for _, secret := range []string{"SECRET", "U0VDUkVU", "dXNlcj1", "private", "eyJzdGF0dXMi"} {
				if strings.Contains(out.String(), secret) {
					t.Errorf("trace contains %q", secret)
				}
			}
		})
	}

	t.Run("SkipsTheReplayedGreeting", func(t *testing.T) {
		t.Parallel()
		var out bytes.Buffer
		w := newRedactWriter(new(sync.Mutex), &out)
		w.skip = 2
		w.Write([]byte("220-replayed\r\n220 replayed\r\nEHLO localhost\r\n"))
		if out.String() != "EHLO localhost\r\n" {
			t.Errorf("trace = %q", out.String())
		}
	})

	t.Run("CountsOverlongContentLines", func(t *testing.T) {
		t.Parallel()
		var out bytes.Buffer
		w := newRedactWriter(new(sync.Mutex), &out)
		w.Write([]byte("DATA\r\n354 go\r\n"))
		w.Write(bytes.Repeat([]byte("x"), 3*maxTraceLine))
		w.Write([]byte("\r\n.\r\n"))
		want := "DATA\r\n354 go\r\n[12290 bytes of message content not shown]\r\n.\r\n"
		if out.String() != want {
			t.Errorf("trace = %q, want %q", out.String(), want)
		}
		if w.body != 0 || len(w.buf) != 0 {
			t.Errorf("state left behind: body %d, buf %d", w.body, len(w.buf))
		}
	})

	t.Run("FlushEndsAPartialLine", func(t *testing.T) {
		t.Parallel()
		var out bytes.Buffer
		w := newRedactWriter(new(sync.Mutex), &out)
		w.Write([]byte("AUTH XOAUTH2 dXNlcj1"))
		w.flush()
		if out.String() != "AUTH XOAUTH2 [redacted]\r\n" {
			t.Errorf("trace = %q", out.String())
		}
	})

	t.Run("FlushCountsACutChunk", func(t *testing.T) {
		t.Parallel()
		var out bytes.Buffer
		w := newRedactWriter(new(sync.Mutex), &out)
		w.Write([]byte("BDAT 100 LAST\r\nSubject: private"))
		w.flush()
		w.Write([]byte("QUIT\r\n"))
		if want := "BDAT 100 LAST\r\n[16 bytes of message content not shown]\r\nQUIT\r\n"; out.String() != want {
			t.Errorf("trace = %q, want %q", out.String(), want)
		}
	})

	t.Run("IgnoresAFailingWriter", func(t *testing.T) {
		t.Parallel()
		w := newRedactWriter(new(sync.Mutex), failingWriter{})
		if n, err := w.Write([]byte("EHLO x\r\n")); n != 8 || err != nil {
			t.Errorf("Write = %d, %v; want 8, nil", n, err)
		}
	})
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
