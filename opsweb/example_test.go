package opsweb_test

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/opsweb"
	"github.com/sendq/sendq/tasks"
)

// A handler for a listener on every interface must have a password; with
// one, /healthz stays open and the web UI asks for it.
func Example() {
	redisOpt := asynq.RedisClientOpt{Addr: "127.0.0.1:6379"}
	_, err := opsweb.New(opsweb.Config{Addr: "0.0.0.0:8080", Redis: redisOpt})
	fmt.Println(err)

	h, err := opsweb.New(opsweb.Config{Addr: "0.0.0.0:8080", Redis: redisOpt, Password: "s3cret", ReadOnly: true})
	if err != nil {
		panic(err)
	}
	defer h.Close()
	for _, path := range []string{"/healthz", "/monitoring/", "/metrics"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		fmt.Printf("%s %d %q\n", path, w.Code, w.Header().Get("WWW-Authenticate"))
	}
	// Output:
	// opsweb: Password: credentials required: "0.0.0.0:8080" is not a loopback address, so /monitoring and /metrics need a password (set SENDQ_HTTP_PASSWORD or SENDQ_HTTP_PASSWORD_FILE)
	// /healthz 200 ""
	// /monitoring/ 401 "Basic realm=\"sendq\", charset=\"UTF-8\""
	// /metrics 404 ""
}

// The web UI shows an email:send payload as this summary: no body, no
// attachment, no local part.
func ExampleFormatPayload() {
	_, p, err := tasks.NewTask(&tasks.Email{
		AccountID: "support",
		From:      "support@example.com",
		To:        []string{"Alice <alice@example.net>", "bob@example.org"},
		Subject:   "Your order",
		Text:      "It shipped.",
	})
	if err != nil {
		panic(err)
	}
	p.MessageID = "<order-1234@example.com>" // generated at enqueue; fixed here for the output
	b, _ := json.Marshal(p)
	fmt.Println(opsweb.FormatPayload(tasks.TypeSendEmail, b))
	// Output:
	// {"account_id":"support","recipients":2,"recipient_domains":["example.net","example.org"],"subject":"Your order","message_id":"<order-1234@example.com>","attachments":0}
}
