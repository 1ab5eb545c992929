package worker

import (
	"bytes"
	"context"
	"fmt"
	"net/mail"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// TestRedisRestartLosesNoAcknowledgedEnqueue restarts a Redis server with
// the append-only file on (fsync always) while a producer enqueues and two
// worker processes deliver. Every enqueue Redis acknowledged is delivered
// exactly once, and the workers carry on by themselves.
func TestRedisRestartLosesNoAcknowledgedEnqueue(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a redis-server")
	}
	t.Parallel()
	const messages = 300
	rds := redistest.StartServer(t, "--appendonly", "yes", "--appendfsync", "always")
	srv := smtpoauthtest.NewServer(smtpoauthtest.Config{})
	t.Cleanup(srv.Close)
	accountsFile, env := writeProcessAccounts(t, srv, "a")

	var logs lockedBuffer
	pc := processConfig{AccountsFile: accountsFile, Env: env, Queue: "restart", LedgerPrefix: "sendq:", Concurrency: 8,
		RetryBase: 20 * time.Millisecond, RetryCap: 300 * time.Millisecond, HeldRecheck: 200 * time.Millisecond,
		AuthBackoff: 100 * time.Millisecond, GrantWindow: time.Second, RedisAddr: rds.Addr}
	startProcess(t, pc, &logs)
	startProcess(t, pc, &logs)

	client := tasks.NewClient(asynq.RedisClientOpt{Addr: rds.Addr})
	t.Cleanup(func() { client.Close() })
	acked := map[string]bool{}
	refused := 0
	for i := range messages {
		if i == messages/2 {
			rds.Restart()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		enq, err := client.Enqueue(ctx, &tasks.Email{AccountID: "acct-a", From: "a@example.com",
			To: []string{fmt.Sprintf("r%d@example.net", i)}, Subject: "s", Text: "t"}, tasks.Queue("restart"))
		cancel()
		if err != nil {
			refused++ // not acknowledged: the producer knows it must try again
			continue
		}
		acked[enq.MessageID] = true
	}

	// Wait until every acknowledged message arrived, then check for copies.
	// A task whose completion the restart cut off stays active until its
	// lease (30 s) has expired and asynq's recoverer, which runs once a
	// minute, hands it back: up to a minute and a half.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := srv.WaitMessages(ctx, len(acked)); err != nil {
		t.Fatalf("%d of %d acknowledged messages delivered: %v\n%s", len(srv.Messages()), len(acked), err, logs.String())
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: rds.Addr})
	defer insp.Close()
	if !poll(ctx, func() bool {
		info, err := insp.GetQueueInfo("restart")
		return err == nil && info.Pending+info.Active+info.Retry+info.Scheduled == 0
	}) {
		t.Fatalf("tasks left in the queue\n%s", logs.String())
	}
	copies := map[string]int{}
	for _, m := range srv.Messages() {
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		copies[msg.Header.Get("Message-Id")]++
	}
	for id := range acked {
		if copies[id] != 1 {
			t.Errorf("acknowledged message %s delivered %d times, want 1", id, copies[id])
		}
	}
	t.Logf("%d enqueues acknowledged, %d refused during the restart; %d messages delivered", len(acked), refused, len(srv.Messages()))
}
