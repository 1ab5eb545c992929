package smtpoauth

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// insecureLoopbackAddrs resolves host for a TLSNone connection and returns
// the addresses to dial, in order, refusing with ErrInsecureTransport unless every
// address host resolves to is a loopback one: a bearer token may cross an
// unencrypted connection only when it never leaves the machine, the rule
// net/smtp's PlainAuth applies to passwords. The addresses returned are the
// ones checked, so a second lookup cannot substitute another.
func insecureLoopbackAddrs(ctx context.Context, lookup func(ctx context.Context, network, host string) ([]netip.Addr, error), host string, port int) ([]string, error) {
	p := strconv.Itoa(port)
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		if !ip.Unmap().IsLoopback() {
			return nil, fmt.Errorf("%w: %s is not a loopback address", ErrInsecureTransport, host)
		}
		return []string{net.JoinHostPort(ip.String(), p)}, nil
	}
	ips, err := lookup(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolve %s: no addresses", host)
	}
	addrs := make([]string, 0, len(ips))
	for _, ip := range ips {
		if !ip.Unmap().IsLoopback() {
			return nil, fmt.Errorf("%w: %s resolves to %s, not a loopback address", ErrInsecureTransport, host, ip)
		}
		addrs = append(addrs, net.JoinHostPort(ip.Unmap().String(), p))
	}
	return addrs, nil
}
