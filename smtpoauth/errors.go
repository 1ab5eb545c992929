package smtpoauth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Stage names the step of an SMTP submission at which a failure happened.
// Classification depends on it: a failure before the final "." of DATA means
// the message was not delivered, a failure after it is ambiguous.
type Stage string

// The stages of a submission, in the order they happen.
const (
	StageConnect Stage = "connect"  // TCP dial, greeting
	StageTLS     Stage = "tls"      // implicit TLS handshake or STARTTLS
	StageHello   Stage = "ehlo"     // EHLO/HELO
	StageToken   Stage = "token"    // obtaining the OAuth2 access token
	StageAuth    Stage = "auth"     // SASL exchange
	StageMail    Stage = "mail"     // MAIL FROM
	StageRcpt    Stage = "rcpt"     // RCPT TO (all recipients rejected)
	StageData    Stage = "data"     // DATA command and message transfer, before the final "."
	StageDataEnd Stage = "data-end" // the reply to the final "." or to BDAT LAST, or any reply after a one-write transaction (lost here: possibly delivered)
	StageReset   Stage = "rset"     // RSET between messages on a reused connection
)

// ErrNoRefreshToken is wrapped by the error of a refresh-token grant that has
// no refresh token to use: the mailbox has not been authorized yet (or its
// token was never stored). Classify holds the account for re-authorization.
var ErrNoRefreshToken = errors.New("no refresh token")

// ErrInsecureTransport is returned when a bearer token would be sent over a
// connection that is neither TLS nor an explicitly allowed loopback one.
var ErrInsecureTransport = errors.New("refusing to send a bearer token over an unencrypted connection")

// SendError is the error returned by a failed submission. It records the
// stage the failure happened at and wraps the cause: a *smtp.SMTPError for a
// server reply, an *AuthError for a rejected token, an *oauth2.RetrieveError
// for a token-endpoint failure, or a network error.
//
// Its message never contains a token or message content.
type SendError struct {
	Stage Stage
	Err   error
}

// Error implements error.
func (e *SendError) Error() string {
	return fmt.Sprintf("smtp %s: %v", e.Stage, e.Err)
}

// Unwrap returns the cause.
func (e *SendError) Unwrap() error { return e.Err }

// AuthError reports a SASL XOAUTH2 or OAUTHBEARER exchange the server
// rejected. Status, Schemes and Scope come from the server's JSON error
// challenge (Gmail sends one, Microsoft does not); Reply is the server's final
// reply to the exchange.
type AuthError struct {
	Mechanism string
	// Status is the "status" member of the JSON error challenge, such as
	// "401" or "invalid_token"; empty when the server sent no challenge.
	Status  string
	Schemes string
	Scope   string
	// Reply is the final reply, typically 535 5.7.8 (Google) or
	// 535 5.7.3 (Microsoft).
	Reply *smtp.SMTPError
}

// Error implements error. It names the mechanism, the reply and the
// challenge status, never the token.
func (e *AuthError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s authentication rejected", e.Mechanism)
	if e.Reply != nil {
		fmt.Fprintf(&b, ": %s", FormatReply(e.Reply))
	}
	if e.Status != "" {
		fmt.Fprintf(&b, " (challenge status %s)", e.Status)
	}
	return b.String()
}

// Unwrap returns the final reply, so errors.As finds the *smtp.SMTPError.
func (e *AuthError) Unwrap() error {
	if e.Reply == nil {
		return nil
	}
	return e.Reply
}

// FormatReply renders a reply as "535 5.7.8 text", the way it appears on the
// wire, with line breaks of a multi-line reply folded into spaces.
func FormatReply(r *smtp.SMTPError) string {
	msg := strings.Join(strings.Fields(r.Message), " ")
	if r.EnhancedCode == (smtp.EnhancedCode{}) || r.EnhancedCode == smtp.NoEnhancedCode {
		return fmt.Sprintf("%d %s", r.Code, msg)
	}
	ec := r.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, ec[0], ec[1], ec[2], msg)
}
