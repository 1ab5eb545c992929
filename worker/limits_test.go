package worker

import (
	"testing"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/tasks"
)

func TestAccountLimitsComeFromTheAccountsFile(t *testing.T) {
	t.Parallel()
	file, err := accounts.Parse([]byte(`accounts:
  - id: billing
    provider: microsoft
    username: billing@contoso.com
    oauth: {grant: refresh_token, client_id: c, refresh_token_env: REFRESH}
    limits: {max_sessions: 2, messages_per_day: 500}
  - id: relay
    provider: generic
    username: relay@example.com
    smtp: {host: smtp.example.com, port: 587}
    oauth: {grant: client_credentials, client_id: c, client_secret_env: SECRET, token_url: https://auth.example.com/token}
`), accounts.ParseOptions{Getenv: func(string) string { return "x" }})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		account string
		want    tasks.AccountLimits
	}{
		{"billing", tasks.AccountLimits{MessagesPerMinute: 30, MessagesPerDay: 500, RecipientsPerDay: 10000}},
		{"relay", tasks.AccountLimits{}},
		{"unknown", tasks.AccountLimits{}},
	} {
		if got := accountLimits(file, tc.account); got != tc.want {
			t.Errorf("accountLimits(%s) = %+v, want %+v", tc.account, got, tc.want)
		}
	}
}
