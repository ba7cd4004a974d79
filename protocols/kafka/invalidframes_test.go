package kafka

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestInvalidFramesCountedQuietly: bytes that are not Kafka framing (an HTTP request) close
// their connection; each is counted (Stats.InvalidFrames) and logged at Warn for the first 10
// and every 1000th only, since anyone who reaches the port can send them.
func TestInvalidFramesCountedQuietly(t *testing.T) {
	c, guard := startCluster(t)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	for range 12 {
		conn, err := net.Dial("tcp", p.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if n, _ := conn.Read(make([]byte, 1)); n != 0 {
			t.Error("an HTTP request got an answer")
		}
		conn.Close()
	}
	waitFor(t, "12 invalid frames counted", func() bool { return p.Stats().InvalidFrames == 12 })
	warns := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"level":"warn"`) && strings.Contains(l, "not valid Kafka framing") {
			warns++
		}
	}
	if warns != 10 {
		t.Errorf("%d Warn lines for 12 HTTP requests, want 10", warns)
	}
	guard.check(t)
}

// TestSilentClientClosed: a connection that sends no request is closed after
// the first-request timeout, quietly (a few of them would otherwise fill max_conns for good); one that
// spoke stays open past it.
func TestSilentClientClosed(t *testing.T) {
	const timeout = 300 * time.Millisecond
	c, guard := startCluster(t)
	var logs syncbuf.Buffer
	p := startProxyWith(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) }, func(p *Proxy) { p.firstRequestTimeout = timeout })
	silent, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a silent connection read %v, want it closed by the proxy", err)
	}
	if strings.Contains(logs.String(), `"level":"warn"`) {
		t.Errorf("a silent connection's close logged at Warn:\n%s", logs.String())
	}

	spoke, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer spoke.Close()
	for i := range 2 {
		if _, err := spoke.Write(requestFrame(emptyMetadata(), int32(i+1))); err != nil {
			t.Fatal(err)
		}
		spoke.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := readFrame(spoke, DefaultMaxFrameBytes); err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		time.Sleep(2 * timeout) // not a timing assertion: the connection must outlive it
	}
	guard.check(t)
}

// TestClientResetQuiet: a client that resets its connection (SO_LINGER 0, or a close with an
// answer unread: librdkafka's and kafkajs's consumers at their close, any process that exits) ends
// it as a clean close does, at Debug: direct, a broker logs neither, and a Warn for each client
// that stops reads as trouble in the proxy.
func TestClientResetQuiet(t *testing.T) {
	for _, tc := range []struct {
		name string
		read bool // the client reads its answer before the reset
	}{
		{"after its answer", true},
		{"with its answer unread", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, guard := startCluster(t)
			var logs syncbuf.Buffer
			p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
			conn, err := net.Dial("tcp", p.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			openNodes(t, conn) // the session is open: its end is waited for below
			if !tc.read {
				if _, err := conn.Write(requestFrame(emptyMetadata(), 1)); err != nil {
					t.Fatal(err)
				}
			}
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
			waitFor(t, "the connection to end", func() bool { return p.Stats().OpenConnections == 0 })
			if strings.Contains(logs.String(), `"level":"warn"`) {
				t.Errorf("a client's reset logged at Warn:\n%s", logs.String())
			}
			guard.check(t)
		})
	}
}
