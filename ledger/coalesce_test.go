package ledger

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// pipelineGate is a go-redis hook that counts the MULTI transactions sent
// (not the pipelines that set up new connections), and holds the first one
// until release is closed.
type pipelineGate struct {
	sent    atomic.Int64
	release chan struct{}
}

func (g *pipelineGate) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (g *pipelineGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (g *pipelineGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "multi" && g.sent.Add(1) == 1 {
			<-g.release
		}
		return next(ctx, cmds)
	}
}

// waitingOps returns how many operations wait for the round trip out.
func (c *coalescer) waitingOps() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiting)
}

func TestConcurrentReceiptsAndReadsShareRoundTrips(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	gate := &pipelineGate{release: make(chan struct{})}
	tb.rdb.AddHook(gate)
	ctx := context.Background()

	// The first receipt's round trip is held until every other caller
	// waits: they then all go in the second.
	const n = 30 // 2n-1 waiting fit in one batch (maxBatch)
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	start := func(i int, op func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = op()
		}()
	}
	msg := func(i int) string { return fmt.Sprintf("<m%d@x>", i) }
	start(0, func() error {
		return tb.store.WriteReceipt(ctx, &Receipt{MessageID: msg(0), TaskID: "t0", Accepted: []string{"a@x"}, Reply: "250 ok"})
	})
	for gate.sent.Load() == 0 {
		// The first round trip is out once the hook has counted it.
		runtime.Gosched()
	}
	for i := 1; i < n; i++ {
		start(i, func() error {
			return tb.store.WriteReceipt(ctx, &Receipt{MessageID: msg(i), TaskID: fmt.Sprint("t", i), Accepted: []string{"a@x"}, Reply: "250 ok"})
		})
	}
	reads := make([]*Delivery, n)
	for i := range n {
		start(n+i, func() error {
			d, _, err := tb.store.DeliveryAndAccount(ctx, msg(1000+i), "acct")
			reads[i] = d
			return err
		})
	}
	for tb.store.co.waitingOps() < 2*n-1 {
		runtime.Gosched()
	}
	close(gate.release)
	wg.Wait()

	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := gate.sent.Load(); got != 2 {
		t.Errorf("%d round trips for %d operations, want 2", got, 2*n)
	}
	for i := range n {
		d, err := tb.store.Delivery(ctx, msg(i))
		if err != nil {
			t.Fatal(err)
		}
		if d.Receipt == nil || d.Receipt.TaskID != fmt.Sprint("t", i) || len(d.Receipt.Accepted) != 1 {
			t.Errorf("receipt of %s: %+v", msg(i), d.Receipt)
		}
		if reads[i] == nil || reads[i].Receipt != nil {
			t.Errorf("read %d: %+v, want an empty delivery", i, reads[i])
		}
	}
}

func TestASharedRoundTripKeepsEachOperationsError(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	gate := &pipelineGate{release: make(chan struct{})}
	tb.rdb.AddHook(gate)
	ctx := context.Background()
	// The delivery key of <bad@x> is not a hash: its HSET fails alone.
	if err := tb.rdb.Set(ctx, tb.store.deliveryKey("<bad@x>"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// A read holds the first round trip; the three receipts share the
	// second.
	held := make(chan error, 1)
	go func() {
		_, _, err := tb.store.DeliveryAndAccount(ctx, "<other@x>", "acct")
		held <- err
	}()
	for gate.sent.Load() == 0 {
		runtime.Gosched()
	}
	var wg sync.WaitGroup
	results := map[string]error{}
	var mu sync.Mutex
	for _, m := range []string{"<good1@x>", "<bad@x>", "<good2@x>"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: m, Accepted: []string{"a@x"}, Reply: "250 ok"})
			mu.Lock()
			results[m] = err
			mu.Unlock()
		}()
	}
	for tb.store.co.waitingOps() < 3 {
		runtime.Gosched()
	}
	close(gate.release)
	wg.Wait()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if got := gate.sent.Load(); got != 2 {
		t.Errorf("%d round trips, want 2", got)
	}
	if err := results["<bad@x>"]; err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("receipt of <bad@x>: %v, want WRONGTYPE", err)
	}
	for _, m := range []string{"<good1@x>", "<good2@x>"} {
		if err := results[m]; err != nil {
			t.Errorf("receipt of %s: %v", m, err)
		}
		if d, err := tb.store.Delivery(ctx, m); err != nil || d.Receipt == nil {
			t.Errorf("delivery of %s: %+v, %v; want a receipt", m, d, err)
		}
	}
}
