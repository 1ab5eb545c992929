package accounts

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// microsoftAccount is a valid Microsoft account, to be extended by the tests.
const microsoftAccount = `
accounts:
  - id: billing
    provider: microsoft
    username: billing@contoso.com
    oauth: {grant: refresh_token, client_id: c, refresh_token_env: SUPPORT_REFRESH_TOKEN}
`

// genericAccount is a valid generic account, to be extended by the tests.
const genericAccount = `
accounts:
  - id: relay
    provider: generic
    username: relay@example.com
    smtp: {host: smtp.example.com, port: 587}
    oauth: {grant: client_credentials, client_id: c, client_secret_env: SUPPORT_CLIENT_SECRET, token_url: https://auth.example.com/token}
`

// withLimits adds a limits block (YAML lines indented for an account) to
// an account of the file.
func withLimits(file, block string) string {
	return strings.TrimRight(file, "\n") + "\n    limits:\n" + block
}

func TestParseLimits(t *testing.T) {
	t.Parallel()

	microsoft := Limits{MaxSessions: 3, MessagesPerMinute: 30, RecipientsPerDay: 10000}
	google := Limits{MessagesPerDay: 2000, RecipientsPerDay: 10000}
	tests := []struct {
		name string
		yaml string
		want Limits
	}{
		{"MicrosoftPreset", microsoftAccount, microsoft},
		{"GooglePreset", googleAccount, google},
		{"GenericHasNoLimits", genericAccount, Limits{}},
		{"EmptyBlockKeepsThePreset", strings.TrimRight(microsoftAccount, "\n") + "\n    limits: {}\n", microsoft},
		{"KeysOverrideThePresetOneByOne", withLimits(microsoftAccount, "      max_sessions: 2\n      messages_per_day: 5000\n"),
			Limits{MaxSessions: 2, MessagesPerMinute: 30, MessagesPerDay: 5000, RecipientsPerDay: 10000}},
		{"UnlimitedRemovesAPresetLimit", withLimits(microsoftAccount, "      messages_per_minute: unlimited\n      recipients_per_day: unlimited\n"),
			Limits{MaxSessions: 3}},
		{"GenericTakesWhatItIsGiven", withLimits(genericAccount, "      max_sessions: 1\n      messages_per_minute: 10\n      messages_per_day: 100\n      recipients_per_day: 1000\n"),
			Limits{MaxSessions: 1, MessagesPerMinute: 10, MessagesPerDay: 100, RecipientsPerDay: 1000}},
		{"FlowMapping", strings.TrimRight(googleAccount, "\n") + "\n    limits: {messages_per_day: 500, recipients_per_day: 2000}\n",
			Limits{MessagesPerDay: 500, RecipientsPerDay: 2000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := Parse([]byte(tt.yaml), defaultTestEnv(t).options())
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Accounts()[0].Limits; got != tt.want {
				t.Errorf("Limits = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseLimitsRejects(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"Zero", withLimits(microsoftAccount, "      max_sessions: 0\n"), []string{
			`accounts.yaml: account "billing": limits.max_sessions: 0 is not a limit: want a positive whole number, or unlimited to remove the limit`}},
		{"Negative", withLimits(googleAccount, "      messages_per_day: -1\n"), []string{
			`accounts.yaml: account "support": limits.messages_per_day: -1 is not a limit: want a positive whole number, or unlimited to remove the limit`}},
		{"Word", withLimits(googleAccount, "      recipients_per_day: lots\n"), []string{
			`accounts.yaml: account "support": limits.recipients_per_day: "lots" is not a limit: want a positive whole number or unlimited`}},
		{"Fraction", withLimits(microsoftAccount, "      messages_per_minute: 2.5\n"), []string{
			`accounts.yaml: account "billing": limits.messages_per_minute: "2.5" is not a limit: want a positive whole number or unlimited`}},
		{"TooLarge", withLimits(microsoftAccount, "      messages_per_minute: 99999999999999999999\n"), []string{
			`accounts.yaml: account "billing": limits.messages_per_minute: "99999999999999999999" is not a limit: want a positive whole number or unlimited`}},
		{"List", withLimits(microsoftAccount, "      max_sessions: [1, 2]\n"), []string{
			`accounts.yaml: account "billing": limits.max_sessions: not a limit: want a positive whole number or unlimited`}},
		{"UnknownKey", withLimits(microsoftAccount, "      max_session: 2\n"), []string{
			`accounts.yaml: account "billing": limits.max_session: unknown field (line 8)`}},
		{"NotAMapping", strings.TrimRight(microsoftAccount, "\n") + "\n    limits: 3\n", []string{
			"accounts.yaml: account \"billing\": limits: cannot unmarshal !!int `3` into accounts.rawLimits (line 7)"}},
		{"EveryProblem", withLimits(microsoftAccount, "      max_sessions: 0\n      messages_per_minute: none\n"), []string{
			`accounts.yaml: account "billing": limits.max_sessions: 0 is not a limit`,
			`accounts.yaml: account "billing": limits.messages_per_minute: "none" is not a limit`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := Parse([]byte(tt.yaml), defaultTestEnv(t).options())
			if err == nil {
				t.Fatalf("Parse succeeded with limits %+v, want errors:\n%s", f.Accounts()[0].Limits, strings.Join(tt.want, "\n"))
			}
			lines := strings.Split(err.Error(), "\n")
			for _, want := range tt.want {
				if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, want) }) {
					t.Errorf("missing error line\n  %s\ngot:\n  %s", want, strings.Join(lines, "\n  "))
				}
			}
			if len(lines) != len(tt.want) {
				t.Errorf("got %d error lines, want %d:\n  %s", len(lines), len(tt.want), strings.Join(lines, "\n  "))
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %T does not contain a *FieldError", err)
			}
		})
	}
}

func TestLimitsMaxConns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		limits     Limits
		perProcess int
		want       int
	}{
		{"NoSessionLimitKeepsThePool", Limits{}, 10, 10},
		{"NoSessionLimitAndUnlimitedPool", Limits{}, 0, 0},
		{"SmallerPoolStays", Limits{MaxSessions: 3}, 2, 2},
		{"LargerPoolIsCapped", Limits{MaxSessions: 3}, 10, 3},
		{"UnlimitedPoolIsCapped", Limits{MaxSessions: 3}, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.limits.MaxConns(tt.perProcess); got != tt.want {
				t.Errorf("MaxConns(%d) = %d, want %d", tt.perProcess, got, tt.want)
			}
		})
	}
}
