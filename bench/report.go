package main

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// sample is one measure over the rounds.
type sample []float64

func (s sample) median() float64 {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

func (s sample) min() float64 { return slices.Min(s) }
func (s sample) max() float64 { return slices.Max(s) }

// ratio returns the per-round ratios s[i]/base[i].
func (s sample) ratio(base sample) sample {
	out := make(sample, 0, len(s))
	for i := range min(len(s), len(base)) {
		if base[i] > 0 {
			out = append(out, s[i]/base[i])
		}
	}
	return out
}

// rate formats messages per second: "1234/s (1100-1300)".
func (s sample) rate() string {
	if len(s) == 1 {
		return fmt.Sprintf("%.0f/s", s[0])
	}
	return fmt.Sprintf("%.0f/s (%.0f–%.0f)", s.median(), s.min(), s.max())
}

// micros formats seconds as microseconds: "412 µs (400–430)".
func (s sample) micros() string {
	if len(s) == 1 {
		return fmt.Sprintf("%.0f µs", s[0]*1e6)
	}
	return fmt.Sprintf("%.0f µs (%.0f–%.0f)", s.median()*1e6, s.min()*1e6, s.max()*1e6)
}

// times formats a ratio: "0.93× (0.90–0.97)".
func (s sample) times() string {
	if len(s) == 1 {
		return fmt.Sprintf("%.2f×", s[0])
	}
	return fmt.Sprintf("%.2f× (%.2f–%.2f)", s.median(), s.min(), s.max())
}

// results is everything one run measured.
type results struct {
	env           runEnv
	enqueue       enqueueResult
	endToEnd      []endToEndResult
	logins        int
	loginMessages int
	latency       latencyResult
	grants        grantsResult
	rss           rssResult
}

// runEnv is the machine and the software measured.
type runEnv struct {
	date    time.Time
	cpus    int
	goVer   string
	redis   string
	module  string
	modules []string // "path version" of the dependencies that matter
}

// collectEnv describes this run: date, CPUs, Go, the Redis server and the
// versions of sendq and of the modules it is measured against.
func collectEnv(ctx context.Context, rdb *redis.Client) runEnv {
	e := runEnv{date: time.Now(), cpus: runtime.NumCPU(), goVer: runtime.Version(), redis: "unknown"}
	if info, err := rdb.InfoMap(ctx, "server").Result(); err == nil {
		if v := info["Server"]["redis_version"]; v != "" {
			e.redis = v
		}
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return e
	}
	e.module = bi.Main.Path + " " + bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			e.module += " " + s.Value[:min(12, len(s.Value))]
		case "vcs.modified":
			if s.Value == "true" {
				e.module += " (modified)"
			}
		}
	}
	if strings.HasSuffix(e.module, "(devel)") {
		// go run stamps no VCS information: ask git (read only).
		if out, err := exec.CommandContext(ctx, "git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
			e.module += " at commit " + strings.TrimSpace(string(out)) + " (plus any uncommitted changes)"
		}
	}
	for _, d := range bi.Deps {
		switch d.Path {
		case "github.com/hibiken/asynq", "github.com/emersion/go-smtp", "github.com/emersion/go-sasl",
			"github.com/redis/go-redis/v9", "golang.org/x/oauth2":
			v := d.Version
			if d.Replace != nil {
				v += " => " + d.Replace.Path + " " + d.Replace.Version
			}
			e.modules = append(e.modules, d.Path+" "+v)
		}
	}
	return e
}

// Targets of issue 7.
const (
	targetVsNaive       = 1.0
	targetVsNoop        = 0.45
	targetLoginsPerMsg  = 0.01
	targetGrants        = 1.0
	targetSingleVsRaw   = 0.9
	targetBulkVsSingle  = 1.8
	targetRSSBytes      = 40 << 20
	targetIdlePickupMax = 150 * time.Millisecond
)

// markdown renders the results: a header and one table.
func (r results) markdown(cfg config) string {
	var s strings.Builder
	mode := fmt.Sprintf("%d rounds", cfg.Rounds)
	if cfg.Smoke {
		mode = "smoke mode, no targets"
	}
	fmt.Fprintf(&s, "# sendq benchmark\n\n")
	fmt.Fprintf(&s, "- date: %s\n", r.env.date.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&s, "- machine: %d CPUs (runtime.NumCPU), %s/%s, %s, Redis %s\n", r.env.cpus, runtime.GOOS, runtime.GOARCH, r.env.goVer, r.env.redis)
	fmt.Fprintf(&s, "- module: %s\n", r.env.module)
	fmt.Fprintf(&s, "- dependencies: %s\n", strings.Join(r.env.modules, ", "))
	fmt.Fprintf(&s, "- run: %s; end to end %d messages; enqueue %d messages; %d-byte text body (payload %d bytes); STARTTLS + XOAUTH2 on loopback\n",
		mode, cfg.Messages, cfg.EnqueueN, cfg.BodyBytes, r.enqueue.payloadBytes)
	fmt.Fprintf(&s, "- values: median (min–max) over the rounds; a ratio is the median of per-round ratios\n\n")

	t := table{w: &s, smoke: cfg.Smoke}
	t.header()
	row, info := t.row, t.info

	e := r.enqueue
	single := e.single.ratio(e.raw)
	row("Enqueue, one goroutine: tasks.Client.Enqueue", "raw asynq Client.Enqueue "+e.raw.rate(), e.single.rate(), single.times(),
		fmt.Sprintf("≥ %.1f× raw", targetSingleVsRaw), single.median() >= targetSingleVsRaw)
	bulk := e.bulk.ratio(e.single)
	row(fmt.Sprintf("Enqueue, one goroutine: EnqueueBatch of %d", cfg.Batch), "sendq Enqueue "+e.single.rate(), e.bulk.rate(), bulk.times(),
		fmt.Sprintf("≥ %.1f× single", targetBulkVsSingle), bulk.median() >= targetBulkVsSingle)

	r.writeEndToEnd(t)

	perMsg := 0.0
	if r.loginMessages > 0 {
		perMsg = float64(r.logins) / float64(r.loginMessages)
	}
	row("SMTP logins per message (sendq end-to-end rounds)", "—",
		fmt.Sprintf("%.4f (%d logins / %d messages)", perMsg, r.logins, r.loginMessages), "—",
		fmt.Sprintf("≤ %.2f", targetLoginsPerMsg), perMsg <= targetLoginsPerMsg)

	g := r.grants
	perAcct := float64(g.grants) / float64(g.accounts)
	row(fmt.Sprintf("Token grants per account per token lifetime (%d worker processes)", g.processes), "—",
		fmt.Sprintf("%.2f (%d grants / %d accounts, %d messages in %v < 1 h lifetime)", perAcct, g.grants, g.accounts, g.messages, g.elapsed.Round(100*time.Millisecond)),
		"—", fmt.Sprintf("≤ %.0f", targetGrants), perAcct <= targetGrants)

	l := r.latency
	info(fmt.Sprintf("Enqueue → 250 latency p50 / p99, %d messages at half the max rate, concurrency %d", l.messages, l.concurrency),
		fmt.Sprintf("asked %.0f/s, enqueued %.0f/s", l.target, l.achieved),
		fmt.Sprintf("%v / %v", l.p50.Round(100*time.Microsecond), l.p99.Round(100*time.Microsecond)), "—")

	idleMax := time.Duration(0)
	if len(l.idle) > 0 {
		idleMax = time.Duration(l.idle.max() * float64(time.Second))
	}
	row(fmt.Sprintf("Idle pickup, enqueue → 250 (%d samples)", len(l.idle)), "—", durations(l.idle), "—",
		fmt.Sprintf("slowest ≤ %v", targetIdlePickupMax), len(l.idle) > 0 && idleMax <= targetIdlePickupMax)

	if r.rss.peakBytes < 0 {
		info(fmt.Sprintf("Worker peak RSS, concurrency %d (child process)", r.rss.concurrency), "—", "not measured (no /proc)", "—")
	} else {
		row(fmt.Sprintf("Worker peak RSS (VmHWM), concurrency %d, %d messages (child process)", r.rss.concurrency, r.rss.messages), "—",
			fmt.Sprintf("%.1f MiB", float64(r.rss.peakBytes)/(1<<20)), "—",
			fmt.Sprintf("≤ %d MiB", targetRSSBytes>>20), r.rss.peakBytes <= targetRSSBytes)
	}
	return s.String()
}

// endToEndRows renders the end-to-end rows alone, as a table (-e2e-only).
func (r results) endToEndRows(cfg config) string {
	var s strings.Builder
	t := table{w: &s, smoke: cfg.Smoke}
	t.header()
	r.writeEndToEnd(t)
	return s.String()
}

// writeEndToEnd writes the end-to-end rows to t.
func (r results) writeEndToEnd(t table) {
	for _, x := range r.endToEnd {
		if len(x.naive) > 0 {
			vsNaive := x.sendq.ratio(x.naive)
			t.row(fmt.Sprintf("End to end, concurrency %d, vs naive pooled go-smtp", x.concurrency), x.naive.rate(), x.sendq.rate(), vsNaive.times(),
				fmt.Sprintf("≥ %.1f×", targetVsNaive), vsNaive.median() >= targetVsNaive)
		}
		if len(x.noop) > 0 {
			vsNoop := x.sendq.ratio(x.noop)
			t.row(fmt.Sprintf("End to end, concurrency %d, vs asynq no-op drain", x.concurrency), x.noop.rate(), x.sendq.rate(), vsNoop.times(),
				fmt.Sprintf("≥ %.2f×", targetVsNoop), vsNoop.median() >= targetVsNoop)
		}
		if len(x.naive) == 0 && len(x.noop) == 0 && len(x.sendq) > 0 {
			t.info(fmt.Sprintf("End to end, concurrency %d", x.concurrency), "—", x.sendq.rate(), "—")
		}
	}
	for _, x := range r.endToEnd {
		if len(x.sendqCPU) == 0 || len(x.naiveCPU) == 0 || len(x.noopCPU) == 0 {
			continue
		}
		t.info(fmt.Sprintf("CPU per message (bench process + Redis), concurrency %d: naive handler; asynq no-op", x.concurrency),
			x.naiveCPU.micros()+"; "+x.noopCPU.micros(), x.sendqCPU.micros(),
			x.sendqCPU.ratio(x.naiveCPU).times()+"; "+x.sendqCPU.ratio(x.noopCPU).times())
	}
}

// table writes the rows of the results table.
type table struct {
	w     *strings.Builder
	smoke bool // no targets
}

func (t table) header() {
	t.w.WriteString("| Measure | Baseline | sendq | sendq / baseline | Target | Result |\n")
	t.w.WriteString("|---|---|---|---|---|---|\n")
}

// row writes a measure with a target, PASS or MISS (— in smoke mode).
func (t table) row(measure, base, sendq, ratio, target string, pass bool) {
	result := "MISS"
	if pass {
		result = "PASS"
	}
	if t.smoke {
		target, result = "—", "—"
	}
	fmt.Fprintf(t.w, "| %s | %s | %s | %s | %s | %s |\n", measure, base, sendq, ratio, target, result)
}

// info writes a measure without a target.
func (t table) info(measure, base, sendq, ratio string) {
	fmt.Fprintf(t.w, "| %s | %s | %s | %s | — | — |\n", measure, base, sendq, ratio)
}

// durations formats seconds as "median (min–max)" durations.
func durations(s sample) string {
	d := func(v float64) time.Duration {
		return time.Duration(v * float64(time.Second)).Round(time.Millisecond)
	}
	switch len(s) {
	case 0:
		return "—"
	case 1:
		return d(s[0]).String()
	}
	return fmt.Sprintf("%v (%v–%v)", d(s.median()), d(s.min()), d(s.max()))
}
