package smtpoauth

import "context"

// Check proves that the Sender can log in, sending no mail: it obtains an
// access token from the TokenSource, connects, protects the connection,
// says EHLO, authenticates and says QUIT, exactly as Send opens a new
// connection (so when the server rejects the token and the TokenSource can
// invalidate it, it tries once more with a fresh one).
//
// It uses a connection of its own, outside the pool: neither an idle
// connection (which would prove nothing about the current token) nor a slot
// of Config.MaxConns or Config.ConnLimiter. Its errors are Send's before
// MAIL FROM: a *SendError at StageToken, StageConnect, StageTLS, StageHello
// or StageAuth, which Classify explains.
func (s *Sender) Check(ctx context.Context) error {
	ss, err := s.open(ctx)
	if err != nil {
		return err
	}
	ss.end(ctx, nil)
	return nil
}
