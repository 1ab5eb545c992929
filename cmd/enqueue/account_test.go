package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/ledger"
)

func TestAccountCommand(t *testing.T) {
	t.Parallel()
	b := setupOps(t)
	ctx := context.Background()
	checkOutput(t, b.mustRun(t, "account", "list"), "every account is ok\n")
	if err := b.store.Hold(ctx, "support", ledger.HoldReauthorize, "token refresh refused: invalid_grant"); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Throttle(ctx, "sales", storeNow.Add(time.Hour), "550 5.4.5 daily sending quota exceeded"); err != nil {
		t.Fatal(err)
	}

	checkOutput(t, b.mustRun(t, "account", "list"), `ACCOUNT  STATE               UNTIL                 SINCE                 REASON
sales    throttled           2026-03-02T10:30:00Z  2026-03-02T09:30:00Z  550 5.4.5 daily sending quota exceeded
support  held (reauthorize)  -                     2026-03-02T09:30:00Z  token refresh refused: invalid_grant
`)
	checkOutput(t, b.mustRun(t, "account", "status", "support"), `account support
  state:          held (reauthorize)
  mail:           held until someone acts, then: enqueue account resume support
  reason:         token refresh refused: invalid_grant
  since:          2026-03-02T09:30:00Z
`)
	// The throttle of 2026 is over by now: the pause has ended.
	checkOutput(t, b.mustRun(t, "account", "status", "sales"), `account sales
  state:          throttled
  mail:           flows again since 2026-03-02T10:30:00Z; the state clears at the next successful send
  reason:         550 5.4.5 daily sending quota exceeded
  since:          2026-03-02T09:30:00Z
`)

	var st accountJSON
	if err := json.Unmarshal([]byte(b.mustRun(t, "account", "status", "-json", "support")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Account != "support" || st.State != "held" || st.Hold != ledger.HoldReauthorize || !st.Until.IsZero() {
		t.Errorf("JSON status %+v", st)
	}

	checkOutput(t, b.mustRun(t, "account", "resume", "support"),
		"account support resumed (was held (reauthorize): token refresh refused: invalid_grant)\n")
	checkOutput(t, b.mustRun(t, "account", "resume", "support"), "account support was ok already\n")
	var list []accountJSON
	if err := json.Unmarshal([]byte(b.mustRun(t, "account", "list", "-json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Account != "sales" {
		t.Errorf("accounts after resume: %+v", list)
	}

	if _, errOut, err := b.run(t, "account", "-h"); !errors.Is(err, flag.ErrHelp) || !strings.Contains(errOut, "usage: enqueue account status") {
		t.Errorf("-h: %v, %q", err, errOut)
	}
	if _, _, err := b.run(t, "account", "delete", "support"); err == nil || !strings.Contains(err.Error(), `unknown subcommand "delete"`) {
		t.Errorf("unknown subcommand: %v", err)
	}
	if _, _, err := b.run(t, "account", "status"); err == nil {
		t.Error("status without an ID: no error")
	}
}
