package accounts

import (
	"fmt"

	"github.com/sendq/sendq/smtpoauth"
)

// Provider names a set of defaults (a preset) for an account.
type Provider string

// The providers an account can name.
const (
	// ProviderGoogle is Gmail and Google Workspace: smtp.gmail.com, the
	// refresh_token grant or a service account (jwt).
	ProviderGoogle Provider = "google"
	// ProviderMicrosoft is Microsoft 365 (Exchange Online): smtp.office365.com,
	// the refresh_token grant or client_credentials (app-only).
	ProviderMicrosoft Provider = "microsoft"
	// ProviderGeneric has no defaults: smtp.host, smtp.port and
	// oauth.token_url are required.
	ProviderGeneric Provider = "generic"
)

// Grant is the OAuth2 grant an account obtains its access tokens with.
type Grant string

// The supported grants.
const (
	// GrantRefreshToken exchanges a refresh token obtained once by consent
	// (oauth.refresh_token_env or oauth.refresh_token_file).
	GrantRefreshToken Grant = "refresh_token"
	// GrantClientCredentials authenticates as the application itself
	// (Microsoft 365 app-only access with SMTP.SendAsApp).
	GrantClientCredentials Grant = "client_credentials"
	// GrantJWT is a Google service account with domain-wide delegation
	// acting as oauth.subject (default: the username).
	GrantJWT Grant = "jwt"
)

// Default ports. When an account of a preset provider leaves smtp.port
// unset, it is DefaultImplicitTLSPort with smtp.tls "implicit" and
// DefaultSubmissionPort otherwise. When smtp.tls is unset it is "implicit"
// on port 465 and "starttls" on any other port.
const (
	DefaultSubmissionPort  = 587
	DefaultImplicitTLSPort = 465
)

// Google preset values.
const (
	GoogleSMTPHost = "smtp.gmail.com"
	GoogleTokenURL = "https://oauth2.googleapis.com/token"
	GoogleAuthURL  = "https://accounts.google.com/o/oauth2/auth"
	// GoogleDeviceURL is Google's device authorization endpoint (RFC
	// 8628). Google does not allow GoogleScope in the device flow: for a
	// mailbox, use the authorization-code flow.
	GoogleDeviceURL = "https://oauth2.googleapis.com/device/code"
	GoogleScope     = "https://mail.google.com/"
	// GoogleMessagesPerDay and GoogleRecipientsPerDay are the preset
	// limits (Limits) of a Google account: Gmail's and Workspace's
	// sending limits per user. Exceeding them blocks the account's
	// sending for up to 24 hours.
	GoogleMessagesPerDay   = 2000
	GoogleRecipientsPerDay = 10000
)

// Microsoft 365 preset values. The token and authorization URLs contain the
// tenant (oauth.tenant, default MicrosoftDefaultTenant).
const (
	MicrosoftSMTPHost      = "smtp.office365.com"
	MicrosoftDefaultTenant = "common"
	// MicrosoftSMTPScope and offline_access are the delegated scopes of
	// the refresh_token grant.
	MicrosoftSMTPScope = "https://outlook.office.com/SMTP.Send"
	// MicrosoftAppScope is the scope of the client_credentials grant.
	MicrosoftAppScope = "https://outlook.office365.com/.default"
	// MicrosoftMaxSessions, MicrosoftMessagesPerMinute and
	// MicrosoftRecipientsPerDay are the preset limits (Limits) of a
	// Microsoft account: Exchange Online's per-mailbox limits (a fourth
	// concurrent SMTP AUTH connection gets 432 4.3.2).
	MicrosoftMaxSessions       = 3
	MicrosoftMessagesPerMinute = 30
	MicrosoftRecipientsPerDay  = 10000
)

// MicrosoftTokenURL returns the v2.0 token endpoint of a Microsoft tenant.
func MicrosoftTokenURL(tenant string) string {
	return fmt.Sprintf("https://login.microsoftonline.com/%s/oauth2/v2.0/token", tenant)
}

// MicrosoftAuthURL returns the v2.0 authorization endpoint of a Microsoft
// tenant.
func MicrosoftAuthURL(tenant string) string {
	return fmt.Sprintf("https://login.microsoftonline.com/%s/oauth2/v2.0/authorize", tenant)
}

// MicrosoftDeviceURL returns the v2.0 device authorization endpoint (RFC
// 8628) of a Microsoft tenant.
func MicrosoftDeviceURL(tenant string) string {
	return fmt.Sprintf("https://login.microsoftonline.com/%s/oauth2/v2.0/devicecode", tenant)
}

// preset is what a provider fills in when the file leaves a field out.
type preset struct {
	host   string
	grants []Grant // grants the provider supports
	// mechanisms the provider's SMTP server accepts.
	mechanisms []string
	tokenURL   func(tenant string) string
	authURL    func(tenant string) string
	deviceURL  func(tenant string) string
	// authParams are added to the authorization request so that consent
	// yields a refresh token (see Account.ConsentOptions).
	authParams map[string]string
	scopes     func(Grant) []string
	limits     Limits // sending limits; zero fields: none
}

func constant(s string) func(string) string { return func(string) string { return s } }

var presets = map[Provider]*preset{
	ProviderGoogle: {
		host:       GoogleSMTPHost,
		grants:     []Grant{GrantRefreshToken, GrantJWT},
		mechanisms: []string{smtpoauth.MechXOAUTH2, smtpoauth.MechOAuthBearer},
		tokenURL:   constant(GoogleTokenURL),
		authURL:    constant(GoogleAuthURL),
		deviceURL:  constant(GoogleDeviceURL),
		// offline: a refresh token; consent: one even for a user who
		// consented before (Google otherwise returns none).
		authParams: map[string]string{"access_type": "offline", "prompt": "consent"},
		scopes:     func(Grant) []string { return []string{GoogleScope} },
		limits:     Limits{MessagesPerDay: GoogleMessagesPerDay, RecipientsPerDay: GoogleRecipientsPerDay},
	},
	ProviderMicrosoft: {
		host:   MicrosoftSMTPHost,
		grants: []Grant{GrantRefreshToken, GrantClientCredentials},
		// Exchange Online does not offer OAUTHBEARER.
		mechanisms: []string{smtpoauth.MechXOAUTH2},
		tokenURL:   MicrosoftTokenURL,
		authURL:    MicrosoftAuthURL,
		deviceURL:  MicrosoftDeviceURL,
		// The refresh token comes with the offline_access scope.
		scopes: func(g Grant) []string {
			if g == GrantClientCredentials {
				return []string{MicrosoftAppScope}
			}
			return []string{MicrosoftSMTPScope, "offline_access"}
		},
		limits: Limits{
			MaxSessions:       MicrosoftMaxSessions,
			MessagesPerMinute: MicrosoftMessagesPerMinute,
			RecipientsPerDay:  MicrosoftRecipientsPerDay,
		},
	},
	ProviderGeneric: {
		grants:     []Grant{GrantRefreshToken, GrantClientCredentials, GrantJWT},
		mechanisms: []string{smtpoauth.MechXOAUTH2, smtpoauth.MechOAuthBearer},
		tokenURL:   constant(""),
		authURL:    constant(""),
		deviceURL:  constant(""),
		scopes:     func(Grant) []string { return nil },
	},
}
