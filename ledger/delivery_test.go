package ledger

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestDeliveryOfUnknownMessageIsEmpty(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	d, err := tb.store.Delivery(context.Background(), "<unknown@example.com>")
	if err != nil {
		t.Fatal(err)
	}
	if d == nil || d.Recipients == nil || len(d.Recipients) != 0 || d.Receipt != nil || d.PossibleDuplicate {
		t.Fatalf("Delivery() = %+v, want an empty delivery", d)
	}
	if d.MessageID != "<unknown@example.com>" {
		t.Errorf("MessageID = %q", d.MessageID)
	}
	if got := d.Pending([]string{"a@example.com"}); !slices.Equal(got, []string{"a@example.com"}) {
		t.Errorf("Pending() = %v", got)
	}
	if ks := tb.keys(t); len(ks) != 0 {
		t.Errorf("reading created keys %v", ks)
	}
}

func TestReceiptRoundTrip(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	want := &Receipt{
		MessageID: "<1@example.com>",
		TaskID:    "task-1",
		Accepted:  []string{"alice@example.com", "Bob@Example.com"},
		Rejected:  []Rejection{{Address: "carol@example.com", Reply: "550 5.1.1 user unknown"}},
		Reply:     "250 2.0.0 OK 1700000000 queued",
		At:        tb.clock.Now().Add(-time.Second),
	}
	if err := tb.store.WriteReceipt(ctx, want); err != nil {
		t.Fatal(err)
	}
	d, err := tb.store.Delivery(ctx, want.MessageID)
	if err != nil {
		t.Fatal(err)
	}
	got := d.Receipt
	if got == nil {
		t.Fatal("no receipt")
	}
	if !got.At.Equal(want.At) {
		t.Errorf("At = %v, want %v", got.At, want.At)
	}
	got.At = want.At
	if !reflect.DeepEqual(got, want) {
		t.Errorf("receipt = %+v, want %+v", got, want)
	}
	bob, ok := d.Status("BOB@example.com")
	if !ok || bob.State != RecipientAccepted || bob.Address != "Bob@Example.com" || bob.Reply != want.Reply || bob.TaskID != "task-1" || !bob.At.Equal(want.At) {
		t.Errorf("status of bob = %+v, %v", bob, ok)
	}
	if _, ok := d.Recipients["bob@example.com"]; !ok {
		t.Errorf("Recipients is not keyed by lower-cased address: %v", d.Recipients)
	}
	if carol := d.Recipients["carol@example.com"]; carol.State != RecipientRejected || carol.Reply != "550 5.1.1 user unknown" {
		t.Errorf("status of carol = %+v", carol)
	}
}

func TestWriteReceiptDefaultsAtToNow(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<m@x>", Accepted: []string{"a@x"}}); err != nil {
		t.Fatal(err)
	}
	d, err := tb.store.Delivery(ctx, "<m@x>")
	if err != nil {
		t.Fatal(err)
	}
	if !d.Receipt.At.Equal(tb.clock.Now()) {
		t.Errorf("At = %v, want %v", d.Receipt.At, tb.clock.Now())
	}
}

func TestRecordRecipientsThenRetrySkipsThem(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	const msg = "<2@example.com>"
	rcpts := []string{"Alice@example.com", "bob@example.com", "carol@example.com"}

	// Attempt 1: alice accepted, carol refused for good, bob deferred (4xx).
	err := tb.store.RecordRecipients(ctx, msg, "task-2", []string{"alice@example.com"}, "250 2.0.0 OK",
		[]Rejection{{Address: "carol@example.com", Reply: "550 5.1.1 user unknown"}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := tb.store.Delivery(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if d.Receipt != nil {
		t.Fatalf("receipt after a partial delivery: %+v", d.Receipt)
	}
	if got := d.Pending(rcpts); !slices.Equal(got, []string{"bob@example.com"}) {
		t.Fatalf("Pending() = %v, want only bob", got)
	}

	// Attempt 2 sends to bob only and completes the message.
	tb.clock.Advance(5 * time.Minute)
	err = tb.store.WriteReceipt(ctx, &Receipt{MessageID: msg, TaskID: "task-2", Accepted: d.Pending(rcpts), Reply: "250 2.0.0 OK again"})
	if err != nil {
		t.Fatal(err)
	}
	d, err = tb.store.Delivery(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if d.Receipt == nil {
		t.Fatal("no receipt")
	}
	if want := []string{"alice@example.com", "bob@example.com"}; !slices.Equal(d.Receipt.Accepted, want) {
		t.Errorf("receipt lists accepted %v, want %v", d.Receipt.Accepted, want)
	}
	if want := []Rejection{{"carol@example.com", "550 5.1.1 user unknown"}}; !slices.Equal(d.Receipt.Rejected, want) {
		t.Errorf("receipt lists rejected %v, want %v", d.Receipt.Rejected, want)
	}
	if len(d.Pending(rcpts)) != 0 {
		t.Errorf("Pending() = %v after the receipt", d.Pending(rcpts))
	}
	if alice := d.Recipients["alice@example.com"]; alice.Reply != "250 2.0.0 OK" || !alice.At.Equal(tb.clock.Now().Add(-5*time.Minute)) {
		t.Errorf("the second attempt changed alice's status: %+v", alice)
	}
}

func TestRejectionNeverOverwritesAcceptance(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if err := tb.store.RecordRecipients(ctx, "<m@x>", "t", []string{"a@x"}, "250 ok", nil); err != nil {
		t.Fatal(err)
	}
	if err := tb.store.RecordRecipients(ctx, "<m@x>", "t", nil, "", []Rejection{{"A@X", "550 no"}}); err != nil {
		t.Fatal(err)
	}
	d, err := tb.store.Delivery(ctx, "<m@x>")
	if err != nil {
		t.Fatal(err)
	}
	if st := d.Recipients["a@x"]; st.State != RecipientAccepted {
		t.Errorf("status = %+v, want accepted", st)
	}
}

func TestForgetRejections(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ResendsOnlyToPreviouslyRejected", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		rcpts := []string{"alice@x", "bob@x", "carol@x"}
		err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<m@x>", TaskID: "t", Accepted: []string{"alice@x", "carol@x"},
			Rejected: []Rejection{{"Bob@x", "550 5.1.1 user unknown"}}, Reply: "250 ok"})
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.store.ForgetRejections(ctx, "<m@x>"); err != nil {
			t.Fatal(err)
		}
		d, err := tb.store.Delivery(ctx, "<m@x>")
		if err != nil {
			t.Fatal(err)
		}
		if d.Receipt != nil {
			t.Errorf("receipt kept: a requeue would not send to bob")
		}
		if got := d.Pending(rcpts); !slices.Equal(got, []string{"bob@x"}) {
			t.Errorf("Pending() = %v, want only the rejected bob", got)
		}
		ttl, err := tb.rdb.PTTL(ctx, tb.store.deliveryKey("<m@x>")).Result()
		if err != nil || ttl <= 0 {
			t.Errorf("PTTL = %v, %v: the state must keep expiring", ttl, err)
		}
	})

	t.Run("KeepsReceiptWithoutRejections", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<m@x>", TaskID: "t", Accepted: []string{"alice@x"}, Reply: "250 ok"})
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.store.ForgetRejections(ctx, "<m@x>"); err != nil {
			t.Fatal(err)
		}
		d, err := tb.store.Delivery(ctx, "<m@x>")
		if err != nil {
			t.Fatal(err)
		}
		if d.Receipt == nil {
			t.Error("receipt deleted: a requeue would send the message to alice again")
		}
	})

	t.Run("ForgetsRejectionsOfIncompleteMessage", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, Options{})
		err := tb.store.RecordRecipients(ctx, "<m@x>", "t", []string{"alice@x"}, "250 ok", []Rejection{{"bob@x", "550"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.store.ForgetRejections(ctx, "<m@x>"); err != nil {
			t.Fatal(err)
		}
		d, err := tb.store.Delivery(ctx, "<m@x>")
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Pending([]string{"alice@x", "bob@x"}); !slices.Equal(got, []string{"bob@x"}) {
			t.Errorf("Pending() = %v", got)
		}
	})

	t.Run("RecordsTheRequeueTimeEvenForAnUnknownMessage", func(t *testing.T) {
		t.Parallel()
		now := time.UnixMilli(1_800_000_000_000)
		tb := setup(t, Options{NowFunc: func() time.Time { return now }})
		if err := tb.store.ForgetRejections(ctx, "<none@x>"); err != nil {
			t.Fatal(err)
		}
		d, err := tb.store.Delivery(ctx, "<none@x>")
		if err != nil {
			t.Fatal(err)
		}
		if !d.RequeuedAt.Equal(now) || len(d.Recipients) != 0 || d.Receipt != nil {
			t.Errorf("delivery after requeue: %+v, want only RequeuedAt %v", d, now)
		}
	})
}

func TestPossibleDuplicate(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if err := tb.store.MarkPossibleDuplicate(ctx, "<dup@x>", "task-9"); err != nil {
		t.Fatal(err)
	}
	d, err := tb.store.Delivery(ctx, "<dup@x>")
	if err != nil {
		t.Fatal(err)
	}
	if !d.PossibleDuplicate || d.Receipt != nil {
		t.Fatalf("Delivery() = %+v, want a possible duplicate without receipt", d)
	}
	// The retry succeeds; its receipt carries the flag even if the caller
	// did not set it.
	if err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<dup@x>", TaskID: "task-9", Accepted: []string{"a@x"}, Reply: "250 ok"}); err != nil {
		t.Fatal(err)
	}
	d, err = tb.store.Delivery(ctx, "<dup@x>")
	if err != nil {
		t.Fatal(err)
	}
	if !d.PossibleDuplicate || d.Receipt == nil || !d.Receipt.PossibleDuplicate {
		t.Errorf("Delivery() = %+v, receipt %+v: want the flag on both", d, d.Receipt)
	}

	// Another message is not flagged.
	if err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<clean@x>", Accepted: []string{"a@x"}}); err != nil {
		t.Fatal(err)
	}
	d, err = tb.store.Delivery(ctx, "<clean@x>")
	if err != nil {
		t.Fatal(err)
	}
	if d.PossibleDuplicate || d.Receipt.PossibleDuplicate {
		t.Errorf("unmarked message flagged: %+v", d)
	}
}

func TestDeliveryStateExpires(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{DeliveryTTL: time.Hour})
	ctx := context.Background()
	writes := map[string]func(msg string) error{
		"RecordRecipients": func(msg string) error {
			return tb.store.RecordRecipients(ctx, msg, "t", []string{"a@x"}, "250", nil)
		},
		"WriteReceipt":          func(msg string) error { return tb.store.WriteReceipt(ctx, &Receipt{MessageID: msg}) },
		"MarkPossibleDuplicate": func(msg string) error { return tb.store.MarkPossibleDuplicate(ctx, msg, "t") },
	}
	for name, write := range writes {
		msg := "<" + name + "@x>"
		if err := write(msg); err != nil {
			t.Fatal(err)
		}
		ttl, err := tb.rdb.PTTL(ctx, tb.store.deliveryKey(msg)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > time.Hour {
			t.Errorf("%s: PTTL = %v, want at most DeliveryTTL (1h)", name, ttl)
		}
	}
}

func TestDeliveryRejectsEmptyInput(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if _, err := tb.store.Delivery(ctx, ""); err == nil {
		t.Error("Delivery(\"\") succeeded")
	}
	if err := tb.store.WriteReceipt(ctx, nil); err == nil {
		t.Error("WriteReceipt(nil) succeeded")
	}
	if err := tb.store.RecordRecipients(ctx, "<m@x>", "t", []string{""}, "250", nil); err == nil {
		t.Error("RecordRecipients with an empty address succeeded")
	}
	if ks := tb.keys(t); len(ks) != 0 {
		t.Errorf("failed calls created keys %v", ks)
	}
}

func TestDeliveryAndAccountReadBothAtOnce(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<m@x>", TaskID: "t1", Accepted: []string{"a@example.net"}, Reply: "250 ok"}); err != nil {
		t.Fatal(err)
	}
	if err := tb.store.Hold(ctx, "acct", HoldReauthorize, "invalid_grant persisted"); err != nil {
		t.Fatal(err)
	}
	d, st, err := tb.store.DeliveryAndAccount(ctx, "<m@x>", "acct")
	if err != nil {
		t.Fatal(err)
	}
	wantD, _ := tb.store.Delivery(ctx, "<m@x>")
	wantSt, _ := tb.store.Account(ctx, "acct")
	if d.Receipt == nil || d.Receipt.Reply != wantD.Receipt.Reply || len(d.Recipients) != len(wantD.Recipients) {
		t.Errorf("delivery %+v, want %+v", d, wantD)
	}
	if st != wantSt || st.State != AccountHeld {
		t.Errorf("account %+v, want %+v", st, wantSt)
	}
	if _, _, err := tb.store.DeliveryAndAccount(ctx, "", "acct"); err == nil {
		t.Error("an empty Message-ID was accepted")
	}
}

func TestStartAttemptShowsTheNextReaderWhoAttempted(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	if err := tb.store.Hold(ctx, "acct", HoldReauthorize, "invalid_grant persisted"); err != nil {
		t.Fatal(err)
	}
	d, st, err := tb.store.StartAttempt(ctx, "<m@x>", "acct", Attempt{Queue: "email", TaskID: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.LastAttempt != nil || d.Receipt != nil || st.State != AccountHeld {
		t.Errorf("first attempt read %+v, account %+v; want no attempt before it, the account held", d, st)
	}
	d, _, err = tb.store.StartAttempt(ctx, "<m@x>", "acct", Attempt{Queue: "email", TaskID: "t2"})
	if err != nil {
		t.Fatal(err)
	}
	want := &Attempt{Queue: "email", TaskID: "t1", At: tb.clock.Now()}
	if d.LastAttempt == nil || d.LastAttempt.Queue != want.Queue || d.LastAttempt.TaskID != want.TaskID || !d.LastAttempt.At.Equal(want.At) {
		t.Errorf("second attempt read LastAttempt %+v, want %+v", d.LastAttempt, want)
	}
	if got, _ := tb.store.Delivery(ctx, "<m@x>"); got.LastAttempt == nil || got.LastAttempt.TaskID != "t2" {
		t.Errorf("Delivery().LastAttempt = %+v, want task t2", got.LastAttempt)
	}
	ttl, err := tb.rdb.PTTL(ctx, tb.store.deliveryKey("<m@x>")).Result()
	if err != nil || ttl <= 0 || ttl > DefaultDeliveryTTL {
		t.Errorf("delivery key TTL %v (%v), want up to %v", ttl, err, DefaultDeliveryTTL)
	}
	for _, bad := range []struct{ msg, acct, task string }{{"", "acct", "t"}, {"<m@x>", "", "t"}, {"<m@x>", "acct", ""}} {
		if _, _, err := tb.store.StartAttempt(ctx, bad.msg, bad.acct, Attempt{TaskID: bad.task}); err == nil {
			t.Errorf("StartAttempt(%q, %q, task %q) accepted", bad.msg, bad.acct, bad.task)
		}
	}
}

// TestForgetRejectionsForgetsTheAttemptThatCompleted: after a requeue for
// fixed recipients, the task that completed the message must not count as
// having delivered to them.
func TestForgetRejectionsForgetsTheAttemptThatCompleted(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	for _, msg := range []string{"<rejected@x>", "<clean@x>"} {
		if _, _, err := tb.store.StartAttempt(ctx, msg, "acct", Attempt{Queue: "email", TaskID: "t1"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<rejected@x>", TaskID: "t1", Accepted: []string{"a@x"},
		Rejected: []Rejection{{Address: "b@x", Reply: "550 no such user"}}, Reply: "250 ok"}); err != nil {
		t.Fatal(err)
	}
	if err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<clean@x>", TaskID: "t1", Accepted: []string{"a@x"}, Reply: "250 ok"}); err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"<rejected@x>", "<clean@x>"} {
		if err := tb.store.ForgetRejections(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	if d, _ := tb.store.Delivery(ctx, "<rejected@x>"); d.Receipt != nil || d.LastAttempt != nil {
		t.Errorf("after forgetting a rejection: receipt %+v, last attempt %+v; want neither", d.Receipt, d.LastAttempt)
	}
	if d, _ := tb.store.Delivery(ctx, "<clean@x>"); d.Receipt == nil || d.LastAttempt == nil {
		t.Errorf("with nothing to forget: receipt %+v, last attempt %+v; want both kept", d.Receipt, d.LastAttempt)
	}
}

// TestWriteReceiptSetsOtherHashesOnlyIfTheyExist: the task result goes into
// asynq's task hash while it exists, and does not bring back one asynq
// deleted on completion.
func TestWriteReceiptSetsOtherHashesOnlyIfTheyExist(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	live, gone := tb.prefix+"asynq-task-live", tb.prefix+"asynq-task-gone"
	if err := tb.rdb.HSet(ctx, live, "state", "active").Err(); err != nil {
		t.Fatal(err)
	}
	err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<m@x>", TaskID: "t1", Accepted: []string{"a@x"}, Reply: "250 ok"},
		HashField{Key: live, Field: "result", Value: []byte(`{"ok":1}`)}, HashField{Key: gone, Field: "result", Value: []byte(`{"ok":2}`)})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tb.rdb.HGet(ctx, live, "result").Result(); err != nil || got != `{"ok":1}` {
		t.Errorf("result in the existing hash = %q, %v", got, err)
	}
	if n, err := tb.rdb.Exists(ctx, gone).Result(); err != nil || n != 0 {
		t.Errorf("the missing hash exists after the receipt (%d, %v)", n, err)
	}
	if d, _ := tb.store.Delivery(ctx, "<m@x>"); d.Receipt == nil {
		t.Error("no receipt")
	}
}

// TestWriteReceiptAfterTheServerLostItsScripts: a Redis restart empties the
// script cache; the receipt's result field still gets written.
func TestWriteReceiptAfterTheServerLostItsScripts(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	task := tb.prefix + "asynq-task"
	if err := tb.rdb.HSet(ctx, task, "state", "active").Err(); err != nil {
		t.Fatal(err)
	}
	// The cache is the server's: every client of it (asynq, the other
	// packages' tests) loads its scripts again on NOSCRIPT.
	if err := tb.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	err := tb.store.WriteReceipt(ctx, &Receipt{MessageID: "<m@x>", TaskID: "t1", Accepted: []string{"a@x"}, Reply: "250 ok"},
		HashField{Key: task, Field: "result", Value: []byte(`{"ok":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tb.rdb.HGet(ctx, task, "result").Result(); err != nil || got != `{"ok":1}` {
		t.Errorf("result = %q, %v", got, err)
	}
}
