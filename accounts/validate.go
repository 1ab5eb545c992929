package accounts

import (
	"cmp"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"unicode"

	"golang.org/x/oauth2/google"
	"gopkg.in/yaml.v3"

	"github.com/sendq/sendq/smtpoauth"
)

// rawFile is the YAML form of an accounts file.
type rawFile struct {
	Accounts []rawAccount `yaml:"accounts"`
}

type rawAccount struct {
	ID        string    `yaml:"id"`
	Provider  string    `yaml:"provider"`
	Username  string    `yaml:"username"`
	Mechanism string    `yaml:"mechanism"`
	SMTP      rawSMTP   `yaml:"smtp"`
	OAuth     rawOAuth  `yaml:"oauth"`
	Limits    rawLimits `yaml:"limits"`
}

type rawSMTP struct {
	Host                  string `yaml:"host"`
	Port                  int    `yaml:"port"`
	TLS                   string `yaml:"tls"`
	CAFile                string `yaml:"ca_file"`
	AllowInsecureLoopback bool   `yaml:"allow_insecure_loopback"`
}

type rawOAuth struct {
	Grant                 string   `yaml:"grant"`
	ClientID              string   `yaml:"client_id"`
	ClientSecretEnv       string   `yaml:"client_secret_env"`
	ClientSecretFile      string   `yaml:"client_secret_file"`
	RefreshTokenEnv       string   `yaml:"refresh_token_env"`
	RefreshTokenFile      string   `yaml:"refresh_token_file"`
	ServiceAccountKeyEnv  string   `yaml:"service_account_key_env"`
	ServiceAccountKeyFile string   `yaml:"service_account_key_file"`
	Subject               string   `yaml:"subject"`
	Tenant                string   `yaml:"tenant"`
	Scopes                []string `yaml:"scopes"`
	TokenURL              string   `yaml:"token_url"`
	AuthURL               string   `yaml:"auth_url"`
	DeviceURL             string   `yaml:"device_url"`
	// RefreshTokenInStore says the refresh token is in the shared token
	// store only (put there by cmd/authorize): no _env or _file needed.
	RefreshTokenInStore bool `yaml:"refresh_token_in_store"`

	// Inline secrets are decoded only to be rejected with a helpful
	// message (KnownFields would reject them as merely unknown). Nodes, so
	// that no value of any shape fails to decode or lands in an error.
	ClientSecret      yaml.Node `yaml:"client_secret"`
	RefreshToken      yaml.Node `yaml:"refresh_token"`
	ServiceAccountKey yaml.Node `yaml:"service_account_key"`
}

var (
	validID       = regexp.MustCompile(`^[a-z0-9._-]{1,64}$`)
	validEnvName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	validTenant   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]*$`)
	generalTenant = []string{"common", "organizations", "consumers"}
)

// account resolves and validates item i of the file, recording every
// problem. The result always has ID set to the raw id (possibly invalid).
func (p *parser) account(i int, ra *rawAccount) *Account {
	label := fmt.Sprintf("account #%d", i+1)
	if ra.ID != "" {
		label = fmt.Sprintf("account %q", ra.ID)
	}
	a := &Account{ID: ra.ID, label: label}
	fail := func(field, format string, args ...any) { p.fail(label, field, format, args...) }

	if ra.ID == "" {
		fail("id", "required")
	} else if !validID.MatchString(ra.ID) {
		fail("id", "%q must be 1 to 64 of a-z, 0-9, '.', '_' and '-'", ra.ID)
	}

	a.Provider = Provider(ra.Provider)
	pre, known := presets[a.Provider]
	switch {
	case ra.Provider == "":
		fail("provider", "required: google, microsoft or generic")
	case !known:
		fail("provider", "unknown provider %q: want google, microsoft or generic", ra.Provider)
	}
	if !known {
		// Validate the rest without defaults, but do not blame missing
		// fields on a provider we do not know.
		pre = presets[ProviderGeneric]
	}

	a.Username = ra.Username
	switch {
	case ra.Username == "":
		fail("username", "required: the mailbox to send as")
	case strings.ContainsFunc(ra.Username, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		fail("username", "must not contain spaces or control characters")
	}

	a.Mechanism = cmp.Or(strings.ToUpper(ra.Mechanism), smtpoauth.MechXOAUTH2)
	switch {
	case a.Mechanism != smtpoauth.MechXOAUTH2 && a.Mechanism != smtpoauth.MechOAuthBearer:
		fail("mechanism", "unknown mechanism %q: want XOAUTH2 or OAUTHBEARER", ra.Mechanism)
	case !slices.Contains(pre.mechanisms, a.Mechanism):
		fail("mechanism", "provider %s does not accept %s", a.Provider, a.Mechanism)
	}

	p.smtp(a, ra, pre, known)
	p.oauth(a, ra, pre, known)
	p.limits(a, ra, pre)
	return a
}

// smtp resolves the smtp section.
func (p *parser) smtp(a *Account, ra *rawAccount, pre *preset, known bool) {
	fail := func(field, format string, args ...any) { p.fail(a.label, field, format, args...) }
	rs := ra.SMTP

	a.SMTP.Host = cmp.Or(rs.Host, pre.host)
	if a.SMTP.Host == "" && known {
		fail("smtp.host", "required for provider %s", a.Provider)
	}

	tls := smtpoauth.TLSMode(rs.TLS)
	switch tls {
	case "", smtpoauth.TLSStartTLS, smtpoauth.TLSImplicit, smtpoauth.TLSNone:
	default:
		fail("smtp.tls", "unknown mode %q: want starttls, implicit or none", rs.TLS)
	}

	a.SMTP.Port = rs.Port
	switch {
	case rs.Port == 0 && pre.host != "":
		a.SMTP.Port = DefaultSubmissionPort
		if tls == smtpoauth.TLSImplicit {
			a.SMTP.Port = DefaultImplicitTLSPort
		}
	case rs.Port == 0:
		if known {
			fail("smtp.port", "required for provider %s", a.Provider)
		}
	case rs.Port < 0 || rs.Port > 65535:
		fail("smtp.port", "%d is out of range 1-65535", rs.Port)
	}

	if tls == "" {
		tls = smtpoauth.TLSStartTLS
		if a.SMTP.Port == DefaultImplicitTLSPort {
			tls = smtpoauth.TLSImplicit
		}
	}
	a.SMTP.TLS = tls
	a.SMTP.AllowInsecureLoopback = rs.AllowInsecureLoopback
	if tls == smtpoauth.TLSNone && !rs.AllowInsecureLoopback {
		fail("smtp.tls", "none would send the bearer token in clear text; it needs allow_insecure_loopback and a loopback host")
	}

	if rs.CAFile != "" {
		a.SMTP.CAFile = p.path(rs.CAFile)
		pem, err := p.opts.ReadFile(a.SMTP.CAFile)
		switch {
		case err != nil:
			p.failErr(a.label, "smtp.ca_file", err)
		case !x509.NewCertPool().AppendCertsFromPEM(pem):
			fail("smtp.ca_file", "no PEM certificate in %s", a.SMTP.CAFile)
		}
	}
}

// oauth resolves the oauth section and loads the secrets.
func (p *parser) oauth(a *Account, ra *rawAccount, pre *preset, known bool) {
	fail := func(field, format string, args ...any) { p.fail(a.label, field, format, args...) }
	ro := ra.OAuth
	o := &a.OAuth

	for _, inline := range []struct {
		name string
		node *yaml.Node
	}{
		{"client_secret", &ro.ClientSecret},
		{"refresh_token", &ro.RefreshToken},
		{"service_account_key", &ro.ServiceAccountKey},
	} {
		if inline.node.Kind != 0 {
			fail("oauth."+inline.name, "secrets must not be written in the accounts file: use %s_env or %s_file", inline.name, inline.name)
		}
	}

	o.Grant = Grant(ro.Grant)
	switch o.Grant {
	case GrantRefreshToken, GrantClientCredentials, GrantJWT:
		if known && !slices.Contains(pre.grants, o.Grant) {
			fail("oauth.grant", "provider %s does not support grant %s", a.Provider, o.Grant)
		}
	case "":
		fail("oauth.grant", "required: refresh_token, client_credentials or jwt")
	default:
		fail("oauth.grant", "unknown grant %q: want refresh_token, client_credentials or jwt", ro.Grant)
	}
	// uses reports whether the grant uses a field; with no valid grant,
	// every field is allowed (the grant error says enough).
	knownGrant := slices.Contains([]Grant{GrantRefreshToken, GrantClientCredentials, GrantJWT}, o.Grant)
	uses := func(gs ...Grant) bool { return !knownGrant || slices.Contains(gs, o.Grant) }
	notUsed := func(field string) { fail(field, "not used by grant %s", o.Grant) }

	o.ClientID = ro.ClientID
	switch {
	case !uses(GrantRefreshToken, GrantClientCredentials) && ro.ClientID != "":
		notUsed("oauth.client_id")
	case (o.Grant == GrantRefreshToken || o.Grant == GrantClientCredentials) && ro.ClientID == "":
		fail("oauth.client_id", "required for grant %s", o.Grant)
	}

	c := &credentials{refreshTokenEnv: ro.RefreshTokenEnv}
	a.creds = c
	// A secret written inline has been reported already: do not also
	// report it as missing.
	c.clientSecret, _ = p.secret(a, "client_secret", ro.ClientSecretEnv, ro.ClientSecretFile,
		o.Grant == GrantClientCredentials && ro.ClientSecret.Kind == 0, uses(GrantRefreshToken, GrantClientCredentials))
	c.refreshToken, c.refreshTokenFile = p.secret(a, "refresh_token", ro.RefreshTokenEnv, ro.RefreshTokenFile,
		o.Grant == GrantRefreshToken && ro.RefreshToken.Kind == 0 && !ro.RefreshTokenInStore, uses(GrantRefreshToken))
	if ro.RefreshTokenInStore && !uses(GrantRefreshToken) {
		notUsed("oauth.refresh_token_in_store")
	}
	c.serviceAccountKey, _ = p.secret(a, "service_account_key", ro.ServiceAccountKeyEnv, ro.ServiceAccountKeyFile,
		o.Grant == GrantJWT && ro.ServiceAccountKey.Kind == 0, uses(GrantJWT))
	key := c.serviceAccountKey

	o.Subject = ro.Subject
	if o.Grant == GrantJWT {
		o.Subject = cmp.Or(ro.Subject, a.Username)
	} else if ro.Subject != "" && knownGrant {
		notUsed("oauth.subject")
	}

	if a.Provider == ProviderMicrosoft {
		o.Tenant = cmp.Or(ro.Tenant, MicrosoftDefaultTenant)
		switch {
		case !validTenant.MatchString(o.Tenant):
			fail("oauth.tenant", "%q is not a tenant domain or ID", o.Tenant)
		case o.Grant == GrantClientCredentials && slices.Contains(generalTenant, strings.ToLower(o.Tenant)):
			fail("oauth.tenant", "grant client_credentials needs the organization's tenant (a domain or directory ID), not %q", o.Tenant)
		}
	} else if ro.Tenant != "" && known {
		fail("oauth.tenant", "only used by provider microsoft")
	}

	o.Scopes = ro.Scopes
	if len(o.Scopes) == 0 {
		o.Scopes = pre.scopes(o.Grant)
	}
	for _, s := range ro.Scopes {
		if s == "" || strings.ContainsFunc(s, unicode.IsSpace) {
			fail("oauth.scopes", "%q is not a scope (one scope per list item)", s)
		}
	}

	// For a service account, the key's token_uri comes before the preset.
	var keyTokenURL string
	if o.Grant == GrantJWT && key != "" {
		// JWTConfigFromJSON fills in Google's URL when the key names none,
		// so read token_uri directly.
		var k struct {
			TokenURI string `json:"token_uri"`
		}
		if _, err := google.JWTConfigFromJSON([]byte(key)); err != nil {
			field := "oauth.service_account_key_file"
			if ro.ServiceAccountKeyEnv != "" {
				field = "oauth.service_account_key_env"
			}
			fail(field, "not a service account key: %w", err)
		} else if json.Unmarshal([]byte(key), &k) == nil {
			keyTokenURL = k.TokenURI
		}
	}
	o.TokenURL = cmp.Or(ro.TokenURL, keyTokenURL, pre.tokenURL(o.Tenant))
	if ro.TokenURL != "" {
		p.checkURL(a, "oauth.token_url", ro.TokenURL)
	} else if o.TokenURL == "" && known {
		fail("oauth.token_url", "required for provider %s", a.Provider)
	}
	o.AuthURL = cmp.Or(ro.AuthURL, pre.authURL(o.Tenant))
	if ro.AuthURL != "" {
		p.checkURL(a, "oauth.auth_url", ro.AuthURL)
	}
	o.DeviceURL = cmp.Or(ro.DeviceURL, pre.deviceURL(o.Tenant))
	if ro.DeviceURL != "" {
		p.checkURL(a, "oauth.device_url", ro.DeviceURL)
	}
}

// secret loads the secret named by the <name>_env or <name>_file keys. It
// returns the secret and, for a file, the file's resolved path.
func (p *parser) secret(a *Account, name, env, file string, required, allowed bool) (smtpoauth.Secret, string) {
	envField, fileField := "oauth."+name+"_env", "oauth."+name+"_file"
	fail := func(field, format string, args ...any) { p.fail(a.label, field, format, args...) }
	switch {
	case !allowed:
		if env != "" {
			fail(envField, "not used by grant %s", a.OAuth.Grant)
		}
		if file != "" {
			fail(fileField, "not used by grant %s", a.OAuth.Grant)
		}
		return "", ""
	case env != "" && file != "":
		fail(envField, "set only one of %s_env and %s_file", name, name)
		return "", ""
	case env == "" && file == "":
		if required {
			fail(envField, "%s_env or %s_file is required for grant %s", name, name, a.OAuth.Grant)
		}
		return "", ""
	case env != "":
		if !validEnvName.MatchString(env) {
			fail(envField, "%q is not an environment variable name", env)
			return "", ""
		}
		v := strings.TrimSpace(p.opts.Getenv(env))
		if v == "" {
			fail(envField, "environment variable %s is not set", env)
		}
		return smtpoauth.Secret(v), ""
	default:
		path := p.path(file)
		data, err := p.opts.ReadFile(path)
		if err != nil {
			p.failErr(a.label, fileField, err)
			return "", ""
		}
		v := strings.TrimSpace(string(data))
		if v == "" {
			fail(fileField, "file %s is empty", path)
		}
		return smtpoauth.Secret(v), path
	}
}

// checkURL reports a URL that is not absolute https (http is accepted only
// to a loopback host, for local test servers).
func (p *parser) checkURL(a *Account, field, raw string) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		p.fail(a.label, field, "not a URL: %w", err)
	case u.Scheme == "https" && u.Host != "":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
	case u.Scheme == "http":
		p.fail(a.label, field, "%s must use https (http is allowed only to a loopback host)", raw)
	default:
		p.fail(a.label, field, "%s is not an absolute https URL", raw)
	}
}

// isLoopback reports whether host is "localhost" or a loopback IP address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
