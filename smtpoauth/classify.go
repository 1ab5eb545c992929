package smtpoauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"
)

// Class is what a failed submission means for the message and for the
// account that sent it, and so what the caller should do next. Classify
// decides it.
type Class int

// The classes. The zero Class means "no failure" and is what Classify
// returns for a nil error.
const (
	// ClassTransient: the message was not delivered and a later attempt may
	// succeed (network and TLS errors, timeouts before the end of DATA,
	// 4xx replies, token-endpoint outages). Retry with jittered
	// exponential backoff.
	ClassTransient Class = iota + 1
	// ClassThrottle: the provider limits the account (login rate, daily
	// quota, concurrent connections). Pause the account's mail for
	// Classification.RetryAfter without spending the task's retries.
	ClassThrottle
	// ClassAuth: the access token, or the refresh behind it, was refused.
	// Refresh the token once and retry at once; if that fails too, defer
	// the account's mail, mark the account unhealthy and alert. See
	// Classification.InvalidGrant for the refresh-token case.
	ClassAuth
	// ClassNeedsHuman: nothing changes until someone acts: the account
	// must be re-authorized or its configuration (or the tenant's) fixed.
	// Hold the account's mail and alert; Classification.Hold says which.
	ClassNeedsHuman
	// ClassPermanentRecipient: the server refused a recipient for good.
	// Drop that recipient and do not retry it.
	ClassPermanentRecipient
	// ClassPermanentMessage: the message itself can never be sent as it is
	// (too large, content refused, a sender address the mailbox may not
	// use, an invalid message). Dead-letter it with the reason.
	ClassPermanentMessage
	// ClassAmbiguous: the connection was lost after the message was sent
	// (the final "." of DATA, or the write carrying BDAT LAST), before the
	// server's reply: the message may have been delivered.
	// Retry, keep the same Message-ID and flag a possible duplicate.
	ClassAmbiguous
)

var classNames = [...]string{
	ClassTransient:          "transient",
	ClassThrottle:           "throttle",
	ClassAuth:               "auth",
	ClassNeedsHuman:         "needs-human",
	ClassPermanentRecipient: "permanent-recipient",
	ClassPermanentMessage:   "permanent-message",
	ClassAmbiguous:          "ambiguous",
}

// String returns the class name used in logs and metrics, such as
// "transient" or "needs-human"; "none" for the zero Class.
func (c Class) String() string {
	if c == 0 {
		return "none"
	}
	if c > 0 && int(c) < len(classNames) {
		return classNames[c]
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Values of Classification.Hold: what a human has to do before the
// account's held mail can flow again.
const (
	// HoldReauthorize: the refresh token is dead or the user must consent
	// again; run the authorization flow for the account.
	HoldReauthorize = "reauthorize"
	// HoldConfiguration: the account's settings, the OAuth client or the
	// tenant are wrong (SMTP AUTH disabled, wrong user, wrong scope,
	// wrong TLS mode, untrusted certificate).
	HoldConfiguration = "configuration"
)

// Pause hints for ClassThrottle, in Classification.RetryAfter. The providers
// do not say when a limit lifts; these are how long to wait before probing
// the account again with one message.
const (
	// RetryAfterDailyQuota follows a daily sending limit (Gmail 550 5.4.5,
	// Exchange 554 5.2.0 SubmissionQuotaExceeded and 550 5.1.90). The
	// windows are rolling 24 hours and Gmail may block for up to 24 hours,
	// so probe hourly rather than wait a full day.
	RetryAfterDailyQuota = time.Hour
	// RetryAfterLoginRate follows Gmail's 454 4.7.0 "Too many login
	// attempts".
	RetryAfterLoginRate = 5 * time.Minute
	// RetryAfterConnectionLimit follows Exchange's 432 4.3.2 (more than 3
	// concurrent SMTP AUTH connections for a mailbox): wait for the
	// account's other connections to finish.
	RetryAfterConnectionLimit = time.Minute
	// RetryAfterRateLimit follows a short-window sending rate limit
	// (450 4.2.1 "Peak SMTP relay limit exceeded").
	RetryAfterRateLimit = time.Minute
)

// Classification is the verdict of Classify: the class, and what an operator
// and the retry logic need to act on it.
type Classification struct {
	Class Class
	// Reason is an operator-readable sentence: what went wrong, the
	// server's reply when there was one, and what to do when a human must
	// act. It holds server-supplied text but never anything the client
	// sent (no token, no message content).
	Reason string
	// Code and EnhancedCode are the server's reply when a reply caused the
	// failure; zero otherwise.
	Code         int
	EnhancedCode smtp.EnhancedCode
	// RetryAfter is a hint: how long to pause the account (ClassThrottle)
	// or the next attempt (ClassTransient with a token-endpoint
	// Retry-After header). Zero means use the caller's own backoff.
	RetryAfter time.Duration
	// Hold is HoldReauthorize or HoldConfiguration for ClassNeedsHuman,
	// empty otherwise.
	Hold string
	// InvalidGrant is set (with ClassAuth) when the token endpoint refused
	// the refresh token or JWT grant with invalid_grant. Classify cannot
	// tell a dead refresh token from a passing failure (Microsoft
	// sometimes answers invalid_grant transiently), so it never decides
	// ClassNeedsHuman for it: the caller, which keeps state across tasks,
	// escalates to ClassNeedsHuman with HoldReauthorize only when
	// invalid_grant persists over a few tries spread over minutes, and
	// never deletes the refresh token on the first one.
	InvalidGrant bool
}

// Classify decides what a failed Send means. It looks through any wrapping
// (fmt.Errorf with %w, *SendError, *AuthError) with errors.As and
// errors.Is, so a wrapped error classifies as the error it wraps. The Stage
// of the outermost *SendError matters: the same reply or network error means
// different things at RCPT, at DATA and after the final ".".
//
// In order, it recognises:
//   - ErrInvalidMessage: ClassPermanentMessage;
//   - ErrInsecureTransport (including a server without STARTTLS in
//     starttls mode) and ErrMechanismNotOffered: ClassNeedsHuman,
//     HoldConfiguration;
//   - *AuthError: its final reply by ClassifyReply at StageAuth, or
//     ClassAuth when the server sent no final reply; a challenge status of
//     "403" or "insufficient_scope" means the token lacks the SMTP scope
//     (ClassNeedsHuman, HoldConfiguration);
//   - *oauth2.RetrieveError from the token endpoint: invalid_grant is
//     ClassAuth with InvalidGrant set; the other RFC 6749 errors
//     (invalid_client, invalid_scope, unauthorized_client, invalid_request,
//     unsupported_grant_type) are ClassNeedsHuman, HoldConfiguration;
//     interaction_required, consent_required and login_required are
//     ClassNeedsHuman, HoldReauthorize; HTTP 5xx, 429, 408 and anything
//     else are ClassTransient;
//   - *smtp.SMTPError: ClassifyReply with the stage;
//   - any other error at StageDataEnd (connection lost or timed out after
//     the final "."): ClassAmbiguous;
//   - certificate verification failures: ClassNeedsHuman,
//     HoldConfiguration (a wrong host name, RootCAs or an intercepting
//     proxy, not a passing fault);
//   - context.Canceled and context.DeadlineExceeded (worker shutting down,
//     task timeout), network, TLS and DNS errors, io.EOF: ClassTransient.
//
// Anything else is ClassTransient: under at-least-once delivery an unknown
// error must neither lose the message (permanent) nor stop the account
// (needs-human); retrying is the only safe default, and the retry budget
// bounds it.
//
// A nil error returns the zero Classification (Class 0, "none").
func Classify(err error) Classification {
	if err == nil {
		return Classification{}
	}
	var stage Stage
	se, hasStage := errors.AsType[*SendError](err)
	if hasStage {
		stage = se.Stage
	}
	// detail is the failure as the sender described it, without the
	// context callers wrapped around it, so wrapping does not change it.
	detail := func() string {
		if hasStage {
			return se.Error()
		}
		return err.Error()
	}

	switch {
	case errors.Is(err, ErrNoRefreshToken):
		return Classification{
			Class:  ClassNeedsHuman,
			Hold:   HoldReauthorize,
			Reason: "no refresh token yet: " + detail() + " — run authorize for the account",
		}
	case errors.Is(err, ErrInvalidMessage):
		return Classification{Class: ClassPermanentMessage, Reason: "message cannot be submitted: " + detail()}
	case errors.Is(err, ErrInsecureTransport):
		return Classification{
			Class:  ClassNeedsHuman,
			Hold:   HoldConfiguration,
			Reason: "bearer token withheld without TLS: " + detail() + " — check the account's host, port and tls settings",
		}
	case errors.Is(err, ErrMechanismNotOffered):
		return Classification{
			Class:  ClassNeedsHuman,
			Hold:   HoldConfiguration,
			Reason: detail() + " — check the account's host and mechanism",
		}
	}
	if ae, ok := errors.AsType[*AuthError](err); ok {
		return classifyAuthError(ae)
	}
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok {
		return classifyRetrieveError(re)
	}
	if r, ok := errors.AsType[*smtp.SMTPError](err); ok {
		return ClassifyReply(stage, r)
	}
	if stage == StageDataEnd {
		return Classification{
			Class:  ClassAmbiguous,
			Reason: "connection lost after the message was sent (end of DATA or BDAT), before the reply: it may have been delivered: " + detail(),
		}
	}
	if isCertificateError(err) {
		return Classification{
			Class:  ClassNeedsHuman,
			Hold:   HoldConfiguration,
			Reason: "server certificate not trusted — check host, server_name and ca_file: " + detail(),
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return Classification{Class: ClassTransient, Reason: "cancelled: " + detail()}
	case errors.Is(err, context.DeadlineExceeded):
		return Classification{Class: ClassTransient, Reason: "timed out: " + detail()}
	case isNetworkError(err):
		return Classification{Class: ClassTransient, Reason: "network error: " + detail()}
	}
	return Classification{Class: ClassTransient, Reason: "unrecognised error, retrying: " + detail()}
}

// isNetworkError reports errors of the connection itself: the net package's
// (dial, DNS, timeouts), the operating system's, a TLS handshake's, and a
// connection closed under the reader.
func isNetworkError(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	if _, ok := errors.AsType[syscall.Errno](err); ok {
		return true
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return true
	}
	if _, ok := errors.AsType[tls.AlertError](err); ok {
		return true
	}
	return false
}

// isCertificateError reports a failed verification of the server's
// certificate chain or name.
func isCertificateError(err error) bool {
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return true
	}
	return false
}

func classifyAuthError(ae *AuthError) Classification {
	if s := strings.ToLower(ae.Status); s == "403" || s == "insufficient_scope" {
		c := Classification{
			Class:  ClassNeedsHuman,
			Hold:   HoldConfiguration,
			Reason: "access token lacks the SMTP scope (challenge status " + ae.Status + ") — fix the account's scopes and re-authorize",
		}
		if ae.Reply != nil {
			c.Code, c.EnhancedCode = ae.Reply.Code, ae.Reply.EnhancedCode
		}
		return c
	}
	if ae.Reply == nil {
		return Classification{
			Class:  ClassAuth,
			Reason: "access token rejected: " + ae.Error(),
		}
	}
	c := ClassifyReply(StageAuth, ae.Reply)
	if ae.Status != "" {
		c.Reason += " (challenge status " + ae.Status + ")"
	}
	return c
}

// Token-endpoint error codes (RFC 6749 section 5.2, OpenID Connect Core
// section 3.1.2.6) and the human action each needs.
var tokenErrorHolds = map[string]string{
	"invalid_client":         HoldConfiguration,
	"invalid_scope":          HoldConfiguration,
	"unauthorized_client":    HoldConfiguration,
	"invalid_request":        HoldConfiguration,
	"unsupported_grant_type": HoldConfiguration,
	"interaction_required":   HoldReauthorize,
	"consent_required":       HoldReauthorize,
	"login_required":         HoldReauthorize,
}

func classifyRetrieveError(re *oauth2.RetrieveError) Classification {
	code := re.ErrorCode
	detail := code
	if d := oneLine(re.ErrorDescription, 200); d != "" {
		detail += " (" + d + ")"
	}
	if code == "invalid_grant" {
		return Classification{
			Class:        ClassAuth,
			InvalidGrant: true,
			Reason:       "token refresh refused: " + detail + " — re-authorize the account if it persists",
		}
	}
	if hold, ok := tokenErrorHolds[code]; ok {
		what := "account needs re-authorization: "
		if hold == HoldConfiguration {
			what = "OAuth client or account misconfigured: "
		}
		return Classification{Class: ClassNeedsHuman, Hold: hold, Reason: what + detail}
	}

	c := Classification{Class: ClassTransient}
	status := "no response"
	if re.Response != nil {
		status = re.Response.Status
		if status == "" {
			status = strconv.Itoa(re.Response.StatusCode)
		}
		c.RetryAfter = retryAfterHeader(re.Response.Header.Get("Retry-After"))
	}
	switch {
	case code != "":
		c.Reason = "token endpoint error, retrying: " + detail + ", HTTP " + status
	case re.Response != nil && (re.Response.StatusCode >= 500 || re.Response.StatusCode == http.StatusTooManyRequests || re.Response.StatusCode == http.StatusRequestTimeout):
		c.Reason = "token endpoint unavailable: HTTP " + status
	default:
		c.Reason = "token endpoint answered without an OAuth error, retrying: HTTP " + status
	}
	return c
}

// retryAfterHeader parses an HTTP Retry-After value (seconds or a date);
// 0 when absent, invalid or in the past.
func retryAfterHeader(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 || n > 86400 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 && d <= 24*time.Hour {
			return d.Round(time.Second)
		}
	}
	return 0
}

// oneLine folds whitespace and truncates s to at most max runes.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return s
}

// replyRule is one row of the SMTP reply table. A row matches when every
// non-zero field matches; the first matching row decides.
type replyRule struct {
	stages []Stage // nil: any stage
	code   int     // the basic code; 0: any
	// enh is an enhanced code, "5.4.5" (exact) or "5.1." (prefix); "": any.
	enh string
	// kind is 4 or 5, the reply's class with the enhanced code winning
	// over the basic code when both are present; 0: any.
	kind int
	// text is a lower-case substring of the reply text; "": any.
	text string

	class  Class
	hold   string
	retry  time.Duration
	reason string // leads the Reason, followed by ": " and the reply
	hint   string // what to do, appended after " — "
}

var sessionStages = []Stage{StageConnect, StageTLS, StageHello}

// replyRules is the SMTP reply table of ClassifyReply, in order.
var replyRules = []replyRule{
	// Provider limits on the account: pause it, whatever the stage.
	// 5.4.5 is a 5xx that is not permanent.
	{enh: "5.4.5", class: ClassThrottle, retry: RetryAfterDailyQuota,
		reason: "daily sending quota exceeded"}, // Gmail 550 5.4.5 Daily user sending limit exceeded
	{text: "submissionquotaexceeded", class: ClassThrottle, retry: RetryAfterDailyQuota,
		reason: "sending quota exceeded"}, // Exchange 554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException
	{enh: "5.1.90", class: ClassThrottle, retry: RetryAfterDailyQuota,
		reason: "daily recipient limit reached"}, // Exchange 550 5.1.90
	{code: 432, enh: "4.3.2", class: ClassThrottle, retry: RetryAfterConnectionLimit,
		reason: "too many concurrent connections for this mailbox"}, // Exchange 432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded
	{enh: "4.2.1", text: "user you are trying to contact", class: ClassTransient,
		reason: "recipient is receiving mail too quickly"}, // Gmail 450 4.2.1, about the recipient, not us
	{enh: "4.2.1", class: ClassThrottle, retry: RetryAfterRateLimit,
		reason: "sending rate limited"}, // Gmail 450 4.2.1 Peak SMTP relay limit exceeded for customer
	{code: 454, text: "too many login", class: ClassThrottle, retry: RetryAfterLoginRate,
		reason: "too many login attempts"}, // Gmail 454 4.7.0 Too many login attempts, please try again later
	{stages: []Stage{StageAuth}, code: 454, class: ClassThrottle, retry: RetryAfterLoginRate,
		reason: "authentication temporarily refused"}, // Gmail 454 4.7.0 Cannot authenticate due to temporary system problem

	// Only a human can fix these.
	{enh: "5.7.139", class: ClassNeedsHuman, hold: HoldConfiguration,
		reason: "SMTP AUTH disabled for this mailbox", hint: "enable it in the admin center"}, // Microsoft 535 5.7.139
	{enh: "5.5.124", class: ClassNeedsHuman, hold: HoldConfiguration,
		reason: "server rejected the XOAUTH2 user", hint: "check the account's username (the mailbox address)"}, // Microsoft 501 5.5.124
	{code: 530, class: ClassNeedsHuman, hold: HoldConfiguration,
		reason: "server requires STARTTLS or authentication first", hint: "check the account's tls setting"}, // Gmail 530 5.7.0 Must issue a STARTTLS command first
	{stages: []Stage{StageAuth}, code: 504, class: ClassNeedsHuman, hold: HoldConfiguration,
		reason: "server does not support the authentication mechanism", hint: "check the account's mechanism"}, // 504 5.7.4 Unrecognized authentication type

	// The token was refused.
	{enh: "5.5.127", class: ClassAuth,
		reason: "access token expires soon, refresh it"}, // Microsoft 501 5.5.127 Token will expire soon
	{stages: []Stage{StageAuth}, kind: 5, class: ClassAuth,
		reason: "access token rejected"}, // Gmail 535 5.7.8, Microsoft 535 5.7.3
	{code: 535, class: ClassAuth,
		reason: "access token rejected"},

	// The session itself.
	{stages: []Stage{StageReset}, class: ClassTransient,
		reason: "RSET failed"},
	{stages: sessionStages, kind: 5, class: ClassNeedsHuman, hold: HoldConfiguration,
		reason: "server refused the session", hint: "check the account's host, port and tls settings"},

	// One recipient.
	{stages: []Stage{StageRcpt}, kind: 5, class: ClassPermanentRecipient,
		reason: "recipient rejected"}, // 550 5.1.1, 551, 553, 550 5.7.1 policy

	// The message.
	{kind: 5, text: "sendasdenied", class: ClassPermanentMessage,
		reason: "mailbox may not send as this sender"}, // Exchange 554 5.2.0 ...SendAsDeniedException (after the final ".")
	{stages: []Stage{StageMail}, kind: 5, class: ClassPermanentMessage,
		reason: "sender rejected"},
	{enh: "5.3.4", class: ClassPermanentMessage, reason: "message too large"},
	{enh: "5.2.3", class: ClassPermanentMessage, reason: "message too large"}, // Gmail 552 5.2.3
	{enh: "5.6.", class: ClassPermanentMessage, reason: "message content rejected"},
	{code: 554, kind: 5, class: ClassPermanentMessage, reason: "message rejected"},

	// Everything else by its class digit.
	{kind: 4, class: ClassTransient, reason: "temporary failure"},
	{kind: 5, class: ClassPermanentMessage, reason: "message rejected"},
}

// ClassifyReply classifies a server reply that ended a submission at stage:
// the SMTP part of Classify, usable on its own (for example on a rejected
// RecipientResult.Reply with StageRcpt, or Result.Reply with StageDataEnd).
//
// Where the basic and the enhanced code disagree, the enhanced code (RFC 3463)
// wins when present. Provider limits come first, at any stage: Gmail
// 550 5.4.5 is a throttle, not a permanent failure. Otherwise a 4xx is
// ClassTransient; a 5xx is ClassAuth at StageAuth, ClassNeedsHuman at
// StageConnect, StageTLS and StageHello (the server refuses the session, a
// configuration problem, not the message's), ClassPermanentRecipient at
// StageRcpt, and ClassPermanentMessage at StageMail, StageData, StageDataEnd
// or an unknown stage. A rejected sender address at MAIL, or Exchange's
// SendAsDenied after the final ".", is ClassPermanentMessage: the message
// asks for a From the mailbox may not use; other messages of the account
// still flow, and the dead letter can be replayed once the From or the
// mailbox's send-as rights are fixed.
//
// A reply that is neither 4xx nor 5xx (an unexpected 2xx or 3xx, a
// malformed code) is ClassTransient. A nil reply returns the zero
// Classification.
func ClassifyReply(stage Stage, r *smtp.SMTPError) Classification {
	if r == nil {
		return Classification{}
	}
	c := Classification{Code: r.Code, EnhancedCode: r.EnhancedCode}
	enh, hasEnh := enhancedString(r.EnhancedCode)
	kind := r.Code / 100
	if hasEnh {
		kind = r.EnhancedCode[0]
	}
	text := strings.ToLower(r.Message)
	reply := FormatReply(r)
	for i := range replyRules {
		rule := &replyRules[i]
		if !rule.matches(stage, r.Code, enh, kind, text) {
			continue
		}
		c.Class, c.Hold, c.RetryAfter = rule.class, rule.hold, rule.retry
		c.Reason = rule.reason + ": " + reply
		if rule.hint != "" {
			c.Reason += " — " + rule.hint
		}
		return c
	}
	c.Class = ClassTransient
	c.Reason = "unexpected reply, retrying: " + reply
	return c
}

func (rule *replyRule) matches(stage Stage, code int, enh string, kind int, text string) bool {
	if rule.stages != nil && !slices.Contains(rule.stages, stage) {
		return false
	}
	if rule.code != 0 && rule.code != code {
		return false
	}
	if rule.kind != 0 && rule.kind != kind {
		return false
	}
	if rule.enh != "" {
		if strings.HasSuffix(rule.enh, ".") {
			if !strings.HasPrefix(enh, rule.enh) {
				return false
			}
		} else if rule.enh != enh {
			return false
		}
	}
	return rule.text == "" || strings.Contains(text, rule.text)
}

// enhancedString renders a meaningful enhanced code as "5.7.8"; ok is false
// when the reply had none (zero, NoEnhancedCode) or it is out of the RFC 3463
// ranges.
func enhancedString(ec smtp.EnhancedCode) (string, bool) {
	if ec[0] != 2 && ec[0] != 4 && ec[0] != 5 {
		return "", false
	}
	if ec[1] < 0 || ec[1] > 999 || ec[2] < 0 || ec[2] > 999 {
		return "", false
	}
	return fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2]), true
}
