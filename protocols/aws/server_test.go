package aws

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
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
	unsigned := "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 2\r\n\r\n{}"

	// two pipelined requests on one connection: two answers, each with its length, kept alive
	rs, bodies := rawExchange(t, addr, unsigned+unsigned, 2)
	for i, r := range rs {
		if r.StatusCode != http.StatusForbidden || r.ContentLength != int64(len(bodies[i])) || r.Close ||
			r.Header.Get("Date") == "" || !strings.Contains(bodies[i], "MissingAuthenticationToken") {
			t.Fatalf("answer %d: %d len %d close %v date %q body %q", i, r.StatusCode, r.ContentLength, r.Close, r.Header.Get("Date"), bodies[i])
		}
	}
	// chunked request body and Expect: 100-continue
	rs, _ = rawExchange(t, addr, "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 2)
	if rs[0].StatusCode != http.StatusContinue || rs[1].StatusCode != http.StatusForbidden {
		t.Fatalf("100-continue: %d then %d", rs[0].StatusCode, rs[1].StatusCode)
	}
	// Content-Length and chunked both: framed as chunked, and the connection closes after the
	// answer (RFC 9112 6.1), so what a length-framing intermediary took for the body's end
	// cannot become a request here
	both := "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, both+unsigned); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if r, err := http.ReadResponse(br, nil); err != nil || r.StatusCode != http.StatusForbidden || !r.Close {
		t.Fatalf("Content-Length with chunked: %v %v", r, err)
	} else {
		io.Copy(io.Discard, r.Body)
	}
	if r, err := http.ReadResponse(br, nil); err == nil {
		t.Fatalf("a request after Content-Length with chunked was answered: %d", r.StatusCode)
	}
	// HTTP/1.0: the connection closes after the answer, and an Expect is ignored (RFC 9110
	// 10.1.1): a 1.0 client would take 100 Continue for the answer
	rs, _ = rawExchange(t, addr, strings.Replace(unsigned, "HTTP/1.1", "HTTP/1.0", 1), 1)
	if !rs[0].Close {
		t.Fatal("HTTP/1.0 answer does not close the connection")
	}
	rs, _ = rawExchange(t, addr, strings.Replace(strings.Replace(unsigned, "HTTP/1.1", "HTTP/1.0", 1), "Host: 127.0.0.1\r\n", "Host: 127.0.0.1\r\nExpect: 100-continue\r\n", 1), 1)
	if rs[0].StatusCode != http.StatusForbidden {
		t.Fatalf("HTTP/1.0 request with Expect: first answer %d", rs[0].StatusCode)
	}
	// malformed, Host-less, conflicting lengths, oversized head (the HTTP/2 preface starts an
	// HTTP/2 connection: TestKinesisOverHTTP2)
	for _, tc := range []struct {
		raw  string
		want int
	}{
		{"GARBAGE\r\n\r\n", http.StatusBadRequest},
		{"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", http.StatusBadRequest},
		{"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", http.StatusBadRequest},
		{"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		// textproto keeps "Content-Length " as its own field: framed without it, the body would
		// be read as the next request (RFC 9112 5.1 asks for 400)
		{strings.Replace(unsigned, "Content-Length: 2", "Content-Length : 2", 1) + unsigned, http.StatusBadRequest},
		{strings.Replace(unsigned, "Content-Length: 2", "Transfer-Encoding : chunked\r\nContent-Length: 2", 1), http.StatusBadRequest},
		{strings.Replace(unsigned, "Host: 127.0.0.1", `Host: a"b`, 1), http.StatusBadRequest},
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

// TestServerContinueAfterIdle: a keep-alive connection idle longer than the last answer's write
// deadline still gets its 100 Continue, then its answer.
func TestServerContinueAfterIdle(t *testing.T) {
	defer func(d time.Duration) { bodyTimeout = d }(bodyTimeout)
	bodyTimeout = 3 * time.Second // for the 2 minutes an idle connection may outlast; long enough for a loaded machine to send the body
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:9"; c.Listener.IdleTimeout = time.Minute })
	c, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(c)
	head := "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n"
	io.WriteString(c, head+"Content-Length: 2\r\n\r\n{}")
	if r, err := http.ReadResponse(br, nil); err != nil || r.StatusCode != http.StatusForbidden {
		t.Fatalf("first request: %v %v", r, err)
	} else {
		io.Copy(io.Discard, r.Body)
	}
	time.Sleep(bodyTimeout + 500*time.Millisecond) // past the answer's write deadline
	io.WriteString(c, head+"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
	r, err := http.ReadResponse(br, nil)
	if err != nil || r.StatusCode != http.StatusContinue {
		t.Fatalf("Expect on a connection idle past the last write deadline: %v %v", r, err)
	}
	io.WriteString(c, "{}")
	if r, err := http.ReadResponse(br, nil); err != nil || r.StatusCode != http.StatusForbidden {
		t.Fatalf("after 100 Continue: %v %v", r, err)
	}
}

// drainLine is the drain's last line with the long poll's connection and at most one probe.
var drainLine = regexp.MustCompile(`"connections":[12],"message":"drained: every open connection finished"`)

// TestServerDrainSaysClose: an answer written during a graceful shutdown carries Connection:
// close, so the client does not send its next request on a connection about to close.
func TestServerDrainSaysClose(t *testing.T) {
	up := sqsPeer(t)
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL(); c.TrustClients = true; c.Log = zerolog.New(&logs) })
	c, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(time.Minute)
	c.SetDeadline(deadline)
	br := bufio.NewReader(c)
	call := func(op, body string) string {
		return "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS." + op +
			fmt.Sprintf("\r\nContent-Length: %d\r\n\r\n", len(body)) + body
	}
	io.WriteString(c, call("CreateQueue", `{"QueueName":"drained"}`))
	r, err := http.ReadResponse(br, nil)
	if err != nil || r.StatusCode != http.StatusOK {
		t.Fatalf("CreateQueue: %v %v", r, err)
	}
	var cq struct{ QueueUrl string }
	if err := json.NewDecoder(r.Body).Decode(&cq); err != nil {
		t.Fatal(err)
	}
	// A long poll in flight when the drain begins. It ends when the test sends a message once the
	// drain has begun: a short wait could end before a loaded machine got there.
	io.WriteString(c, call("ReceiveMessage", `{"QueueUrl":"`+cq.QueueUrl+`","WaitTimeSeconds":20}`))
	for up.count() < 2 { // the long poll reached the emulator
		if time.Now().After(deadline) {
			t.Fatal("the long poll never reached upstream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- tp.Shutdown(ctx)
	}()
	for { // the listener closes once the drain has begun
		d, err := net.Dial("tcp", tp.Addr().String())
		if err != nil {
			break
		}
		d.Close()
		if time.Now().After(deadline) {
			t.Fatal("the drain never began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Straight to the emulator: the proxy takes no new connections now.
	qu, err := url.Parse(cq.QueueUrl)
	if err != nil {
		t.Fatal(err)
	}
	qu.Scheme, qu.Host = up.target.Scheme, up.target.Host
	if _, err := httpPost(up.target.String(), "application/x-amz-json-1.0", map[string]string{"X-Amz-Target": "AmazonSQS.SendMessage"},
		`{"QueueUrl":"`+qu.String()+`","MessageBody":"wake"}`); err != nil {
		t.Fatal(err)
	}
	r, err = http.ReadResponse(br, nil)
	if err != nil || r.StatusCode != http.StatusOK {
		t.Fatalf("the long poll during the drain: %v %v", r, err)
	}
	if b, _ := io.ReadAll(r.Body); !strings.Contains(string(b), "wake") {
		t.Errorf("the long poll's answer lacks the message sent during the drain: %s", b)
	}
	if !r.Close {
		t.Error("an answer written during the drain does not say Connection: close")
	}
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	// The drain says how it ended, as every front's does. It counts the long poll's connection and,
	// when the drain began just after the server accepted one, the last probe dial above: idle,
	// closed by the drain, but open when it began.
	if l := logs.String(); !drainLine.MatchString(l) {
		t.Errorf("no drain line: %s", l)
	}
}

// TestServerOffersOnlyHTTP11: whatever ALPN protocols the TLS configuration lists, a client
// offering h2 and http/1.1 is told http/1.1, the front's common path (HTTP/2 is for clients that
// offer nothing else: TestKinesisOverHTTP2).
func TestServerOffersOnlyHTTP11(t *testing.T) {
	srvTLS, pool := testpki.ServerTLS(t)
	srvTLS.NextProtos = []string{"h2", "http/1.1"}
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:9"; c.Listener.TLS = srvTLS })
	c, err := tls.Dial("tcp", tp.Addr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Errorf("negotiated %q, want http/1.1", p)
	}
}

// TestServerRelaysHead: a HEAD answer states the length of a body it does not have; the proxy
// relays it instead of waiting for that body and answering 502.
func TestServerRelaysHead(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(http.StatusOK)
	}))
	defer up.Close()
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL; c.TrustClients = true })
	rs, _ := rawExchange(t, tp.Addr().String(), "HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1)
	if rs[0].StatusCode != http.StatusOK {
		t.Errorf("HEAD answered %d, want the upstream's 200", rs[0].StatusCode)
	}
}

// TestHopByHopFieldsStay: the upstream's hop-by-hop fields, and those its Connection names, are
// not passed on to the client; the others are.
func TestHopByHopFieldsStay(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "1")
		h.Set("Upgrade", "h2c")
		h.Set("Proxy-Connection", "keep-alive")
		h.Set("X-Amzn-Requestid", "r1")
		w.Write([]byte("{}"))
	}))
	defer up.Close()
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL; c.TrustClients = true })
	rs, _ := rawExchange(t, tp.Addr().String(), "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 2\r\n\r\n{}", 1)
	for _, k := range []string{"X-Hop", "Upgrade", "Proxy-Connection"} {
		if v := rs[0].Header.Get(k); v != "" {
			t.Errorf("%s: %q reached the client", k, v)
		}
	}
	if rs[0].Header.Get("X-Amzn-Requestid") != "r1" {
		t.Errorf("an end-to-end field was dropped: %v", rs[0].Header)
	}
}

// flakyListener fails its first Accepts with a transient error, as a listener out of
// descriptors or seeing aborted handshakes does.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, syscall.ECONNABORTED
	}
	return l.Listener.Accept()
}

// TestServerAcceptsAfterTransientErrors: errors from Accept other than a closed listener are
// retried; the front goes on serving.
func TestServerAcceptsAfterTransientErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(3)
	srv := &h1Server{refusals: new(atomic.Uint64), handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }),
		baseCtx: context.Background(), maxHeaderBytes: 1 << 20, logErr: func(string) {}}
	served := make(chan error, 1)
	go func() { served <- srv.serve(fl) }()
	rs, bodies := rawExchange(t, ln.Addr().String(), "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1)
	if rs[0].StatusCode != http.StatusOK || bodies[0] != "ok" {
		t.Errorf("after transient accept errors: %d %q", rs[0].StatusCode, bodies[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.shutdown(ctx)
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("serve ended with %v", err)
	}
}

// TestServerLogsRefusalsAndPanics: a malformed request gets its answer and a log line that names
// the connection, the client and why; a handler panic closes only its connection, with the stack.
func TestServerLogsRefusalsAndPanics(t *testing.T) {
	var logs syncbuf.Buffer
	ln := serveLogged(t, &logs, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			panic("handler bug")
		}
		w.Write([]byte("ok"))
	}))
	for _, tc := range []struct{ raw, status, why string }{
		{"GET / HTTP/1.1\r\n\r\n", "400", "missing required Host header"},
		{"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", "400", "invalid header name"},
		{"GET / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", "417", "expectation"},
		{"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505", "HTTP/2.0"},
	} {
		rs, _ := rawExchange(t, ln.Addr().String(), tc.raw, 1)
		if got := strconv.Itoa(rs[0].StatusCode); got != tc.status {
			t.Errorf("%q: status %s, want %s", tc.raw, got, tc.status)
		}
		waitForLog(t, &logs, tc.why)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, _ := c.Read(make([]byte, 1)); n != 0 {
		t.Error("a panicking handler's connection answered")
	}
	c.Close()
	waitForLog(t, &logs, "handler bug")
	// Still serving.
	if rs, bodies := rawExchange(t, ln.Addr().String(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1); rs[0].StatusCode != 200 || bodies[0] != "ok" {
		t.Errorf("after the panic: %d %q", rs[0].StatusCode, bodies[0])
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["conn"] == nil || !strings.HasPrefix(fmt.Sprint(m["client"]), "127.0.0.1:") {
			t.Errorf("log line without its connection: %s", line)
		}
		if strings.Contains(line, "handler bug") && !strings.Contains(fmt.Sprint(m["stack"]), "TestServerLogsRefusalsAndPanics") {
			t.Errorf("panic line without the stack: %s", line)
		}
	}
}

// waitForLog waits until the log holds want (the server logs after it answered).
func waitForLog(t *testing.T, logs *syncbuf.Buffer, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q:\n%s", want, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServerRefusalsDoNotFloodTheLog: the first 10 refusals are Warn lines, the rest Debug
// (every 1000th Warn again), so a scanner sending malformed requests cannot fill the log.
func TestServerRefusalsDoNotFloodTheLog(t *testing.T) {
	var logs syncbuf.Buffer
	ln := serveLogged(t, &logs, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for range 12 {
		rawExchange(t, ln.Addr().String(), "GET / HTTP/1.1\r\n\r\n", 1)
	}
	waitForLog(t, &logs, `"refused_total":12`) // the server logs after it answered
	var warn, debug int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		switch {
		case strings.Contains(line, `"level":"warn"`):
			warn++
		case strings.Contains(line, `"level":"debug"`):
			debug++
		}
	}
	if warn != 10 || debug != 2 {
		t.Errorf("%d Warn and %d Debug lines for 12 refusals, want 10 and 2:\n%s", warn, debug, logs.String())
	}
}

// serveLogged runs an h1Server with h, logging to logs, until the test ends; it returns its listener.
func serveLogged(t *testing.T, logs *syncbuf.Buffer, h http.Handler) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &h1Server{handler: h, baseCtx: context.Background(), maxHeaderBytes: 1 << 20, logErr: func(string) {}, log: zerolog.New(logs), refusals: new(atomic.Uint64)}
	srv.enableH2(ln.Addr()) // as Proxy.Start does
	served := make(chan error, 1)
	go func() { served <- srv.serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.shutdown(ctx)
		<-served
	})
	return ln
}

// TestMalformedRequestsInStats: the front's Stats count the requests its server refused as
// malformed, which never reach the handler (Requests).
func TestMalformedRequestsInStats(t *testing.T) {
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:1" })
	addr := tp.Addr().String()
	for _, raw := range []string{"GET / HTTP/1.1\r\n\r\n", "GARBAGE / HTTP/9.9\r\n\r\n"} {
		if rs, _ := rawExchange(t, addr, raw, 1); rs[0].StatusCode < 400 {
			t.Fatalf("%q answered %d", raw, rs[0].StatusCode)
		}
	}
	if st := tp.Stats(); st.MalformedRequests != 2 || st.Requests != 0 {
		t.Errorf("MalformedRequests %d, Requests %d; want 2, 0", st.MalformedRequests, st.Requests)
	}
}

// TestTLSHandshakeFailuresInStats: a TLS front counts a client whose handshake fails, and not a
// connection closed before its first byte (a port probe or TCP health check).
func TestTLSHandshakeFailuresInStats(t *testing.T) {
	srvTLS, _ := testpki.ServerTLS(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:1"; c.Listener.TLS = srvTLS })
	addr := tp.Addr().String()

	for range 3 {
		testpki.Knock(t, addr, "") // probes
	}
	for i := range 2 {
		testpki.Knock(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // plain HTTP to a TLS port
		waitFor(t, "the failed handshake in Stats", func() bool { return tp.Stats().MalformedRequests >= uint64(i+1) })
	}
	// A hello cut off without an alert (a plain EOF) was spoken: it counts.
	testpki.HelloAndHangUp(t, addr)
	waitFor(t, "the hello cut off in Stats", func() bool { return tp.Stats().MalformedRequests >= 3 })
	if n := tp.Stats().MalformedRequests; n != 3 {
		t.Errorf("MalformedRequests %d after 3 probes, 2 failed handshakes and a hello cut off, want 3", n)
	}
}

// waitFor waits until cond holds (a server counts after its client saw the close).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServerSkipsEmptyLines: a few empty lines before a request line are ignored (RFC 9112 2.2);
// more are refused.
func TestServerSkipsEmptyLines(t *testing.T) {
	var logs syncbuf.Buffer
	ln := serveLogged(t, &logs, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	for _, pre := range []string{"\r\n", "\n", "\r\n\r\n\n"} {
		rs, bodies := rawExchange(t, ln.Addr().String(), pre+"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1)
		if rs[0].StatusCode != 200 || bodies[0] != "ok" {
			t.Errorf("%q before the request: %d %q", pre, rs[0].StatusCode, bodies[0])
		}
	}
	if rs, _ := rawExchange(t, ln.Addr().String(), strings.Repeat("\r\n", maxEmptyLines+1)+"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1); rs[0].StatusCode != 400 {
		t.Errorf("%d empty lines before the request: %d, want 400", maxEmptyLines+1, rs[0].StatusCode)
	}
}

// TestServerShortPRIRequest: a request whose method is PRI but which is no HTTP/2 preface is read
// as the HTTP/1 request it is, however short: the preface check reads no further than the first
// byte that differs. Before, a request shorter than the preface's 24 bytes waited for bytes that
// never came, until the idle timeout (5 minutes).
func TestServerShortPRIRequest(t *testing.T) {
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:9" })
	for _, tc := range []struct {
		raw  string
		want int
	}{
		{"PRI / HTTP/1.0\r\n\r\n", http.StatusForbidden}, // unsigned
		{"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n", http.StatusHTTPVersionNotSupported},
	} {
		rs, _ := rawExchange(t, tp.Addr().String(), tc.raw, 1)
		if rs[0].StatusCode != tc.want {
			t.Errorf("%q: %d, want %d", tc.raw, rs[0].StatusCode, tc.want)
		}
	}
}

// TestServerH2RefusalsAndPanics: an HTTP/2 connection that breaks the protocol is refused as a
// malformed HTTP/1.1 request is, counted (Stats' MalformedRequests) and logged at Warn; a handler
// that panics on an HTTP/2 request is logged at Error, as on HTTP/1.1, and the server serves on.
func TestServerH2RefusalsAndPanics(t *testing.T) {
	var logs syncbuf.Buffer
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			panic("h2 handler bug")
		}
		w.Write([]byte("ok"))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &h1Server{handler: h, baseCtx: context.Background(), maxHeaderBytes: 1 << 20, logErr: func(string) {}, log: zerolog.New(&logs), refusals: new(atomic.Uint64)}
	srv.enableH2(ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.shutdown(ctx)
		<-served
	})

	// The preface, then a PING where the SETTINGS frame must come: a connection error
	// (PROTOCOL_ERROR).
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte(h2Preface + "\x00\x00\x08\x06\x00\x00\x00\x00\x00" + "pingping"))
	io.Copy(io.Discard, c) // the server's SETTINGS and GOAWAY, then its close
	c.Close()
	waitFor(t, "the refused HTTP/2 connection counted", func() bool { return srv.refusals.Load() == 1 })
	waitForLog(t, &logs, `"level":"warn"`)

	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr}
	if resp, err := cl.Get("http://" + ln.Addr().String() + "/boom"); err == nil {
		resp.Body.Close()
		t.Errorf("a panicking handler's request answered %d", resp.StatusCode)
	}
	waitForLog(t, &logs, "h2 handler bug")
	resp, err := cl.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatalf("after the panic: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" || resp.ProtoMajor != 2 {
		t.Errorf("after the panic: %s %d %q", resp.Proto, resp.StatusCode, b)
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch {
		case strings.Contains(line, "h2 handler bug"):
			if m["level"] != "error" || !strings.Contains(line, "TestServerH2RefusalsAndPanics") {
				t.Errorf("panic line not an Error with its stack: %s", line)
			}
		case strings.Contains(line, "PROTOCOL_ERROR"):
			if m["level"] != "warn" || m["refused_total"] != 1.0 {
				t.Errorf("refusal line not a Warn with its count: %s", line)
			}
		}
	}
	if srv.refusals.Load() != 1 {
		t.Errorf("%d refusals, want 1", srv.refusals.Load())
	}
}
