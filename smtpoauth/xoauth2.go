package smtpoauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
)

// SASL mechanism names, as they appear after AUTH on the wire and in the
// server's EHLO AUTH list.
const (
	// MechXOAUTH2 is Google's and Microsoft's XOAUTH2 mechanism, the one
	// both providers accept over SMTP.
	MechXOAUTH2 = "XOAUTH2"
	// MechOAuthBearer is the standard OAUTHBEARER mechanism (RFC 7628).
	// Gmail accepts it; Outlook does not.
	MechOAuthBearer = "OAUTHBEARER"
)

// errSecondChallenge is returned by Next when the server sends a challenge
// after the client has already answered its error challenge: the exchange
// can only end with the server's final reply at that point.
var errSecondChallenge = errors.New("unexpected second challenge")

var (
	_ sasl.Client     = (*xoauth2Client)(nil)
	_ errorChallenger = (*xoauth2Client)(nil)
)

// xoauth2Client implements SASL XOAUTH2. go-sasl has no XOAUTH2 client, and
// its OAUTHBEARER client aborts with "*" on the error challenge, which loses
// the server's final reply.
type xoauth2Client struct {
	username string
	token    string
	errorChallengeState
}

// NewXOAUTH2Client returns a SASL client for the XOAUTH2 mechanism. username
// is the mailbox (the "user=" field) and accessToken the OAuth2 access token.
//
// Its initial response is "user=" + username + "\x01auth=Bearer " +
// accessToken + "\x01\x01". When the server answers with an error challenge
// (334 followed by base64 JSON, as Gmail does), the client remembers the
// challenge and answers with an empty response, so the exchange ends with
// the server's final reply (typically 535 5.7.8) rather than an abort. A
// second challenge is an error.
//
// The client is for one exchange at a time; Start resets it.
func NewXOAUTH2Client(username, accessToken string) sasl.Client {
	return &xoauth2Client{username: username, token: accessToken}
}

// Start implements sasl.Client.
func (c *xoauth2Client) Start() (mech string, ir []byte, err error) {
	c.reset()
	if strings.ContainsRune(c.username, 0x01) || strings.ContainsRune(c.token, 0x01) {
		return "", nil, errors.New("xoauth2: username or token contains a 0x01 byte")
	}
	ir = []byte("user=" + c.username + "\x01auth=Bearer " + c.token + "\x01\x01")
	return MechXOAUTH2, ir, nil
}

// Next implements sasl.Client. The only challenge XOAUTH2 defines is the
// error challenge; the answer is an empty (non-nil) response.
func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	if err := c.record(challenge); err != nil {
		return nil, fmt.Errorf("xoauth2: %w", err)
	}
	return []byte{}, nil
}

// errorChallenge is the JSON a server sends in the 334 error challenge of
// XOAUTH2 and OAUTHBEARER (RFC 7628 section 3.2.2), for example
// {"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}.
type errorChallenge struct {
	Status  string
	Schemes string
	Scope   string
}

// errorChallenger is implemented by this package's SASL clients: it reports
// the error challenge the server sent during the last exchange, if any.
type errorChallenger interface {
	errorChallenge() (ch errorChallenge, ok bool)
}

// errorChallengeState is the part of a SASL client that records the
// server's error challenge.
type errorChallengeState struct {
	challenged bool
	challenge  errorChallenge
}

func (s *errorChallengeState) reset() { *s = errorChallengeState{} }

// record remembers the first challenge and rejects any later one. A
// challenge that is not the expected JSON is still an error challenge: the
// exchange has failed either way, and answering it lets the server send its
// final reply, which says more than a parse error would.
func (s *errorChallengeState) record(challenge []byte) error {
	if s.challenged {
		return errSecondChallenge
	}
	s.challenged = true
	s.challenge, _ = parseErrorChallenge(challenge)
	return nil
}

func (s *errorChallengeState) errorChallenge() (errorChallenge, bool) {
	return s.challenge, s.challenged
}

// parseErrorChallenge decodes the JSON of an error challenge (already
// base64-decoded). Members other than status, schemes and scope are
// ignored; a number is accepted where a string is expected, since some
// servers send "status":401.
func parseErrorChallenge(b []byte) (errorChallenge, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(b, &members); err != nil {
		return errorChallenge{}, fmt.Errorf("parse error challenge: %w", err)
	}
	if members == nil {
		return errorChallenge{}, errors.New("parse error challenge: not a JSON object")
	}
	var ch errorChallenge
	for name, dst := range map[string]*string{"status": &ch.Status, "schemes": &ch.Schemes, "scope": &ch.Scope} {
		raw, ok := members[name]
		if !ok {
			continue
		}
		v, err := challengeMember(raw)
		if err != nil {
			return errorChallenge{}, fmt.Errorf("parse error challenge: member %q: %w", name, err)
		}
		*dst = v
	}
	return ch, nil
}

// challengeMember returns a JSON string's value or a JSON number's text.
func challengeMember(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return "", err
	}
	n, ok := v.(json.Number)
	if !ok {
		return "", fmt.Errorf("want a string or a number, got %s", raw)
	}
	return n.String(), nil
}
