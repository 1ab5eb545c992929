// Package smtpoauthtest runs an in-process OAuth2 provider and SMTP
// submission server that behave on the wire like Gmail or Microsoft 365,
// for tests, demos and sandboxes. It is shaped like net/http/httptest and
// does not import "testing", so a standalone program can run it too.
//
// # A tour
//
// NewServer (or Start, which returns an error instead of panicking) listens
// on three ephemeral ports of 127.0.0.1:
//
//   - TokenURL, an OAuth2 token endpoint with the refresh_token,
//     client_credentials and jwt-bearer (Google service account) grants,
//     and the authorization_code and device_code grants of the consent
//     flows (AuthURL, DeviceAuthURL: see Consent below);
//   - SMTPAddr, a submission port like 587: plaintext greeting, STARTTLS;
//   - SMTPSAddr, an implicit-TLS port like 465.
//
// The TLS certificate is signed by a CA generated at start; trust it with
// CertPool (or write CACertPEM to a file). AUTH XOAUTH2 and OAUTHBEARER are
// offered only after TLS, and MAIL, RCPT and DATA (or BDAT) only after
// AUTH. The server offers PIPELINING (RFC 2920) and CHUNKING (RFC 3030)
// and, like the providers' servers, sends the replies to a group of
// pipelined commands in one write.
//
// Set up credentials the way a user's consent or an administrator would:
//
//	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
//	defer srv.Close()
//	srv.AddClient("client-id", "client-secret")
//	refreshToken := srv.NewRefreshToken("client-id", "alice@example.com")
//	keyJSON := srv.AddServiceAccount("mailer@project.iam.gserviceaccount.com")
//	accessToken := srv.IssueAccessToken("alice@example.com") // skip OAuth2
//
// Then point the code under test at TokenURL and SMTPAddr/SMTPSAddr, and look
// at what arrived with Messages or WaitMessages (which waits on a signal, not
// a timer) and at the counters in Stats.
//
// # Consent
//
// AuthURL and DeviceAuthURL stand for the provider's consent screens, so
// that a program that obtains refresh tokens (cmd/authorize) can be tested
// end to end. The authorization endpoint approves at once and redirects the
// browser to the loopback redirect_uri with a code and the state; the token
// endpoint exchanges the code (grant_type=authorization_code) only with the
// PKCE S256 code_verifier. The device authorization endpoint hands out a
// device code and a user code; the token endpoint answers the device code's
// polls with authorization_pending as long as Consent.PendingPolls says,
// then with the tokens. SetConsent picks the user who approves (default:
// the request's login_hint), or makes them refuse:
//
//	srv.AddClient("client-id", "client-secret")
//	srv.SetConsent(smtpoauthtest.Consent{Username: "alice@example.com", PendingPolls: 2})
//
// As at the providers, a refresh token comes with the code only for offline
// access: access_type=offline (and prompt=consent for a user who consented
// before) with FlavorGoogle, the offline_access scope with FlavorMicrosoft.
//
// # Provider behaviour
//
// Config.Flavor picks the provider imitated. With FlavorGoogle (the
// default) a rejected token is answered with the JSON error challenge
// ("334 " + base64 of GoogleErrorChallenge); once the client sends its empty
// response (XOAUTH2) or 0x01 (OAUTHBEARER) the server replies
//
//	535-5.7.8 Username and Password not accepted. For more information, go to
//	535 5.7.8  https://support.google.com/mail/?p=BadCredentials
//
// With FlavorMicrosoft the reply is "535 5.7.3 Authentication unsuccessful"
// at once and only XOAUTH2 is offered. A token is accepted only if this
// server issued it, it has not expired or been revoked, and it was issued
// for the user named in the SASL exchange (app-only client_credentials
// tokens are valid for any mailbox of their client, see SetClientMailboxes).
//
// Access tokens are opaque random strings valid for
// Config.AccessTokenLifetime. Time is the server's clock, Config.NowFunc
// moved forward by Advance, so tests expire tokens without sleeping. With
// Config.RotateRefreshTokens every refresh returns a new refresh token and
// the old one stops working at once, as at Microsoft; Revoke makes later
// refreshes fail with 400 invalid_grant.
//
// Logging goes to Config.Logger (quiet when nil) and never includes tokens,
// secrets or message bodies.
//
// # Failures
//
// AddFault scripts SMTP failures per Stage (StageAuth keyed by the mailbox
// logging in, StageMail by the sender, StageRcpt by the recipient,
// StageData, the reply to the final ".", by any recipient) and per address,
// for a number of Times or until removed:
//
//	srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: "bob@example.net",
//		Code: 450, Enhanced: [3]int{4, 2, 1}, Text: "Try again later.", Times: 2})
//	srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true, StoreBeforeDrop: true})
//	srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageAuth, Address: "alice@contoso.com",
//		Code: 535, Enhanced: [3]int{5, 7, 139}, Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."})
//
// A Drop fault closes the connection instead of replying; at StageData
// with StoreBeforeDrop the message is kept first: delivered, but the
// client never hears the 250. SetRcptReply is the shorthand for a
// recipient's rejection, ClearFaults removes them all. AddTokenFault makes
// the token endpoint fail: an outage answered by a proxy (503 with
// Retry-After and a plain body), throttling, or an OAuth2 error such as
// invalid_grant, which x/oauth2 reports as *oauth2.RetrieveError.
// TimeOutIdleConnections closes the open connections as the providers'
// idle timeout does (421 4.4.2, then the end of the stream), to test a
// client's pooled connections.
//
// Freeze stops every SMTP session before it writes any reply (the greeting
// included) and before it stores a message whose DATA it has read, so that
// a crash test can kill a client at a moment it can reason about:
//
//	srv.Freeze()
//	// ... the worker sends ...
//	srv.WaitParked(ctx, 1) // the session is parked: nothing stored, nothing answered
//	// ... SIGKILL the worker ...
//	srv.Thaw(true) // parked sessions close without replying, their messages dropped
//
// Thaw(false) lets them go on as if nothing happened.
//
// # Limits
//
// Config.MaxSessionsPerUser refuses an AUTH beyond that many concurrent
// sessions of a mailbox as Exchange Online does (432 4.3.2, its limit is
// 3); Config.MaxLoginsPerMinute refuses logins beyond that rate as Gmail
// does (454 4.7.0). Stats reports, per user, the logins, the messages and
// the highest number of concurrent authenticated sessions (PeakSessions),
// so that a test can check that many workers shared one mailbox politely.
package smtpoauthtest
