package metrics_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/smtpoauth"
	"github.com/sendq/sendq/tasks"
)

func Example() {
	m := metrics.New()

	// What a worker does with it: each account's sender reports to the
	// account's metrics (smtpoauth.Config.Observer), the handler reports
	// outcomes (tasks.HandlerConfig.Observer).
	support := m.ForAccount("support")
	support.Login()
	support.ObserveStage(smtpoauth.StageDataEnd, 120*time.Millisecond)
	support.ConnectionReused()
	m.SendOutcome("support", tasks.OutcomeDelivered)
	m.SendOutcome("support", tasks.OutcomeDelivered)
	m.SendOutcome("support", smtpoauth.ClassThrottle.String())

	// What cmd/worker does with it: serve the registry.
	srv := httptest.NewServer(promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, prefix := range []string{
			`sendq_sends_total{account="support",outcome="delivered"}`,
			`sendq_sends_total{account="support",outcome="throttle"}`,
			`sendq_smtp_logins_total`,
			`sendq_smtp_connections_reused_total`,
			`sendq_smtp_stage_seconds_count{account="support",stage="data-end"}`,
		} {
			if strings.HasPrefix(line, prefix) {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// sendq_sends_total{account="support",outcome="delivered"} 2
	// sendq_sends_total{account="support",outcome="throttle"} 1
	// sendq_smtp_connections_reused_total{account="support"} 1
	// sendq_smtp_logins_total{account="support"} 1
	// sendq_smtp_stage_seconds_count{account="support",stage="data-end"} 1
}
