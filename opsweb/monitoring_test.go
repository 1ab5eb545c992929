package opsweb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/opsweb"
	"github.com/sendq/sendq/tasks"
)

// seeded is a queue of the test Redis holding 2 pending, 1 scheduled, 1
// archived and 1 completed email:send task.
type seeded struct {
	queue       string
	archivedID  string
	completedID string
}

// The strings seedQueue puts in its tasks.
const (
	seedBody      = "zebra-quokka-body-7731: the secret text of the message"
	seedLocalPart = "walrus.localpart"
	seedReason    = "550 5.1.1 recipient mailbox does not exist (permanent)"
	subjectFail   = "Dead letter, please"
	subjectOK     = "Complete me"
)

// seedQueue fills a queue of its own: a worker archives one task with
// seedReason and completes another with a result, then more are enqueued
// with no worker running.
func seedQueue(t *testing.T) seeded {
	t.Helper()
	s := seeded{queue: redistest.Queue(t, testDB)}
	client := tasks.NewClient(redistest.ConnOpt(testDB))
	t.Cleanup(func() { client.Close() })
	enqueue := func(subject string, opts ...tasks.Option) string {
		t.Helper()
		res, err := client.Enqueue(context.Background(), &tasks.Email{
			AccountID:   "support",
			From:        "Support <support@example.com>",
			To:          []string{seedLocalPart + "@customer.example", "other.person@example.net"},
			Subject:     subject,
			Text:        seedBody,
			HTML:        "<p>" + seedBody + "</p>",
			Attachments: []tasks.Attachment{{Filename: "a.txt", Data: []byte(seedBody)}},
		}, append([]tasks.Option{tasks.Queue(s.queue)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		return res.TaskID
	}
	s.archivedID = enqueue(subjectFail)
	s.completedID = enqueue(subjectOK, tasks.Retention(time.Hour))

	srv := asynq.NewServer(redistest.ConnOpt(testDB), asynq.Config{
		Concurrency:       1,
		Queues:            map[string]int{s.queue: 1},
		TaskCheckInterval: 10 * time.Millisecond,
		ShutdownTimeout:   5 * time.Second,
		LogLevel:          asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(tasks.TypeSendEmail, func(_ context.Context, task *asynq.Task) error {
		p, err := tasks.DecodePayload(task.Payload())
		if err != nil {
			return err
		}
		if p.Subject != subjectOK {
			return fmt.Errorf("%s: %w", seedReason, asynq.SkipRetry)
		}
		res, _ := json.Marshal(tasks.Result{MessageID: p.MessageID, Accepted: p.To, Reply: "250 2.0.0 OK for <" + seedLocalPart + "@customer.example>"})
		_, err = task.ResultWriter().Write(res)
		return err
	})
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	var stop sync.Once
	shutdown := func() { stop.Do(srv.Shutdown) }
	t.Cleanup(shutdown)
	insp := asynq.NewInspector(redistest.ConnOpt(testDB))
	t.Cleanup(func() { insp.Close() })
	waitFor(t, "one task archived and one completed", func() bool {
		q, err := insp.GetQueueInfo(s.queue)
		return err == nil && q.Archived == 1 && q.Completed == 1
	})
	shutdown()

	enqueue("Pending one")
	enqueue("Pending two")
	enqueue("Later", tasks.ProcessIn(time.Hour))
	return s
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// getJSON serves a GET of path on h with the test credentials and decodes
// the answer into v; it returns the raw body.
func getJSON(t *testing.T, h http.Handler, path string, v any) string {
	t.Helper()
	res, body := do(t, h, request{path: path, user: testUser, pass: testPassword})
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d %q", path, res.StatusCode, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("GET %s: %v in %q", path, err, body)
	}
	return body
}

func TestMonitoringAPI(t *testing.T) {
	t.Parallel()
	s := seedQueue(t)
	h := setup(t, opsweb.Config{Addr: "0.0.0.0:8080", User: testUser, Password: testPassword, ReadOnly: true})

	t.Run("ListsTheQueueWithItsCounts", func(t *testing.T) {
		var got struct {
			Queues []struct {
				Queue     string `json:"queue"`
				Size      int    `json:"size"`
				Pending   int    `json:"pending"`
				Scheduled int    `json:"scheduled"`
				Archived  int    `json:"archived"`
				Completed int    `json:"completed"`
			} `json:"queues"`
		}
		getJSON(t, h, "/monitoring/api/queues", &got)
		for _, q := range got.Queues {
			if q.Queue != s.queue {
				continue
			}
			if q.Pending != 2 || q.Scheduled != 1 || q.Archived != 1 || q.Completed != 1 {
				t.Fatalf("queue %s: %+v, want 2 pending, 1 scheduled, 1 archived, 1 completed", s.queue, q)
			}
			return
		}
		t.Fatalf("GET /monitoring/api/queues does not list %s: %+v", s.queue, got)
	})

	t.Run("ArchivedTaskShowsItsReasonAndNoBody", func(t *testing.T) {
		var got struct {
			Tasks []struct {
				ID        string `json:"id"`
				Payload   string `json:"payload"`
				LastError string `json:"error_message"`
			} `json:"tasks"`
		}
		body := getJSON(t, h, "/monitoring/api/queues/"+s.queue+"/archived_tasks", &got)
		if len(got.Tasks) != 1 || got.Tasks[0].ID != s.archivedID {
			t.Fatalf("archived tasks = %s, want task %s", body, s.archivedID)
		}
		if !strings.HasPrefix(got.Tasks[0].LastError, seedReason) {
			t.Errorf("archived task's last error = %q, want it to start with %q", got.Tasks[0].LastError, seedReason)
		}
		wantPayload := `"recipients":2,"recipient_domains":["customer.example","example.net"],"subject":"` + subjectFail + `"`
		if p := got.Tasks[0].Payload; !strings.Contains(p, wantPayload) || !strings.Contains(p, `"attachments":1`) {
			t.Errorf("archived task payload = %s, want the summary %s", p, wantPayload)
		}
		assertNoSecrets(t, body)
	})

	t.Run("TaskPageShowsTheReason", func(t *testing.T) {
		var got map[string]any
		body := getJSON(t, h, "/monitoring/api/queues/"+s.queue+"/tasks/"+s.archivedID, &got)
		if !strings.Contains(body, seedReason) {
			t.Errorf("task %s does not show its reason: %s", s.archivedID, body)
		}
		assertNoSecrets(t, body)
	})

	t.Run("CompletedTaskShowsTheResultSummary", func(t *testing.T) {
		var got map[string]any
		body := getJSON(t, h, "/monitoring/api/queues/"+s.queue+"/completed_tasks", &got)
		if !strings.Contains(body, `\"accepted\":2`) || !strings.Contains(body, `*@customer.example`) {
			t.Errorf("completed task result is not summarised: %s", body)
		}
		assertNoSecrets(t, body)
		body = getJSON(t, h, "/monitoring/api/queues/"+s.queue+"/tasks/"+s.completedID, &got)
		if !strings.Contains(body, `\"accepted\":2`) {
			t.Errorf("task page result is not summarised: %s", body)
		}
		assertNoSecrets(t, body)
	})

	t.Run("ReadOnlyRefusesChanges", func(t *testing.T) {
		for _, req := range []request{
			{method: http.MethodDelete, path: "/monitoring/api/queues/" + s.queue},
			{method: http.MethodDelete, path: "/monitoring/api/queues/" + s.queue + "/archived_tasks/" + s.archivedID},
			{method: http.MethodPost, path: "/monitoring/api/queues/" + s.queue + "/archived_tasks/" + s.archivedID + ":run"},
			{method: http.MethodPost, path: "/monitoring/api/queues/" + s.queue + ":pause"},
			{method: http.MethodDelete, path: "/monitoring/api/queues/" + s.queue + "/pending_tasks:delete_all"},
		} {
			req.user, req.pass = testUser, testPassword
			res, body := do(t, h, req)
			if res.StatusCode < 400 {
				t.Errorf("%s %s = %d %q, want an error status in read-only mode", req.method, req.path, res.StatusCode, body)
			}
		}
		var got struct {
			Queues []struct {
				Queue    string `json:"queue"`
				Paused   bool   `json:"paused"`
				Pending  int    `json:"pending"`
				Archived int    `json:"archived"`
			} `json:"queues"`
		}
		getJSON(t, h, "/monitoring/api/queues", &got)
		for _, q := range got.Queues {
			if q.Queue == s.queue && (q.Paused || q.Pending != 2 || q.Archived != 1) {
				t.Errorf("read-only mode changed the queue: %+v", q)
			}
		}
	})

	t.Run("CrossSiteChangeIsRefused", func(t *testing.T) {
		// Not read-only, so only the cross-origin check stands in the way.
		rw := setup(t, opsweb.Config{User: testUser, Password: testPassword})
		res, body := do(t, rw, request{method: http.MethodPost, path: "/monitoring/api/queues/" + s.queue + ":pause",
			user: testUser, pass: testPassword, header: http.Header{"Sec-Fetch-Site": {"cross-site"}}})
		if res.StatusCode != http.StatusForbidden {
			t.Fatalf("cross-site POST = %d %q, want 403", res.StatusCode, body)
		}
	})
}

// TestMonitoringRunsAndDeletesArchivedTasks: an operator requeues a dead
// letter and deletes another from the UI's API, and asynq v0.26 does it.
func TestMonitoringRunsAndDeletesArchivedTasks(t *testing.T) {
	t.Parallel()
	s := seedQueue(t)
	h := setup(t, opsweb.Config{User: testUser, Password: testPassword})
	insp := asynq.NewInspector(redistest.ConnOpt(testDB))
	t.Cleanup(func() { insp.Close() })

	run := request{method: http.MethodPost, path: "/monitoring/api/queues/" + s.queue + "/archived_tasks/" + s.archivedID + ":run",
		user: testUser, pass: testPassword}
	if res, body := do(t, h, run); res.StatusCode >= 300 {
		t.Fatalf("run archived task = %d %q", res.StatusCode, body)
	}
	info, err := insp.GetTaskInfo(s.queue, s.archivedID)
	if err != nil || info.State != asynq.TaskStatePending {
		t.Fatalf("after run: %+v, %v; want the task pending", info, err)
	}

	// Archive it again, then delete it.
	if err := insp.ArchiveTask(s.queue, s.archivedID); err != nil {
		t.Fatal(err)
	}
	del := request{method: http.MethodDelete, path: "/monitoring/api/queues/" + s.queue + "/archived_tasks/" + s.archivedID,
		user: testUser, pass: testPassword}
	if res, body := do(t, h, del); res.StatusCode >= 300 {
		t.Fatalf("delete archived task = %d %q", res.StatusCode, body)
	}
	if _, err := insp.GetTaskInfo(s.queue, s.archivedID); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Errorf("after delete: %v, want ErrTaskNotFound", err)
	}
}

// assertNoSecrets fails the test if s shows a body or a local part.
func assertNoSecrets(t *testing.T, s string) {
	t.Helper()
	for _, secret := range []string{"zebra-quokka", seedLocalPart, "other.person", "support@"} {
		if strings.Contains(s, secret) {
			t.Errorf("the monitoring API shows %q: %s", secret, s)
		}
	}
}
