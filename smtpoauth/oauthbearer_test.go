package smtpoauth

import (
	"encoding/base64"
	"errors"
	"testing"
)

func TestOAuthBearerInitialResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		username string
		token    string
		host     string
		port     int
		want     string
	}{
		{
			name:     "MailboxHostAndPort",
			username: "alice@example.com",
			token:    "ya29.bad-token",
			host:     "smtp.gmail.com",
			port:     587,
			want:     "n,a=alice@example.com,\x01host=smtp.gmail.com\x01port=587\x01auth=Bearer ya29.bad-token\x01\x01",
		},
		{
			name:     "NoHostNoPort",
			username: "alice@example.com",
			token:    "t",
			want:     "n,a=alice@example.com,\x01auth=Bearer t\x01\x01",
		},
		{
			name:  "NoUsernameLeavesTheAuthzidEmpty",
			token: "t",
			host:  "mx",
			want:  "n,,\x01host=mx\x01auth=Bearer t\x01\x01",
		},
		{
			name:     "CommaAndEqualsInUsernameAreEscaped",
			username: "o,dd=name@example.com",
			token:    "t",
			port:     465,
			want:     "n,a=o=2Cdd=3Dname@example.com,\x01port=465\x01auth=Bearer t\x01\x01",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mech, ir, err := NewOAuthBearerClient(tt.username, tt.token, tt.host, tt.port).Start()
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if mech != MechOAuthBearer {
				t.Errorf("mechanism = %q, want %q", mech, MechOAuthBearer)
			}
			if string(ir) != tt.want {
				t.Errorf("initial response = %q, want %q", ir, tt.want)
			}
		})
	}

	t.Run("WireFormIsPinned", func(t *testing.T) {
		t.Parallel()
		_, ir, _ := NewOAuthBearerClient("alice@example.com", "ya29.bad-token", "smtp.gmail.com", 587).Start()
		const want = "bixhPWFsaWNlQGV4YW1wbGUuY29tLAFob3N0PXNtdHAuZ21haWwuY29tAXBvcnQ9NTg3AWF1dGg9QmVhcmVyIHlhMjkuYmFkLXRva2VuAQE="
		if got := base64.StdEncoding.EncodeToString(ir); got != want {
			t.Errorf("base64 initial response = %s, want %s", got, want)
		}
	})

	t.Run("RefusesControlByteThatWouldBreakTheFraming", func(t *testing.T) {
		t.Parallel()
		for _, c := range [][3]string{{"a\x01", "t", "h"}, {"a", "t\x01", "h"}, {"a", "t", "h\x01"}} {
			if _, _, err := NewOAuthBearerClient(c[0], c[1], c[2], 0).Start(); err == nil {
				t.Errorf("Start(%q) succeeded, want an error", c)
			}
		}
	})
}

func TestOAuthBearerChallengeHandling(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		challenges []string
		wantErrAt  int
		wantStatus string
		wantScope  string
	}{
		{
			name:       "ErrorChallengeIsAnsweredWithDummyResponse",
			challenges: []string{`{"status":"invalid_token","scope":"https://mail.google.com/"}`},
			wantErrAt:  -1,
			wantStatus: "invalid_token",
			wantScope:  "https://mail.google.com/",
		},
		{
			name:       "InvalidJSONIsStillAnswered",
			challenges: []string{`status=401`},
			wantErrAt:  -1,
		},
		{
			name:       "SecondChallengeIsAnError",
			challenges: []string{`{"status":"401"}`, `{}`},
			wantErrAt:  1,
			wantStatus: "401",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := NewOAuthBearerClient("alice@example.com", "tok", "mx", 587)
			if _, _, err := c.Start(); err != nil {
				t.Fatal(err)
			}
			for i, ch := range tt.challenges {
				resp, err := c.Next([]byte(ch))
				if i == tt.wantErrAt {
					if !errors.Is(err, errSecondChallenge) {
						t.Fatalf("Next #%d: err = %v, want errSecondChallenge", i, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("Next #%d: %v", i, err)
				}
				if string(resp) != "\x01" {
					t.Fatalf("Next #%d = %q, want the RFC 7628 dummy response 0x01", i, resp)
				}
			}
			ch, ok := c.(errorChallenger).errorChallenge()
			if !ok {
				t.Fatal("the client did not record the challenge")
			}
			if ch.Status != tt.wantStatus || ch.Scope != tt.wantScope {
				t.Errorf("recorded %+v, want status %q scope %q", ch, tt.wantStatus, tt.wantScope)
			}
		})
	}
}
