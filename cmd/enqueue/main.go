// Command enqueue puts email:send tasks on the queue.
//
// One message from flags:
//
//	enqueue -account support -from support@example.com -to a@example.net \
//	        -subject Hello -text "Plain text" -attach report.pdf
//
// Many messages as JSON on stdin, one object per line (NDJSON) or one JSON
// array, each with the payload's fields (account_id, from, to, cc, bcc,
// reply_to, subject, text, html, headers, attachments) and optionally
// idempotency_key:
//
//	enqueue < messages.ndjson
//
// It prints one task ID per line. Every message is validated before any is
// enqueued: invalid input exits with status 1 and a message naming the line
// and the field, and nothing is enqueued.
//
// Operators follow the mail and the accounts with subcommands:
//
//	enqueue stats [-queue Q]... [-accounts FILE] [-json]   queues and accounts at a glance
//	enqueue status [-queue Q] [-json] TASK_ID...           what became of tasks
//	enqueue dead [-limit N] [-offset N] [-json]            dead letters and their reasons
//	enqueue requeue ID... | -all                           give dead letters another chance
//	enqueue account status|list|resume                     an account's health; release it
//
// Every subcommand answers -h with its usage and flags on stderr, and exits
// with status 0.
//
// Redis is found through REDIS_URL (default redis://127.0.0.1:6379/0),
// REDIS_CA_FILE and the REDIS_SENTINEL_* variables; the operator commands
// read the workers' ledger under SENDQ_LEDGER_PREFIX (default "sendq:").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], env{getenv: os.Getenv, stdin: os.Stdin, stdinIsTerminal: isTerminal(os.Stdin)}, os.Stdout, os.Stderr)
	stop()
	if code := exitStatus(err, os.Stderr); code != 0 {
		os.Exit(code)
	}
}

// exitStatus returns the process's exit status for run's error, printing
// the error to stderr: 0 for none and for -h (flag.ErrHelp: the usage was
// printed), 1 otherwise.
func exitStatus(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "enqueue:", err)
	return 1
}

// env is what run reads from the process besides its arguments.
type env struct {
	getenv          func(string) string
	stdin           io.Reader
	stdinIsTerminal bool
}

// isTerminal reports whether f is a character device, such as a terminal.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// subcommands maps a first argument to its command; without one of these
// names, the arguments belong to "send".
var subcommands = map[string]func(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error{
	"send":    runSend,
	"status":  runStatus,
	"dead":    runDead,
	"requeue": runRequeue,
	"account": runAccount,
	"stats":   runStats,
}

func run(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		if cmd, ok := subcommands[args[0]]; ok {
			return cmd(ctx, args[1:], e, stdout, stderr)
		}
	}
	return runSend(ctx, args, e, stdout, stderr)
}
