// Package redistest connects tests to the real Redis server sendq's tests run
// against. Each test package passes its own DB number so packages running in
// parallel never see each other's keys; tests inside a package isolate
// themselves further with unique queue names from Queue.
//
// The server address comes from REDIS_ADDR (host:port) or REDIS_URL, and
// defaults to 127.0.0.1:6379. When nothing answers there, the test fails with
// one line that says how to start a server.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// DefaultAddr is the Redis address used when neither REDIS_ADDR nor
// REDIS_URL is set.
const DefaultAddr = "127.0.0.1:6379"

// Addr returns the address of the test Redis server.
func Addr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	if u := os.Getenv("REDIS_URL"); u != "" {
		if opt, err := redis.ParseURL(u); err == nil {
			return opt.Addr
		}
	}
	return DefaultAddr
}

// Options returns go-redis options for db on the test server.
func Options(db int) *redis.Options {
	return &redis.Options{Addr: Addr(), DB: db}
}

// ConnOpt returns the asynq connection option for db on the test server.
func ConnOpt(db int) asynq.RedisClientOpt {
	return asynq.RedisClientOpt{Addr: Addr(), DB: db}
}

// URL returns a redis:// URL for db on the test server, for binaries that
// read REDIS_URL.
func URL(db int) string {
	return "redis://" + Addr() + "/" + strconv.Itoa(db)
}

// Client returns a client for db on the test server, closed when the test
// ends. It fails the test at once when the server does not answer.
func Client(tb testing.TB, db int) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(Options(db))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		tb.Fatalf("redis at %s is not reachable (%v): start one with `redis-server --daemonize yes` or set REDIS_ADDR", Addr(), err)
	}
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// Queue returns a queue name unique to this test run, derived from the test's
// name, and deletes the queue (with any tasks left in it) when the test ends.
func Queue(tb testing.TB, db int) string {
	tb.Helper()
	Client(tb, db) // fail early with the helpful message
	var b [4]byte
	rand.Read(b[:])
	name := strings.NewReplacer("/", "-", " ", "-").Replace(tb.Name())
	q := "test-" + strings.ToLower(name) + "-" + hex.EncodeToString(b[:])
	tb.Cleanup(func() { deleteQueue(db, q) })
	return q
}

// deleteQueue removes every key asynq keeps for queue q, completed tasks and
// daily stats included (Inspector.DeleteQueue leaves those behind).
func deleteQueue(db int, q string) {
	rdb := redis.NewClient(Options(db))
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, "asynq:{"+q+"}:*", 500).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 500 {
			rdb.Del(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		rdb.Del(ctx, keys...)
	}
	rdb.SRem(ctx, "asynq:queues", q)
}
