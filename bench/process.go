package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/tasks"
	"github.com/sendq/sendq/worker"
)

// workerProcessEnv names the environment variable that turns this binary
// (or the test binary) into a worker process: the benchmark runs itself
// again with it set to a processConfig.
const workerProcessEnv = "SENDQ_BENCH_WORKER_PROCESS"

// processConfig is what a worker process runs with.
type processConfig struct {
	RedisAddr   string     `json:"redis_addr"`
	DB          int        `json:"db"`
	Queue       string     `json:"queue"`
	Prefix      string     `json:"ledger_prefix"`
	Concurrency int        `json:"concurrency"`
	Accounts    accountSet `json:"accounts"`
}

// runWorkerProcess is the main of a worker process: it runs a worker until
// SIGTERM or SIGINT.
func runWorkerProcess(raw string) int {
	var pc processConfig
	if err := json.Unmarshal([]byte(raw), &pc); err != nil {
		fmt.Fprintln(os.Stderr, "bench worker process:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := newLogger(os.Stderr)
	wc, err := workerConfig(asynq.RedisClientOpt{Addr: pc.RedisAddr, DB: pc.DB}, pc.Accounts, pc.Queue, pc.Prefix, pc.Concurrency, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench worker process:", err)
		return 2
	}
	w, err := worker.New(wc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench worker process:", err)
		return 2
	}
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench worker process:", err)
		return 1
	}
	return 0
}

// process is a worker process.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited, err set
	err    error
}

// alive returns an error if the process has exited.
func (p *process) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("worker process %d exited: %v", p.cmd.Process.Pid, p.err)
	default:
		return nil
	}
}

// startProcess runs this executable again as a worker process with pc.
func (b *bench) startProcess(pc processConfig) (*process, error) {
	raw, err := json.Marshal(pc)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("worker process: %w", err)
	}
	// A test binary would run its tests without the env; -test.run=^$
	// keeps it from doing so should the env be lost.
	cmd := exec.Command(exe, "-test.run=^$")
	if !strings.HasSuffix(exe, ".test") {
		cmd = exec.Command(exe)
	}
	cmd.Env = append(os.Environ(), workerProcessEnv+"="+string(raw))
	cmd.Stdout, cmd.Stderr = b.stderr, b.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("worker process: %w", err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// stop ends the process with SIGTERM (SIGKILL after 15 s) and waits for it.
func (p *process) stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			return fmt.Errorf("worker process: %w", p.err)
		}
		return nil
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		return errors.New("worker process: did not stop within 15 s of SIGTERM, killed")
	}
}

// grantsResult is what the token endpoint saw while three worker processes
// shared accounts.
type grantsResult struct {
	processes, accounts, messages int
	grants                        int
	elapsed                       time.Duration
}

// measureGrants runs three worker processes on one queue and three fresh
// accounts, sends messages round-robin through the accounts, and counts the
// token grants.
func (b *bench) measureGrants(ctx context.Context) (r grantsResult, err error) {
	users := []string{"grants1", "grants2", "grants3"}
	r = grantsResult{processes: 3, accounts: len(users), messages: max(60, b.cfg.Messages/10)}
	set := newAccountSet(b.srv, b.caFile, users...)
	q := b.queue("grants")
	defer func() {
		if derr := b.deleteQueue(context.WithoutCancel(ctx), q); err == nil {
			err = derr
		}
	}()
	pc := processConfig{RedisAddr: b.cfg.RedisAddr, DB: b.cfg.DB, Queue: q, Prefix: b.ledgerPrefix("grants"),
		Concurrency: 10, Accounts: set}
	b.progress("token grants: %d worker processes, %d accounts, %d messages", r.processes, r.accounts, r.messages)
	start := time.Now()
	var procs []*process
	defer func() {
		if serr := stopAll(procs); err == nil {
			err = serr
		}
	}()
	for range r.processes {
		p, err := b.startProcess(pc)
		if err != nil {
			return r, err
		}
		procs = append(procs, p)
	}
	// Every process takes tasks before any is enqueued, so that all three
	// need every account's token.
	insp := asynq.NewInspector(b.redisOpt)
	defer insp.Close()
	if _, err := waitCount(ctx, "worker processes serving the queue", r.processes, 60*time.Second, func() (int, error) {
		if err := alive(procs); err != nil {
			return 0, err
		}
		servers, err := insp.Servers()
		if err != nil {
			return 0, err
		}
		n := 0
		for _, s := range servers {
			if _, ok := s.Queues[q]; ok && s.Status == "active" {
				n++
			}
		}
		return n, nil
	}); err != nil {
		return r, err
	}
	grants, delivered := b.srv.Stats().TokenGrantsTotal, b.srv.Stats().Messages
	b.srv.ResetMessages() // they are not looked at: free them
	tc := tasks.NewClient(b.redisOpt)
	defer tc.Close()
	if err := fill(ctx, r.messages, func(ctx context.Context, i int) error {
		_, err := tc.Enqueue(ctx, b.email("acct-"+users[i%len(users)]), tasks.Queue(q))
		return err
	}); err != nil {
		return r, err
	}
	if err := b.waitDelivered(ctx, "token grants", delivered, r.messages, procs...); err != nil {
		return r, err
	}
	r.grants = b.srv.Stats().TokenGrantsTotal - grants
	r.elapsed = time.Since(start)
	return r, nil
}

// rssResult is a worker process's peak resident set.
type rssResult struct {
	concurrency, messages int
	peakBytes             int64 // -1: not measured (no /proc)
}

// measureRSS drains -n messages with a worker process at -rss-c and reads
// its VmHWM.
func (b *bench) measureRSS(ctx context.Context) (r rssResult, err error) {
	r = rssResult{concurrency: b.cfg.RSSConcurrency, messages: b.cfg.Messages, peakBytes: -1}
	if runtime.GOOS != "linux" {
		b.progress("worker RSS: skipped, needs Linux's /proc")
		return r, nil
	}
	q := b.queue("rss")
	defer func() {
		if derr := b.deleteQueue(context.WithoutCancel(ctx), q); err == nil {
			err = derr
		}
	}()
	tc := tasks.NewClient(b.redisOpt)
	defer tc.Close()
	delivered := b.srv.Stats().Messages
	b.srv.ResetMessages() // they are not looked at: free them
	if err := fill(ctx, r.messages, func(ctx context.Context, _ int) error {
		_, err := tc.Enqueue(ctx, b.email(benchAccount), tasks.Queue(q))
		return err
	}); err != nil {
		return r, err
	}
	b.progress("worker RSS: a worker process at concurrency %d drains %d messages", r.concurrency, r.messages)
	p, err := b.startProcess(processConfig{RedisAddr: b.cfg.RedisAddr, DB: b.cfg.DB, Queue: q,
		Prefix: b.ledgerPrefix("inproc"), Concurrency: r.concurrency, Accounts: b.accts})
	if err != nil {
		return r, err
	}
	defer func() {
		if serr := p.stop(); err == nil {
			err = serr
		}
	}()
	if err := b.waitDelivered(ctx, "worker RSS", delivered, r.messages, p); err != nil {
		return r, err
	}
	r.peakBytes, err = vmHWM(p.cmd.Process.Pid)
	return r, err
}

// stopAll stops procs at once and waits for them.
func stopAll(procs []*process) error {
	errs := make(chan error, len(procs))
	for _, p := range procs {
		go func() { errs <- p.stop() }()
	}
	var err error
	for range procs {
		err = cmpErr(err, <-errs)
	}
	return err
}

// alive returns an error if one of procs has exited.
func alive(procs []*process) error {
	for _, p := range procs {
		if err := p.alive(); err != nil {
			return err
		}
	}
	return nil
}

// waitDelivered waits until the test server has accepted n more messages
// than base (its Stats().Messages before they were enqueued), while procs
// run.
func (b *bench) waitDelivered(ctx context.Context, what string, base, n int, procs ...*process) error {
	_, err := waitCount(ctx, what+": messages delivered", n, drainTimeout(n), func() (int, error) {
		return b.srv.Stats().Messages - base, alive(procs)
	})
	return err
}

// vmHWM returns the peak resident set size of process pid, from
// /proc/PID/status.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("worker RSS: %w", err)
	}
	defer f.Close()
	return parseVmHWM(f)
}

// parseVmHWM reads the VmHWM line ("VmHWM:	  12345 kB") of a
// /proc/PID/status.
func parseVmHWM(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != "VmHWM" {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("worker RSS: VmHWM %q: want a number of kB", v)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("worker RSS: VmHWM %q: %w", v, err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("worker RSS: %w", err)
	}
	return 0, errors.New("worker RSS: no VmHWM in /proc/PID/status")
}
