package aws

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawExchange writes raw to a new connection to the proxy and reads the answers.
func rawExchange(t *testing.T, addr, raw string, answers int) ([]*http.Response, []string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var rs []*http.Response
	var bodies []string
	for i := 0; i < answers; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		var sb strings.Builder
		_, _ = bufio.NewReader(resp.Body).WriteTo(&sb)
		rs = append(rs, resp)
		bodies = append(bodies, sb.String())
	}
	return rs, bodies
}

func TestServerFraming(t *testing.T) {
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:9" })
	addr := tp.Addr().String()
	unsigned := "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 2\r\n\r\n{}"

	// two pipelined requests on one connection: two answers, each with its length, kept alive
	rs, bodies := rawExchange(t, addr, unsigned+unsigned, 2)
	for i, r := range rs {
		if r.StatusCode != http.StatusForbidden || r.ContentLength != int64(len(bodies[i])) || r.Close ||
			r.Header.Get("Date") == "" || !strings.Contains(bodies[i], "MissingAuthenticationToken") {
			t.Fatalf("answer %d: %d len %d close %v date %q body %q", i, r.StatusCode, r.ContentLength, r.Close, r.Header.Get("Date"), bodies[i])
		}
	}
	// chunked request body and Expect: 100-continue
	rs, _ = rawExchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 2)
	if rs[0].StatusCode != http.StatusContinue || rs[1].StatusCode != http.StatusForbidden {
		t.Fatalf("100-continue: %d then %d", rs[0].StatusCode, rs[1].StatusCode)
	}
	// HTTP/1.0: the connection closes after the answer
	rs, _ = rawExchange(t, addr, strings.Replace(unsigned, "HTTP/1.1", "HTTP/1.0", 1), 1)
	if !rs[0].Close {
		t.Fatal("HTTP/1.0 answer does not close the connection")
	}
	// malformed, Host-less, conflicting lengths, oversized head, HTTP/2 preface
	for _, tc := range []struct {
		raw  string
		want int
	}{
		{"GARBAGE\r\n\r\n", http.StatusBadRequest},
		{"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", http.StatusBadRequest},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", http.StatusBadRequest},
		{"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", http.StatusHTTPVersionNotSupported},
	} {
		rs, _ := rawExchange(t, addr, tc.raw, 1)
		if rs[0].StatusCode != tc.want || !rs[0].Close {
			t.Errorf("%.40q: %d close %v, want %d and close", tc.raw, rs[0].StatusCode, rs[0].Close, tc.want)
		}
	}
}

func TestServerShutdownClosesIdle(t *testing.T) {
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:9" })
	c, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with an idle connection: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("idle connection after Shutdown: read %d, %v", n, err)
	}
	if _, err := net.Dial("tcp", tp.Addr().String()); err == nil {
		t.Fatal("listener still accepts after Shutdown")
	}
}
