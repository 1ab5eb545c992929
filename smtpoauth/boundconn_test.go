package smtpoauth

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// deadlineConn records the deadlines set on it and whether it was closed.
type deadlineConn struct {
	net.Conn // nil: only the methods below are called
	mu       sync.Mutex
	read     time.Time
	write    time.Time
	closed   chan struct{}
}

func newDeadlineConn() *deadlineConn { return &deadlineConn{closed: make(chan struct{})} }

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read = t
	return nil
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.write = t
	return nil
}

func (c *deadlineConn) Close() error {
	close(c.closed)
	return nil
}

func (c *deadlineConn) deadlines() (read, write time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read, c.write
}

func TestBoundConn(t *testing.T) {
	t.Parallel()
	base := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	limit := base.Add(time.Minute)

	tests := []struct {
		name string
		set  time.Time // what go-smtp asks for while bound
		want time.Time // what the connection gets
	}{
		{name: "LaterDeadlineIsClampedToTheContext", set: base.Add(5 * time.Minute), want: limit},
		{name: "EarlierDeadlineIsKept", set: base.Add(time.Second), want: base.Add(time.Second)},
		{name: "NoDeadlineBecomesTheContexts", set: time.Time{}, want: limit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			raw := newDeadlineConn()
			c := newBoundConn(raw)
			ctx, cancel := context.WithDeadline(context.Background(), limit)
			defer cancel()
			release := c.bind(ctx)
			c.SetDeadline(tt.set)
			if r, w := raw.deadlines(); !r.Equal(tt.want) || !w.Equal(tt.want) {
				t.Errorf("deadlines = %v, %v; want %v", r, w, tt.want)
			}
			c.SetReadDeadline(tt.set)
			c.SetWriteDeadline(tt.set)
			if r, w := raw.deadlines(); !r.Equal(tt.want) || !w.Equal(tt.want) {
				t.Errorf("read/write deadlines = %v, %v; want %v", r, w, tt.want)
			}
			// Released, the connection gets what was asked for.
			release()
			if r, w := raw.deadlines(); !r.Equal(tt.set) || !w.Equal(tt.set) {
				t.Errorf("after release: deadlines = %v, %v; want %v", r, w, tt.set)
			}
		})
	}

	t.Run("BindingAppliesTheContextDeadlineAtOnce", func(t *testing.T) {
		t.Parallel()
		raw := newDeadlineConn()
		c := newBoundConn(raw)
		ctx, cancel := context.WithDeadline(context.Background(), limit)
		defer cancel()
		defer c.bind(ctx)()
		if r, _ := raw.deadlines(); !r.Equal(limit) {
			t.Errorf("read deadline = %v, want %v", r, limit)
		}
	})

	t.Run("TightenOnlyLowers", func(t *testing.T) {
		t.Parallel()
		raw := newDeadlineConn()
		c := newBoundConn(raw)
		ctx, cancel := context.WithDeadline(context.Background(), limit)
		defer cancel()
		defer c.bind(ctx)()
		c.tighten(limit.Add(time.Hour))
		if r, _ := raw.deadlines(); !r.Equal(limit) {
			t.Errorf("read deadline = %v, want %v", r, limit)
		}
		c.tighten(base)
		if r, _ := raw.deadlines(); !r.Equal(base) {
			t.Errorf("read deadline = %v, want %v", r, base)
		}
	})

	t.Run("CancellingTheContextClosesTheConnection", func(t *testing.T) {
		t.Parallel()
		raw := newDeadlineConn()
		c := newBoundConn(raw)
		ctx, cancel := context.WithCancel(context.Background())
		defer c.bind(ctx)()
		cancel()
		select {
		case <-raw.closed:
		case <-time.After(10 * time.Second):
			t.Fatal("connection not closed")
		}
	})

	t.Run("ReleasedBindingNoLongerCloses", func(t *testing.T) {
		t.Parallel()
		raw := newDeadlineConn()
		c := newBoundConn(raw)
		ctx, cancel := context.WithCancel(context.Background())
		c.bind(ctx)()
		cancel()
		select {
		case <-raw.closed:
			t.Fatal("connection closed after release")
		default:
		}
	})
}
