package smtpoauth

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"
)

// wire returns the *smtp.SMTPError go-smtp's client makes of a raw server
// reply (lines separated by "\n", as on the wire without the CR): a real
// client reads it as the answer to EHLO over an in-memory connection, so
// multi-line replies and enhanced codes are parsed exactly as in production.
func wire(raw string) *smtp.SMTPError {
	clientConn, serverConn := net.Pipe()
	defer clientConn.Close()
	go func() {
		defer serverConn.Close()
		br := bufio.NewReader(serverConn)
		if _, err := io.WriteString(serverConn, "220 mx.example.test ESMTP\r\n"); err != nil {
			return
		}
		if _, err := br.ReadString('\n'); err != nil { // EHLO
			return
		}
		_, _ = io.WriteString(serverConn, strings.ReplaceAll(raw, "\n", "\r\n")+"\r\n")
	}()
	c := smtp.NewClient(clientConn)
	err := c.Hello("localhost")
	var r *smtp.SMTPError
	if !errors.As(err, &r) {
		panic(fmt.Sprintf("wire(%q): want an *smtp.SMTPError, got %v", raw, err))
	}
	return r
}

func sendErr(stage Stage, err error) error { return &SendError{Stage: stage, Err: err} }

func retrieveErr(status int, code, description string) *oauth2.RetrieveError {
	return &oauth2.RetrieveError{
		Response:         &http.Response{StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), Header: http.Header{}},
		Body:             []byte(`{"error":"` + code + `"}`),
		ErrorCode:        code,
		ErrorDescription: description,
	}
}

// classifyCase is one row of the classification table: a failure as Send
// reports it and the verdict Classify must reach.
type classifyCase struct {
	name         string
	err          error
	class        Class
	hold         string
	retryAfter   time.Duration
	invalidGrant bool
	reason       string // a substring of Reason
}

// classifyCases is the table of the README: one row per rule, with real
// replies from Gmail and Microsoft 365 where known.
func classifyCases() []classifyCase {
	gmailBadCredentials := wire("535-5.7.8 Username and Password not accepted. For more information, go to\n" +
		"535 5.7.8  https://support.google.com/mail/?p=BadCredentials d4sm5441686pgf.9 - gsmtp")
	gmailTooManyLogins := wire("454-4.7.0 Too many login attempts, please try again later. Learn more at\n" +
		"454 4.7.0  https://support.google.com/mail/answer/7126229 h6-20020a0561220b6600b0049d21a8f4b6sm1103848vkf.11 - gsmtp")
	msSMTPAuthDisabled := wire("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. " +
		"Visit https://aka.ms/smtp_auth_disabled for more information. [MN2PR05CA0004.namprd05.prod.outlook.com 2023-09-12T20:59:57.214Z 08DBB276B7E699C4]")

	return []classifyCase{
		// transient: retry with backoff.
		{name: "ConnectionRefused", class: ClassTransient, reason: "network error",
			err: sendErr(StageConnect, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})},
		{name: "DNSFailure", class: ClassTransient, reason: "network error",
			err: sendErr(StageConnect, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "smtp.example.invalid", IsNotFound: true}})},
		{name: "ConnectionClosedDuringEHLO", class: ClassTransient, reason: "network error",
			err: sendErr(StageHello, io.EOF)},
		{name: "TLSHandshakeWithAPlaintextServer", class: ClassTransient, reason: "network error",
			err: sendErr(StageTLS, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"})},
		{name: "ConnectionLostBeforeTheFinalDot", class: ClassTransient, reason: "network error",
			err: sendErr(StageData, io.ErrUnexpectedEOF)},
		{name: "TimeoutBeforeTheFinalDot", class: ClassTransient, reason: "network error",
			err: sendErr(StageData, &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded})},
		{name: "WorkerShuttingDownBeforeData", class: ClassTransient, reason: "cancelled",
			err: sendErr(StageMail, context.Canceled)},
		{name: "TaskDeadlineBeforeData", class: ClassTransient, reason: "timed out",
			err: sendErr(StageRcpt, context.DeadlineExceeded)},
		{name: "Gmail421TryAgainLater", class: ClassTransient, reason: "temporary failure: 421 4.7.0",
			err: sendErr(StageMail, wire("421 4.7.0 Try again later, closing connection. (EHLO) s7sm1234567wrx.1 - gsmtp"))},
		{name: "Generic450", class: ClassTransient, reason: "temporary failure: 450 4.2.0",
			err: sendErr(StageRcpt, wire("450 4.2.0 Mailbox temporarily unavailable"))},
		{name: "Gmail451AfterTheFinalDotIsAReplyNotAmbiguous", class: ClassTransient, reason: "temporary failure: 451 4.3.0",
			err: sendErr(StageDataEnd, wire("451 4.3.0 Mail server temporarily rejected message. a1sm1234567wrx.1 - gsmtp"))},
		{name: "Gmail452TooManyRecipients", class: ClassTransient, reason: "temporary failure: 452 4.5.3",
			err: sendErr(StageRcpt, wire("452 4.5.3 Your message has too many recipients. For more information regarding Google's sending limits, go to https://support.google.com/mail/?p=TooManyRecipientsError - gsmtp"))},
		{name: "Generic432IsNotTheExchangeLimit", class: ClassTransient, reason: "temporary failure: 432 4.7.12",
			err: sendErr(StageAuth, wire("432 4.7.12 A password transition is needed"))},
		{name: "Unknown4xx", class: ClassTransient, reason: "temporary failure: 499",
			err: sendErr(StageMail, wire("499 Something odd"))},
		{name: "Gmail450RecipientReceivingTooFast", class: ClassTransient, reason: "recipient is receiving mail too quickly",
			err: sendErr(StageRcpt, wire("450-4.2.1 The user you are trying to contact is receiving mail at a rate that\n"+
				"450-4.2.1 prevents additional messages from being delivered. Please resend your\n"+
				"450 4.2.1 message at a later time. - gsmtp"))},
		{name: "EnhancedCode4xxWinsOverBasic5xx", class: ClassTransient, reason: "temporary failure: 550 4.7.0",
			err: sendErr(StageDataEnd, wire("550 4.7.0 Temporary policy failure"))},
		{name: "RSETRefused", class: ClassTransient, reason: "RSET failed",
			err: sendErr(StageReset, wire("503 5.5.1 Bad sequence of commands"))},
		{name: "TokenEndpointUnreachable", class: ClassTransient, reason: "network error",
			err: sendErr(StageToken, &url.Error{Op: "Post", URL: "https://oauth2.googleapis.com/token", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}})},
		{name: "TokenEndpoint503", class: ClassTransient, reason: "token endpoint unavailable: HTTP 503",
			err: sendErr(StageToken, retrieveErr(503, "", ""))},
		{name: "TokenEndpoint429WithRetryAfter", class: ClassTransient, retryAfter: 30 * time.Second, reason: "HTTP 429",
			err: sendErr(StageToken, func() error {
				re := retrieveErr(429, "", "")
				re.Response.Header.Set("Retry-After", "30")
				return re
			}())},
		{name: "TokenEndpointTemporarilyUnavailable", class: ClassTransient, reason: "temporarily_unavailable",
			err: sendErr(StageToken, retrieveErr(503, "temporarily_unavailable", ""))},
		{name: "UnrecognisedError", class: ClassTransient, reason: "unrecognised error",
			err: sendErr(StageMail, errors.New("smtp: something unforeseen"))},

		// throttle: pause the account, do not spend the task's retries.
		{name: "GmailDailySendingLimit", class: ClassThrottle, retryAfter: RetryAfterDailyQuota, reason: "daily sending quota exceeded: 550 5.4.5",
			err: sendErr(StageDataEnd, wire("550-5.4.5 Daily user sending limit exceeded. For more information on Gmail\n"+
				"550-5.4.5 sending limits go to\n"+
				"550 5.4.5  https://support.google.com/a/answer/166852 d75a77b69052e-4535f85b3d9sm7257481cf.29 - gsmtp"))},
		{name: "GmailDailySendingQuotaAtMAIL", class: ClassThrottle, retryAfter: RetryAfterDailyQuota, reason: "daily sending quota exceeded",
			err: sendErr(StageMail, wire("550 5.4.5 Daily user sending quota exceeded. o65sm25351206pga.71 - gsmtp"))},
		{name: "ExchangeSubmissionQuotaExceeded", class: ClassThrottle, retryAfter: RetryAfterDailyQuota, reason: "sending quota exceeded: 554 5.2.0",
			err: sendErr(StageDataEnd, wire("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"))},
		{name: "ExchangeDailyRecipientLimit", class: ClassThrottle, retryAfter: RetryAfterDailyQuota, reason: "daily recipient limit reached",
			err: sendErr(StageRcpt, wire("550 5.1.90 Your message can't be sent because you've reached your daily limit for message recipients"))},
		{name: "ExchangeConcurrentConnectionLimit", class: ClassThrottle, retryAfter: RetryAfterConnectionLimit, reason: "too many concurrent connections",
			err: sendErr(StageDataEnd, wire("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=DM5SPR00MB2471.namprd08.prod.outlook.com]"))},
		{name: "GmailPeakRelayLimit", class: ClassThrottle, retryAfter: RetryAfterRateLimit, reason: "sending rate limited: 450 4.2.1",
			err: sendErr(StageMail, wire("450 4.2.1 Peak SMTP relay limit exceeded for customer. This is a temporary error. - gsmtp"))},
		{name: "GmailTooManyLoginAttempts", class: ClassThrottle, retryAfter: RetryAfterLoginRate, reason: "too many login attempts: 454 4.7.0",
			err: sendErr(StageAuth, gmailTooManyLogins)},
		{name: "GmailTooManyLoginAttemptsAfterAChallenge", class: ClassThrottle, retryAfter: RetryAfterLoginRate, reason: "too many login attempts",
			err: sendErr(StageAuth, &AuthError{Mechanism: "XOAUTH2", Status: "400", Schemes: "Bearer", Scope: "https://mail.google.com/", Reply: gmailTooManyLogins})},
		{name: "GmailCannotAuthenticateTemporarily", class: ClassThrottle, retryAfter: RetryAfterLoginRate, reason: "authentication temporarily refused: 454 4.7.0",
			err: sendErr(StageAuth, wire("454 4.7.0 Cannot authenticate due to temporary system problem. Try again later. - gsmtp"))},

		// auth: refresh once and retry at once; then defer the account and alert.
		{name: "GmailTokenRejectedWithChallenge400", class: ClassAuth, reason: "access token rejected: 535 5.7.8 Username and Password not accepted",
			err: sendErr(StageAuth, &AuthError{Mechanism: "XOAUTH2", Status: "400", Schemes: "Bearer", Scope: "https://mail.google.com/", Reply: gmailBadCredentials})},
		{name: "GmailTokenRejectedWithChallenge401", class: ClassAuth, reason: "(challenge status 401)",
			err: sendErr(StageAuth, &AuthError{Mechanism: "OAUTHBEARER", Status: "401", Schemes: "bearer", Scope: "https://mail.google.com/", Reply: gmailBadCredentials})},
		{name: "MicrosoftTokenRejected", class: ClassAuth, reason: "access token rejected: 535 5.7.3 Authentication unsuccessful",
			err: sendErr(StageAuth, &AuthError{Mechanism: "XOAUTH2", Reply: wire("535 5.7.3 Authentication unsuccessful [BN3PR03CA0067.namprd03.prod.outlook.com]")})},
		{name: "ChallengeWithoutAFinalReply", class: ClassAuth, reason: "access token rejected",
			err: sendErr(StageAuth, &AuthError{Mechanism: "XOAUTH2", Status: "401"})},
		{name: "BareReplyAtAUTH", class: ClassAuth, reason: "access token rejected: 535 5.7.8",
			err: sendErr(StageAuth, gmailBadCredentials)},
		{name: "MicrosoftTokenExpiresSoon", class: ClassAuth, reason: "access token expires soon",
			err: sendErr(StageAuth, wire("501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon"))},
		{name: "GoogleInvalidGrant", class: ClassAuth, invalidGrant: true, reason: "token refresh refused: invalid_grant (Token has been expired or revoked.)",
			err: sendErr(StageToken, retrieveErr(400, "invalid_grant", "Token has been expired or revoked."))},
		{name: "MicrosoftInvalidGrant", class: ClassAuth, invalidGrant: true, reason: "AADSTS700082",
			err: sendErr(StageToken, retrieveErr(400, "invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity."))},

		// needs-human: hold the account's mail and alert.
		{name: "MicrosoftSMTPAuthDisabled", class: ClassNeedsHuman, hold: HoldConfiguration,
			reason: "SMTP AUTH disabled for this mailbox: 535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
			err:    sendErr(StageAuth, &AuthError{Mechanism: "XOAUTH2", Reply: msSMTPAuthDisabled})},
		{name: "MicrosoftSMTPAuthDisabledHint", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "— enable it in the admin center",
			err: sendErr(StageAuth, msSMTPAuthDisabled)},
		{name: "MicrosoftBadXOAUTH2User", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "server rejected the XOAUTH2 user: 501 5.5.124",
			err: sendErr(StageAuth, wire("501 5.5.124 Invalid XOAUTH2 auth data - User address provided is not valid."))},
		{name: "GmailMustIssueSTARTTLS", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "530 5.7.0 Must issue a STARTTLS command first",
			err: sendErr(StageMail, wire("530 5.7.0 Must issue a STARTTLS command first. w29sm21914057vcr.2 - gsmtp"))},
		{name: "MechanismNotSupported", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "does not support the authentication mechanism",
			err: sendErr(StageAuth, wire("504 5.7.4 Unrecognized authentication type"))},
		{name: "SessionRefusedAtGreeting", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "server refused the session: 554 5.7.1",
			err: sendErr(StageConnect, wire("554 5.7.1 Service unavailable; client host blocked"))},
		{name: "TokenWithoutTLS", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "without TLS",
			err: sendErr(StageAuth, ErrInsecureTransport)},
		{name: "ServerWithoutSTARTTLS", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "server does not offer STARTTLS",
			err: sendErr(StageTLS, fmt.Errorf("server does not offer STARTTLS: %w", ErrInsecureTransport))},
		{name: "MechanismNotOffered", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "does not offer the SASL mechanism",
			err: sendErr(StageAuth, fmt.Errorf("%w: XOAUTH2 (AUTH \"PLAIN LOGIN\")", ErrMechanismNotOffered))},
		{name: "UntrustedServerCertificate", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "certificate not trusted",
			err: sendErr(StageTLS, &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}})},
		{name: "TokenLacksTheScope", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "lacks the SMTP scope",
			err: sendErr(StageAuth, &AuthError{Mechanism: "OAUTHBEARER", Status: "insufficient_scope", Reply: wire("535 5.7.8 Authentication failed")})},
		{name: "InvalidClient", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "misconfigured: invalid_client",
			err: sendErr(StageToken, retrieveErr(401, "invalid_client", "The OAuth client was not found."))},
		{name: "InvalidScope", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "misconfigured: invalid_scope",
			err: sendErr(StageToken, retrieveErr(400, "invalid_scope", "AADSTS70011: The provided value for the input parameter 'scope' is not valid."))},
		{name: "UnauthorizedClient", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "misconfigured: unauthorized_client",
			err: sendErr(StageToken, retrieveErr(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method."))},
		{name: "MicrosoftInteractionRequired", class: ClassNeedsHuman, hold: HoldReauthorize, reason: "needs re-authorization: interaction_required",
			err: sendErr(StageToken, retrieveErr(400, "interaction_required", "AADSTS50076: you must use multi-factor authentication to access this resource."))},

		// permanent-recipient: drop that recipient.
		{name: "GmailNoSuchUser", class: ClassPermanentRecipient, reason: "recipient rejected: 550 5.1.1 The email account that you tried to reach does not exist.",
			err: sendErr(StageRcpt, wire("550-5.1.1 The email account that you tried to reach does not exist. Please try\n"+
				"550-5.1.1 double-checking the recipient's email address for typos or\n"+
				"550-5.1.1 unnecessary spaces. Learn more at\n"+
				"550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si1234567wrx.1 - gsmtp"))},
		{name: "UserNotLocal551", class: ClassPermanentRecipient, reason: "recipient rejected: 551",
			err: sendErr(StageRcpt, wire("551 User not local; please try <bob@example.org>"))},
		{name: "GmailInvalidRecipientAddress553", class: ClassPermanentRecipient, reason: "recipient rejected: 553 5.1.3",
			err: sendErr(StageRcpt, wire("553-5.1.3 The recipient address <bob@@example.com> is not a valid RFC 5321\n"+
				"553 5.1.3 address. Learn more at https://support.google.com/mail/answer/6596 - gsmtp"))},
		{name: "PolicyRejectionAtRCPT", class: ClassPermanentRecipient, reason: "recipient rejected: 550 5.7.1",
			err: sendErr(StageRcpt, wire("550 5.7.1 This message violates example.com email policy. - gcdp a1sm1 - gsmtp"))},
		{name: "MailboxFullAtRCPT", class: ClassPermanentRecipient, reason: "recipient rejected: 552 5.2.2",
			err: sendErr(StageRcpt, wire("552-5.2.2 The email account that you tried to reach is over quota.\n552 5.2.2 - gsmtp"))},
		{name: "Other5xxAtRCPT", class: ClassPermanentRecipient, reason: "recipient rejected: 554 5.7.1",
			err: sendErr(StageRcpt, wire("554 5.7.1 <bob@example.org>: Recipient address rejected: Access denied"))},
		{name: "EnhancedCode5xxWinsOverBasic4xx", class: ClassPermanentRecipient, reason: "recipient rejected: 451 5.7.1",
			err: sendErr(StageRcpt, wire("451 5.7.1 Recipient refused by policy"))},

		// permanent-message: dead-letter with the reason.
		{name: "MessageTooLarge", class: ClassPermanentMessage, reason: "message too large: 552 5.3.4",
			err: sendErr(StageDataEnd, wire("552 5.3.4 Message size exceeds fixed maximum message size"))},
		{name: "GmailMessageTooLarge", class: ClassPermanentMessage, reason: "message too large: 552 5.2.3",
			err: sendErr(StageDataEnd, wire("552-5.2.3 Your message exceeded Google's message size limits. Learn more at\n552 5.2.3  https://support.google.com/mail/?p=MaxSizeError - gsmtp"))},
		{name: "GmailContentBlocked", class: ClassPermanentMessage, reason: "message rejected: 552 5.7.0",
			err: sendErr(StageDataEnd, wire("552-5.7.0 This message was blocked because its content presents a potential\n552 5.7.0 security issue. - gsmtp"))},
		{name: "ContentRejected554", class: ClassPermanentMessage, reason: "message rejected: 554 5.7.1",
			err: sendErr(StageDataEnd, wire("554 5.7.1 Message rejected due to content restrictions"))},
		{name: "ExchangeBareLinefeeds5_6_x", class: ClassPermanentMessage, reason: "message content rejected: 550 5.6.11",
			err: sendErr(StageDataEnd, wire("550 5.6.11 SMTPSEND.BareLinefeedsAreIllegal; message contains bare linefeeds, which cannot be sent via DATA"))},
		{name: "Other5xxAtDATA", class: ClassPermanentMessage, reason: "message rejected: 554 5.5.1",
			err: sendErr(StageData, wire("554 5.5.1 Error: no valid recipients"))},
		{name: "SenderNotOwnedAtMAIL", class: ClassPermanentMessage, reason: "sender rejected: 553 5.7.1",
			err: sendErr(StageMail, wire("553 5.7.1 <ceo@example.com>: Sender address rejected: not owned by user alice@example.com"))},
		{name: "GmailSyntaxErrorAtMAIL", class: ClassPermanentMessage, reason: "sender rejected: 555 5.5.2",
			err: sendErr(StageMail, wire("555 5.5.2 Syntax error. a1sm1234567wrx.1 - gsmtp"))},
		{name: "ExchangeSendAsDenied", class: ClassPermanentMessage, reason: "mailbox may not send as this sender: 554 5.2.0",
			err: sendErr(StageDataEnd, wire("554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "+
				"Failed to process message due to a permanent exception with message Cannot submit message."))},
		{name: "InvalidMessage", class: ClassPermanentMessage, reason: "message cannot be submitted",
			err: fmt.Errorf("send: %w: no recipients", ErrInvalidMessage)},
		{name: "Unknown5xxWithoutAStage", class: ClassPermanentMessage, reason: "message rejected: 550 5.0.0",
			err: wire("550 5.0.0 Rejected")},

		// ambiguous: may be delivered; retry with the same Message-ID, flag a possible duplicate.
		{name: "ConnectionLostAfterTheFinalDot", class: ClassAmbiguous, reason: "may have been delivered",
			err: sendErr(StageDataEnd, io.EOF)},
		{name: "TimeoutAfterTheFinalDot", class: ClassAmbiguous, reason: "may have been delivered",
			err: sendErr(StageDataEnd, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded})},
		{name: "CancelledAfterTheFinalDot", class: ClassAmbiguous, reason: "may have been delivered",
			err: sendErr(StageDataEnd, context.Canceled)},
		{name: "TaskDeadlineAfterTheFinalDot", class: ClassAmbiguous, reason: "may have been delivered",
			err: sendErr(StageDataEnd, context.DeadlineExceeded)},
	}
}

func checkClassification(t *testing.T, tc classifyCase, got Classification) {
	t.Helper()
	if got.Class != tc.class {
		t.Errorf("Class = %v, want %v (Reason %q)", got.Class, tc.class, got.Reason)
	}
	if got.Hold != tc.hold {
		t.Errorf("Hold = %q, want %q", got.Hold, tc.hold)
	}
	if got.RetryAfter != tc.retryAfter {
		t.Errorf("RetryAfter = %v, want %v", got.RetryAfter, tc.retryAfter)
	}
	if got.InvalidGrant != tc.invalidGrant {
		t.Errorf("InvalidGrant = %v, want %v", got.InvalidGrant, tc.invalidGrant)
	}
	if !strings.Contains(got.Reason, tc.reason) {
		t.Errorf("Reason = %q, want it to contain %q", got.Reason, tc.reason)
	}
	if r, ok := errors.AsType[*smtp.SMTPError](tc.err); ok {
		if got.Code != r.Code || got.EnhancedCode != r.EnhancedCode {
			t.Errorf("Code, EnhancedCode = %d, %v; want the reply's %d, %v", got.Code, got.EnhancedCode, r.Code, r.EnhancedCode)
		}
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range classifyCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkClassification(t, tc, Classify(tc.err))
		})
	}
}

func TestClassifyWrappedErrorsClassifyTheSame(t *testing.T) {
	t.Parallel()
	for _, tc := range classifyCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			want := Classify(tc.err)
			// Reason quotes the *SendError, or the whole error when
			// there is none: only then does the wrapping show in it.
			_, hasSendError := errors.AsType[*SendError](tc.err)
			check := func(how string, err error) {
				got := Classify(err)
				if !hasSendError {
					checkClassification(t, tc, got)
					got.Reason = want.Reason
				}
				if got != want {
					t.Errorf("Classify(%s) = %+v,\nwant %+v", how, got, want)
				}
			}
			check("wrapped twice", fmt.Errorf("deliver task 42: %w", fmt.Errorf("account alice: %w", tc.err)))
			check("%w: %w", fmt.Errorf("send: %w: %w", tc.err, errors.New("skip retry")))
		})
	}
}

func TestClassifyCauseWrappedInsideSendError(t *testing.T) {
	t.Parallel()
	cases := []classifyCase{
		{name: "RetrieveError", class: ClassAuth, invalidGrant: true, reason: "invalid_grant",
			err: sendErr(StageToken, fmt.Errorf("refresh token for alice: %w", retrieveErr(400, "invalid_grant", "")))},
		{name: "Reply", class: ClassPermanentRecipient, reason: "recipient rejected",
			err: sendErr(StageRcpt, fmt.Errorf("rcpt bob: %w", wire("550 5.1.1 no such user")))},
		{name: "NetworkErrorAfterTheFinalDot", class: ClassAmbiguous, reason: "may have been delivered",
			err: sendErr(StageDataEnd, fmt.Errorf("read reply: %w", io.ErrUnexpectedEOF))},
		{name: "InsecureTransport", class: ClassNeedsHuman, hold: HoldConfiguration, reason: "without TLS",
			err: sendErr(StageAuth, fmt.Errorf("dial 192.0.2.1:25: %w", ErrInsecureTransport))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkClassification(t, tc, Classify(tc.err))
		})
	}
}

func TestClassifyNilIsTheZeroClassification(t *testing.T) {
	t.Parallel()
	if got := Classify(nil); got != (Classification{}) {
		t.Errorf("Classify(nil) = %+v, want the zero Classification", got)
	}
	if got := ClassifyReply(StageRcpt, nil); got != (Classification{}) {
		t.Errorf("ClassifyReply(StageRcpt, nil) = %+v, want the zero Classification", got)
	}
	if got := Classify(nil).Class.String(); got != "none" {
		t.Errorf("zero Class String() = %q, want %q", got, "none")
	}
}

func TestClassifyRetrieveError(t *testing.T) {
	t.Parallel()

	t.Run("StatusCodesWithoutAnOAuthError", func(t *testing.T) {
		t.Parallel()
		for _, status := range []int{500, 502, 503, 504, 429, 408, 404, 403} {
			c := Classify(sendErr(StageToken, retrieveErr(status, "", "")))
			if c.Class != ClassTransient {
				t.Errorf("HTTP %d: Class = %v, want transient", status, c.Class)
			}
			if !strings.Contains(c.Reason, fmt.Sprint(status)) {
				t.Errorf("HTTP %d: Reason %q does not name the status", status, c.Reason)
			}
		}
	})

	t.Run("ConfigurationErrorCodes", func(t *testing.T) {
		t.Parallel()
		for _, code := range []string{"invalid_client", "invalid_scope", "unauthorized_client", "invalid_request", "unsupported_grant_type"} {
			c := Classify(retrieveErr(400, code, ""))
			if c.Class != ClassNeedsHuman || c.Hold != HoldConfiguration {
				t.Errorf("%s: got %v/%q, want needs-human/configuration", code, c.Class, c.Hold)
			}
		}
	})

	t.Run("ReauthorizationErrorCodes", func(t *testing.T) {
		t.Parallel()
		for _, code := range []string{"interaction_required", "consent_required", "login_required"} {
			c := Classify(retrieveErr(400, code, ""))
			if c.Class != ClassNeedsHuman || c.Hold != HoldReauthorize {
				t.Errorf("%s: got %v/%q, want needs-human/reauthorize", code, c.Class, c.Hold)
			}
		}
	})

	t.Run("NoRefreshTokenYetHoldsForAuthorization", func(t *testing.T) {
		t.Parallel()
		err := &SendError{Stage: StageToken, Err: fmt.Errorf("account support: %w: none stored", ErrNoRefreshToken)}
		c := Classify(err)
		if c.Class != ClassNeedsHuman || c.Hold != HoldReauthorize || !strings.Contains(c.Reason, "run authorize") {
			t.Errorf("got %v/%q %q, want needs-human/reauthorize saying to run authorize", c.Class, c.Hold, c.Reason)
		}
	})

	t.Run("InvalidGrantIsLeftToTheCallerToEscalate", func(t *testing.T) {
		t.Parallel()
		c := Classify(retrieveErr(400, "invalid_grant", "Bad Request"))
		if c.Class != ClassAuth || !c.InvalidGrant || c.Hold != "" {
			t.Errorf("got %+v, want ClassAuth with InvalidGrant and no Hold", c)
		}
		if !strings.HasPrefix(c.Reason, "token refresh refused: invalid_grant") {
			t.Errorf("Reason = %q", c.Reason)
		}
	})

	t.Run("RetryAfterAsAnHTTPDate", func(t *testing.T) {
		t.Parallel()
		re := retrieveErr(503, "", "")
		re.Response.Header.Set("Retry-After", time.Now().Add(2*time.Minute).UTC().Format(http.TimeFormat))
		c := Classify(re)
		if c.RetryAfter <= time.Minute || c.RetryAfter > 2*time.Minute {
			t.Errorf("RetryAfter = %v, want about 2m", c.RetryAfter)
		}
	})

	t.Run("InvalidRetryAfterIsIgnored", func(t *testing.T) {
		t.Parallel()
		for _, v := range []string{"soon", "-5", "0", "999999999"} {
			re := retrieveErr(429, "", "")
			re.Response.Header.Set("Retry-After", v)
			if c := Classify(re); c.RetryAfter != 0 {
				t.Errorf("Retry-After %q: RetryAfter = %v, want 0", v, c.RetryAfter)
			}
		}
	})

	t.Run("WithoutAResponse", func(t *testing.T) {
		t.Parallel()
		c := Classify(&oauth2.RetrieveError{})
		if c.Class != ClassTransient {
			t.Errorf("Class = %v, want transient", c.Class)
		}
	})

	t.Run("ReasonNeverIncludesTheResponseBody", func(t *testing.T) {
		t.Parallel()
		re := retrieveErr(400, "invalid_grant", "Token has been expired or revoked.")
		re.Body = []byte(`{"error":"invalid_grant","refresh_token":"1//secret-refresh-token"}`)
		if c := Classify(re); strings.Contains(c.Reason, "secret") {
			t.Errorf("Reason %q leaks the response body", c.Reason)
		}
	})
}

// TestClassifyRealNetworkErrors classifies errors produced by the network
// stack itself rather than built by hand.
func TestClassifyRealNetworkErrors(t *testing.T) {
	t.Parallel()

	t.Run("DialToAClosedPortIsTransient", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		var d net.Dialer
		conn, err := d.DialContext(t.Context(), "tcp", addr)
		if err == nil {
			conn.Close()
			t.Skip("something is listening on the closed port")
		}
		if c := Classify(sendErr(StageConnect, err)); c.Class != ClassTransient {
			t.Errorf("Classify(%v) = %v, want transient", err, c.Class)
		}
	})

	readTimeout := func(t *testing.T) error {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				accepted <- c
			}
			close(accepted)
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if srv, ok := <-accepted; ok {
			defer srv.Close()
		}
		if err := conn.SetReadDeadline(time.Now()); err != nil {
			t.Fatal(err)
		}
		_, err = conn.Read(make([]byte, 1))
		if err == nil {
			t.Fatal("Read returned no error past the deadline")
		}
		return err
	}

	t.Run("ReadTimeoutBeforeTheFinalDotIsTransient", func(t *testing.T) {
		t.Parallel()
		err := readTimeout(t)
		if c := Classify(sendErr(StageData, err)); c.Class != ClassTransient {
			t.Errorf("Classify(%v) = %v, want transient", err, c.Class)
		}
	})

	t.Run("ReadTimeoutAfterTheFinalDotIsAmbiguous", func(t *testing.T) {
		t.Parallel()
		err := readTimeout(t)
		if c := Classify(sendErr(StageDataEnd, err)); c.Class != ClassAmbiguous {
			t.Errorf("Classify(%v) = %v, want ambiguous", err, c.Class)
		}
	})

	t.Run("UntrustedCertificateNeedsConfiguration", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewUnstartedServer(http.NotFoundHandler())
		srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshake is the point
		srv.StartTLS()
		defer srv.Close()
		d := tls.Dialer{Config: &tls.Config{ServerName: "example.com", RootCAs: x509.NewCertPool()}}
		conn, err := d.DialContext(t.Context(), "tcp", srv.Listener.Addr().String())
		if err == nil {
			conn.Close()
			t.Fatal("TLS handshake succeeded without a trusted root")
		}
		c := Classify(sendErr(StageTLS, err))
		if c.Class != ClassNeedsHuman || c.Hold != HoldConfiguration {
			t.Errorf("Classify(%v) = %v/%q, want needs-human/configuration", err, c.Class, c.Hold)
		}
	})
}

func TestClassifyClassNames(t *testing.T) {
	t.Parallel()
	want := map[Class]string{
		ClassTransient:          "transient",
		ClassThrottle:           "throttle",
		ClassAuth:               "auth",
		ClassNeedsHuman:         "needs-human",
		ClassPermanentRecipient: "permanent-recipient",
		ClassPermanentMessage:   "permanent-message",
		ClassAmbiguous:          "ambiguous",
		0:                       "none",
		42:                      "Class(42)",
		-1:                      "Class(-1)",
	}
	for c, s := range want {
		if got := c.String(); got != s {
			t.Errorf("Class(%d).String() = %q, want %q", int(c), got, s)
		}
	}
}

var fuzzStages = []Stage{"", StageConnect, StageTLS, StageHello, StageToken, StageAuth, StageMail, StageRcpt, StageData, StageDataEnd, StageReset}

func FuzzClassifyReply(f *testing.F) {
	f.Add(uint8(7), 550, 5, 4, 5, "Daily user sending limit exceeded")
	f.Add(uint8(5), 535, 5, 7, 139, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.")
	f.Add(uint8(7), 451, 5, 7, 1, "enhanced and basic codes disagree")
	f.Add(uint8(9), 554, 5, 2, 0, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
	f.Add(uint8(0), 250, -1, -1, -1, "")
	f.Add(uint8(3), -7, 9, 1000, -3, "\x00\xff")
	f.Fuzz(func(t *testing.T, stage uint8, code, e0, e1, e2 int, msg string) {
		r := &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{e0, e1, e2}, Message: msg}
		st := fuzzStages[int(stage)%len(fuzzStages)]
		c := ClassifyReply(st, r)
		if c.Class < ClassTransient || c.Class > ClassAmbiguous {
			t.Fatalf("ClassifyReply(%q, %+v) = invalid class %d", st, r, c.Class)
		}
		if c.Class == ClassAmbiguous {
			t.Errorf("a reply was read, so it cannot be ambiguous: %+v", c)
		}
		if c.Reason == "" {
			t.Errorf("empty Reason for %+v", r)
		}
		if c.Code != code || c.EnhancedCode != r.EnhancedCode {
			t.Errorf("Code, EnhancedCode = %d, %v; want %d, %v", c.Code, c.EnhancedCode, code, r.EnhancedCode)
		}
		if (c.Class == ClassNeedsHuman) != (c.Hold != "") {
			t.Errorf("Class %v with Hold %q", c.Class, c.Hold)
		}
		if c.RetryAfter < 0 || (c.RetryAfter > 0) != (c.Class == ClassThrottle) {
			t.Errorf("Class %v with RetryAfter %v", c.Class, c.RetryAfter)
		}
		// Through Classify, the same reply classifies the same.
		if got := Classify(&SendError{Stage: st, Err: r}); got != c {
			t.Errorf("Classify = %+v, ClassifyReply = %+v", got, c)
		}
	})
}
