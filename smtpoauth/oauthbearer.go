package smtpoauth

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"
)

var (
	_ sasl.Client     = (*oauthBearerClient)(nil)
	_ errorChallenger = (*oauthBearerClient)(nil)
)

// oauthBearerClient implements SASL OAUTHBEARER (RFC 7628). Unlike go-sasl's
// client it answers the error challenge with the dummy response 0x01 instead
// of aborting, so the server's final reply is read.
type oauthBearerClient struct {
	username string
	token    string
	host     string
	port     int
	errorChallengeState
}

// NewOAuthBearerClient returns a SASL client for the OAUTHBEARER mechanism
// (RFC 7628). username is the mailbox, sent as the GS2 authorization
// identity "a=" (with "," and "=" escaped as RFC 5801 requires); host and
// port name the server the client connected to, and are left out of the
// initial response when empty or zero.
//
// Its initial response is "n,a=" + username + ",\x01host=" + host +
// "\x01port=" + port + "\x01auth=Bearer " + accessToken + "\x01\x01". When
// the server answers with an error challenge (334 followed by base64 JSON),
// the client remembers it and sends the dummy response 0x01 ("AQ==" on the
// wire), so the exchange ends with the server's final reply. A second
// challenge is an error.
//
// The client is for one exchange at a time; Start resets it.
func NewOAuthBearerClient(username, accessToken, host string, port int) sasl.Client {
	return &oauthBearerClient{username: username, token: accessToken, host: host, port: port}
}

// Start implements sasl.Client.
func (c *oauthBearerClient) Start() (mech string, ir []byte, err error) {
	c.reset()
	if strings.ContainsRune(c.username, 0x01) || strings.ContainsRune(c.token, 0x01) || strings.ContainsRune(c.host, 0x01) {
		return "", nil, errors.New("oauthbearer: username, host or token contains a 0x01 byte")
	}
	var b strings.Builder
	b.WriteString("n,")
	if c.username != "" {
		b.WriteString("a=")
		b.WriteString(saslName(c.username))
	}
	b.WriteString(",")
	if c.host != "" {
		b.WriteString("\x01host=")
		b.WriteString(c.host)
	}
	if c.port != 0 {
		b.WriteString("\x01port=")
		b.WriteString(strconv.Itoa(c.port))
	}
	b.WriteString("\x01auth=Bearer ")
	b.WriteString(c.token)
	b.WriteString("\x01\x01")
	return MechOAuthBearer, []byte(b.String()), nil
}

// Next implements sasl.Client. OAUTHBEARER's only challenge is the error
// challenge; RFC 7628 section 3.2.3 has the client answer it with 0x01.
func (c *oauthBearerClient) Next(challenge []byte) ([]byte, error) {
	if err := c.record(challenge); err != nil {
		return nil, fmt.Errorf("oauthbearer: %w", err)
	}
	return []byte{0x01}, nil
}

// saslName escapes a GS2 authzid value (RFC 5801 section 4): "=" becomes
// "=3D" and "," becomes "=2C".
func saslName(s string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(s)
}
