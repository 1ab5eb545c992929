package ledger

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkHappyPath runs what a handler does for one message that goes out
// at the first attempt: load the delivery, load the account, write the
// receipt. It reports round trips per message.
func BenchmarkHappyPath(b *testing.B) {
	tb := setup(b, Options{})
	ctx := context.Background()
	counter := new(roundTrips)
	tb.rdb.AddHook(counter)
	if err := tb.store.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	rcpts := []string{"alice@example.com", "bob@example.com"}
	i := 0
	start := counter.n.Load()
	for b.Loop() {
		i++
		msg := "<" + strconv.Itoa(i) + "@example.com>"
		d, err := tb.store.Delivery(ctx, msg)
		if err != nil {
			b.Fatal(err)
		}
		st, err := tb.store.Account(ctx, "alice")
		if err != nil {
			b.Fatal(err)
		}
		if ok, _ := tb.store.Usable(st, tb.clock.Now()); !ok {
			b.Fatal("account not usable")
		}
		r := &Receipt{MessageID: msg, TaskID: "task-" + strconv.Itoa(i), Accepted: d.Pending(rcpts), Reply: "250 2.0.0 OK"}
		if err := tb.store.WriteReceipt(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(counter.n.Load()-start)/float64(i), "roundtrips/msg")
}
