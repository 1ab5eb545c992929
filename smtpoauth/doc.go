// Package smtpoauth submits mail over SMTP with OAuth2 bearer tokens, as
// Gmail/Google Workspace and Microsoft 365 require, and says what a failure
// means.
//
// A short tour:
//
//   - SASL: NewXOAUTH2Client and NewOAuthBearerClient are go-sasl clients
//     for XOAUTH2 (which go-sasl lacks) and OAUTHBEARER (RFC 7628). Both
//     complete the failure flow instead of aborting it: on the server's
//     334 error challenge they answer with the empty or 0x01 response, so
//     the exchange ends with the server's final reply (535 5.7.8 ...),
//     which a Sender reports as an *AuthError carrying the challenge's
//     JSON status.
//   - Tokens: NewRefreshTokenSource, NewClientCredentialsSource and
//     NewJWTSource build oauth2.TokenSources for the delegated, the
//     Microsoft app-only and the Google service-account grants;
//     TokenCache refreshes well before expiry and can Invalidate a token
//     the server rejected.
//   - Sending: a Sender (NewSender with a Config) connects with STARTTLS
//     or implicit TLS, verifies the certificate, authenticates, and sends
//     one Message, recording every recipient's RCPT reply in the Result.
//     It never sends a token over an unencrypted connection except to a
//     loopback test server it was told to trust (ErrInsecureTransport), it
//     honours the context's deadline and cancellation although go-smtp has
//     no context support, and when the server rejects a token it retries
//     once with a fresh one. It keeps its authenticated connections for
//     the next messages (MaxIdleConns, MaxMessagesPerConn, IdleTimeout,
//     MaxConns), so that logins per message fall far below one, and
//     redials once, transparently, when the server closed an idle one.
//   - Errors: a failed Send returns a *SendError naming the Stage that
//     failed; Classify turns any error into a Class (transient, throttle,
//     auth, needs a human, permanent, ambiguous) that a queue can act on.
//
// Nothing in this package logs or returns a token, a secret or message
// content: the Config.DebugWriter wire trace redacts the SASL exchange and
// the message, and Secret prints as [redacted].
//
// The smtpoauthtest package runs an in-process provider (token endpoint and
// SMTP server with Google's or Microsoft's failure behaviour) to test
// against, shaped like net/http/httptest.
package smtpoauth
