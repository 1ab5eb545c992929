//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package smtpoauth

// peer tells whether the server has sent anything since the last reply
// read from the connection. Where the socket cannot be peeked at without
// blocking, that cannot be told.
func (c *boundConn) peer() peerState { return peerUnknown }
