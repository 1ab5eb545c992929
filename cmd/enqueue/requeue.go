package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/sendq/sendq/tasks"
)

func runRequeue(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("enqueue requeue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	all := fs.Bool("all", false, "requeue every dead letter")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: enqueue requeue ID...
       enqueue requeue -all

Gives the mail of dead letters (IDs from "enqueue dead") another chance and
removes the letters. The message's refused recipients are forgotten so that
they are tried again; recipients who already have the message never get it
twice. A message given up whole runs again as the same task; refused
recipients of a delivered message go in a new task ("requeue-…"). Prints the
task that delivers each; follow it with "enqueue status -queue Q TASK_ID".

%s
`, operatorEnvHelp)
		fs.PrintDefaults()
	}
	ids, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case *all && len(ids) > 0:
		return errors.New("requeue: give dead-letter IDs or -all, not both")
	case !*all && len(ids) == 0:
		fs.Usage()
		return errors.New("requeue: no dead-letter ID given")
	}
	admin, err := openAdmin(e)
	if err != nil {
		return err
	}
	defer admin.Close()

	if *all {
		n, err := admin.RequeueAll(ctx)
		fmt.Fprintf(stdout, "requeued %d dead letters\n", n)
		return err
	}
	var errs []error
	for _, id := range ids {
		rq, err := admin.Requeue(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(stdout, describeRequeue(rq))
	}
	return errors.Join(errs...)
}

// describeRequeue says in one line what Requeue did.
func describeRequeue(rq *tasks.Requeued) string {
	switch rq.Action {
	case tasks.RequeueRan:
		return fmt.Sprintf("%s: task %s runs again on queue %s", rq.ID, rq.TaskID, rq.Queue)
	case tasks.RequeueEnqueued:
		return fmt.Sprintf("%s: enqueued as task %s on queue %s", rq.ID, rq.TaskID, rq.Queue)
	case tasks.RequeueQueued:
		return fmt.Sprintf("%s: task %s on queue %s was still queued and takes the recipients along", rq.ID, rq.TaskID, rq.Queue)
	case tasks.RequeueCompleted:
		return fmt.Sprintf("%s: task %s on queue %s had completed; stale letter removed, nothing sent", rq.ID, rq.TaskID, rq.Queue)
	}
	return fmt.Sprintf("%s: %s, task %s on queue %s", rq.ID, rq.Action, rq.TaskID, rq.Queue)
}
