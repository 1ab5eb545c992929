package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
)

// This example enforces Exchange Online's limits on a mailbox as every worker
// would: three concurrent sessions, 30 messages a minute, 10,000 recipients a
// day. It needs the test Redis server.
func ExampleStore_AcquireSession() {
	ctx := context.Background()
	rdb := redis.NewClient(redistest.Options(5))
	defer rdb.Close()
	prefix := examplePrefix()
	defer deleteKeys(rdb, prefix)
	now := time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)
	store := ledger.New(rdb, ledger.Options{Prefix: prefix, NowFunc: func() time.Time { return now }})

	var leases []*ledger.Lease
	for range 4 {
		lease, err := store.AcquireSession(ctx, "billing", 3)
		if errors.Is(err, ledger.ErrSessionsFull) {
			fmt.Println("fourth session: wait")
			continue
		}
		if err != nil {
			fmt.Println(err)
			return
		}
		leases = append(leases, lease)
	}
	// Each send holds a session while it runs, then gives it back.
	if err := leases[0].Release(ctx); err != nil {
		fmt.Println(err)
		return
	}
	n, _ := store.Sessions(ctx, "billing")
	fmt.Println("sessions in use:", n)

	perMinute := ledger.Rate{Name: "messages_per_minute", Limit: 30, Window: time.Minute}
	perDay := ledger.Rate{Name: "recipients_per_day", Limit: 10_000, Window: 24 * time.Hour}
	for i := range 31 {
		a, err := store.Allow(ctx, "billing", ledger.Use{Rate: perMinute, N: 1}, ledger.Use{Rate: perDay, N: 2})
		if err != nil {
			fmt.Println(err)
			return
		}
		if !a.Allowed {
			fmt.Printf("message %d: wait %s for %s\n", i+1, a.RetryAfter, a.Refused.Name)
		}
		now = now.Add(time.Second)
	}
	used, _ := store.Used(ctx, "billing", perDay)
	fmt.Println("recipients today:", used)
	// Output:
	// fourth session: wait
	// sessions in use: 2
	// message 31: wait 30s for messages_per_minute
	// recipients today: 60
}
