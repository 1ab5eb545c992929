package smtpoauthtest

import "context"

// TimeOutIdleConnections acts as if the server's idle timeout had passed on
// every open SMTP connection: each is answered "421 4.4.2 Idle timeout" and
// closed, as Gmail and Microsoft 365 close a connection left idle. A client
// that pools connections finds the reply and the closed connection waiting
// on its pooled one. Call it while the client is between messages: a
// transaction in progress would be cut short the same way.
//
// It returns the number of connections closed, once every one of them is,
// or ctx's error.
func (s *Server) TimeOutIdleConnections(ctx context.Context) (int, error) {
	var conns []*trackedConn
	for _, l := range s.smtpLns {
		l.mu.Lock()
		for c := range l.conns {
			conns = append(conns, c)
		}
		l.mu.Unlock()
	}
	for _, c := range conns {
		c.timeOut()
	}
	for _, c := range conns {
		select {
		case <-c.closed:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return len(conns), nil
}
