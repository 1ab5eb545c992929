package main

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sendq/sendq/tasks"
)

func TestSampleBatchIsValid(t *testing.T) {
	t.Parallel()
	sc := bufio.NewScanner(strings.NewReader(sampleBatch(12)))
	n := 0
	for sc.Scan() {
		n++
		var e tasks.Email
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		if err := e.Validate(); err != nil {
			t.Errorf("line %d: %v", n, err)
		}
	}
	if n != 12 {
		t.Errorf("%d lines, want 12", n)
	}
}
