package smtpoauthtest

import (
	"testing"

	"github.com/emersion/go-smtp"
)

func TestParseXOAUTH2(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, in, user, token string
		ok                    bool
	}{
		{"Valid", "user=a@b.c\x01auth=Bearer tok\x01\x01", "a@b.c", "tok", true},
		{"SchemeCaseInsensitive", "user=a@b.c\x01auth=bearer tok\x01\x01", "a@b.c", "tok", true},
		{"OrderDoesNotMatter", "auth=Bearer tok\x01user=a@b.c\x01\x01", "a@b.c", "tok", true},
		{"MissingFinalSeparators", "user=a@b.c\x01auth=Bearer tok", "", "", false},
		{"MissingUser", "auth=Bearer tok\x01\x01", "", "", false},
		{"MissingAuth", "user=a@b.c\x01\x01", "", "", false},
		{"NotBearer", "user=a@b.c\x01auth=Basic dG9r\x01\x01", "", "", false},
		{"EmptyToken", "user=a@b.c\x01auth=Bearer \x01\x01", "", "", false},
		{"Empty", "", "", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			user, token, err := parseXOAUTH2([]byte(tt.in))
			if (err == nil) != tt.ok || (tt.ok && (user != tt.user || token != tt.token)) {
				t.Errorf("got %q %q %v", user, token, err)
			}
		})
	}
}

func TestParseOAuthBearer(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, in, user, token string
		ok                    bool
	}{
		{"Valid", "n,a=a@b.c,\x01host=h\x01port=587\x01auth=Bearer tok\x01\x01", "a@b.c", "tok", true},
		{"NoAuthzid", "n,,\x01auth=Bearer tok\x01\x01", "", "tok", true},
		{"EscapedAuthzid", "n,a=a=2Cb=3Dc,\x01auth=Bearer tok\x01\x01", "a,b=c", "tok", true},
		{"ChannelBindingUnsupported", "p=tls-unique,a=a@b.c,\x01auth=Bearer tok\x01\x01", "", "", false},
		{"MissingAuth", "n,a=a@b.c,\x01host=h\x01\x01", "", "", false},
		{"NoSeparator", "n,a=a@b.c,", "", "", false},
		{"DummyResponse", "\x01", "", "", false},
		{"Empty", "", "", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			user, token, err := parseOAuthBearer([]byte(tt.in))
			if (err == nil) != tt.ok || (tt.ok && (user != tt.user || token != tt.token)) {
				t.Errorf("got %q %q %v", user, token, err)
			}
		})
	}
}

// FuzzParse feeds untrusted client responses to both parsers and the
// SASL state machine: nothing may panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte("user=a@b.c\x01auth=Bearer tok\x01\x01"))
	f.Add([]byte("n,a=a@b.c,\x01host=h\x01port=587\x01auth=Bearer tok\x01\x01"))
	f.Add([]byte{0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		parseXOAUTH2(in)
		parseOAuthBearer(in)
		for _, spec := range []*flavorSpec{googleSpec, microsoftSpec} {
			o := &oauthServer{mech: MechOAuthBearer, parse: parseOAuthBearer, spec: spec,
				authenticate: func(_, _, _ string, err error) (authReject, *smtp.SMTPError) {
					if err != nil {
						return rejectMalform, nil
					}
					return rejectUnknown, nil
				}}
			for range 3 {
				if _, done, err := o.Next(in); done || err != nil {
					break
				}
			}
		}
	})
}
