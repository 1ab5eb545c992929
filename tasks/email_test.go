package tasks_test

import (
	"slices"
	"testing"

	"github.com/sendq/sendq/tasks"
)

func TestEmailEnvelope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		email     tasks.Email
		wantFrom  string
		wantRcpts []string
	}{
		{
			name:      "BareAddressesWithoutDisplayNames",
			email:     tasks.Email{From: "Support <support@example.com>", To: []string{"Alice <alice@example.org>"}},
			wantFrom:  "support@example.com",
			wantRcpts: []string{"alice@example.org"},
		},
		{
			name: "ToThenCcThenBcc",
			email: tasks.Email{From: "s@example.com", To: []string{"a@example.org"}, Cc: []string{"c@example.org"},
				Bcc: []string{"b@example.org"}, ReplyTo: []string{"r@example.org"}},
			wantFrom:  "s@example.com",
			wantRcpts: []string{"a@example.org", "c@example.org", "b@example.org"},
		},
		{
			name: "DeduplicatesCaseInsensitivelyKeepingFirstSpelling",
			email: tasks.Email{From: "s@example.com", To: []string{"Alice@Example.org", "bob@example.org"},
				Cc: []string{"ALICE@example.ORG"}, Bcc: []string{"Bob <BOB@example.org>", "carol@example.org"}},
			wantFrom:  "s@example.com",
			wantRcpts: []string{"Alice@Example.org", "bob@example.org", "carol@example.org"},
		},
		{
			name:      "QuotedLocalPartStaysQuoted",
			email:     tasks.Email{From: `"john doe"@example.com`, To: []string{`"a b"@example.org`}},
			wantFrom:  `"john doe"@example.com`,
			wantRcpts: []string{`"a b"@example.org`},
		},
		{
			name:      "SkipsUnparseableAddresses",
			email:     tasks.Email{From: "nope", To: []string{"x", "a@example.org"}},
			wantFrom:  "",
			wantRcpts: []string{"a@example.org"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			from, rcpts := tt.email.Envelope()
			if from != tt.wantFrom || !slices.Equal(rcpts, tt.wantRcpts) {
				t.Errorf("Envelope() = %q, %q; want %q, %q", from, rcpts, tt.wantFrom, tt.wantRcpts)
			}
		})
	}
}
