// Command bench measures sendq against the queue it runs on and prints one
// table: how fast producers enqueue, how many messages per second a worker
// delivers end to end, how many SMTP logins and token grants that costs,
// enqueue-to-250 latency, idle pickup latency and the worker's peak memory.
//
// Usage:
//
//	make bench                  # go run ./bench -n $(BENCH_N), writes bench/RESULTS.md
//	go run ./bench -n 2000      # a shorter run
//	go run ./bench -smoke       # a few hundred messages, one round, no targets, no RESULTS.md
//	go run ./bench -cpuprofile cpu.out && go tool pprof cpu.out
//	go run ./bench -e2e-only sendq -c 50 -rounds 1 -cpuprofile cpu.out   # one consumer, profiled
//	go run ./bench -e2e-only sendq -c 10 -rounds 1 -trace trace.out      # where its goroutines wait
//
// It needs the Redis server of the tests (REDIS_ADDR, default 127.0.0.1:6379)
// and uses its database 11 (-db), in queues and ledger keys named
// "sendq-bench-<run>" and "sendq-bench:<run>:", which it deletes as it goes
// (leftovers of a killed run are deleted at the next start); it touches no
// other key. The mail provider is an in-process smtpoauthtest server on
// loopback with STARTTLS and XOAUTH2, as in production: the bench process
// runs the SMTP server, the producers and (except where a row says "child
// process") the workers, so all of them share its CPUs.
//
// # Reading the table
//
// Only ratios measured in one run mean anything on a shared machine, so each
// comparison runs its baseline and sendq alternately in the same process,
// -rounds times each (A B A B; end to end: no-op, naive, sendq, then the
// reverse order), and reports the median with the min-max over the rounds.
// A ratio is the median of the per-round ratios of sendq to the baseline of
// the same round.
//
//   - Enqueue: one goroutine enqueues -enqueue-n messages; raw asynq
//     Client.Enqueue of a random payload as large as sendq's, sendq's
//     tasks.Client.Enqueue, and tasks.Client.EnqueueBatch in batches of -batch.
//     Within a round the three take turns by chunks of about 1,000 messages,
//     so that a slow moment of the machine falls on all of them alike.
//   - End to end: -n messages are enqueued first (not timed); the clock runs
//     from starting the consumer (asynq Server.Start, worker.Run) to the
//     server's acceptance of the last message (or the no-op handler's last
//     call), so sendq's time includes its first token and connections.
//     Baselines: an asynq server with a no-op handler (the queue's ceiling),
//     and a naive asynq handler that decodes the payload, builds its MIME
//     with tasks.Payload.BuildMIME and sends it with go-smtp over one pooled
//     client per asynq worker goroutine, opened beforehand (untimed) and
//     authenticated once with XOAUTH2 with a token the server issued,
//     STARTTLS on, RSET/MAIL/RCPT/DATA per task. Baseline tasks are plain
//     asynq tasks (no retention); sendq's are what tasks.Client makes.
//   - CPU per message: the CPU time this process and the Redis server
//     (INFO cpu) spent during each drain over the messages drained. It
//     moves less than messages per second when other tenants load the
//     machine, and it shows where a change saves work even when the
//     rates' noise hides it.
//   - Logins per message: the server's successful AUTHs during sendq's end
//     to end rounds over the messages delivered in them (every round starts
//     a new worker, so it logs in again: short runs read higher).
//   - Token grants: three worker processes (this binary run again) share
//     three accounts; the token endpoint's grants over the accounts. The run
//     is shorter than one token lifetime (1 h), so that is grants per
//     account per lifetime.
//   - Latency: an in-process worker at the concurrency that delivered most
//     takes -n/4 messages (at least 5 s of them) enqueued at half of that
//     rate, paced by four goroutines; each message carries its enqueue time
//     in a header and the server's ReceivedAt is the 250. Idle pickup: one
//     message into an idle worker, -idle-samples times after random pauses
//     (0-2 s); the target applies to the slowest sample.
//   - Worker RSS: a worker child process at concurrency -rss-c drains -n
//     messages; VmHWM from /proc/PID/status.
//
// Each target prints PASS or MISS. The program exits 0 when it measured,
// whatever the targets say, and non-zero only when something failed.
//
// -cpuprofile FILE writes a CPU profile of the bench process during sendq's
// (or the one -e2e-only consumer's) last end-to-end round at the last
// concurrency of -c (50 by default): the
// in-process worker, plus the SMTP server it sends to, which shows in the
// profile under smtpoauthtest and go-smtp's server. -trace FILE writes an
// execution trace of the same round: `go tool trace` shows how long the
// handler goroutines ran, waited for the network, for each other and for a
// CPU, which a CPU profile cannot.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	if raw := os.Getenv(workerProcessEnv); raw != "" {
		os.Exit(runWorkerProcess(raw))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		os.Exit(1)
	}
}

// Defaults of the flags.
const (
	DefaultMessages       = 20000
	DefaultEnqueueN       = 10000
	DefaultBatch          = 100
	DefaultRounds         = 7
	DefaultConcurrency    = "10,50"
	DefaultRSSConcurrency = 100
	DefaultBodyBytes      = 1024
	DefaultIdleSamples    = 5
	DefaultRedisAddr      = "127.0.0.1:6379"
	DefaultDB             = 11
	DefaultOut            = "bench/RESULTS.md"

	// Smoke mode's sizes, for flags left unset.
	smokeMessages = 300
	smokeEnqueueN = 300
)

// config is what one run measures, from the flags.
type config struct {
	Messages       int      // -n, SENDQ_BENCH_N
	EnqueueN       int      // -enqueue-n
	Batch          int      // -batch
	Rounds         int      // -rounds
	Concurrency    []int    // -c
	RSSConcurrency int      // -rss-c
	BodyBytes      int      // -body
	IdleSamples    int      // -idle-samples
	RedisAddr      string   // -redis, REDIS_ADDR
	DB             int      // -db
	Out            string   // -out; "" writes no file
	Smoke          bool     // -smoke: small, one round, no targets, no file
	CPUProfile     string   // -cpuprofile
	Trace          string   // -trace
	EndToEndOnly   []string // -e2e-only: only these end-to-end consumers, no file
}

// parseFlags reads the command line; getenv supplies the defaults that come
// from the environment (SENDQ_BENCH_N, REDIS_ADDR).
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defN := DefaultMessages
	if v := getenv("SENDQ_BENCH_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("SENDQ_BENCH_N: %q is not a number", v)
		}
		defN = n
	}
	fs.IntVar(&c.Messages, "n", defN, "messages per end-to-end run (env SENDQ_BENCH_N)")
	fs.IntVar(&c.EnqueueN, "enqueue-n", DefaultEnqueueN, "messages per enqueue-rate run")
	fs.IntVar(&c.Batch, "batch", DefaultBatch, "emails per EnqueueBatch call")
	fs.IntVar(&c.Rounds, "rounds", DefaultRounds, "rounds of each baseline and of sendq")
	conc := fs.String("c", DefaultConcurrency, "worker concurrencies of the end-to-end runs, comma-separated")
	fs.IntVar(&c.RSSConcurrency, "rss-c", DefaultRSSConcurrency, "concurrency of the worker whose peak RSS is measured")
	fs.IntVar(&c.BodyBytes, "body", DefaultBodyBytes, "bytes of text body per message")
	fs.IntVar(&c.IdleSamples, "idle-samples", DefaultIdleSamples, "idle pickup samples")
	fs.StringVar(&c.RedisAddr, "redis", cmpOr(getenv("REDIS_ADDR"), DefaultRedisAddr), "Redis address (env REDIS_ADDR)")
	fs.IntVar(&c.DB, "db", DefaultDB, "Redis database the benchmark keeps its keys in")
	fs.StringVar(&c.Out, "out", DefaultOut, `file the table is written to ("" for none; never in -smoke)`)
	fs.BoolVar(&c.Smoke, "smoke", false, "a few hundred messages, one round, no targets, no file")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of a sendq end-to-end round to `file`")
	fs.StringVar(&c.Trace, "trace", "", "write an execution trace of the same round as -cpuprofile to `file` (go tool trace)")
	only := fs.String("e2e-only", "", "measure only end to end with these consumers (`list` of noop, naive, sendq; for profiling): prints the rows, writes no file")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.Smoke {
		if !set["n"] {
			c.Messages = smokeMessages
		}
		if !set["enqueue-n"] {
			c.EnqueueN = smokeEnqueueN
		}
		if !set["rounds"] {
			c.Rounds = 1
		}
		if !set["idle-samples"] {
			c.IdleSamples = 1
		}
		c.Out = ""
	}
	var errs []error
	if *only != "" {
		c.Out = ""
		for _, name := range strings.Split(*only, ",") {
			name = strings.TrimSpace(name)
			if !slices.Contains(consumerNames, name) {
				errs = append(errs, fmt.Errorf("-e2e-only: %q is none of %s", name, strings.Join(consumerNames, ", ")))
			}
			c.EndToEndOnly = append(c.EndToEndOnly, name)
		}
	}
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("-c: %q is not a positive number", s))
			continue
		}
		c.Concurrency = append(c.Concurrency, n)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"n", c.Messages}, {"enqueue-n", c.EnqueueN}, {"batch", c.Batch}, {"rounds", c.Rounds},
		{"rss-c", c.RSSConcurrency}, {"body", c.BodyBytes}, {"idle-samples", c.IdleSamples}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("-%s: %d, want at least 1", f.name, f.v))
		}
	}
	if c.DB < 0 {
		errs = append(errs, fmt.Errorf("-db: %d is negative", c.DB))
	}
	return c, errors.Join(errs...)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// run measures everything, prints the table on stdout (progress on stderr)
// and writes it to cfg.Out.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	b, err := newBench(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer b.close()

	var r results
	r.env = collectEnv(ctx, b.rdb)
	if cfg.EndToEndOnly == nil {
		if r.enqueue, err = b.measureEnqueue(ctx); err != nil {
			return err
		}
	}
	for _, c := range cfg.Concurrency {
		e2e, err := b.measureEndToEnd(ctx, c, c == cfg.Concurrency[len(cfg.Concurrency)-1])
		if err != nil {
			return err
		}
		r.endToEnd = append(r.endToEnd, e2e)
	}
	if cfg.EndToEndOnly != nil {
		fmt.Fprint(stdout, r.endToEndRows(cfg))
		return nil
	}
	r.logins, r.loginMessages = b.sendqLogins, b.sendqMessages
	best := r.endToEnd[0]
	for _, e := range r.endToEnd {
		if e.sendq.median() > best.sendq.median() {
			best = e
		}
	}
	if r.latency, err = b.measureLatency(ctx, best.concurrency, best.sendq.median()/2); err != nil {
		return err
	}
	if r.grants, err = b.measureGrants(ctx); err != nil {
		return err
	}
	if r.rss, err = b.measureRSS(ctx); err != nil {
		return err
	}
	table := r.markdown(cfg)
	fmt.Fprint(stdout, table)
	if cfg.Out != "" {
		if err := os.WriteFile(cfg.Out, []byte(table+keptNotes(cfg.Out)), 0o644); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		fmt.Fprintf(stderr, "bench: wrote %s\n", cfg.Out)
	}
	return nil
}

// notesMarker starts the hand-written part of the results file (the
// optimisation log), which a new run keeps below its table.
const notesMarker = "<!-- notes: kept by make bench -->"

// keptNotes returns the hand-written part of the results file at path,
// from notesMarker on, or "" if there is none.
func keptNotes(path string) string {
	old, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if i := strings.Index(string(old), notesMarker); i >= 0 {
		return "\n" + string(old[i:])
	}
	return ""
}
