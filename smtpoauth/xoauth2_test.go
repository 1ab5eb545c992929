package smtpoauth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
)

func TestXOAUTH2InitialResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		username string
		token    string
		want     string
	}{
		{
			name:     "MailboxAndToken",
			username: "alice@example.com",
			token:    "ya29.bad-token",
			want:     "user=alice@example.com\x01auth=Bearer ya29.bad-token\x01\x01",
		},
		{
			name:     "TokenWithPunctuationIsSentAsIs",
			username: "bob@example.org",
			token:    "EwB4A8l6BAAU+/=_-.~",
			want:     "user=bob@example.org\x01auth=Bearer EwB4A8l6BAAU+/=_-.~\x01\x01",
		},
		{
			name:     "EmptyUsername",
			username: "",
			token:    "t",
			want:     "user=\x01auth=Bearer t\x01\x01",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mech, ir, err := NewXOAUTH2Client(tt.username, tt.token).Start()
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if mech != MechXOAUTH2 {
				t.Errorf("mechanism = %q, want %q", mech, MechXOAUTH2)
			}
			if string(ir) != tt.want {
				t.Errorf("initial response = %q, want %q", ir, tt.want)
			}
		})
	}

	t.Run("WireFormIsPinned", func(t *testing.T) {
		t.Parallel()
		_, ir, _ := NewXOAUTH2Client("alice@example.com", "ya29.bad-token").Start()
		const want = "dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LmJhZC10b2tlbgEB"
		if got := base64.StdEncoding.EncodeToString(ir); got != want {
			t.Errorf("base64 initial response = %s, want %s", got, want)
		}
	})

	t.Run("RefusesControlByteThatWouldBreakTheFraming", func(t *testing.T) {
		t.Parallel()
		for _, c := range [][2]string{{"a\x01b", "tok"}, {"alice", "to\x01k"}} {
			if _, _, err := NewXOAUTH2Client(c[0], c[1]).Start(); err == nil {
				t.Errorf("Start(%q, %q) succeeded, want an error", c[0], c[1])
			}
		}
	})
}

func TestParseErrorChallenge(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		challenge string
		want      errorChallenge
		wantErr   bool
	}{
		{
			name:      "GoogleStaleToken",
			challenge: `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`,
			want:      errorChallenge{Status: "400", Schemes: "Bearer", Scope: "https://mail.google.com/"},
		},
		{
			name:      "GoogleInvalidToken",
			challenge: `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`,
			want:      errorChallenge{Status: "401", Schemes: "bearer", Scope: "https://mail.google.com/"},
		},
		{
			name:      "RFC7628StatusWord",
			challenge: `{"status":"invalid_token","scope":"example_scope","openid-configuration":"https://example.com/.well-known/openid-configuration"}`,
			want:      errorChallenge{Status: "invalid_token", Scope: "example_scope"},
		},
		{
			name:      "NumericStatus",
			challenge: `{"status": 401, "schemes": "bearer"}`,
			want:      errorChallenge{Status: "401", Schemes: "bearer"},
		},
		{name: "EmptyObject", challenge: `{}`, want: errorChallenge{}},
		{name: "InvalidJSON", challenge: `{"status":"400"`, wantErr: true},
		{name: "NotJSON", challenge: `Authentication failed`, wantErr: true},
		{name: "Empty", challenge: ``, wantErr: true},
		{name: "JSONArray", challenge: `["400"]`, wantErr: true},
		{name: "JSONNull", challenge: `null`, wantErr: true},
		{name: "StatusIsAnObject", challenge: `{"status":{"code":400}}`, wantErr: true},
		{
			// What arrives when a server base64-encodes twice, or go-smtp's
			// decoding is bypassed: the JSON parser sees base64 text.
			name:      "StillBase64",
			challenge: "eyJzdGF0dXMiOiI0MDAifQ==",
			wantErr:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseErrorChallenge([]byte(tt.challenge))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseErrorChallenge(%q) = %+v, want an error", tt.challenge, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseErrorChallenge(%q): %v", tt.challenge, err)
			}
			if got != tt.want {
				t.Errorf("parseErrorChallenge(%q) = %+v, want %+v", tt.challenge, got, tt.want)
			}
		})
	}
}

func TestXOAUTH2ChallengeHandling(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		challenges []string // decoded challenges, in order
		wantErrAt  int      // index of the challenge whose Next fails; -1: none
		wantStatus string
	}{
		{
			name:       "ErrorChallengeIsAnsweredWithEmptyResponse",
			challenges: []string{`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`},
			wantErrAt:  -1,
			wantStatus: "401",
		},
		{
			name:       "InvalidJSONIsStillAnswered",
			challenges: []string{`{not json`},
			wantErrAt:  -1,
		},
		{
			name:       "EmptyChallengeIsStillAnswered",
			challenges: []string{``},
			wantErrAt:  -1,
		},
		{
			name:       "SecondChallengeIsAnError",
			challenges: []string{`{"status":"400"}`, `{"status":"400"}`},
			wantErrAt:  1,
			wantStatus: "400",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := NewXOAUTH2Client("alice@example.com", "tok")
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
				// Non-nil and empty: go-smtp sends an empty line. A nil
				// response would make go-smtp report success.
				if resp == nil || len(resp) != 0 {
					t.Fatalf("Next #%d = %#v, want a non-nil empty response", i, resp)
				}
			}
			ch, ok := c.(errorChallenger).errorChallenge()
			if !ok {
				t.Fatal("the client did not record the challenge")
			}
			if ch.Status != tt.wantStatus {
				t.Errorf("recorded status = %q, want %q", ch.Status, tt.wantStatus)
			}
		})
	}

	t.Run("StartForgetsThePreviousExchange", func(t *testing.T) {
		t.Parallel()
		c := NewXOAUTH2Client("alice@example.com", "tok")
		c.Start()
		c.Next([]byte(`{"status":"400"}`))
		c.Start()
		if _, ok := c.(errorChallenger).errorChallenge(); ok {
			t.Error("a challenge of the previous exchange is still recorded")
		}
		if _, err := c.Next([]byte(`{"status":"401"}`)); err != nil {
			t.Errorf("first challenge of a new exchange: %v", err)
		}
	})
}

func FuzzParseErrorChallenge(f *testing.F) {
	for _, seed := range []string{
		`{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`,
		`{"status":"invalid_token","scope":"example_scope","openid-configuration":"https://example.com/.well-known/openid-configuration"}`,
		`{"status":401}`,
		`{"status":1e400}`,
		`{"status":"\u0000\ud800"}`,
		`{}`, `[]`, `null`, `"400"`, ``, `{`, "\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Whatever the challenge, the client answers it once and refuses
		// a second one; it never returns (nil, nil).
		c := NewXOAUTH2Client("alice@example.com", "tok")
		c.Start()
		if resp, err := c.Next(b); err != nil || resp == nil {
			t.Fatalf("Next = %#v, %v", resp, err)
		}
		if _, err := c.Next(b); err == nil {
			t.Fatal("second challenge accepted")
		}

		ch, err := parseErrorChallenge(b)
		if err != nil {
			if ch != (errorChallenge{}) {
				t.Fatalf("error %v with a non-zero result %+v", err, ch)
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		// What was parsed survives a round trip.
		out, err := json.Marshal(map[string]string{"status": ch.Status, "schemes": ch.Schemes, "scope": ch.Scope})
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseErrorChallenge(out)
		if err != nil || again != ch {
			t.Fatalf("round trip of %+v = %+v, %v", ch, again, err)
		}
	})
}
