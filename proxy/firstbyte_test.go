package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestFirstByteConnLookedThrough: under TLS, Unread and Linger reach the TCP socket through a
// FirstByteConn (its NetConn): a drain sees a request the kernel holds, and a lingering close
// half-closes instead of leaving the close to send a reset.
func TestFirstByteConnLookedThrough(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Unread reads the kernel's count on Linux only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Server(&FirstByteConn{Conn: raw}, &tls.Config{})
	if _, err := client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for Unread(tc) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("Unread through TLS and a FirstByteConn: %d, want 3", Unread(tc))
		}
		time.Sleep(5 * time.Millisecond)
	}
	go Linger(tc)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after Linger the client reads %v, want EOF (a half-close)", err)
	}
}
