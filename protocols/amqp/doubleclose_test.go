package amqp

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// rawFrame reads one frame; ok is false at the connection's end.
func rawFrame(t *testing.T, r *bufio.Reader) (typ byte, ch uint16, payload []byte, ok bool) {
	t.Helper()
	var h [7]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, nil, false
	}
	payload = make([]byte, binary.BigEndian.Uint32(h[3:])+1)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, 0, nil, false
	}
	return h[0], binary.BigEndian.Uint16(h[1:]), payload[:len(payload)-1], true
}

func rawMethod(ch uint16, class, method uint16, args []byte) []byte {
	b := []byte{frameMethod, byte(ch >> 8), byte(ch), 0, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, class)
	b = binary.BigEndian.AppendUint16(b, method)
	b = append(b, args...)
	binary.BigEndian.PutUint32(b[3:], uint32(len(b)-7))
	return append(b, frameEnd)
}

// TestDrainAfterBrokerCloseClosesOnce: the broker closed the connection (a connection error)
// and the client has not answered yet when the proxy drains. RabbitMQ, closing already, answers
// the proxy's own Connection.Close with CloseOk; the client, given the broker's Close, must not
// get a second one from the proxy: direct, a broker's Close is the only one.
func TestDrainAfterBrokerCloseClosesOnce(t *testing.T) {
	h := startProxy(t, nil)
	c, err := net.Dial("tcp", h.p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	c.Write(protocolHeader[:])
	next := func(want methodID) {
		t.Helper()
		_, _, p, ok := rawFrame(t, r)
		if !ok || methodOf(p) != want {
			t.Fatalf("got %x, want method %x", p, want)
		}
	}
	next(mid(classConnection, 10)) // Start
	startOk := []byte{0, 0, 0, 0, 5}
	startOk = append(startOk, "PLAIN"...)
	resp := "\x00guest\x00guest"
	startOk = binary.BigEndian.AppendUint32(startOk, uint32(len(resp)))
	startOk = append(startOk, resp...)
	startOk = append(startOk, 5)
	startOk = append(startOk, "en_US"...)
	c.Write(rawMethod(0, classConnection, 11, startOk))
	next(mid(classConnection, 30))                                              // Tune
	c.Write(rawMethod(0, classConnection, 31, []byte{0, 16, 0, 2, 0, 0, 0, 0})) // TuneOk, no heartbeats
	c.Write(rawMethod(0, classConnection, 40, []byte{1, '/', 0, 0}))            // Open "/"
	next(mid(classConnection, 41))                                              // OpenOk
	c.Write(rawMethod(1, classChannel, 10, []byte{0}))                          // Channel.Open
	next(mid(classChannel, 11))
	c.Write(rawMethod(1, classChannel, 10, []byte{0})) // again: a connection error (504)
	next(connClose)                                    // the broker's Close, not answered
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for {
		_, ch, p, ok := rawFrame(t, r)
		if !ok {
			break
		}
		if ch == 0 && methodOf(p) == connClose {
			t.Errorf("a second Connection.Close after the broker's: %q", p)
		}
	}
}
