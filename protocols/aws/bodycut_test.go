package aws

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestCutBodiesDoNotFloodTheLog: a request whose body ends before its Content-Length, which
// any client can send, is counted as a malformed request and logged at Warn only now and then,
// as the front's other refusals are: each was a Warn line of its own, uncounted.
func TestCutBodiesDoNotFloodTheLog(t *testing.T) {
	up := sqsPeer(t)
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) { c.Upstream, c.Log = up.URL(), zerolog.New(&logs).Level(zerolog.DebugLevel) })
	addr := strings.TrimPrefix(tp.url, "http://")
	const n = 15
	for range n {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 100\r\n\r\n{\"Qu", addr)
		conn.(*net.TCPConn).CloseWrite()
		var b [512]byte
		conn.Read(b[:]) // the answer, or the close
		conn.Close()
	}
	waitFor(t, "every cut body counted", func() bool { return tp.Stats().MalformedRequests >= n })
	warn, all := 0, 0
	for _, l := range strings.Split(logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil || !strings.HasPrefix(fmt.Sprint(m["message"]), "could not read a request body") {
			continue
		}
		all++
		if m["level"] == "warn" {
			warn++
		}
	}
	if warn != 10 || all != n {
		t.Errorf("%d cut bodies: %d Warn lines of %d, want 10 of %d", n, warn, all, n)
	}
	if got := tp.Stats().MalformedRequests; got != n {
		t.Errorf("MalformedRequests %d, want %d", got, n)
	}
}
