package smtpoauth

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// dotWriterOutput is what textproto's DotWriter writes for data.
func dotWriterOutput(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	dw := textproto.NewWriter(bw).DotWriter()
	if _, err := dw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestWriteData(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, data, want string }{
		{"Empty", "", "\r\n.\r\n"},
		{"OneLine", "Hi\r\n", "Hi\r\n.\r\n"},
		{"Unterminated", "Hi", "Hi\r\n.\r\n"},
		{"LeadingDot", ".Hi\r\n", "..Hi\r\n.\r\n"},
		{"DotLines", "a\r\n.\r\n..b\r\n.", "a\r\n..\r\n...b\r\n..\r\n.\r\n"},
		{"DotNotAtLineStart", "a.b\r\nc .\r\n", "a.b\r\nc .\r\n.\r\n"},
		{"BareLF", "a\n.b\n", "a\r\n..b\r\n.\r\n"},
		{"BareCR", "a\rb\r\n", "a\rb\r\n.\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if _, err := writeData(&b, []byte(tc.data)); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("writeData(%q) = %q, want %q", tc.data, b.String(), tc.want)
			}
			if dw := dotWriterOutput(t, []byte(tc.data)); !bytes.Equal(dw, b.Bytes()) {
				t.Errorf("DotWriter writes %q", dw)
			}
		})
	}
}

// FuzzWriteData checks that writeData writes what textproto's DotWriter
// writes, whatever the message holds.
func FuzzWriteData(f *testing.F) {
	for _, s := range []string{"", "a\r\n.b\r\n", ".", "\r\n.\r\n", "a\n.", "\r\r\n.", "..\r\n\r\n.x", "x\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var b bytes.Buffer
		if _, err := writeData(&b, data); err != nil {
			t.Fatal(err)
		}
		if want := dotWriterOutput(t, data); !bytes.Equal(b.Bytes(), want) {
			t.Fatalf("writeData(%q) = %q, DotWriter writes %q", data, b.Bytes(), want)
		}
	})
}

func BenchmarkWriteData(b *testing.B) {
	msg := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog, then sends a receipt. 0123\r\n"), 20)
	b.SetBytes(int64(len(msg)))
	var out bytes.Buffer
	b.Run("writeData", func(b *testing.B) {
		for b.Loop() {
			out.Reset()
			writeData(&out, msg)
		}
	})
	b.Run("DotWriter", func(b *testing.B) {
		for b.Loop() {
			out.Reset()
			bw := bufio.NewWriter(&out)
			dw := textproto.NewWriter(bw).DotWriter()
			dw.Write(msg)
			dw.Close()
		}
	})
}
