package accounts_test

import (
	"fmt"

	"github.com/sendq/sendq/accounts"
)

// A minimal accounts file: the google preset fills in the server, the
// endpoints and the scope; the secrets come from the environment.
func ExampleParse() {
	file := []byte(`
accounts:
  - id: support
    provider: google
    username: support@example.com
    oauth:
      grant: refresh_token
      client_id: 1234.apps.googleusercontent.com
      client_secret_env: SUPPORT_CLIENT_SECRET
      refresh_token_env: SUPPORT_REFRESH_TOKEN
`)
	env := map[string]string{ // os.Getenv by default
		"SUPPORT_CLIENT_SECRET": "GOCSPX-example",
		"SUPPORT_REFRESH_TOKEN": "1//example",
	}
	f, err := accounts.Parse(file, accounts.ParseOptions{
		Name:   "accounts.yaml",
		Getenv: func(k string) string { return env[k] },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	a, _ := f.Account("support")
	fmt.Println(a)
	fmt.Println(a.Username, a.Mechanism)
	fmt.Println(a.SMTP.Host, a.SMTP.Port, a.SMTP.TLS)
	fmt.Println(a.OAuth.Grant, a.OAuth.TokenURL, a.OAuth.Scopes)
	// Output:
	// account "support"
	// support@example.com XOAUTH2
	// smtp.gmail.com 587 starttls
	// refresh_token https://oauth2.googleapis.com/token [https://mail.google.com/]
}

// Every problem is reported at once, naming the file, the account and the
// field.
func ExampleParse_errors() {
	file := []byte(`
accounts:
  - id: billing
    provider: microsoft
    username: billing@contoso.com
    oauth:
      grant: client_credentials
      tenant: contoso.onmicrosoft.com
      client_id: 00000000-0000-0000-0000-000000000000
      client_secret: do-not-do-this
  - id: support
    provider: google
    username: support@example.com
    oauth:
      grant: refresh_token
      client_id: 1234.apps.googleusercontent.com
      refresh_token_env: SUPPORT_REFRESH_TOKEN
`)
	_, err := accounts.Parse(file, accounts.ParseOptions{
		Name:   "accounts.yaml",
		Getenv: func(string) string { return "" },
	})
	fmt.Println(err)
	// Output:
	// accounts.yaml: account "billing": oauth.client_secret: secrets must not be written in the accounts file: use client_secret_env or client_secret_file
	// accounts.yaml: account "support": oauth.refresh_token_env: environment variable SUPPORT_REFRESH_TOKEN is not set
}
