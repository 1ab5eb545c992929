package smtpoauth

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"sync"
)

// writeData writes data as the content of DATA (RFC 5321 §4.5.2) to w and
// flushes it: every line ends in CRLF, a line starting with "." gets a
// second one, and ".\r\n" ends it. The bytes are exactly what
// textproto.Writer's DotWriter writes (FuzzWriteData checks it); when every
// line of data already ends in CRLF, as BuildMIME's output does, the runs
// between dots are copied whole instead of byte by byte.
//
// final reports that err came from the last write, the one that carries
// the final ".": the server may have the whole message.
func writeData(w io.Writer, data []byte) (final bool, err error) {
	bw, release := dataWriter(w)
	defer release()
	if !crlfLines(data) {
		dw := textproto.NewWriter(bw).DotWriter()
		if _, err := dw.Write(data); err != nil {
			return false, err
		}
		return true, dw.Close()
	}
	if len(data) > 0 && data[0] == '.' {
		bw.WriteByte('.')
	}
	for rest := data; ; {
		i := bytes.Index(rest, crlfDot)
		if i < 0 {
			_, err = bw.Write(rest)
			break
		}
		// The line's "." goes out with the next run, after this one.
		if _, err = bw.Write(rest[:i+3]); err != nil {
			break
		}
		rest = rest[i+2:]
	}
	if err == nil && (len(data) == 0 || !bytes.HasSuffix(data, crlf)) {
		// DotWriter ends an unterminated last line, and an empty message,
		// with a CRLF.
		_, err = bw.Write(crlf)
	}
	if err == nil {
		_, err = bw.Write(dotCRLF)
	}
	if err != nil {
		// A write before the final "." failed.
		return false, err
	}
	return true, bw.Flush()
}

var (
	crlf    = []byte("\r\n")
	crlfDot = []byte("\r\n.")
	dotCRLF = []byte(".\r\n")
)

// dataWriters holds the buffers a message is written through (writeData,
// writeChunked): it goes out in writes of this size (TLS records), not one
// per line.
var dataWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}

// dataWriter takes a buffer of dataWriters writing to w; release puts it
// back.
func dataWriter(w io.Writer) (bw *bufio.Writer, release func()) {
	bw = dataWriters.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw, func() {
		bw.Reset(nil)
		dataWriters.Put(bw)
	}
}

// crlfLines reports whether every CR in data starts a CRLF and every LF
// ends one.
func crlfLines(data []byte) bool {
	for i := 0; i < len(data); {
		j := bytes.IndexAny(data[i:], "\r\n")
		if j < 0 {
			return true
		}
		i += j
		if data[i] != '\r' || i+1 == len(data) || data[i+1] != '\n' {
			return false
		}
		i += 2
	}
	return true
}
