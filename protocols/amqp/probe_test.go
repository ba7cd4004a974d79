package amqp

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestProbesAndStrangersQuiet: a port probe (connect, send nothing, close) is logged at Debug
// only, and clients opening with another protocol (an HTTP request) are counted each but logged
// at Warn for the first 10 and every 1000th: anyone who reaches the port could fill the log.
func TestProbesAndStrangersQuiet(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(c *Config) { c.Log = zerolog.New(&logs).Level(zerolog.DebugLevel) })
	addr := h.p.Addr().String()
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	waitFor(t, "the probes logged", func() bool {
		return strings.Count(logs.String(), "the client sent no AMQP protocol header") == 3
	})
	for range 12 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 8)
		if n, _ := c.Read(buf); string(buf[:n]) != string(protocolHeader[:]) {
			t.Errorf("answered %q to an HTTP request, want the protocol header", buf[:n])
		}
		c.Close()
	}
	waitFor(t, "12 refusals counted", func() bool { return h.p.Stats().RefusedProtocol == 12 })
	out := logs.String()
	if n := strings.Count(out, `"level":"warn"`); n != 10 {
		t.Errorf("%d Warn lines for 3 probes and 12 HTTP requests, want 10:\n%s", n, out)
	}
}
