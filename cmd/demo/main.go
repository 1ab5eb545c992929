// Command demo runs sendq's main job end to end on one machine: it finds or
// starts a Redis server, starts the sandbox (an in-process Gmail-like OAuth2
// provider and SMTP server) and a worker, enqueues a sample batch with the
// enqueue command, waits until every task has finished, prints a summary, and
// stops everything it started. It exits 0 only when every sample message was
// delivered.
//
// Usage:
//
//	demo -bin ./bin
//
// With REDIS_URL set to a reachable server the demo uses it, in a queue of
// its own that it deletes at the end; otherwise it starts a throwaway
// redis-server on a free port.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	bin      string
	messages int
	timeout  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.bin, "bin", "bin", "directory holding the sandbox, worker and enqueue binaries")
	fs.IntVar(&o.messages, "n", 12, "number of sample messages to send")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long to wait for the batch")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.messages < 1 {
		return o, errors.New("-n must be at least 1")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	dir, err := os.MkdirTemp("", "sendq-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	var procs processes
	defer procs.stopAll()

	redisURL, note, err := redisForDemo(ctx, &procs, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "redis:    %s (%s)\n", redisURL, note)
	queue := "demo-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)

	// The sandbox prints "ready" on stdout once its accounts file is written.
	sandboxDir := filepath.Join(dir, "sandbox")
	sandbox := procs.start(filepath.Join(o.bin, "sandbox"), []string{"-dir", sandboxDir}, nil, filepath.Join(dir, "sandbox.log"))
	ready, err := sandbox.waitLine(ctx, "ready")
	if err != nil {
		return fmt.Errorf("sandbox did not start: %w (log: %s)", err, sandbox.logTail())
	}
	fmt.Fprintf(stdout, "sandbox:  %s\n", strings.TrimSpace(strings.TrimPrefix(ready, "ready")))
	accountsFile := filepath.Join(sandboxDir, "accounts.yaml")

	env := []string{"REDIS_URL=" + redisURL}
	httpPort, err := freePort()
	if err != nil {
		return err
	}
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	worker := procs.start(filepath.Join(o.bin, "worker"),
		// The demo has no token key: tokens go to Redis in plaintext.
		[]string{"-accounts", accountsFile, "-queues", queue + "=1", "-concurrency", "10", "-dev-insecure-token-store",
			"-http", httpAddr}, env,
		filepath.Join(dir, "worker.log"))
	fmt.Fprintf(stdout, "worker:   pid %d, queue %s, http://%s/metrics and /monitoring/\n", worker.cmd.Process.Pid, queue, httpAddr)

	// Enqueue the sample batch through the CLI, as a producer would.
	enq := exec.CommandContext(ctx, filepath.Join(o.bin, "enqueue"), "-queue", queue)
	enq.Env = append(os.Environ(), env...)
	enq.Stdin = strings.NewReader(sampleBatch(o.messages))
	enq.Stderr = stderr
	out, err := enq.Output()
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	ids := strings.Fields(string(out))
	fmt.Fprintf(stdout, "enqueued: %d messages\n", len(ids))

	opt, err := asynq.ParseRedisURI(redisURL)
	if err != nil {
		return err
	}
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	defer insp.DeleteQueue(queue, true)

	start := time.Now()
	info, err := waitDrained(ctx, insp, queue, len(ids))
	if err != nil {
		return fmt.Errorf("%w (worker log: %s)", err, worker.logTail())
	}
	retried := 0
	completed, _ := insp.ListCompletedTasks(queue, asynq.PageSize(len(ids)+1))
	for _, t := range completed {
		if t.Retried > 0 {
			retried++
		}
	}
	fmt.Fprintf(stdout, "\nsummary after %s\n", time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(stdout, "  enqueued       %d\n", len(ids))
	fmt.Fprintf(stdout, "  delivered      %d\n", info.Completed)
	fmt.Fprintf(stdout, "  retried        %d\n", retried)
	fmt.Fprintf(stdout, "  dead-lettered  %d\n", info.Archived)
	if info.Completed != len(ids) {
		return fmt.Errorf("%d of %d messages delivered (worker log: %s)", info.Completed, len(ids), worker.logTail())
	}
	fmt.Fprintln(stdout, "all sample messages delivered")
	printMetrics(ctx, stdout, "http://"+httpAddr+"/metrics")
	return nil
}

// printMetrics prints the worker's sendq_ metrics with a non-zero value: what
// an operator's Prometheus would see after the run. Failing to read them is
// reported, not fatal: the mail went out.
func printMetrics(ctx context.Context, w io.Writer, url string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(w, "\nmetrics: %v\n", err)
		return
	}
	defer resp.Body.Close()
	fmt.Fprintf(w, "\nmetrics (%s, non-zero sendq_ counters and gauges; stage latencies omitted)\n", url)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "sendq_") || strings.HasSuffix(line, " 0") || strings.Contains(line, "_seconds") {
			continue
		}
		fmt.Fprintf(w, "  %s\n", line)
	}
}

// waitDrained polls the queue until n tasks have finished (completed or
// archived) and none is left pending, active, scheduled or retrying.
func waitDrained(ctx context.Context, insp *asynq.Inspector, queue string, n int) (*asynq.QueueInfo, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := insp.GetQueueInfo(queue)
		if err == nil && info.Completed+info.Archived >= n && info.Pending+info.Active+info.Scheduled+info.Retry == 0 {
			return info, nil
		}
		select {
		case <-ctx.Done():
			if info != nil {
				return nil, fmt.Errorf("gave up waiting: %d pending, %d active, %d retrying, %d completed, %d archived",
					info.Pending, info.Active, info.Retry, info.Completed, info.Archived)
			}
			return nil, fmt.Errorf("gave up waiting: %v", err)
		case <-tick.C:
		}
	}
}

// redisForDemo returns the URL of a reachable Redis: REDIS_URL when set and
// answering, otherwise a throwaway redis-server on a free port.
func redisForDemo(ctx context.Context, procs *processes, dir string) (url, note string, err error) {
	if u := os.Getenv("REDIS_URL"); u != "" {
		if ping(ctx, u) == nil {
			return u, "from REDIS_URL", nil
		}
		fmt.Fprintf(os.Stderr, "demo: REDIS_URL does not answer, starting a throwaway redis-server instead\n")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", "", errors.New("no Redis: set REDIS_URL to a reachable server, or install redis-server " +
			"(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)")
	}
	port, err := freePort()
	if err != nil {
		return "", "", err
	}
	procs.start(bin, []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir}, nil, filepath.Join(dir, "redis.log"))
	url = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	for {
		if ping(ctx, url) == nil {
			return url, "throwaway redis-server", nil
		}
		select {
		case <-ctx.Done():
			return "", "", fmt.Errorf("throwaway redis-server did not answer on port %d", port)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func ping(ctx context.Context, url string) error {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return rdb.Ping(pctx).Err()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// sampleBatch returns n messages as NDJSON, alternating between the
// sandbox's delegated (refresh token) and app-only (client credentials)
// accounts and exercising text, HTML, attachments and non-ASCII headers.
func sampleBatch(n int) string {
	var b strings.Builder
	for i := range n {
		account, from := "demo", "demo@sandbox.test"
		if i%2 == 1 {
			account, from = "demo-app", "app@sandbox.test"
		}
		line := fmt.Sprintf(`{"account_id":%q,"from":%q,"to":["customer%d@example.net"],"subject":"Sample %d — grüße from sendq","text":"Hello number %d.\nThis is the text part."`,
			account, from, i, i+1, i+1)
		switch i % 4 {
		case 1:
			line += `,"html":"<p>Hello <b>HTML</b> reader.</p>"`
		case 2:
			line += `,"cc":["copy@example.net"],"bcc":["audit@example.net"]`
		case 3:
			line += `,"attachments":[{"filename":"report.txt","content_type":"text/plain","data":"cmVwb3J0IGJvZHkK"}]`
		}
		b.WriteString(line + "}\n")
	}
	return b.String()
}

// process is one child the demo started, with its output captured to a log.
type process struct {
	cmd     *exec.Cmd
	logPath string
	lines   chan string
}

type processes []*process

func (ps *processes) start(bin string, args, env []string, logPath string) *process {
	p := &process{cmd: exec.Command(bin, args...), logPath: logPath, lines: make(chan string, 16)}
	p.cmd.Env = append(os.Environ(), env...)
	logFile, err := os.Create(logPath)
	if err == nil {
		p.cmd.Stderr = logFile
	}
	stdout, _ := p.cmd.StdoutPipe()
	if err := p.cmd.Start(); err != nil {
		close(p.lines)
		p.lines = nil
		fmt.Fprintf(logFile, "start %s: %v\n", bin, err)
		*ps = append(*ps, p)
		return p
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	*ps = append(*ps, p)
	return p
}

// waitLine waits for a stdout line starting with prefix.
func (p *process) waitLine(ctx context.Context, prefix string) (string, error) {
	if p.lines == nil {
		return "", errors.New("not started")
	}
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case l, ok := <-p.lines:
			if !ok {
				return "", errors.New("exited before it was ready")
			}
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		}
	}
}

func (p *process) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return p.logPath
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "\n" + strings.Join(lines, "\n")
}

// stopAll stops the children in reverse order: SIGTERM, then SIGKILL if one
// has not exited after five seconds.
func (ps processes) stopAll() {
	for i := len(ps) - 1; i >= 0; i-- {
		p := ps[i]
		if p.cmd.Process == nil {
			continue
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
}
