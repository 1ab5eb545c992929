package opsweb_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/sendq/sendq/opsweb"
)

func TestServe(t *testing.T) {
	t.Parallel()
	h := setup(t, opsweb.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- h.Serve(ctx, ln) }()

	res, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Fatalf("GET /healthz = %d %q", res.StatusCode, body)
	}

	t.Run("StopsGracefullyWhenTheContextIsDone", func(t *testing.T) {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Fatalf("Serve = %v, want nil after a clean shutdown", err)
			}
		case <-time.After(opsweb.DefaultShutdownTimeout + time.Second):
			t.Fatal("Serve did not return after its context was done")
		}
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
			t.Fatal("the listener still accepts connections")
		}
	})
}
