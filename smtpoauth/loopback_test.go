package smtpoauth

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/oauth2"
)

func TestInsecureLoopbackAddr(t *testing.T) {
	t.Parallel()
	lookup := func(_ context.Context, _, host string) ([]netip.Addr, error) {
		switch host {
		case "localhost":
			return []netip.Addr{netip.MustParseAddr("::1"), netip.MustParseAddr("127.0.0.1")}, nil
		case "mapped.test":
			return []netip.Addr{netip.MustParseAddr("::ffff:127.0.0.1")}, nil
		case "mixed.test":
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("203.0.113.7")}, nil
		case "mail.example.test":
			return []netip.Addr{netip.MustParseAddr("203.0.113.7")}, nil
		case "empty.test":
			return nil, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	tests := []struct {
		host         string
		want         []string
		wantInsecure bool // errors.Is(err, ErrInsecureTransport)
		wantErr      bool
	}{
		{host: "127.0.0.1", want: []string{"127.0.0.1:2525"}},
		{host: "127.8.9.10", want: []string{"127.8.9.10:2525"}},
		{host: "::1", want: []string{"[::1]:2525"}},
		{host: "[::1]", want: []string{"[::1]:2525"}},
		{host: "localhost", want: []string{"[::1]:2525", "127.0.0.1:2525"}},
		{host: "mapped.test", want: []string{"127.0.0.1:2525"}},
		{host: "192.0.2.1", wantInsecure: true},
		{host: "::ffff:192.0.2.1", wantInsecure: true},
		{host: "mail.example.test", wantInsecure: true},
		{host: "mixed.test", wantInsecure: true},
		{host: "empty.test", wantErr: true},
		{host: "unknown.test", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			t.Parallel()
			got, err := insecureLoopbackAddrs(t.Context(), lookup, tt.host, 2525)
			switch {
			case tt.wantInsecure:
				if !errors.Is(err, ErrInsecureTransport) {
					t.Fatalf("insecureLoopbackAddrs(%q) = %q, %v; want ErrInsecureTransport", tt.host, got, err)
				}
			case tt.wantErr:
				if err == nil || errors.Is(err, ErrInsecureTransport) {
					t.Fatalf("insecureLoopbackAddrs(%q) = %q, %v; want a lookup error", tt.host, got, err)
				}
			case err != nil || !slices.Equal(got, tt.want):
				t.Fatalf("insecureLoopbackAddrs(%q) = %q, %v; want %q", tt.host, got, err, tt.want)
			}
		})
	}
}

func TestSendRefusesTLSNoneToNonLoopbackBeforeDialling(t *testing.T) {
	t.Parallel()
	s, err := NewSender(Config{
		Host:                  "mail.example.test",
		Port:                  25,
		TLS:                   TLSNone,
		AllowInsecureLoopback: true,
		Username:              "alice@example.com",
		TokenSource:           oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "tok"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	s.lookupFunc = func(context.Context, string, string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("203.0.113.7")}, nil
	}
	s.dialFunc = func(context.Context, string, string) (net.Conn, error) {
		t.Error("dialled")
		return nil, errors.New("dialled")
	}
	_, err = s.Send(t.Context(), &Message{From: "alice@example.com", To: []string{"bob@example.com"}, Data: []byte("x\r\n")})
	if !errors.Is(err, ErrInsecureTransport) {
		t.Fatalf("Send: %v, want ErrInsecureTransport", err)
	}
	var se *SendError
	if !errors.As(err, &se) || se.Stage != StageTLS {
		t.Errorf("Send: %#v, want a *SendError at StageTLS", err)
	}
}
