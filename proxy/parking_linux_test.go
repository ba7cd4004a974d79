package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// parkBuf is a ParkBuffer that gives its buffer up at every Park, as a relay's reader does.
type parkBuf struct {
	buf   []byte
	parks atomic.Int32
}

func (p *parkBuf) Buf() []byte {
	if p.buf == nil {
		p.buf = make([]byte, 64)
	}
	return p.buf
}

func (p *parkBuf) Park() {
	p.buf = nil
	p.parks.Add(1)
}

// TestReadParked: a read that finds bytes costs no park; one that finds none parks, then reads
// into a buffer taken after the wait; deadlines and the peer's end come back as from Read; the
// listener's byte counter counts what it reads; TLS cannot park.
func TestReadParked(t *testing.T) {
	a, b := tcpPair(t)
	tr := &trackedConn{Conn: a, clock: new(atomic.Int64)}
	pk := Parking(tr)
	if pk == nil || Parking(a) == nil {
		t.Fatal("a raw system call connection, bare or counted, is not Parkable")
	}
	if Parking(tls.Server(a, &tls.Config{})) != nil || Parking(&trackedConn{Conn: tls.Client(a, &tls.Config{})}) != nil {
		t.Fatal("a TLS connection is Parkable: it may hold decrypted bytes its socket does not show")
	}
	pb := &parkBuf{}
	b.Write([]byte("ready"))
	waitUnread(t, a, 5)
	if n, err := pk.ReadParked(pb); err != nil || string(pb.buf[:n]) != "ready" || pb.parks.Load() != 0 {
		t.Fatalf("bytes waiting: read %q, %v after %d parks; want ready, no park", pb.buf[:n], err, pb.parks.Load())
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() { n, err := pk.ReadParked(pb); done <- result{n, err} }()
	for deadline := time.Now().Add(30 * time.Second); pb.parks.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a read that found nothing did not park")
		}
	}
	b.Write([]byte("later"))
	r := <-done
	if r.err != nil || pb.buf == nil || string(pb.buf[:r.n]) != "later" {
		t.Fatalf("after a park: read %d bytes, %v; want later, read into a buffer taken after the wait", r.n, r.err)
	}
	if got := tr.in.Load(); got != 10 {
		t.Fatalf("the listener's counter saw %d bytes read, want 10", got)
	}
	a.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := pk.ReadParked(pb); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past the read deadline: %v, want the deadline error", err)
	}
	a.SetReadDeadline(time.Time{})
	b.Close()
	if _, err := pk.ReadParked(pb); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want io.EOF", err)
	}
}

// waitUnread waits until the kernel holds n bytes for c that nothing has read.
func waitUnread(t *testing.T, c net.Conn, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for Unread(c) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the kernel never held %d bytes to read", n)
		}
		time.Sleep(time.Millisecond)
	}
}
