package accounts

import (
	"context"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth"
)

// Observer hears about one account's requests to its token endpoint and its
// sender's SMTP work, for metrics (see RegistryOptions.ObserverFunc). Its
// methods are called on the goroutine doing the work: they must be quick,
// must not block, and must be safe for concurrent use.
type Observer interface {
	// Observer is given to the account's sender as its
	// smtpoauth.Config.Observer.
	smtpoauth.Observer
	// TokenRefreshed reports an access token obtained from the account's
	// token endpoint (one request; a token served from a cache is not
	// one).
	TokenRefreshed()
	// TokenRefreshFailed reports a request to the account's token
	// endpoint that failed.
	TokenRefreshFailed()
}

// observedSource reports each Token call of a token-endpoint source to an
// Observer.
type observedSource struct {
	src oauth2.TokenSource
	obs Observer
}

// Token implements oauth2.TokenSource.
func (s observedSource) Token() (*oauth2.Token, error) {
	tok, err := s.src.Token()
	observeRefresh(s.obs, err)
	return tok, err
}

// observeGrant returns g reporting each request to obs.
func observeGrant(g grantFunc, obs Observer) grantFunc {
	return func(ctx context.Context, refreshToken string) (*oauth2.Token, string, error) {
		tok, rotated, err := g(ctx, refreshToken)
		observeRefresh(obs, err)
		return tok, rotated, err
	}
}

func observeRefresh(obs Observer, err error) {
	if err != nil {
		obs.TokenRefreshFailed()
	} else {
		obs.TokenRefreshed()
	}
}
