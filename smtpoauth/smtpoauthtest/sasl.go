package smtpoauthtest

import (
	"bytes"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Our own SASL servers. go-sasl's OAUTHBEARER server answers failures
// with 454 (go-smtp keeps a reply code only when Next returns a bare
// *smtp.SMTPError) and panics on an empty response, and go-sasl has no
// XOAUTH2 at all.

var (
	_ sasl.Server = (*oauthServer)(nil)

	errMalformed = errors.New("malformed response")
)

// oauthServer is the server side of XOAUTH2 and OAUTHBEARER, which share
// their flow: an initial response carrying the user and the bearer token
// (or an empty 334 challenge asking for it); on failure either the
// provider's error challenge followed by the failure reply once the client
// answered it (Google), or the failure reply at once (Microsoft).
type oauthServer struct {
	mech  string
	parse func(resp []byte) (user, token string, err error)
	// authenticate checks the credentials and records the outcome; it
	// returns a non-empty reason on failure, and with it the reply to send
	// at once when the failure is not about the credentials (a limit).
	authenticate func(mech, user, token string, parseErr error) (authReject, *smtp.SMTPError)
	spec         *flavorSpec

	state int
}

const (
	stateStart         = iota // nothing received yet
	stateAskedCreds           // sent an empty 334: the credentials come next
	stateSentChallenge        // sent the error challenge: the failure reply comes next
	stateDone
)

// Next implements sasl.Server. Errors it returns are bare *smtp.SMTPError
// values so go-smtp writes their code.
func (o *oauthServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch o.state {
	case stateStart:
		if response == nil {
			// "AUTH XOAUTH2" without an initial response: ask for it
			// with an empty challenge ("334 ").
			o.state = stateAskedCreds
			return []byte{}, false, nil
		}
		return o.check(response)
	case stateAskedCreds:
		return o.check(response)
	case stateSentChallenge:
		// Whatever the client answered (an empty line for XOAUTH2, 0x01
		// for OAUTHBEARER), the exchange has failed.
		o.state = stateDone
		return nil, false, o.spec.authFailed()
	default:
		return nil, false, o.spec.authFailed()
	}
}

func (o *oauthServer) check(response []byte) ([]byte, bool, error) {
	user, token, err := o.parse(response)
	reason, refusal := o.authenticate(o.mech, user, token, err)
	if reason == "" {
		o.state = stateDone
		return nil, true, nil
	}
	if refusal != nil {
		o.state = stateDone
		return nil, false, refusal
	}
	if len(o.spec.errorChallenge) > 0 {
		o.state = stateSentChallenge
		return o.spec.errorChallenge, false, nil
	}
	o.state = stateDone
	return nil, false, o.spec.authFailed()
}

// parseXOAUTH2 parses "user=" user 0x01 "auth=Bearer " token 0x01 0x01.
func parseXOAUTH2(resp []byte) (user, token string, err error) {
	if !bytes.HasSuffix(resp, []byte("\x01\x01")) {
		return "", "", errMalformed
	}
	var auth string
	var haveUser, haveAuth bool
	for _, kv := range strings.Split(string(resp[:len(resp)-2]), "\x01") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", "", errMalformed
		}
		switch k {
		case "user":
			user, haveUser = v, true
		case "auth":
			auth, haveAuth = v, true
		}
	}
	if !haveUser || !haveAuth {
		return "", "", errMalformed
	}
	token, err = bearer(auth)
	return user, token, err
}

// parseOAuthBearer parses an RFC 7628 initial client response:
// gs2-header ("n,a=user,") 0x01 then key=value pairs, each followed by 0x01,
// and a final 0x01. Channel binding is not supported.
func parseOAuthBearer(resp []byte) (user, token string, err error) {
	gs2, rest, ok := strings.Cut(string(resp), "\x01")
	if !ok || !strings.HasSuffix(rest, "\x01") {
		return "", "", errMalformed
	}
	fields := strings.Split(gs2, ",")
	if len(fields) != 3 || fields[2] != "" || (fields[0] != "n" && fields[0] != "y") {
		return "", "", errMalformed
	}
	if authzid := fields[1]; authzid != "" {
		name, ok := strings.CutPrefix(authzid, "a=")
		if !ok {
			return "", "", errMalformed
		}
		user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(name)
	}
	var auth string
	var haveAuth bool
	for _, kv := range strings.Split(strings.TrimSuffix(rest, "\x01"), "\x01") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", "", errMalformed
		}
		if k == "auth" {
			auth, haveAuth = v, true
		}
	}
	if !haveAuth {
		return "", "", errMalformed
	}
	token, err = bearer(auth)
	return user, token, err
}

// bearer extracts the token from "Bearer <token>" (scheme case-insensitive).
func bearer(auth string) (string, error) {
	scheme, token, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", errMalformed
	}
	return token, nil
}
