package amqp

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestFrameSizeAloneAllocatesLittle: a frame header claiming up to max_frame_bytes, with a few
// bytes behind it and then nothing (a client that stalls, or sends a byte a second), does not make
// the proxy allocate the size it claims. Each such connection took the full size as soon as the
// header came (300 of them: 310 MB of heap in a soak run, unbounded as max_conns is by default);
// the buffer now grows with the bytes that arrive.
func TestFrameSizeAloneAllocatesLittle(t *testing.T) {
	h := startProxy(t, nil)
	const conns = 40
	// A Connection.StartOk method frame claiming 1 MiB less its overhead: within MaxFrameBytes, so
	// read into memory, not streamed. Then nothing.
	head := []byte{frameMethod, 0, 0}
	head = binary.BigEndian.AppendUint32(head, DefaultMaxFrameBytes-frameOverhead)
	head = append(head, 0, 10, 0, 11)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range conns {
		conn := startedConn(t, h)
		if _, err := conn.Write(head); err != nil {
			t.Fatal(err)
		}
	}
	// Each connection's client relay has peeked the frame header and waits for the rest.
	waitFor(t, "every connection to wait inside a frame", func() bool { return framesUnderway() >= conns })
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 16<<20 {
		t.Errorf("%d connections that each sent a frame header claiming %d bytes and 4 bytes hold %d bytes of heap", conns, DefaultMaxFrameBytes-frameOverhead, grew)
	}
}

// startedConn connects to the proxy and reads the broker's Connection.Start: the connection is
// set up and the proxy reads the client.
func startedConn(t *testing.T, h *harness) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", h.p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write(protocolHeader[:]); err != nil {
		t.Fatal(err)
	}
	var fh [7]byte
	if _, err := io.ReadFull(conn, fh[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, binary.BigEndian.Uint32(fh[3:])+1)); err != nil {
		t.Fatal(err)
	}
	return conn
}

// framesUnderway counts the proxy's goroutines reading a frame past its header.
func framesUnderway() int {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "amqp.(*frameReader).read(") {
			n++
		}
	}
	return n
}

// TestOversizedFrameNamedOnItsConnection: a frame header claiming more than max_frame_bytes is
// relayed unread (the broker decides: RabbitMQ resets a connection whose frame passes its
// frame_max), and the connection's own log says so. Only an error-tracking line without the
// connection did: in a soak run the connection's line read "amqp from broker: connection reset by
// peer", which does not say that its client had sent a 4 GiB frame.
func TestOversizedFrameNamedOnItsConnection(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	conn := startedConn(t, h)
	head := binary.BigEndian.AppendUint32([]byte{frameMethod, 0, 0}, 0xFFFFFFFF)
	if _, err := conn.Write(append(head, make([]byte, 100)...)); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	waitFor(t, "a line about the frame on its connection", func() bool {
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["size"] != nil && m["conn"] != nil {
				line = m
				return true
			}
		}
		return false
	})
	if line["level"] != "warn" || line["from"] != "client" || line["size"] != float64(0xFFFFFFFF) || line["max_frame_bytes"] != float64(DefaultMaxFrameBytes) {
		t.Errorf("the oversized frame's line: %v", line)
	}
}
