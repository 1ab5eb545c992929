package ledger_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
)

// This example follows one message through two attempts: the first reaches
// alice, is refused for carol and deferred (4xx) for bob; the retry sends to
// bob only and completes the message. It needs the test Redis server.
func Example() {
	ctx := context.Background()
	rdb := redis.NewClient(redistest.Options(5))
	defer rdb.Close()
	prefix := examplePrefix()
	defer deleteKeys(rdb, prefix)

	store := ledger.New(rdb, ledger.Options{Prefix: prefix})
	const msg = "<42@example.com>"
	rcpts := []string{"alice@example.com", "bob@example.com", "carol@example.com"}

	// Attempt 1: 250 to DATA for alice; bob deferred, carol refused.
	err := store.RecordRecipients(ctx, msg, "task-42", []string{"alice@example.com"}, "250 2.0.0 OK",
		[]ledger.Rejection{{Address: "carol@example.com", Reply: "550 5.1.1 user unknown"}})
	if err != nil {
		fmt.Println(err)
		return
	}

	// Attempt 2 loads the state first and sends only to who is pending.
	d, err := store.Delivery(ctx, msg)
	if err != nil {
		fmt.Println(err)
		return
	}
	pending := d.Pending(rcpts)
	fmt.Println("complete:", d.Receipt != nil, "pending:", pending)

	err = store.WriteReceipt(ctx, &ledger.Receipt{MessageID: msg, TaskID: "task-42", Accepted: pending, Reply: "250 2.0.0 OK"})
	if err != nil {
		fmt.Println(err)
		return
	}

	// A third run of the task (a re-enqueue) finds the receipt.
	d, err = store.Delivery(ctx, msg)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("complete:", d.Receipt != nil, "accepted:", d.Receipt.Accepted)
	for _, r := range d.Receipt.Rejected {
		fmt.Println("rejected:", r.Address, r.Reply)
	}
	// Output:
	// complete: false pending: [bob@example.com]
	// complete: true accepted: [alice@example.com bob@example.com]
	// rejected: carol@example.com 550 5.1.1 user unknown
}

// An account whose token is refused pauses for a minute, then two, four…
// Usable tells the handler to defer the account's mail until then.
func ExampleStore_AuthFailed() {
	ctx := context.Background()
	rdb := redis.NewClient(redistest.Options(5))
	defer rdb.Close()
	prefix := examplePrefix()
	defer deleteKeys(rdb, prefix)

	now := time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)
	store := ledger.New(rdb, ledger.Options{Prefix: prefix, NowFunc: func() time.Time { return now }})

	for range 3 {
		st, err := store.AuthFailed(ctx, "alice", "535 5.7.8 Username and Password not accepted")
		if err != nil {
			fmt.Println(err)
			return
		}
		ok, retryAt := store.Usable(st, now)
		fmt.Println(st.State, "usable:", ok, "retry in", retryAt.Sub(now))
		now = retryAt // the pause ends and the next attempt fails again
	}
	// Output:
	// auth-failing usable: false retry in 1m0s
	// auth-failing usable: false retry in 2m0s
	// auth-failing usable: false retry in 4m0s
}

// Usable needs no server: it reads a status already loaded with Account.
func ExampleStore_Usable() {
	store := ledger.New(redis.NewClient(&redis.Options{}), ledger.Options{})
	now := time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)

	throttled := ledger.AccountStatus{Account: "alice", State: ledger.AccountThrottled, Until: now.Add(time.Hour)}
	ok, retryAt := store.Usable(throttled, now)
	fmt.Println(ok, retryAt.Format(time.TimeOnly))

	held := ledger.AccountStatus{Account: "bob", State: ledger.AccountHeld, Hold: ledger.HoldReauthorize}
	ok, retryAt = store.Usable(held, now)
	fmt.Println(ok, retryAt.IsZero())
	// Output:
	// false 10:30:00
	// false true
}

// examplePrefix returns a key prefix unique to one run of an example.
func examplePrefix() string {
	var b [6]byte
	rand.Read(b[:])
	return "example:" + hex.EncodeToString(b[:]) + ":"
}

// deleteKeys deletes the keys an example created.
func deleteKeys(rdb *redis.Client, prefix string) {
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		rdb.Del(ctx, iter.Val())
	}
}

// A worker starts each attempt with StartAttempt: one round trip reads the
// message's state and the account's health and records the attempting
// task, which the next attempt sees. Here a second task of the same message
// finds the first task's attempt and no receipt: it would ask asynq whether
// that task completed before sending (tasks.HandlerConfig.AsyncReceipt). It
// needs the test Redis server.
func ExampleStore_StartAttempt() {
	ctx := context.Background()
	rdb := redis.NewClient(redistest.Options(5))
	defer rdb.Close()
	prefix := examplePrefix()
	defer deleteKeys(rdb, prefix)
	store := ledger.New(rdb, ledger.Options{Prefix: prefix})
	const msg = "<43@example.com>"

	for _, task := range []string{"task-1", "task-2"} {
		d, st, err := store.StartAttempt(ctx, msg, "support", ledger.Attempt{Queue: "email", TaskID: task})
		if err != nil {
			fmt.Println(err)
			return
		}
		last := "none"
		if d.LastAttempt != nil {
			last = d.LastAttempt.TaskID
		}
		fmt.Printf("%s: account %s, receipt %v, last attempt %s\n", task, st.State, d.Receipt != nil, last)
	}
	// Output:
	// task-1: account ok, receipt false, last attempt none
	// task-2: account ok, receipt false, last attempt task-1
}
