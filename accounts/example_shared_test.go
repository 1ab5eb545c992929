package accounts_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/accounts"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

// Two worker processes share an account's access token through Redis: the
// first asks the token endpoint, the second uses its answer. A rotated
// refresh token goes to Redis, sealed with the token key. It needs the test
// Redis server.
func ExampleNewRegistry_sharedTokens() {
	provider := smtpoauthtest.NewServer(smtpoauthtest.Config{Flavor: smtpoauthtest.FlavorMicrosoft, RotateRefreshTokens: true})
	defer provider.Close()
	provider.AddClient("ms-app", "ms-secret")
	env := map[string]string{
		"MS_SECRET":  "ms-secret",
		"MS_REFRESH": provider.NewRefreshToken("ms-app", "m@contoso.com"), // the seed
	}
	file := []byte(`
accounts:
  - id: m
    provider: microsoft
    username: m@contoso.com
    oauth:
      grant: refresh_token
      tenant: contoso.onmicrosoft.com
      client_id: ms-app
      client_secret_env: MS_SECRET
      refresh_token_env: MS_REFRESH
      token_url: ` + provider.TokenURL + `
`)
	key := make([]byte, ledger.TokenKeySize)
	rand.Read(key)
	keys, _ := ledger.ParseKeyring(base64.StdEncoding.EncodeToString(key)) // SENDQ_TOKEN_KEY
	var b [6]byte
	rand.Read(b[:])
	prefix := "example:" + base64.RawURLEncoding.EncodeToString(b[:]) + ":"

	// process builds what one worker process has: its Redis client, its
	// ledger and its registry.
	process := func() (accounts.TokenSource, *ledger.Store, func()) {
		rdb := redis.NewClient(redistest.Options(7))
		store := ledger.New(rdb, ledger.Options{Prefix: prefix, TokenKeys: keys})
		f, err := accounts.Parse(file, accounts.ParseOptions{Name: "accounts.yaml", Getenv: func(k string) string { return env[k] }})
		if err != nil {
			panic(err)
		}
		reg, err := accounts.NewRegistry(context.Background(), f, nil, accounts.RegistryOptions{Tokens: store})
		if err != nil {
			panic(err)
		}
		ts, _ := reg.TokenSource("m")
		return ts, store, func() {
			keys, _ := rdb.Keys(context.Background(), prefix+"*").Result()
			if len(keys) > 0 {
				rdb.Del(context.Background(), keys...)
			}
			rdb.Close()
		}
	}
	one, store, cleanup := process()
	defer cleanup()
	two, _, cleanup2 := process()
	defer cleanup2()

	t1, err := one.Token()
	if err != nil {
		fmt.Println(err)
		return
	}
	t2, err := two.Token()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("same token:", t1.AccessToken == t2.AccessToken)
	fmt.Println("grants:", provider.Stats().TokenGrants[smtpoauthtest.GrantRefreshToken])
	rt, version, _ := store.RefreshToken(context.Background(), "m")
	fmt.Println("stored refresh token: rotated", rt != env["MS_REFRESH"], "version", version)
	// Output:
	// same token: true
	// grants: 1
	// stored refresh token: rotated true version 1
}
