package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/mail"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/ledger"
	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
	"github.com/sendq/sendq/tasks"
)

// The tests of this file prove, one subtest per row of the README's
// classification table ("What happens when something fails"), that the
// worker does what the class says: through a real worker, real Redis and
// the provider's fault injection. smtpoauth's classify tests cover the
// codes themselves.

// fastRetry makes retries and the rechecks of a held account take
// milliseconds instead of minutes.
var fastRetry = tasks.RetryPolicy{
	Base:        10 * time.Millisecond,
	Cap:         100 * time.Millisecond,
	HeldRecheck: 100 * time.Millisecond,
}

// waitTimeout bounds every wait of this file.
const waitTimeout = 10 * time.Second

// failureBundle is a testBundle with the operator's view of it.
type failureBundle struct {
	*testBundle
	admin *tasks.Admin
}

func setupFailures(t *testing.T) *failureBundle {
	t.Helper()
	b := setup(t, setupOptions{retry: fastRetry})
	admin, err := tasks.NewAdmin(redistest.ConnOpt(redisDB), b.ledger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return &failureBundle{testBundle: b, admin: admin}
}

// send enqueues a plain message from the account ("delegated" or "app")
// to the recipients.
func (b *failureBundle) send(t *testing.T, account string, to ...string) *tasks.Enqueued {
	t.Helper()
	from := map[string]string{"delegated": "user@example.com", "app": "app@example.com"}[account]
	enq, err := b.client.Enqueue(context.Background(), &tasks.Email{AccountID: account, From: from,
		To: to, Subject: "failure test", Text: "body"}, tasks.Queue(b.queue))
	if err != nil {
		t.Fatal(err)
	}
	return enq
}

// pollFor calls check until it reports done, failing the test with its last
// detail after waitTimeout. It is for state kept in Redis, which has no
// signal to wait on; messages are waited for with WaitMessages.
func pollFor(t *testing.T, what string, check func() (done bool, detail string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		done, detail := check()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s", what, detail)
		}
		<-tick.C
	}
}

// waitState waits until asynq reports the task in state and returns it; a
// completed task, once its result is in too (the worker writes it with the
// receipt, which may follow the acknowledgement by a moment).
func (b *failureBundle) waitState(t *testing.T, taskID string, state asynq.TaskState) *asynq.TaskInfo {
	t.Helper()
	var info *asynq.TaskInfo
	pollFor(t, fmt.Sprintf("task %s %s", taskID, state), func() (bool, string) {
		var err error
		info, err = b.insp.GetTaskInfo(b.queue, taskID)
		if err != nil {
			return false, err.Error()
		}
		done := info.State == state && (state != asynq.TaskStateCompleted || len(info.Result) > 0)
		return done, fmt.Sprintf("state %s, retried %d, last error %q, result %q", info.State, info.Retried, info.LastErr, info.Result)
	})
	return info
}

// waitDeferred waits until the task waits in asynq's retry set on a
// deferral whose error contains want, and returns it.
func (b *failureBundle) waitDeferred(t *testing.T, taskID, want string) *asynq.TaskInfo {
	t.Helper()
	var info *asynq.TaskInfo
	pollFor(t, fmt.Sprintf("task %s deferred with %q", taskID, want), func() (bool, string) {
		var err error
		info, err = b.insp.GetTaskInfo(b.queue, taskID)
		if err != nil {
			return false, err.Error()
		}
		done := info.State == asynq.TaskStateRetry && strings.HasPrefix(info.LastErr, "deferred until ") && strings.Contains(info.LastErr, want)
		return done, fmt.Sprintf("state %s, retried %d, last error %q", info.State, info.Retried, info.LastErr)
	})
	return info
}

// waitAccount waits until the account's recorded state is state.
func (b *failureBundle) waitAccount(t *testing.T, id string, state ledger.AccountState) ledger.AccountStatus {
	t.Helper()
	var st ledger.AccountStatus
	pollFor(t, fmt.Sprintf("account %s %s", id, state), func() (bool, string) {
		var err error
		st, err = b.admin.AccountStatus(context.Background(), id)
		if err != nil {
			return false, err.Error()
		}
		return st.State == state, fmt.Sprintf("%+v", st)
	})
	return st
}

// deadLetters returns the ledger's dead letters of the task.
func (b *failureBundle) deadLetters(t *testing.T, taskID string) []*ledger.DeadLetter {
	t.Helper()
	all, _, err := b.admin.DeadLetters(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(all, func(d *ledger.DeadLetter) bool { return d.TaskID != taskID })
}

// taskResult decodes a completed task's result.
func taskResult(t *testing.T, info *asynq.TaskInfo) tasks.Result {
	t.Helper()
	var r tasks.Result
	if err := json.Unmarshal(info.Result, &r); err != nil {
		t.Fatalf("task result %q: %v", info.Result, err)
	}
	return r
}

// copiesOf counts the copies each recipient received, by lower-cased address.
func copiesOf(msgs []smtpoauthtest.Message) map[string]int {
	n := make(map[string]int)
	for _, m := range msgs {
		for _, to := range m.To {
			n[strings.ToLower(to)]++
		}
	}
	return n
}

// wantCopies checks that every recipient received exactly one copy and
// nobody else received any.
func wantCopies(t *testing.T, msgs []smtpoauthtest.Message, rcpts ...string) {
	t.Helper()
	want := make(map[string]int)
	for _, r := range rcpts {
		want[r] = 1
	}
	if got := copiesOf(msgs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("copies per recipient %v, want %v", got, want)
	}
}

func messageIDHeader(t *testing.T, data []byte) string {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return m.Header.Get("Message-Id")
}

func TestFailureClasses(t *testing.T) {
	t.Parallel()

	t.Run("Transient", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name     string
			code     int
			enhanced [3]int
			text     string
		}{
			{"RecipientReceivingTooQuicklyIsRetriedAloneUntilDelivered", 450, [3]int{4, 2, 1}, "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time."},
			{"LocalErrorAtRcptIsRetriedAloneUntilDelivered", 451, [3]int{4, 3, 0}, "Mail server temporarily rejected message."},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				b := setupFailures(t)
				b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: "bob@example.net",
					Code: tc.code, Enhanced: tc.enhanced, Text: tc.text, Times: 2})
				enq := b.send(t, "delegated", "alice@example.net", "bob@example.net", "carol@example.net")

				info := waitCompleted(t, b.testBundle, enq.TaskID)
				if info.Retried == 0 {
					t.Error("task completed with Retried 0, want the deferred recipient retried")
				}
				// The first attempt delivered to alice and carol; the second
				// failed at RCPT for bob alone; the third delivered to bob.
				wantCopies(t, b.srv.Messages(), "alice@example.net", "bob@example.net", "carol@example.net")
				r := taskResult(t, info)
				if want := []string{"alice@example.net", "bob@example.net", "carol@example.net"}; !slices.Equal(r.Accepted, want) {
					t.Errorf("result accepted %v, want %v", r.Accepted, want)
				}
				if len(r.Rejected) != 0 || r.PossibleDuplicate {
					t.Errorf("result rejected %v, possible duplicate %v; want none, false", r.Rejected, r.PossibleDuplicate)
				}
				if st, _ := b.admin.AccountStatus(context.Background(), "delegated"); st.State != ledger.AccountOK {
					t.Errorf("account %+v, want ok: a recipient's 4xx says nothing about the account", st)
				}
			})
		}

		t.Run("TokenEndpointOutageIsRetried", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			// Times 2: x/oauth2 probes the client authentication style on
			// the first fetch and sends a failed request again in the other
			// style, so one failed fetch takes two requests.
			b.srv.AddTokenFault(smtpoauthtest.TokenFault{Status: 503, ClientID: "delegated-client", Times: 2})
			enq := b.send(t, "delegated", "alice@example.net")

			info := waitCompleted(t, b.testBundle, enq.TaskID)
			if info.Retried == 0 {
				t.Error("task completed with Retried 0, want a retry after the token endpoint's 503")
			}
			wantCopies(t, b.srv.Messages(), "alice@example.net")
			if st := b.srv.Stats(); st.TokenErrors != 2 || st.TokenGrantsTotal != 1 {
				t.Errorf("token errors %d, grants %d; want 2, 1", st.TokenErrors, st.TokenGrantsTotal)
			}
			if st, _ := b.admin.AccountStatus(context.Background(), "delegated"); st.State != ledger.AccountOK {
				t.Errorf("account %+v, want ok", st)
			}
		})
	})

	t.Run("Throttle", func(t *testing.T) {
		t.Parallel()

		t.Run("DailyQuotaPausesTheAccountWithoutSpendingARetry", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			ctx := context.Background()
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Code: 550, Enhanced: [3]int{5, 4, 5},
				Text: "Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852", Times: 1})
			before := time.Now()
			enq := b.send(t, "delegated", "alice@example.net")

			info := b.waitDeferred(t, enq.TaskID, "5.4.5")
			after := time.Now()
			if info.Retried != 0 {
				t.Errorf("deferred task has Retried %d, want 0: a throttle must not spend a retry", info.Retried)
			}
			if lo, hi := before.Add(time.Hour-time.Second), after.Add(time.Hour+time.Second); info.NextProcessAt.Before(lo) || info.NextProcessAt.After(hi) {
				t.Errorf("next attempt at %v, want about an hour from now", info.NextProcessAt)
			}
			st, err := b.admin.AccountStatus(ctx, "delegated")
			if err != nil {
				t.Fatal(err)
			}
			if st.State != ledger.AccountThrottled || !strings.Contains(st.Reason, "550 5.4.5") {
				t.Errorf("account %+v, want throttled with the 550 5.4.5 reply as reason", st)
			}
			if lo, hi := before.Add(time.Hour-time.Second), after.Add(time.Hour+time.Second); st.Until.Before(lo) || st.Until.After(hi) {
				t.Errorf("account throttled until %v, want about an hour from now (%v)", st.Until, before.Add(time.Hour))
			}
			if s, err := b.admin.Status(ctx, b.queue, enq.TaskID); err != nil || !s.Deferred || s.State != tasks.StateRetrying {
				t.Errorf("status %+v (%v), want retrying and deferred", s, err)
			}
			if n := len(b.srv.Messages()); n != 0 {
				t.Errorf("%d messages delivered while throttled, want 0", n)
			}

			if err := b.admin.ResumeAccount(ctx, "delegated"); err != nil {
				t.Fatal(err)
			}
			if err := b.insp.RunTask(b.queue, enq.TaskID); err != nil {
				t.Fatal(err)
			}
			info = waitCompleted(t, b.testBundle, enq.TaskID)
			wantCopies(t, b.srv.Messages(), "alice@example.net")
			if info.Retried != 0 {
				t.Errorf("completed task has Retried %d, want 0", info.Retried)
			}
		})
	})

	t.Run("Auth", func(t *testing.T) {
		t.Parallel()

		t.Run("StaleAccessTokenIsRefreshedOnceAndDelivered", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			first := b.send(t, "delegated", "alice@example.net")
			waitCompleted(t, b.testBundle, first.TaskID)
			// The worker's cached token is now past its lifetime for the
			// provider, not yet for the worker's clock.
			b.srv.Advance(2 * time.Hour)
			// The pooled connection, authenticated before, would carry the
			// second message without a login: the provider closes it as
			// idle, so that the sender redials (transparently) and logs in
			// again.
			if _, err := b.srv.TimeOutIdleConnections(t.Context()); err != nil {
				t.Fatal(err)
			}
			second := b.send(t, "delegated", "bob@example.net")

			info := waitCompleted(t, b.testBundle, second.TaskID)
			wantCopies(t, b.srv.Messages(), "alice@example.net", "bob@example.net")
			if st := b.srv.Stats(); st.TokenGrantsTotal != 2 || st.FailedLogins != 1 {
				t.Errorf("token grants %d, failed logins %d; want 2, 1 (one rejection, one refresh)", st.TokenGrantsTotal, st.FailedLogins)
			}
			if info.Retried != 0 {
				t.Errorf("Retried %d, want 0: the sender refreshes and retries at once", info.Retried)
			}
			if st, _ := b.admin.AccountStatus(context.Background(), "delegated"); st.State != ledger.AccountOK {
				t.Errorf("account %+v, want ok", st)
			}
		})

		t.Run("RevokedRefreshTokenDefersTheAccountWithoutSpendingARetry", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			b.srv.Revoke(b.refreshToken)
			enq := b.send(t, "delegated", "alice@example.net")

			info := b.waitDeferred(t, enq.TaskID, "invalid_grant")
			if info.Retried != 0 {
				t.Errorf("deferred task has Retried %d, want 0", info.Retried)
			}
			st, err := b.admin.AccountStatus(context.Background(), "delegated")
			if err != nil {
				t.Fatal(err)
			}
			// One invalid_grant never holds the account (it can be
			// transient); it soft-bounces like a rejected token.
			if st.State != ledger.AccountAuthFailing || st.InvalidGrants != 1 || !strings.Contains(st.Reason, "invalid_grant") {
				t.Errorf("account %+v, want auth-failing after one invalid_grant", st)
			}
			if n := len(b.srv.Messages()); n != 0 {
				t.Errorf("%d messages delivered, want 0", n)
			}
		})

		t.Run("ReauthorizationReleasesTheAccount", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			ctx := context.Background()
			b.srv.Revoke(b.refreshToken)
			enq := b.send(t, "delegated", "alice@example.net")
			b.waitDeferred(t, enq.TaskID, "invalid_grant")

			// The operator runs the authorization flow again and stores
			// the new refresh token where every worker reads it.
			fresh := b.srv.NewRefreshToken("delegated-client", "user@example.com")
			store := ledger.New(redistest.Client(t, redisDB), b.ledger)
			if _, err := store.SetRefreshToken(ctx, "delegated", fresh); err != nil {
				t.Fatal(err)
			}
			if st, _ := b.admin.AccountStatus(ctx, "delegated"); st.State != ledger.AccountOK {
				t.Errorf("account %+v after SetRefreshToken, want ok", st)
			}
			if err := b.insp.RunTask(b.queue, enq.TaskID); err != nil {
				t.Fatal(err)
			}
			info := waitCompleted(t, b.testBundle, enq.TaskID)
			wantCopies(t, b.srv.Messages(), "alice@example.net")
			if info.Retried != 0 {
				t.Errorf("Retried %d, want 0", info.Retried)
			}
		})
	})

	t.Run("NeedsHuman", func(t *testing.T) {
		t.Parallel()
		// smtpoauthtest cannot script an AUTH reply (535 5.7.139); these
		// are the other needs-human causes it can produce.
		for _, tc := range []struct {
			name    string
			account string
			inject  func(*smtpoauthtest.Server) (remove func())
			reason  string
		}{
			{"MustIssueStartTLSHoldsTheAccountUntilResumed", "delegated", func(s *smtpoauthtest.Server) func() {
				return s.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageMail, Code: 530, Enhanced: [3]int{5, 7, 0},
					Text: "Must issue a STARTTLS command first."})
			}, "530 5.7.0"},
			{"InvalidClientHoldsTheAccountUntilResumed", "app", func(s *smtpoauthtest.Server) func() {
				return s.AddTokenFault(smtpoauthtest.TokenFault{Status: 401, Error: "invalid_client",
					Description: "The client secret is wrong.", ClientID: "app-client"})
			}, "invalid_client"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				b := setupFailures(t)
				ctx := context.Background()
				remove := tc.inject(b.srv)
				to := "alice@example.net"
				enq := b.send(t, tc.account, to)

				st := b.waitAccount(t, tc.account, ledger.AccountHeld)
				if st.Hold != ledger.HoldConfiguration || !strings.Contains(st.Reason, tc.reason) {
					t.Errorf("account %+v, want held for configuration with %q in the reason", st, tc.reason)
				}
				// Wait for a recheck that found the account held: the task
				// keeps waiting, without sending and without spending
				// retries.
				info := b.waitDeferred(t, enq.TaskID, "is held")
				if info.Retried != 0 {
					t.Errorf("held task has Retried %d, want 0", info.Retried)
				}
				if n := len(b.srv.Messages()); n != 0 {
					t.Errorf("%d messages delivered while held, want 0", n)
				}

				remove()
				if err := b.admin.ResumeAccount(ctx, tc.account); err != nil {
					t.Fatal(err)
				}
				// No RunTask: a held account's tasks look again within
				// RetryPolicy.HeldRecheck.
				info = waitCompleted(t, b.testBundle, enq.TaskID)
				wantCopies(t, b.srv.Messages(), to)
				if info.Retried != 0 {
					t.Errorf("completed task has Retried %d, want 0", info.Retried)
				}
			})
		}
	})

	t.Run("PermanentRecipient", func(t *testing.T) {
		t.Parallel()
		const unknownUser = "The email account that you tried to reach does not exist."

		t.Run("RejectedRecipientIsDeadLetteredAndTheOthersGetItOnce", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt, Address: "bob@example.net",
				Code: 550, Enhanced: [3]int{5, 1, 1}, Text: unknownUser})
			enq := b.send(t, "delegated", "alice@example.net", "bob@example.net", "carol@example.net")

			info := waitCompleted(t, b.testBundle, enq.TaskID)
			wantCopies(t, b.srv.Messages(), "alice@example.net", "carol@example.net")
			if info.Retried != 0 {
				t.Errorf("Retried %d, want 0", info.Retried)
			}
			r := taskResult(t, info)
			if want := []string{"alice@example.net", "carol@example.net"}; !slices.Equal(r.Accepted, want) {
				t.Errorf("result accepted %v, want %v", r.Accepted, want)
			}
			if len(r.Rejected) != 1 || r.Rejected[0].Address != "bob@example.net" || !strings.HasPrefix(r.Rejected[0].Reply, "550 5.1.1 ") {
				t.Errorf("result rejected %+v, want bob@example.net with the 550 5.1.1 reply", r.Rejected)
			}
			dls := b.deadLetters(t, enq.TaskID)
			if len(dls) != 1 {
				t.Fatalf("%d dead letters for the task, want 1: %+v", len(dls), dls)
			}
			if dl := dls[0]; dl.Kind != ledger.DeadLetterRecipients || !slices.Equal(dl.Recipients, []string{"bob@example.net"}) ||
				!strings.Contains(dl.Reason, "550 5.1.1") || dl.Class != "permanent-recipient" || dl.MessageID != enq.MessageID {
				t.Errorf("dead letter %+v, want kind recipients for bob@example.net with the 550 5.1.1 reply", dl)
			}
		})

		t.Run("AllRecipientsRejectedArchivesTheTask", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageRcpt,
				Code: 550, Enhanced: [3]int{5, 1, 1}, Text: unknownUser})
			enq := b.send(t, "delegated", "alice@example.net", "bob@example.net")

			info := b.waitState(t, enq.TaskID, asynq.TaskStateArchived)
			dl := wantArchived(t, b, info, enq, "550 5.1.1", "permanent-recipient")
			if !slices.Equal(dl.Recipients, []string{"alice@example.net", "bob@example.net"}) {
				t.Errorf("dead letter recipients %v, want both", dl.Recipients)
			}
		})
	})

	t.Run("PermanentMessage", func(t *testing.T) {
		t.Parallel()

		t.Run("MessageTooLargeIsArchivedWithTheReason", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Code: 552, Enhanced: [3]int{5, 3, 4},
				Text: "Message size exceeds fixed maximum message size"})
			enq := b.send(t, "delegated", "alice@example.net")

			info := b.waitState(t, enq.TaskID, asynq.TaskStateArchived)
			wantArchived(t, b, info, enq, "552 5.3.4", "permanent-message")
		})
	})

	t.Run("Ambiguous", func(t *testing.T) {
		t.Parallel()

		t.Run("ReplyLostAfterTheMessageWasStoredDeliversTwiceWithOneMessageID", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true, StoreBeforeDrop: true, Times: 1})
			enq := b.send(t, "delegated", "alice@example.net")

			info := waitCompleted(t, b.testBundle, enq.TaskID)
			msgs := b.srv.Messages()
			// Twice is the honest outcome: the worker never heard the 250.
			if n := copiesOf(msgs)["alice@example.net"]; n != 2 || len(msgs) != 2 {
				t.Fatalf("%d messages, %d copies for alice; want 2 and 2", len(msgs), n)
			}
			for i, m := range msgs {
				if id := messageIDHeader(t, m.Data); id != enq.MessageID {
					t.Errorf("copy %d has Message-ID %s, want %s", i+1, id, enq.MessageID)
				}
			}
			if r := taskResult(t, info); !r.PossibleDuplicate {
				t.Errorf("result %+v, want possible_duplicate", r)
			}
			if info.Retried != 1 {
				t.Errorf("Retried %d, want 1", info.Retried)
			}
		})

		t.Run("ReplyLostBeforeTheMessageWasStoredDeliversOnceFlaggedPossibleDuplicate", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			b.srv.AddFault(smtpoauthtest.Fault{Stage: smtpoauthtest.StageData, Drop: true, Times: 1})
			enq := b.send(t, "delegated", "alice@example.net")

			info := waitCompleted(t, b.testBundle, enq.TaskID)
			wantCopies(t, b.srv.Messages(), "alice@example.net")
			// The worker cannot tell this drop from the one above.
			if r := taskResult(t, info); !r.PossibleDuplicate {
				t.Errorf("result %+v, want possible_duplicate", r)
			}
			if info.Retried != 1 {
				t.Errorf("Retried %d, want 1", info.Retried)
			}
		})
	})

	t.Run("Redelivery", func(t *testing.T) {
		t.Parallel()

		t.Run("SamePayloadAfterSuccessCompletesWithoutSending", func(t *testing.T) {
			t.Parallel()
			b := setupFailures(t)
			enq := b.send(t, "delegated", "alice@example.net")
			info := waitCompleted(t, b.testBundle, enq.TaskID)
			if n := len(b.srv.Messages()); n != 1 {
				t.Fatalf("%d messages after the first task, want 1", n)
			}

			// The same payload bytes as a new task: what a producer's retry
			// or a lost acknowledgement looks like to the worker.
			c := asynq.NewClient(redistest.ConnOpt(redisDB))
			defer c.Close()
			again, err := c.Enqueue(asynq.NewTask(tasks.TypeSendEmail, info.Payload),
				asynq.Queue(b.queue), asynq.Retention(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if again.ID == enq.TaskID {
				t.Fatal("the second task has the first one's ID")
			}
			info2 := waitCompleted(t, b.testBundle, again.ID)
			if n := len(b.srv.Messages()); n != 1 {
				t.Errorf("%d messages after the redelivery, want still 1", n)
			}
			// The result is the receipt the first task wrote.
			if r1, r2 := taskResult(t, info), taskResult(t, info2); !reflect.DeepEqual(r1, r2) || r2.MessageID != enq.MessageID {
				t.Errorf("redelivered task's result %+v, want the first task's %+v", r2, r1)
			}
		})
	})
}

// wantArchived checks an archived task: its dead letter (kind message) and
// Admin.Status carry a reason containing reply and the class, asynq's last
// error contains the reason, no retry was spent and nothing was delivered.
// It returns the dead letter.
func wantArchived(t *testing.T, b *failureBundle, info *asynq.TaskInfo, enq *tasks.Enqueued, reply, class string) *ledger.DeadLetter {
	t.Helper()
	if info.Retried != 0 {
		t.Errorf("archived with Retried %d, want 0: a permanent failure is not retried", info.Retried)
	}
	if n := len(b.srv.Messages()); n != 0 {
		t.Errorf("%d messages delivered, want 0", n)
	}
	dls := b.deadLetters(t, enq.TaskID)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters for the task, want 1: %+v", len(dls), dls)
	}
	dl := dls[0]
	if dl.Kind != ledger.DeadLetterMessage || dl.ID != enq.TaskID || dl.Class != class || !strings.Contains(dl.Reason, reply) || dl.MessageID != enq.MessageID {
		t.Errorf("dead letter %+v, want kind message, class %s, %q in the reason", dl, class, reply)
	}
	if !strings.Contains(info.LastErr, dl.Reason) {
		t.Errorf("asynq's last error %q does not contain the reason %q", info.LastErr, dl.Reason)
	}
	st, err := b.admin.Status(context.Background(), b.queue, enq.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != tasks.StateArchived || st.Reason != dl.Reason || st.Class != class {
		t.Errorf("status %+v, want archived with the dead letter's reason and class", st)
	}
	return dl
}
