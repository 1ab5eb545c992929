package tasks_test

import (
	"strings"
	"testing"

	"github.com/sendq/sendq/tasks"
)

// BenchmarkDecodePayload decodes and validates the payload of a one-recipient
// message with a 1 KiB text body, as the handler does for every task.
func BenchmarkDecodePayload(b *testing.B) {
	task, _, err := tasks.NewTask(&tasks.Email{AccountID: "acct", From: "alice@example.com", To: []string{"bob@example.net"},
		Subject: "benchmark", Text: strings.Repeat("lorem ipsum ", 85)})
	if err != nil {
		b.Fatal(err)
	}
	data := task.Payload()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tasks.DecodePayload(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewTask validates and encodes the same message, as Enqueue does
// before its round trip to Redis.
func BenchmarkNewTask(b *testing.B) {
	e := &tasks.Email{AccountID: "acct", From: "alice@example.com", To: []string{"bob@example.net"},
		Subject: "benchmark", Text: strings.Repeat("lorem ipsum ", 85)}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := tasks.NewTask(e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildMIME renders the same message as BenchmarkDecodePayload's,
// as the handler does before every send.
func BenchmarkBuildMIME(b *testing.B) {
	task, _, err := tasks.NewTask(&tasks.Email{AccountID: "acct", From: "alice@example.com", To: []string{"bob@example.net"},
		Subject: "benchmark", Text: strings.Repeat("lorem ipsum ", 85)})
	if err != nil {
		b.Fatal(err)
	}
	p, err := tasks.DecodePayload(task.Payload())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.BuildMIME(); err != nil {
			b.Fatal(err)
		}
	}
}
