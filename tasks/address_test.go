package tasks

import (
	"net/mail"
	"reflect"
	"testing"
)

// addressSeeds are addresses of every form, some taking parseMailAddress's
// shortcut and some not.
var addressSeeds = []string{
	"a@example.com", "a.b-c+d@sub.example.co.uk", "Jane Doe <jane@example.com>", "Jane  Doe <jane@example.com>",
	" Jane <j@example.com>", "Jane <j@example.com> ", "J. Doe <j@example.com>", `"Doe, J" <j@example.com>`,
	"=?utf-8?q?J=C3=B6rg?= <j@example.com>", "<j@example.com>", "Jane<j@example.com>", ".a@example.com",
	"a..b@example.com", "a.@example.com", "a@example..com", "a@[192.0.2.1]", `"a b"@example.com`,
	"a@b@example.com", "Jane <a@b@example.com>", "a@", "@example.com", "a", "", "Jane <>", "Jane <a@example.com",
	"Jörg <j@example.com>", "j@exämple.com", "Jane (comment) <j@example.com>", "j@example.com (Jane)",
}

func TestParseMailAddressIsNetMail(t *testing.T) {
	t.Parallel()
	for _, s := range addressSeeds {
		checkParseMailAddress(t, s)
	}
}

// TestParseMailAddressShortcut checks that the common forms take the
// shortcut: one allocation, the Address, where net/mail makes a dozen.
func TestParseMailAddressShortcut(t *testing.T) {
	for _, s := range []string{"a@example.com", "Jane Doe <jane.doe@example.com>", "J0 9 <a.b@c>"} {
		got := testing.AllocsPerRun(10, func() { _, _ = parseMailAddress(s) })
		netMail := testing.AllocsPerRun(10, func() { _, _ = mail.ParseAddress(s) })
		if got > 1 || got*4 > netMail {
			t.Errorf("parseMailAddress(%q) allocates %v times (net/mail %v), want 1: the shortcut", s, got, netMail)
		}
	}
}

// FuzzParseMailAddress checks parseMailAddress and bareAddress against
// net/mail on any string.
func FuzzParseMailAddress(f *testing.F) {
	for _, s := range addressSeeds {
		f.Add(s)
	}
	f.Fuzz(checkParseMailAddress)
}

func checkParseMailAddress(t *testing.T, s string) {
	got, err := parseMailAddress(s)
	want, wantErr := mail.ParseAddress(s)
	if (err != nil) != (wantErr != nil) || err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("parseMailAddress(%q) = %+v, %v; net/mail: %+v, %v", s, got, err, want, wantErr)
	}
	if err != nil {
		return
	}
	s2 := (&mail.Address{Address: want.Address}).String()
	if bare, netBare := bareAddress(got), s2[1:len(s2)-1]; bare != netBare {
		t.Fatalf("bareAddress(%q) = %q, net/mail writes %q", want.Address, bare, netBare)
	}
}
