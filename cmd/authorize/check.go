package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth"
)

// check proves that account a works as a worker would use it: a new access
// token from the token endpoint (through the token store, like the
// workers), then an SMTP login with it, and QUIT. It prints the outcome and
// on failure returns an error wrapping the cause.
func check(ctx context.Context, o options, file *accounts.File, a *accounts.Account, store *ledger.Store, logger *slog.Logger, stdout io.Writer) error {
	reg, err := accounts.NewRegistry(ctx, file, logger, accounts.RegistryOptions{Tokens: store})
	if err != nil {
		return err
	}
	defer reg.Close()
	sender, err := reg.SenderFor(a.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Checking account %q: %s, grant %s, token endpoint %s, %s to %s:%d (%s).\n",
		a.ID, a.Username, a.OAuth.Grant, a.OAuth.TokenURL, a.Mechanism, a.SMTP.Host, a.SMTP.Port, a.SMTP.TLS)

	cctx, cancel := context.WithTimeout(ctx, DefaultCheckTimeout)
	defer cancel()
	if _, err = reg.Refresh(cctx, a.ID); err != nil {
		err = &smtpoauth.SendError{Stage: smtpoauth.StageToken, Err: err}
	} else {
		err = sender.Check(cctx)
	}
	if err != nil {
		d := diagnose(a, err)
		fmt.Fprintf(stdout, "FAILED (%s): %s\n  — %s\n", d.class, d.problem, d.action)
		return fmt.Errorf("check of account %q failed (%s): %w", a.ID, d.class, err)
	}
	fmt.Fprintf(stdout, "OK: obtained an access token and logged in to %s:%d as %s; no mail was sent.\n", a.SMTP.Host, a.SMTP.Port, a.Username)
	st, err := store.Account(ctx, a.ID)
	if err != nil {
		return err
	}
	if st.State == ledger.AccountHeld {
		fmt.Fprintf(stdout, "The workers hold its mail (%s: %s): to release it, run: enqueue account resume %s\n", st.Hold, st.Reason, a.ID)
	}
	return nil
}

// diagnosis is what -check prints about a failure.
type diagnosis struct {
	class   smtpoauth.Class
	problem string // what failed, with the provider's own words
	action  string // what to do about it
}

// diagnose explains err, the failure of a check of account a: the class
// smtpoauth.Classify gives it, and the cause and the remedy for the
// failures onboarding meets.
func diagnose(a *accounts.Account, err error) diagnosis {
	c := smtpoauth.Classify(err)
	d := diagnosis{class: c.Class, problem: c.Reason}
	var (
		re    *oauth2.RetrieveError
		ae    *smtpoauth.AuthError
		reply *smtp.SMTPError
		se    *smtpoauth.SendError
	)
	errors.As(err, &se)
	switch {
	case errors.Is(err, accounts.ErrNoRefreshToken):
		d.class = smtpoauth.ClassNeedsHuman
		d.problem = "no refresh token: none is stored in Redis and the accounts file names none"
		d.action = "run authorize -account " + a.ID + " (without -check) to obtain one"
	case errors.As(err, &re):
		d.problem, d.action = tokenEndpointAdvice(a, re, c)
	case se != nil && se.Stage == smtpoauth.StageToken:
		d.problem = "cannot get an access token from " + a.OAuth.TokenURL + ": " + rootCause(err)
		d.action = "check the network (proxy, firewall) and oauth.token_url, then try again"
	case errors.Is(err, smtpoauth.ErrMechanismNotOffered):
		d.action = "check smtp.host and mechanism (Microsoft offers XOAUTH2 only)"
	case errors.Is(err, smtpoauth.ErrInsecureTransport):
		d.action = "check smtp.port and smtp.tls: 587 is starttls, 465 implicit"
	case errors.As(err, &ae) || (errors.As(err, &reply) && se != nil && se.Stage == smtpoauth.StageAuth):
		d.problem, d.action = loginAdvice(a, err, c)
	case c.Class == smtpoauth.ClassNeedsHuman && c.Hold == smtpoauth.HoldConfiguration && se != nil &&
		(se.Stage == smtpoauth.StageTLS || se.Stage == smtpoauth.StageConnect):
		d.action = "check smtp.host and smtp.ca_file: the server's certificate must be trusted"
	case se != nil && (se.Stage == smtpoauth.StageConnect || se.Stage == smtpoauth.StageTLS || se.Stage == smtpoauth.StageHello):
		d.problem = fmt.Sprintf("cannot talk to %s:%d: %s", a.SMTP.Host, a.SMTP.Port, rootCause(err))
		d.action = fmt.Sprintf("check smtp.host, smtp.port and that this machine may connect out to port %d, then try again", a.SMTP.Port)
	}
	if d.action == "" {
		switch d.class {
		case smtpoauth.ClassTransient, smtpoauth.ClassThrottle:
			d.action = "try again later"
		default:
			d.action = "check the account's settings in the accounts file"
		}
	}
	return d
}

// tokenEndpointAdvice explains an error answer of the token endpoint.
func tokenEndpointAdvice(a *accounts.Account, re *oauth2.RetrieveError, c smtpoauth.Classification) (problem, action string) {
	what := re.ErrorCode
	if d := strings.Join(strings.Fields(re.ErrorDescription), " "); d != "" {
		what += " (" + d + ")"
	}
	switch re.ErrorCode {
	case "invalid_grant":
		switch a.OAuth.Grant {
		case accounts.GrantJWT:
			return "the token endpoint refused the service account's assertion: " + what,
				"in the Google Admin console (Security > Access and data control > API controls > Domain-wide delegation), " +
					"allow the service account's client ID the scope https://mail.google.com/; check that " + a.OAuth.Subject +
					" is a user of the domain and that this machine's clock is right"
		case accounts.GrantClientCredentials:
			return "the token endpoint refused the grant: " + what, "check oauth.tenant and oauth.client_id"
		}
		return "the token endpoint refused the refresh token: " + what,
			"run authorize -account " + a.ID + " again: the refresh token expired (Google: after 7 days while the consent screen is in Testing, " +
				"6 months unused), was revoked, or the password changed"
	case "invalid_client":
		return "the token endpoint does not know the client or its secret: " + what,
			"check oauth.client_id and the client secret (client_secret_env or client_secret_file): at Microsoft it is the secret's Value, " +
				"not its ID, and it may have expired"
	case "unauthorized_client":
		switch a.OAuth.Grant {
		case accounts.GrantJWT:
			return "the service account may not act for users: " + what,
				"enable domain-wide delegation for the service account's client ID with the scope https://mail.google.com/"
		case accounts.GrantClientCredentials:
			return "the application may not use client credentials here: " + what,
				"give the app registration the application permission SMTP.SendAsApp (Office 365 Exchange Online) and grant admin consent"
		}
		return "the client may not use this grant: " + what, "check the OAuth client's type (Google: Desktop app; Microsoft: allow public client flows)"
	case "invalid_scope":
		return "the token endpoint refused the scopes " + strings.Join(a.OAuth.Scopes, " ") + ": " + what,
			"fix oauth.scopes (or remove it to take the preset's), then run authorize again"
	case "consent_required", "interaction_required", "login_required":
		return "the user (or an administrator) must consent again: " + what,
			"run authorize -account " + a.ID + " again; if it says an administrator must approve, ask one to grant consent to the app"
	}
	return c.Reason, "the token endpoint is unavailable or refused the request: check oauth.token_url, then try again later"
}

// loginAdvice explains a failed SMTP login.
func loginAdvice(a *accounts.Account, err error, c smtpoauth.Classification) (problem, action string) {
	var reply *smtp.SMTPError
	errors.As(err, &reply)
	wire := ""
	if reply != nil {
		wire = smtpoauth.FormatReply(reply)
	}
	switch {
	case reply != nil && reply.EnhancedCode == smtp.EnhancedCode{5, 7, 139}:
		return "SMTP AUTH disabled for this mailbox: " + wire,
			"enable it in the Microsoft 365 admin center (Users > Active users > " + a.Username +
				" > Mail > Manage email apps > Authenticated SMTP), or in Exchange Online PowerShell: Set-CASMailbox -Identity " + a.Username +
				" -SmtpClientAuthenticationDisabled $false (and, if the whole organization has it off, Set-TransportConfig -SmtpClientAuthenticationDisabled $false)"
	case c.Class == smtpoauth.ClassThrottle:
		return "the server limits logins for the mailbox now: " + wire, "try again later"
	case c.Class == smtpoauth.ClassNeedsHuman:
		return c.Reason, "check username, oauth.scopes and the mailbox's settings, then run authorize again"
	}
	problem = "the server refused the access token: " + wire
	switch {
	case a.OAuth.Grant == accounts.GrantClientCredentials:
		action = "let the app send as the mailbox: in Exchange Online PowerShell, New-ServicePrincipal -AppId " + a.OAuth.ClientID +
			" -ObjectId <the enterprise application's object ID>, then Add-MailboxPermission -Identity " + a.Username +
			" -User <that service principal> -AccessRights FullAccess; the app needs SMTP.SendAsApp with admin consent"
	case a.OAuth.Grant == accounts.GrantJWT:
		action = "check that the service account acts as " + a.Username + " (oauth.subject) and that its domain-wide delegation includes https://mail.google.com/"
	case a.Provider == accounts.ProviderMicrosoft:
		action = "run authorize again and sign in as " + a.Username + " (the token names the user who signed in); the app needs the delegated permission SMTP.Send"
	default:
		action = "run authorize again and sign in as " + a.Username + " (the token is valid only for the account that consented, with the scope https://mail.google.com/ at Google)"
	}
	return problem, action
}

// rootCause is the network error inside err, such as "dial tcp
// 192.0.2.1:587: connect: connection refused", without the layers of
// context wrapped around it; err's message if there is none.
func rootCause(err error) string {
	if op, ok := errors.AsType[*net.OpError](err); ok {
		return op.Error()
	}
	return err.Error()
}
