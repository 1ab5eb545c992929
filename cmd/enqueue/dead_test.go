package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/ledger"
)

func TestDeadCommand(t *testing.T) {
	t.Parallel()
	b := setupOps(t)
	ctx := context.Background()
	if out := b.mustRun(t, "dead"); out != "no dead letters\n" {
		t.Errorf("empty ledger: %q", out)
	}
	letters := []*ledger.DeadLetter{{
		ID: "task-1", Kind: ledger.DeadLetterMessage, TaskID: "task-1", Queue: b.queue, MessageID: "<1@example.com>",
		Account: "support", Recipients: []string{"alice@example.org", "bob@example.org"},
		Reason: "message rejected: 554 5.6.0 content rejected", Class: "permanent-message",
		At: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC), Payload: []byte(`{"text":"secret body"}`),
	}, {
		ID: "letter-2", Kind: ledger.DeadLetterRecipients, TaskID: "task-2", Queue: b.queue, MessageID: "<2@example.com>",
		Account: "sales", Recipients: []string{"carol@example.org"},
		Reason: "recipient rejected: 550 5.1.1 user unknown", Class: "permanent-recipient",
		At: time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC), Payload: []byte(`{"text":"secret body"}`),
	}}
	for _, d := range letters {
		if err := b.store.AddDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}

	checkOutput(t, b.mustRun(t, "dead"), `ID        WHEN                  KIND        ACCOUNT  RCPTS  REASON
letter-2  2026-03-02T10:00:00Z  recipients  sales    1      recipient rejected: 550 5.1.1 user unknown
task-1    2026-03-02T09:00:00Z  message     support  2      message rejected: 554 5.6.0 content rejected
1-2 of 2 dead letters
`)
	checkOutput(t, b.mustRun(t, "dead", "-limit", "1"), `ID        WHEN                  KIND        ACCOUNT  RCPTS  REASON
letter-2  2026-03-02T10:00:00Z  recipients  sales    1      recipient rejected: 550 5.1.1 user unknown
1-1 of 2 dead letters; next page: -offset 1
`)
	checkOutput(t, b.mustRun(t, "dead", "-offset", "5"), "no dead letters past 5 (there are 2)\n")

	out := b.mustRun(t, "dead", "-json", "-offset", "1")
	var page deadPage
	if err := json.Unmarshal([]byte(out), &page); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if page.Total != 2 || page.Offset != 1 || len(page.DeadLetters) != 1 || page.DeadLetters[0].ID != "task-1" ||
		page.DeadLetters[0].Reason != letters[0].Reason || len(page.DeadLetters[0].Recipients) != 2 {
		t.Errorf("page %+v", page)
	}
	if strings.Contains(out, "payload") || strings.Contains(out, "secret") {
		t.Errorf("the JSON shows the payload: %s", out)
	}

	if _, _, err := b.run(t, "dead", "-limit", "0"); err == nil {
		t.Error("-limit 0: no error")
	}
}
