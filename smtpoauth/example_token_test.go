package smtpoauth_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// A TokenCache over a refresh-token source: concurrent and repeated calls
// cost one request to the token endpoint until the token nears its expiry.
func ExampleNewTokenCache() {
	provider := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	defer provider.Close()
	provider.AddClient("my-app", "my-app-secret")
	refreshToken := provider.NewRefreshToken("my-app", "support@example.com")

	cfg := &oauth2.Config{
		ClientID:     "my-app",
		ClientSecret: "my-app-secret",
		Endpoint:     oauth2.Endpoint{TokenURL: provider.TokenURL},
		Scopes:       []string{"https://mail.google.com/"},
	}
	// A process-lifetime context: the source keeps it.
	ctx := context.Background()
	cache := smtpoauth.NewTokenCache(smtpoauth.NewRefreshTokenSource(ctx, cfg, refreshToken, nil), smtpoauth.DefaultRefreshMargin)

	for range 3 {
		tok, err := cache.Token()
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(tok.TokenType, tok.Valid())
	}
	fmt.Println("grants:", provider.Stats().TokenGrantsTotal)
	// Output:
	// Bearer true
	// Bearer true
	// Bearer true
	// grants: 1
}

// Microsoft rotates the refresh token on every refresh: onRotate is where
// the new one is saved.
func ExampleNewRefreshTokenSource() {
	provider := smtpoauthtest.NewServer(smtpoauthtest.Config{
		Flavor:              smtpoauthtest.FlavorMicrosoft,
		RotateRefreshTokens: true,
	})
	defer provider.Close()
	provider.AddClient("my-app", "my-app-secret")
	refreshToken := provider.NewRefreshToken("my-app", "support@contoso.com")

	cfg := &oauth2.Config{
		ClientID:     "my-app",
		ClientSecret: "my-app-secret",
		Endpoint:     oauth2.Endpoint{TokenURL: provider.TokenURL},
	}
	saved := refreshToken
	src := smtpoauth.NewRefreshTokenSource(context.Background(), cfg, refreshToken, func(newRefreshToken string) {
		saved = newRefreshToken // write it to the secret store here
	})
	for range 2 {
		if _, err := src.Token(); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("rotated:", saved != refreshToken)
		refreshToken = saved
	}
	// Output:
	// rotated: true
	// rotated: true
}

func ExampleSecret() {
	secret := smtpoauth.Secret("client-secret-value")
	fmt.Println(secret)
	slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // keep the output stable
			}
			return a
		},
	})).Info("configured", "client_secret", secret)
	// Output:
	// [redacted]
	// level=INFO msg=configured client_secret=[redacted]
}
