// Package accounts reads the accounts file: the mailboxes sendq sends as,
// how each one reaches its SMTP server and how it obtains OAuth2 access
// tokens.
//
// The file is YAML:
//
//	accounts:
//	  - id: support                       # unique: a-z 0-9 . _ -
//	    provider: google                  # google | microsoft | generic
//	    username: support@example.com     # the mailbox (XOAUTH2 user=)
//	    mechanism: XOAUTH2                # or OAUTHBEARER (not at Microsoft)
//	    smtp:                             # presets fill host, port and tls
//	      host: smtp.gmail.com
//	      port: 587
//	      tls: starttls                   # starttls | implicit | none
//	      ca_file: ./ca.pem               # relative to the file's directory
//	    oauth:
//	      grant: refresh_token            # refresh_token | client_credentials | jwt
//	      client_id: 1234.apps.googleusercontent.com
//	      client_secret_env: SUPPORT_CLIENT_SECRET
//	      refresh_token_file: secrets/support.token
//	  - id: billing
//	    provider: microsoft
//	    username: billing@contoso.com
//	    oauth:
//	      grant: client_credentials
//	      tenant: contoso.onmicrosoft.com
//	      client_id: 00000000-0000-0000-0000-000000000000
//	      client_secret_file: /run/secrets/billing
//	    limits:                           # over the preset's; see Limits
//	      max_sessions: 2
//	      messages_per_day: unlimited     # removes a preset's limit
//
// Secrets (client secret, refresh token, service-account key) are never
// written in the file: each is named by a key ending in _env (an environment
// variable) or _file (a file, relative to the accounts file's directory).
// An inline client_secret, refresh_token or service_account_key is an error.
//
// Presets fill what an account leaves out. google: smtp.gmail.com:587
// STARTTLS, token endpoint https://oauth2.googleapis.com/token, scope
// https://mail.google.com/; grants refresh_token and jwt (a service account
// with domain-wide delegation acting as oauth.subject, default the username).
// microsoft: smtp.office365.com:587 STARTTLS, token and authorization
// endpoints of oauth.tenant (default "common") at login.microsoftonline.com,
// scopes https://outlook.office.com/SMTP.Send and offline_access, or
// https://outlook.office365.com/.default for client_credentials. generic has
// no defaults: smtp.host, smtp.port and oauth.token_url are required.
//
// Presets also fill the sending limits (Limits), which every worker enforces
// together: microsoft 3 concurrent SMTP sessions, 30 messages a minute and
// 10,000 recipients a day; google 2,000 messages and 10,000 recipients a
// day; generic none. In the limits block, a key left out takes the preset,
// a positive number replaces it and "unlimited" removes it; 0 is an error.
//
// Load (or Parse) validates the whole file at startup and reports every
// problem at once, each naming the file, the account and the field:
//
//	accounts.yaml: account "support": oauth.client_secret_env: environment variable SUPPORT_CLIENT_SECRET is not set
//
// An Account then builds its token source (a *smtpoauth.TokenCache over its
// grant) with TokenSource and its sender configuration with SenderConfig. A
// Registry does both for every account, once, and hands out the
// *smtpoauth.Sender of an account by id with SenderFor.
//
// # Many workers, one mailbox
//
// Given a TokenStore (a *ledger.Store) in RegistryOptions.Tokens, the
// Registry's token sources share tokens among every process on the same
// Redis:
//
//   - An access token obtained by one process serves all of them until its
//     refresh time. Each account's source is a TokenCache in front of the
//     shared cache, so most calls never leave the process.
//   - A refresh is single-flight across processes: the one that takes the
//     account's lock asks the token endpoint; the others wait for the
//     lock's release (announced through pub/sub) or expiry, then take its
//     token. A process that dies holding the lock delays the others by
//     RegistryOptions.TokenLockTTL at most.
//   - The stored refresh token comes before the accounts file's, which
//     seeds the store on first use. A rotated refresh token (Microsoft) is
//     stored by compare-and-swap against the one spent before the access
//     token obtained with it is used, so no process keeps a stale one. A
//     re-authorization (ledger.Store.SetRefreshToken) retires the shared
//     access token and is used by every process on its next refresh.
//   - Invalidate (a server refused a token) drops the token from the
//     process and, if it still holds it, from the shared cache.
//   - Registry.KeepAlive uses idle accounts' refresh tokens at least every
//     RegistryOptions.KeepAlive, one process per period cluster-wide, so
//     they never expire from disuse.
package accounts
