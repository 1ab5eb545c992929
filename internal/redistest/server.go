package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process of a test's own, for tests that restart
// Redis or need it configured in a way the shared server is not (TLS,
// Sentinel, persistence).
type Server struct {
	// Addr is the server's host:port.
	Addr string
	// Dir is its working directory (dump and AOF files).
	Dir string

	tb   testing.TB
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartServer starts redis-server on a free loopback port with extra
// arguments (e.g. "--appendonly", "yes") and stops it when the test ends. The
// test fails with a one-line hint when the binary is missing.
func StartServer(tb testing.TB, args ...string) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatal("redis-server not found: install it (Debian: apt-get install redis-server) to run this test")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: tb.TempDir(), tb: tb}
	s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", s.Dir, "--save", ""}, args...)
	s.start()
	tb.Cleanup(s.Stop)
	return s
}

// StartWith starts a redis-server with the given arguments verbatim (for a
// sentinel: a config file and "--sentinel"), waiting until addr answers.
func StartWith(tb testing.TB, addr string, args ...string) *Server {
	tb.Helper()
	s := &Server{Addr: addr, Dir: tb.TempDir(), tb: tb, args: args}
	s.start()
	tb.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.tb.Helper()
	s.cmd = exec.Command("redis-server", s.args...)
	s.cmd.Dir = s.Dir
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil || isLoadingOK(err) {
			return
		}
		select {
		case <-s.done:
			s.tb.Fatalf("redis-server %v exited at start", s.args)
		default:
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("redis-server on %s did not answer: %v", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond) // a process starting: nothing to wait on but its port
	}
}

// isLoadingOK accepts replies that mean "up" for servers that need auth.
func isLoadingOK(err error) bool {
	s := err.Error()
	return len(s) >= 6 && (s[:6] == "NOAUTH" || s[:6] == "WRONGP")
}

// Stop stops the server (SIGTERM: an AOF is flushed) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(interrupt)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// Restart stops the server and starts it again on the same port and
// directory, as an operator's restart or a crash-and-respawn would.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	s.start()
}

// URL returns a redis:// URL for db on this server.
func (s *Server) URL(db int) string { return fmt.Sprintf("redis://%s/%d", s.Addr, db) }
