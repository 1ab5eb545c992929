//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package smtpoauth

import (
	"errors"
	"syscall"
)

// peer tells whether the server has sent anything since the last reply
// read from the connection (an unsolicited reply such as a 421 before an
// idle close, a TLS alert, the end of the stream, a reset) by peeking at
// the socket without blocking and without consuming anything. It is
// peerUnknown when that cannot be told (a connection that is not a socket,
// a deadline already passed).
func (c *boundConn) peer() peerState {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return peerUnknown
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return peerUnknown
	}
	state := peerUnknown
	var b [1]byte
	err = raw.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Data, 0 bytes without an error (the end of the stream) and a
		// reset all say the server spoke; only "nothing yet" is silence.
		state = peerSpoke
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) {
			state = peerSilent
		}
		return true // never wait for the socket to become readable
	})
	if err != nil {
		return peerUnknown
	}
	return state
}
