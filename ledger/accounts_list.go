package ledger

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// KnownAccounts returns the ids of every account the store holds state
// for, sorted: a health record (an account that is not AccountOK), a
// refresh token, a keep-alive claim, or session leases and rate counters
// (an account with limits that sent recently). An account that is ok, has
// no refresh token of its own in the store (client credentials) and sent
// nothing lately leaves nothing behind, and is not listed; dead letters
// name their account too (DeadLetter.Account), but are not read here.
//
// It walks the keyspace with SCAN (on every master of a Redis Cluster), so
// it costs a pass over the keys: an operator's call, not a worker's.
func (s *Store) KnownAccounts(ctx context.Context) ([]string, error) {
	// Each pattern with the part before the account id and, for limit
	// keys, the end of the hash tag that follows it; derived from the key
	// builders, so the layout has one definition.
	kinds := []struct{ before, after string }{
		{s.accountKey(""), ""},
		{s.tokenKey(""), ""},
		{s.keepAliveKey(""), ""},
		{strings.TrimSuffix(s.limitsKeyPrefix(""), "}:"), "}:"},
	}
	seen := make(map[string]bool)
	for _, k := range kinds {
		err := s.scanKeys(ctx, globEscape(k.before)+"*"+globEscape(k.after)+"*", func(key string) {
			id := strings.TrimPrefix(key, k.before)
			if k.after != "" {
				i := strings.LastIndex(id, k.after)
				if i < 0 {
					return
				}
				id = id[:i]
			}
			if id != "" {
				seen[id] = true
			}
		})
		if err != nil {
			return nil, fmt.Errorf("list known accounts: %w", err)
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// scanKeys calls fn with every key matching pattern, on each master of a
// cluster, one call at a time.
func (s *Store) scanKeys(ctx context.Context, pattern string, fn func(key string)) error {
	var mu sync.Mutex // a cluster's masters are scanned concurrently
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, pattern, 500).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			fn(iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	}
	return scan(ctx, s.rdb)
}

// globEscape escapes the characters SCAN's MATCH patterns treat specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
