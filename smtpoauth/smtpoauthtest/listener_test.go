package smtpoauthtest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// parkRecorder is a trackingListener.park that counts its calls and
// answers proceed.
type parkRecorder struct {
	mu      sync.Mutex
	calls   int
	proceed bool
}

func (p *parkRecorder) park(_ string, beforePark func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.proceed {
		return true
	}
	if beforePark != nil {
		beforePark()
	}
	return false
}

func (p *parkRecorder) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// pipe returns a trackedConn (the server side) and the client side.
func pipe(p *parkRecorder) (*trackedConn, net.Conn) {
	server, client := net.Pipe()
	l := &trackingListener{park: p.park, conns: make(map[*trackedConn]struct{})}
	tc := newTrackedConn(server, l)
	l.conns[tc] = struct{}{}
	return tc, client
}

func TestTrackedConnParking(t *testing.T) {
	t.Parallel()

	t.Run("TLSHandshakeAndCloseNotifyDoNotParkRepliesDo", func(t *testing.T) {
		t.Parallel()
		certs, err := newCertificates("localhost")
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(certs.caCert)
		rec := &parkRecorder{proceed: true}
		tc, client := pipe(rec)
		srv := tls.Server(tc, &tls.Config{Certificates: []tls.Certificate{certs.server}})
		cli := tls.Client(client, &tls.Config{RootCAs: roots, ServerName: "localhost"})
		defer cli.Close()

		// The client reads everything the server writes until EOF.
		got := make(chan string, 1)
		go func() {
			if err := cli.Handshake(); err != nil {
				got <- "handshake: " + err.Error()
				return
			}
			b, err := io.ReadAll(cli)
			if err != nil {
				got <- "read: " + err.Error()
				return
			}
			got <- string(b)
		}()
		if err := srv.Handshake(); err != nil {
			t.Fatal(err)
		}
		if n := rec.count(); n != 0 {
			t.Errorf("the handshake parked %d times", n)
		}
		if _, err := srv.Write([]byte("220 hi\r\n")); err != nil {
			t.Fatal(err)
		}
		if n := rec.count(); n != 1 {
			t.Errorf("a reply parked %d times, want 1", n)
		}
		tc.closing.Store(true) // what session.Logout does
		srv.Close()            // close_notify: application data in TLS 1.3
		if s := <-got; s != "220 hi\r\n" {
			t.Errorf("client got %q", s)
		}
		if n := rec.count(); n != 1 {
			t.Errorf("close_notify parked: %d calls", n)
		}
	})

	t.Run("CloseNotifyWouldParkWithoutClosing", func(t *testing.T) {
		// Pins why Logout marks the connection closing.
		t.Parallel()
		certs, err := newCertificates("localhost")
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(certs.caCert)
		rec := &parkRecorder{proceed: true}
		tc, client := pipe(rec)
		srv := tls.Server(tc, &tls.Config{Certificates: []tls.Certificate{certs.server}})
		cli := tls.Client(client, &tls.Config{RootCAs: roots, ServerName: "localhost"})
		defer cli.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			cli.Handshake()
			io.Copy(io.Discard, cli)
		}()
		if err := srv.Handshake(); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		<-done
		if n := rec.count(); n != 1 || srv.ConnectionState().Version != tls.VersionTLS13 {
			t.Errorf("close_notify parked %d times (TLS version %x)", n, srv.ConnectionState().Version)
		}
	})

	t.Run("NoParkingAfterAReadError", func(t *testing.T) {
		t.Parallel()
		rec := &parkRecorder{proceed: true}
		tc, client := pipe(rec)
		client.Close()
		if _, err := tc.Read(make([]byte, 1)); err == nil {
			t.Fatal("read from a closed pipe succeeded")
		}
		tc.Write([]byte("421 bye\r\n"))
		if n := rec.count(); n != 0 {
			t.Errorf("a write after a read error parked %d times", n)
		}
	})

	t.Run("ParkRefusalDropsTheConnection", func(t *testing.T) {
		t.Parallel()
		rec := &parkRecorder{proceed: false}
		tc, client := pipe(rec)
		defer client.Close()
		if _, err := tc.Write([]byte("250 ok\r\n")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write = %v, want net.ErrClosed", err)
		}
		if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("client read = %v, want EOF", err)
		}
		if len(tc.l.conns) != 0 {
			t.Error("the dropped connection is still tracked")
		}
	})
}

func TestTrackedConnSendsPipelinedRepliesInOneWrite(t *testing.T) {
	t.Parallel()
	// net.Pipe hands each Write to one Read: what the client reads at once
	// is what the server wrote at once.
	tc, client := pipe(&parkRecorder{proceed: true})
	defer client.Close()
	replies := []string{"250 2.1.0 OK\r\n", "250 2.1.5 OK\r\n", "354 Go ahead\r\n"}
	readDone := make(chan error, 1)
	go func() {
		// The server reads the next command only after its replies.
		for _, r := range replies {
			if _, err := tc.Write([]byte(r)); err != nil {
				readDone <- err
				return
			}
		}
		_, err := tc.Read(make([]byte, 64))
		readDone <- err
	}()
	buf := make([]byte, 256)
	n, err := client.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Join(replies, ""); string(buf[:n]) != want {
		t.Fatalf("first read = %q, want all three replies %q", buf[:n], want)
	}
	if _, err := client.Write([]byte("body\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}

	t.Run("AShorterWriteDeadlineFlushesFirst", func(t *testing.T) {
		tc, client := pipe(&parkRecorder{proceed: true})
		defer client.Close()
		got := make(chan string, 1)
		go func() {
			b := make([]byte, 64)
			n, _ := client.Read(b)
			got <- string(b[:n])
		}()
		tc.Write([]byte("221 bye\r\n"))
		// crypto/tls shortens the deadline around its close_notify; what
		// was written under the old one goes out first.
		if err := tc.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if s := <-got; s != "221 bye\r\n" {
			t.Errorf("client got %q", s)
		}
	})
}
