package ledger

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()

	// Five letters, one a minute; the recipient-level ones get generated ids.
	var added []*DeadLetter
	for i := range 5 {
		d := &DeadLetter{
			Kind:       DeadLetterMessage,
			TaskID:     fmt.Sprintf("task-%d", i),
			Queue:      "default",
			MessageID:  fmt.Sprintf("<%d@example.com>", i),
			Account:    "alice",
			Recipients: []string{"bob@example.com", "carol@example.com"},
			Reason:     "message rejected: 552 5.3.4 message too big",
			Class:      "permanent-message",
			Payload:    []byte(fmt.Sprintf(`{"version":1,"n":%d}`, i)),
		}
		if i%2 == 1 {
			d.Kind = DeadLetterRecipients
			d.Recipients = []string{"carol@example.com"}
			d.Reason = "recipient rejected: 550 5.1.1 user unknown"
			d.Class = "permanent-recipient"
		}
		if err := tb.store.AddDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
		if !d.At.Equal(tb.clock.Now()) {
			t.Errorf("At = %v, want the store's clock %v", d.At, tb.clock.Now())
		}
		switch {
		case d.Kind == DeadLetterMessage && d.ID != d.TaskID:
			t.Errorf("message letter got id %q, want its task id %q", d.ID, d.TaskID)
		case d.Kind == DeadLetterRecipients && (d.ID == "" || d.ID == d.TaskID):
			t.Errorf("recipients letter got id %q, want a generated one", d.ID)
		}
		added = append(added, d)
		tb.clock.Advance(time.Minute)
	}

	t.Run("NewestFirstInPages", func(t *testing.T) {
		var ids []string
		for offset := 0; offset < 6; offset += 2 {
			page, total, err := tb.store.DeadLetters(ctx, offset, 2)
			if err != nil {
				t.Fatal(err)
			}
			if total != 5 {
				t.Errorf("total = %d, want 5", total)
			}
			for _, d := range page {
				if d.Payload != nil {
					t.Errorf("listing returned the payload of %s", d.ID)
				}
				ids = append(ids, d.ID)
			}
		}
		var want []string
		for i := len(added) - 1; i >= 0; i-- {
			want = append(want, added[i].ID)
		}
		if !reflect.DeepEqual(ids, want) {
			t.Errorf("pages list %v, want %v", ids, want)
		}
		if page, _, _ := tb.store.DeadLetters(ctx, 10, 2); len(page) != 0 {
			t.Errorf("page past the end = %v", page)
		}
		if page, _, _ := tb.store.DeadLetters(ctx, 0, 0); len(page) != 5 {
			t.Errorf("limit 0 returned %d letters, want all 5 (the default page)", len(page))
		}
	})

	t.Run("KeepsEverythingAndThePayload", func(t *testing.T) {
		for _, want := range added {
			got, err := tb.store.DeadLetter(ctx, want.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !got.At.Equal(want.At) {
				t.Errorf("At = %v, want %v", got.At, want.At)
			}
			got.At = want.At
			if !reflect.DeepEqual(got, want) {
				t.Errorf("DeadLetter(%s) = %+v, want %+v", want.ID, got, want)
			}
		}
	})

	t.Run("Remove", func(t *testing.T) {
		id := added[2].ID
		if err := tb.store.RemoveDeadLetter(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.store.DeadLetter(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeadLetter() after removal: %v, want ErrNotFound", err)
		}
		if err := tb.store.RemoveDeadLetter(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("second removal: %v, want ErrNotFound", err)
		}
		page, total, err := tb.store.DeadLetters(ctx, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if total != 4 || len(page) != 4 {
			t.Errorf("after removal: %d letters of %d, want 4", len(page), total)
		}
		for _, d := range page {
			if d.ID == id {
				t.Errorf("removed letter %s still listed", id)
			}
		}
	})
}

func TestAddDeadLetterReplacesSameID(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	ctx := context.Background()
	d := &DeadLetter{ID: "task-1", Kind: DeadLetterMessage, Reason: "first", Payload: []byte("p1")}
	if err := tb.store.AddDeadLetter(ctx, d); err != nil {
		t.Fatal(err)
	}
	tb.clock.Advance(time.Hour)
	if err := tb.store.AddDeadLetter(ctx, &DeadLetter{ID: "task-1", Kind: DeadLetterMessage, Reason: "second"}); err != nil {
		t.Fatal(err)
	}
	got, err := tb.store.DeadLetter(ctx, "task-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Reason != "second" || got.Payload != nil || !got.At.Equal(tb.clock.Now()) {
		t.Errorf("DeadLetter() = %+v, want the second letter only", got)
	}
	if _, total, _ := tb.store.DeadLetters(ctx, 0, 10); total != 1 {
		t.Errorf("total = %d, want 1", total)
	}
}

func TestAddDeadLetterRejectsUnknownKind(t *testing.T) {
	t.Parallel()
	tb := setup(t, Options{})
	if err := tb.store.AddDeadLetter(context.Background(), &DeadLetter{Kind: "bounce"}); err == nil {
		t.Error("AddDeadLetter with an unknown kind succeeded")
	}
	if err := tb.store.AddDeadLetter(context.Background(), nil); err == nil {
		t.Error("AddDeadLetter(nil) succeeded")
	}
}
