package worker

import (
	"bytes"
	"context"
	"fmt"
	"net/mail"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// TestMixedRun is the failure-semantics acceptance run: 1,000 messages
// through two worker processes while the provider injects transient faults
// (about 10% of recipients), permanent rejections (about 2%, some of them
// partial), a token-endpoint outage, the revocation and re-authorization of
// one account, and one worker killed with SIGKILL halfway. It ends with every
// deliverable recipient holding exactly one copy, every permanent failure
// dead-lettered with its reason, and no task left in the queue.
func TestMixedRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the mixed run takes about half a minute")
	}
	const messages = 1000
	start := time.Now()
	ctx := context.Background()

	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{AccessTokenLifetime: 4 * time.Second})
	t.Cleanup(srv.Close)
	queue := redistest.Queue(t, redisDB)
	prefix := "test:" + randomHex() + ":"
	rdb := redistest.Client(t, redisDB)
	store := ledger.New(rdb, ledger.Options{Prefix: prefix, InsecurePlaintextTokens: true})

	// Two delegated accounts; acct-b is revoked and re-authorized mid-run.
	accountsFile, env := writeProcessAccounts(t, srv, "a", "b")

	// The plan: message i goes to 1+i%3 recipients through acct-a or acct-b.
	type plan struct {
		account  string
		rcpts    []string
		rejected map[string]bool
	}
	plans := make([]plan, messages)
	transient, permanent := 0, 0
	for i := range plans {
		p := plan{account: "acct-a", rejected: map[string]bool{}}
		if i%2 == 1 {
			p.account = "acct-b"
		}
		for j := range 1 + i%3 {
			p.rcpts = append(p.rcpts, fmt.Sprintf("m%d-r%d@example.net", i, j))
		}
		switch {
		case i%100 == 42: // every recipient refused: the message is dead-lettered
			for _, r := range p.rcpts {
				p.rejected[r] = true
				srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: r, Code: 550, Enhanced: [3]int{5, 1, 1},
					Text: "The email account that you tried to reach does not exist."})
				permanent++
			}
		case i%25 == 11 && len(p.rcpts) > 1: // one refused: the others still get it
			r := p.rcpts[len(p.rcpts)-1]
			p.rejected[r] = true
			srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: r, Code: 550, Enhanced: [3]int{5, 1, 1},
				Text: "The email account that you tried to reach does not exist."})
			permanent++
		case i%10 == 3: // deferred once or twice at RCPT
			srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: p.rcpts[0], Code: 451, Enhanced: [3]int{4, 3, 0},
				Text: "Mail server temporarily rejected message.", Times: 1 + i%2})
			transient++
		case i%20 == 7: // refused once at the end of DATA
			srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Address: p.rcpts[0], Code: 451, Enhanced: [3]int{4, 3, 0},
				Text: "Temporary local problem, try again later.", Times: 1})
			transient++
		}
		plans[i] = p
	}
	// A short token-endpoint outage at the start.
	srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 503, Times: 2})

	var logs lockedBuffer
	pc := processConfig{AccountsFile: accountsFile, Env: env, Queue: queue, LedgerPrefix: prefix, Concurrency: 10,
		RetryBase: 20 * time.Millisecond, RetryCap: 300 * time.Millisecond, HeldRecheck: 200 * time.Millisecond,
		AuthBackoff: 100 * time.Millisecond, GrantWindow: 500 * time.Millisecond}
	w1 := startProcess(t, pc, &logs)
	w2 := startProcess(t, pc, &logs)
	_ = w1

	client := tasks.NewClient(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { client.Close() })
	messageIDs := make([]string, messages)
	for i, p := range plans {
		enq, err := client.Enqueue(ctx, &tasks.Email{AccountID: p.account, From: strings.TrimPrefix(p.account, "acct-") + "@example.com",
			To: p.rcpts, Subject: fmt.Sprintf("message %d", i), Text: "hello"}, tasks.Queue(queue))
		if err != nil {
			t.Fatal(err)
		}
		messageIDs[i] = enq.MessageID
	}
	t.Logf("enqueued %d messages (%d transient faults, %d permanently refused recipients) in %s",
		messages, transient, permanent, time.Since(start).Round(time.Millisecond))

	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()

	// A quarter in: revoke acct-b's refresh token. Its access tokens die
	// within seconds, refreshes get invalid_grant, the account is held.
	if _, err := srv.WaitMessages(waitCtx, messages/4); err != nil {
		t.Fatalf("first quarter: %v\n%s", err, logs.String())
	}
	srv.Revoke(env["RT_B"])
	// The provider also ends acct-b's sessions: the workers' pooled
	// connections, authenticated before the revocation, would otherwise
	// carry its mail on. Its transactions fail at MAIL until it is held.
	endSessionsB := srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Address: "b@example.com", Drop: true})
	waitAccount(t, waitCtx, store, "acct-b", ledger.AccountHeld, &logs)
	endSessionsB()
	// Re-authorize: a new consent, stored where every worker reads it.
	if _, err := store.SetRefreshToken(ctx, "acct-b", srv.NewRefreshToken("client", "b@example.com")); err != nil {
		t.Fatal(err)
	}

	// Halfway: kill worker 2 while sessions are in flight. The provider is
	// frozen first, so the kill never lands between a 250 and its receipt
	// (the documented window); parked messages are discarded, as a server
	// drops a transaction whose client vanished before the final reply.
	if _, err := srv.WaitMessages(waitCtx, messages/2); err != nil {
		t.Fatalf("halfway: %v\n%s", err, logs.String())
	}
	srv.Freeze()
	waitReceipts(t, waitCtx, store, srv)
	killedAt := time.Now()
	w2.kill(t)
	srv.Thaw(true)
	orphans := recoverOrphans(t, waitCtx, rdb, queue, killedAt)
	startProcess(t, pc, &logs) // the supervisor's replacement; its recoverer runs at start

	info := waitDrained(t, waitCtx, queue, messages, &logs)

	// Exactly one copy per deliverable recipient, none for refused ones.
	copies := map[string]int{}
	for _, m := range srv.Messages() {
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		id := msg.Header.Get("Message-Id")
		for _, r := range m.To {
			copies[id+" "+r]++
		}
	}
	delivered, wantDead := 0, 0
	for i, p := range plans {
		all := true
		for _, r := range p.rcpts {
			got := copies[messageIDs[i]+" "+r]
			want := 1
			if p.rejected[r] {
				want = 0
			} else {
				all = false
			}
			if got != want {
				t.Errorf("message %d to %s: %d copies, want %d", i, r, got, want)
			}
			delivered += got
		}
		if all {
			wantDead++
		}
	}
	if info.Archived != wantDead {
		t.Errorf("%d tasks archived, want %d (the messages whose every recipient was refused)", info.Archived, wantDead)
	}

	// Every refused recipient has a dead letter with its reason.
	letters, total, err := store.DeadLetters(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	inLetter := map[string]bool{}
	for _, dl := range letters {
		if !strings.Contains(dl.Reason, "550 5.1.1") {
			t.Errorf("dead letter %s: reason %q does not say why", dl.ID, dl.Reason)
		}
		for _, r := range dl.Recipients {
			inLetter[r] = true
		}
	}
	for _, p := range plans {
		for r := range p.rejected {
			if !inLetter[r] {
				t.Errorf("refused recipient %s has no dead letter", r)
			}
		}
	}
	st := srv.Stats()
	t.Logf("done in %s: %d copies delivered, %d refused recipients in %d dead letters, %d tasks archived, %d completed; "+
		"%d logins (%d failed), %d token grants (%d token errors); %d orphaned tasks recovered after the SIGKILL",
		time.Since(start).Round(time.Millisecond), delivered, permanent, total, info.Archived, info.Completed,
		st.Logins, st.FailedLogins, st.TokenGrantsTotal, st.TokenErrors, orphans)
}

// lockedBuffer collects the worker processes' logs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	if os.Getenv("SENDQ_TEST_PROCESS_LOG") != "" {
		return s
	}
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}

// poll calls cond every 20 ms until it holds or ctx ends. It is for state
// kept in Redis by other processes, which offers no signal to wait on.
func poll(ctx context.Context, cond func() bool) bool {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}

func waitAccount(t *testing.T, ctx context.Context, store *ledger.Store, id string, want ledger.AccountState, logs *lockedBuffer) {
	t.Helper()
	var st ledger.AccountStatus
	if !poll(ctx, func() bool { st, _ = store.Account(context.Background(), id); return st.State == want }) {
		t.Fatalf("account %s is %s (%s), want %s\n%s", id, st.State, st.Reason, want, logs.String())
	}
}

// waitReceipts waits until every message the provider stored has its
// receipt in the ledger: no worker is then between a 250 and its receipt.
func waitReceipts(t *testing.T, ctx context.Context, store *ledger.Store, srv *smtpoauthtest.Server) {
	t.Helper()
	var missing string
	ok := poll(ctx, func() bool {
		for _, m := range srv.Messages() {
			msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
			if err != nil {
				missing = err.Error()
				return false
			}
			id := msg.Header.Get("Message-Id")
			d, err := store.Delivery(context.Background(), id)
			if err != nil {
				missing = fmt.Sprintf("%s: %v", id, err)
				return false
			}
			for _, r := range m.To {
				if st, done := d.Status(r); !done || st.State != ledger.RecipientAccepted {
					missing = fmt.Sprintf("%s to %s stored at %s", id, r, m.ReceivedAt.Format(time.StampMilli))
					return false
				}
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("stored messages without a recorded delivery, such as %s", missing)
	}
}

// recoverOrphans fast-forwards asynq's lease clock for the tasks a killed
// worker held. asynq recovers a dead worker's tasks only after their 30 s
// lease plus a 30 s allowance for clock skew, looking once a minute; waiting
// for that would make this test take two minutes. The live worker's
// heartbeat extends its own leases every 5 s, so after one heartbeat the
// leases not extended since the kill are the dead worker's; they are moved
// into the past, and a new worker's recoverer, which runs at start, takes
// them back. It returns how many there were.
func recoverOrphans(t *testing.T, ctx context.Context, rdb *redis.Client, queue string, killedAt time.Time) int {
	t.Helper()
	select {
	case <-time.After(5500 * time.Millisecond): // one heartbeat of the live worker: a period, not a condition
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	key := "asynq:{" + queue + "}:lease"
	stale, err := rdb.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(killedAt.Add(30 * time.Second).Unix())}).Result()
	if err != nil {
		t.Fatal(err)
	}
	past := float64(time.Now().Add(-2 * time.Minute).Unix())
	for _, id := range stale {
		rdb.ZAddXX(ctx, key, redis.Z{Score: past, Member: id})
	}
	return len(stale)
}

func waitDrained(t *testing.T, ctx context.Context, queue string, n int, logs *lockedBuffer) *asynq.QueueInfo {
	t.Helper()
	insp := asynq.NewInspector(redistest.ConnOpt(redisDB))
	defer insp.Close()
	var info *asynq.QueueInfo
	ok := poll(ctx, func() bool {
		var err error
		info, err = insp.GetQueueInfo(queue)
		return err == nil && info.Pending+info.Active+info.Scheduled+info.Retry == 0 && info.Completed+info.Archived == n
	})
	if !ok {
		t.Fatalf("queue not drained: %+v\n%s", info, logs.String())
	}
	return info
}
