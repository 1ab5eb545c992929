package worker

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// TestManyWorkersOneMailbox is the acceptance run of sharing an account
// among processes: three worker processes at high concurrency on one Redis
// and one provider that rotates refresh tokens on every refresh (as
// Microsoft does), refuses a third concurrent session per mailbox, and
// issues short-lived access tokens. Along the way one worker is killed with
// SIGKILL while it holds the token lock (its refresh hangs at the
// provider), and another while it holds session slots. It shows:
//
//   - the others wait for a dead lock holder no longer than the lock's
//     time to live, and for a dead slot holder's sessions no longer than
//     their lease;
//   - token grants stay within one per account per token lifetime, and
//     rotation never loses a refresh token (no token error at all);
//   - no mailbox ever has more sessions open than its max_sessions;
//   - an account limited to 20 messages a minute sends exactly 20 in the
//     run, the rest deferred without spending a retry;
//   - pooled connections keep logins per message below 0.05.
func TestManyWorkersOneMailbox(t *testing.T) {
	if testing.Short() {
		t.Skip("the shared-account run takes about half a minute")
	}
	const (
		perAccount    = 5000 // to each of acct-a and acct-b
		limited       = 50   // to acct-r, which may send 20 a minute
		perMinute     = 20
		maxSessions   = 2
		tokenLifetime = 3 * time.Second
		lockTTL       = 8 * time.Second
		sessionLease  = 2 * time.Second
	)
	start := time.Now()
	ctx := context.Background()
	waitCtx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()

	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{
		AccessTokenLifetime: tokenLifetime,
		RotateRefreshTokens: true,
		MaxSessionsPerUser:  maxSessions, // a third session would be refused: 432 4.3.2
	})
	t.Cleanup(srv.Close)
	queue := redistest.Queue(t, redisDB)
	prefix := "test:" + randomHex() + ":"
	store := ledger.New(redistest.Client(t, redisDB), ledger.Options{Prefix: prefix, InsecurePlaintextTokens: true})
	accountsFile, env := writeProcessAccountsWith(t, srv, map[string]string{
		"a": fmt.Sprintf("limits: {max_sessions: %d}", maxSessions),
		"b": fmt.Sprintf("limits: {max_sessions: %d}", maxSessions),
		"r": fmt.Sprintf("limits: {max_sessions: %d, messages_per_minute: %d}", maxSessions, perMinute),
	}, "a", "b", "r")

	var logs lockedBuffer
	pc := processConfig{AccountsFile: accountsFile, Env: env, Queue: queue, LedgerPrefix: prefix, Concurrency: 30,
		RetryBase: 20 * time.Millisecond, RetryCap: 300 * time.Millisecond, HeldRecheck: 200 * time.Millisecond,
		AuthBackoff: 100 * time.Millisecond, GrantWindow: 500 * time.Millisecond,
		SessionLease: sessionLease, TokenLockTTL: lockTTL}
	client := tasks.NewClient(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { client.Close() })
	insp := asynq.NewInspector(redistest.ConnOpt(redisDB))
	t.Cleanup(func() { insp.Close() })
	enqueue := func(account string, i int) string {
		user := account[len("acct-"):]
		res, err := client.Enqueue(ctx, &tasks.Email{AccountID: account, From: user + "@example.com",
			To: []string{fmt.Sprintf("%s-%d@example.net", user, i)}, Subject: fmt.Sprintf("message %d", i), Text: "hello"},
			tasks.Queue(queue))
		if err != nil {
			t.Error(err)
			return ""
		}
		return res.TaskID
	}

	// 1. The token lock holder dies. Worker 1 (of concurrency 1) takes the
	// first message; its token request hangs at the provider while it
	// holds acct-a's lock. Worker 2 starts, takes a second message and
	// waits for the lock; worker 1 is killed. Worker 3 starts too, but is
	// stopped (SIGSTOP) until step 3.
	srv.AddTokenFault(smtpoauthtest.TokenFault{Hang: true, Times: 1})
	pc1 := pc
	pc1.Concurrency = 1
	w1 := startProcess(t, pc1, &logs)
	enqueue("acct-a", -1)
	if err := srv.WaitTokenHangs(waitCtx, 1); err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	w2 := startProcess(t, pc, &logs)
	w3 := startProcess(t, pc, &logs)
	w3.signal(t, syscall.SIGSTOP)
	second := enqueue("acct-a", -2)
	if !poll(waitCtx, func() bool {
		info, err := insp.GetTaskInfo(queue, second)
		return err == nil && info.State == asynq.TaskStateActive
	}) {
		t.Fatalf("the second message was not taken\n%s", logs.String())
	}
	lockKilledAt := time.Now()
	w1.kill(t)
	if _, err := srv.WaitMessages(waitCtx, 1); err != nil {
		t.Fatalf("after the lock holder died: %v\n%s", err, logs.String())
	}
	// The lock's time to live runs from before the kill; then comes one
	// refresh and one send.
	lockStall := time.Since(lockKilledAt)
	if limit := lockTTL + time.Second; lockStall > limit {
		t.Errorf("the lock holder's death stalled acct-a for %s, more than the lock's %s and a send", lockStall, lockTTL)
	}

	// 2. The steady run: acct-a and acct-b at full speed, acct-r over its
	// per-minute limit. The queue is paused while it fills, so that the
	// workers have all of it to do at once; worker 2 takes every session
	// slot.
	if err := insp.PauseQueue(queue); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, account := range []string{"acct-a", "acct-b"} {
		for part := range 4 {
			wg.Go(func() {
				for i := part; i < perAccount; i += 4 {
					enqueue(account, i)
				}
			})
		}
	}
	wg.Go(func() {
		for i := range limited {
			enqueue("acct-r", i)
		}
	})
	wg.Wait()
	steadyStart := time.Now()
	before := srv.Stats()
	if err := insp.UnpauseQueue(queue); err != nil {
		t.Fatal(err)
	}

	// 3. A slot holder dies. Once worker 2 has every session of both
	// accounts open, and much is left to send, worker 3 resumes and worker
	// 2 is killed. Worker 3 takes up the dead worker's slots when their
	// leases run out.
	if _, err := srv.WaitMessages(waitCtx, 400); err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	if !poll(waitCtx, func() bool {
		st := srv.Stats()
		return st.Sessions["a@example.com"] == maxSessions && st.Sessions["b@example.com"] == maxSessions
	}) {
		t.Fatalf("the accounts never had %d sessions open\n%s", maxSessions, logs.String())
	}
	// The provider is frozen for the kill, so that it never lands between
	// a 250 and its receipt (the documented window, which would double a
	// message); the transactions parked on worker 2's connections are
	// dropped, as a server drops those whose client vanished.
	srv.Freeze()
	waitReceipts(t, waitCtx, store, srv)
	w3.signal(t, syscall.SIGCONT)
	slotKilledAt := time.Now()
	w2.kill(t)
	srv.Thaw(true)
	// The provider sees worker 2's connections close...
	if !poll(waitCtx, func() bool { return srv.Stats().Sessions["a@example.com"] == 0 }) {
		t.Fatalf("worker 2's sessions did not close\n%s", logs.String())
	}
	// ...and worker 3 opens its own once the leases have run out.
	if !poll(waitCtx, func() bool {
		st := srv.Stats()
		return st.Sessions["a@example.com"] == maxSessions && st.Sessions["b@example.com"] == maxSessions
	}) {
		t.Fatalf("the survivor never took up the dead worker's sessions\n%s", logs.String())
	}
	slotStall := time.Since(slotKilledAt)
	// Within one lease, and the survivor's next look (at most 0.75 s).
	if limit := sessionLease + time.Second; slotStall > limit {
		t.Errorf("the dead worker's session slots were taken up after %s, more than %s", slotStall, limit)
	}
	remaining := 2*perAccount + 2 - len(srv.Messages())

	// The dead workers' tasks come back (see recoverOrphans) through a
	// replacement worker.
	orphans := recoverOrphans(t, waitCtx, redistest.Client(t, redisDB), queue, slotKilledAt)
	startProcess(t, pc, &logs)

	wantDone := 2*perAccount + 2 + perMinute
	var info *asynq.QueueInfo
	if !poll(waitCtx, func() bool {
		var err error
		info, err = insp.GetQueueInfo(queue)
		return err == nil && info.Completed == wantDone && info.Retry == limited-perMinute &&
			info.Pending+info.Active+info.Scheduled+info.Archived == 0
	}) {
		t.Fatalf("queue: %+v, want %d completed and %d deferred\n%s", info, wantDone, limited-perMinute, logs.String())
	}
	elapsed := time.Since(start)
	steady := time.Since(steadyStart)

	// Exactly one copy of each message.
	copies := map[string]int{}
	for _, m := range srv.Messages() {
		copies[m.To[0]]++
	}
	for _, want := range []struct {
		user     string
		from, to int
	}{{"a", -2, perAccount}, {"b", 0, perAccount}} {
		for i := want.from; i < want.to; i++ {
			if n := copies[fmt.Sprintf("%s-%d@example.net", want.user, i)]; n != 1 {
				t.Errorf("%s-%d received %d copies, want 1", want.user, i, n)
			}
		}
	}

	st := srv.Stats()
	// The per-minute limit: 20 sent, the others deferred without a retry.
	if got := st.MessagesByUser["r@example.com"]; got != perMinute {
		t.Errorf("acct-r sent %d messages within a minute, want its limit %d", got, perMinute)
	}
	deferred, err := insp.ListRetryTasks(queue, asynq.PageSize(100))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deferred {
		if d.Retried != 0 {
			t.Errorf("deferred task %s: Retried = %d, want 0 (waiting for a limit is no failure)", d.ID, d.Retried)
		}
		if wait := time.Until(d.NextProcessAt); wait < 0 || wait > time.Minute+2*time.Second {
			t.Errorf("deferred task %s comes back in %s, want within the minute", d.ID, wait)
		}
	}

	// Sessions never above the limit; the provider would also have
	// refused a third one (every login counts in LoginsByUser only when
	// accepted, and no failed login happened).
	for _, u := range []string{"a@example.com", "b@example.com"} {
		if st.PeakSessions[u] > maxSessions {
			t.Errorf("%s had %d sessions open at once, more than %d", u, st.PeakSessions[u], maxSessions)
		}
	}
	if st.FailedLogins != 0 {
		t.Errorf("%d logins failed, want 0 (a session over the limit is refused at AUTH)", st.FailedLogins)
	}

	// Tokens: no token error (a refresh token lost to rotation would show
	// as invalid_grant), and at most one grant per account per lifetime.
	if st.TokenErrors != 0 {
		t.Errorf("%d token requests failed, want 0\n%s", st.TokenErrors, logs.String())
	}
	lifetimes := int(elapsed/tokenLifetime) + 1
	grants := map[string]int{}
	for _, tok := range srv.IssuedTokens() {
		if tok.Kind == smtpoauthtest.IssuedAccess && tok.Grant == smtpoauthtest.GrantRefreshToken {
			grants[tok.Username]++
		}
	}
	for _, u := range []string{"a@example.com", "b@example.com", "r@example.com"} {
		if grants[u] > lifetimes {
			t.Errorf("%s: %d token grants in %s, more than one per %s token lifetime (%d)", u, grants[u], elapsed, tokenLifetime, lifetimes)
		}
	}

	// Logins per message in the steady run.
	logins := 0
	msgs := 0
	for _, u := range []string{"a@example.com", "b@example.com"} {
		logins += st.LoginsByUser[u] - before.LoginsByUser[u]
		msgs += st.MessagesByUser[u] - before.MessagesByUser[u]
	}
	perMessage := float64(logins) / float64(msgs)
	if perMessage > 0.05 {
		t.Errorf("%d logins for %d messages: %.3f per message, want at most 0.05", logins, msgs, perMessage)
	}

	t.Logf("done in %s (steady run %s): %d messages through 3+1 worker processes, %d left when the slot holder died; "+
		"lock holder's death stalled acct-a %s (lock TTL %s); slot holder's sessions taken up after %s (lease %s); "+
		"peak sessions a=%d b=%d (limit %d); token grants a=%d b=%d r=%d over %d lifetimes of %s, %d token errors; "+
		"%d logins for %d messages = %.4f per message; acct-r sent %d, deferred %d; %d orphaned tasks recovered",
		elapsed.Round(time.Millisecond), steady.Round(time.Millisecond), len(srv.Messages()), remaining,
		lockStall.Round(time.Millisecond), lockTTL, slotStall.Round(time.Millisecond), sessionLease,
		st.PeakSessions["a@example.com"], st.PeakSessions["b@example.com"], maxSessions,
		grants["a@example.com"], grants["b@example.com"], grants["r@example.com"], lifetimes, tokenLifetime, st.TokenErrors,
		logins, msgs, perMessage, st.MessagesByUser["r@example.com"], len(deferred), orphans)
}
