package proxy

import (
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// TestUnread: bytes a peer sent and no read took yet are counted, through the raw system call
// wrapper and the listener's byte counter, and read ones are not.
func TestUnread(t *testing.T) {
	a, b := tcpPair(t) // a: RawSyscallConn
	defer a.Close()
	defer b.Close()
	wrapped := &trackedConn{Conn: a, clock: new(atomic.Int64)}
	if n := Unread(wrapped); n != 0 {
		t.Fatalf("Unread before any byte: %d", n)
	}
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for Unread(wrapped) != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("Unread = %d, want 5", Unread(wrapped))
		}
		time.Sleep(time.Millisecond)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(wrapped, buf); err != nil {
		t.Fatal(err)
	}
	if n := Unread(a); n != 0 {
		t.Errorf("Unread after reading everything: %d", n)
	}
}
