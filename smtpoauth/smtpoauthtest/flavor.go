package smtpoauthtest

import (
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Flavor selects which provider the server imitates on the wire: the SMTP
// replies to failed authentication, the mechanisms advertised, the maximum
// message size and the token endpoint's error descriptions.
type Flavor string

// The provider flavors.
const (
	// FlavorGoogle imitates smtp.gmail.com and oauth2.googleapis.com: a
	// failed AUTH gets the 334 JSON error challenge, then, after the
	// client's empty response, a multi-line 535 5.7.8. Both XOAUTH2 and
	// OAUTHBEARER are offered.
	FlavorGoogle Flavor = "google"
	// FlavorMicrosoft imitates smtp.office365.com and
	// login.microsoftonline.com: a failed AUTH gets
	// "535 5.7.3 Authentication unsuccessful" at once, and only XOAUTH2 is
	// offered (Outlook does not support OAUTHBEARER).
	FlavorMicrosoft Flavor = "microsoft"
)

// The SASL mechanism names the server implements.
const (
	MechXOAUTH2     = "XOAUTH2"
	MechOAuthBearer = "OAUTHBEARER"
)

// GoogleErrorChallenge is the JSON document FlavorGoogle sends, base64
// encoded, in the 334 challenge that answers a rejected token.
const GoogleErrorChallenge = `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`

// Default scopes, reported in token responses when the client asked for none.
const (
	GoogleMailScope       = "https://mail.google.com/"
	MicrosoftSMTPScope    = "https://outlook.office.com/SMTP.Send offline_access"
	MicrosoftDefaultScope = "https://outlook.office365.com/.default"
)

// Maximum message sizes advertised in EHLO (SIZE), as the providers do.
const (
	GoogleMaxMessageBytes    = 35882577
	MicrosoftMaxMessageBytes = 157286400
)

// reply builds an *smtp.SMTPError that go-smtp's server writes exactly like
// the providers do: every line of a multi-line reply carries the enhanced
// code. go-smtp only prefixes the last line, so the others get it here.
func reply(code int, ec smtp.EnhancedCode, lines ...string) *smtp.SMTPError {
	prefix := ""
	if ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
		prefix = fmt.Sprintf("%d.%d.%d ", ec[0], ec[1], ec[2])
	}
	var b strings.Builder
	for i, l := range lines {
		if i < len(lines)-1 {
			b.WriteString(prefix + l + "\n")
		} else {
			b.WriteString(l)
		}
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: b.String()}
}

// flavorSpec holds what differs between providers.
type flavorSpec struct {
	mechanisms      []string
	maxMessageBytes int64
	// errorChallenge, when non-empty, is sent in a 334 before the final
	// failure reply (Google). Empty: fail at once (Microsoft).
	errorChallenge []byte
	authFailed     func() *smtp.SMTPError
	authRequired   func() *smtp.SMTPError // MAIL/RCPT/DATA before AUTH
	tlsRequired    func() *smtp.SMTPError // AUTH/MAIL before STARTTLS
	authBeforeTLS  func() *smtp.SMTPError
	unknownMech    func() *smtp.SMTPError
	defaultScope   string
	appScope       string // client_credentials default scope
	revokedGrant   string // error_description of invalid_grant
	badClient      string // error_description of invalid_client
}

func specFor(f Flavor) *flavorSpec {
	if f == FlavorMicrosoft {
		return microsoftSpec
	}
	return googleSpec
}

var googleSpec = &flavorSpec{
	mechanisms:      []string{MechXOAUTH2, MechOAuthBearer},
	maxMessageBytes: GoogleMaxMessageBytes,
	errorChallenge:  []byte(GoogleErrorChallenge),
	authFailed: func() *smtp.SMTPError {
		return reply(535, smtp.EnhancedCode{5, 7, 8},
			"Username and Password not accepted. For more information, go to",
			" https://support.google.com/mail/?p=BadCredentials")
	},
	authRequired: func() *smtp.SMTPError {
		return reply(530, smtp.EnhancedCode{5, 7, 0},
			"Authentication Required. For more information, go to",
			" https://support.google.com/mail/?p=WantAuthError")
	},
	tlsRequired: func() *smtp.SMTPError {
		return reply(530, smtp.EnhancedCode{5, 7, 0}, "Must issue a STARTTLS command first.")
	},
	authBeforeTLS: func() *smtp.SMTPError {
		return reply(530, smtp.EnhancedCode{5, 7, 0}, "Must issue a STARTTLS command first.")
	},
	unknownMech: func() *smtp.SMTPError {
		return reply(504, smtp.EnhancedCode{5, 7, 4}, "Unrecognized Authentication Type.")
	},
	defaultScope: GoogleMailScope,
	appScope:     GoogleMailScope,
	revokedGrant: "Token has been expired or revoked.",
	badClient:    "Unauthorized",
}

var microsoftSpec = &flavorSpec{
	mechanisms:      []string{MechXOAUTH2},
	maxMessageBytes: MicrosoftMaxMessageBytes,
	authFailed: func() *smtp.SMTPError {
		return reply(535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful")
	},
	authRequired: func() *smtp.SMTPError {
		return reply(530, smtp.EnhancedCode{5, 7, 57}, "Client not authenticated to send mail.")
	},
	tlsRequired: func() *smtp.SMTPError {
		return reply(530, smtp.EnhancedCode{5, 7, 57}, "Client not authenticated to send mail.")
	},
	authBeforeTLS: func() *smtp.SMTPError {
		return reply(504, smtp.EnhancedCode{5, 7, 4}, "Unrecognized authentication type")
	},
	unknownMech: func() *smtp.SMTPError {
		return reply(504, smtp.EnhancedCode{5, 7, 4}, "Unrecognized authentication type")
	},
	defaultScope: MicrosoftSMTPScope,
	appScope:     MicrosoftDefaultScope,
	revokedGrant: "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed.",
	badClient:    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
}
