package ledger_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
)

// A keyring from the environment: the first key seals, the others still
// open what they sealed, so keys rotate without a flag day.
func ExampleLoadKeyring() {
	oldKey, newKey := randomKey(), randomKey()
	env := map[string]string{ // os.Getenv in a real program
		ledger.EnvTokenKeys: "2026-03:" + newKey + ",2025-09:" + oldKey,
	}
	keys, err := ledger.LoadKeyring(func(name string) string { return env[name] })
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(keys)

	aad := []byte("sendq:{accounts}:token:support\x00token")
	sealed := keys.Seal([]byte("1//refresh-token"), aad)
	fmt.Println(strings.HasPrefix(sealed, "v1:2026-03:"), strings.Contains(sealed, "refresh-token"))
	plain, err := keys.Open(sealed, aad)
	fmt.Println(string(plain), err)
	_, err = keys.Open(sealed, []byte("sendq:{accounts}:token:billing\x00token"))
	fmt.Println(err)
	// Output:
	// keyring(current 2026-03; 2026-03, 2025-09)
	// true false
	// 1//refresh-token <nil>
	// stored token unreadable: authentication failed with key "2026-03" (another key under that id, a value moved from another Redis key, or altered)
}

// An operator's re-authorization, as the authorize command does it: the
// token is sealed in Redis and every worker picks it up on its next
// refresh. It needs the test Redis server.
func ExampleStore_SetRefreshToken() {
	ctx := context.Background()
	rdb := redis.NewClient(redistest.Options(5))
	defer rdb.Close()
	prefix := examplePrefix()
	defer deleteKeys(rdb, prefix)

	keys, _ := ledger.ParseKeyring("k1:" + randomKey())
	store := ledger.New(rdb, ledger.Options{Prefix: prefix, TokenKeys: keys})
	version, err := store.SetRefreshToken(ctx, "support", "1//fresh-consent")
	if err != nil {
		fmt.Println(err)
		return
	}
	raw, _ := rdb.HGet(ctx, prefix+"{accounts}:token:support", "token").Result()
	fmt.Println("version:", version, "sealed:", strings.HasPrefix(raw, "v1:k1:"), "readable:", strings.Contains(raw, "fresh-consent"))

	token, version, err := store.RefreshToken(ctx, "support")
	fmt.Println(token, version, err)
	// Output:
	// version: 1 sealed: true readable: false
	// 1//fresh-consent 1 <nil>
}

// randomKey returns the base64 of a new random token key, as
// `openssl rand -base64 32` prints one.
func randomKey() string {
	b := make([]byte, ledger.TokenKeySize)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}
