package aws

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
)

// FuzzSniffHTTP: the checks of a front's first bytes never turn away what net/http reads as a
// request. After the empty lines skipEmptyLines skips, isH2Preface holds exactly when the HTTP/2
// preface comes next, and a request http.ReadRequest then reads is never notHTTP (which would
// refuse it as another protocol's client).
func FuzzSniffHTTP(f *testing.F) {
	for _, s := range []string{"POST / HTTP/1.1\r\nHost: 127.0.0.1:4566\r\nContent-Length: 0\r\n\r\n", h2Preface,
		"\r\n\nGET /?Action=ListQueues HTTP/1.0\r\n\r\n", "PRI / HTTP/1.0\r\n\r\n", "get\n", "AMQP\x00\x00\x09\x01",
		"\x00\x00\x00\x24\x00\x12\x00\x03", "\x16\x03\x01\x02\x00", "M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		src := bytes.NewReader(b)
		br := bufio.NewReaderSize(src, 4096)
		if !skipEmptyLines(br) {
			return
		}
		rest := b[len(b)-br.Buffered()-src.Len():]
		if got := isH2Preface(br); got != bytes.HasPrefix(rest, []byte(h2Preface)) {
			t.Fatalf("isH2Preface(%q) = %v", rest, got)
		}
		not := notHTTP(br)
		if req, err := http.ReadRequest(br); err == nil && not {
			t.Fatalf("%q reads as a %s request, and notHTTP refuses it as another protocol", rest, req.Method)
		}
	})
}
