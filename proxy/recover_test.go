package proxy

import (
	"io"
	"net"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestConnRecover: a panic in a connection's second goroutine comes back as an error and closes
// both sides of that connection, and nothing else.
func TestConnRecover(t *testing.T) {
	client, clientPeer := net.Pipe()
	up, upPeer := net.Pipe()
	defer clientPeer.Close()
	defer upPeer.Close()
	c := &Conn{Client: client, Upstream: up, Log: zerolog.Nop()}
	err := c.Recover("test relay", func() error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "test relay panicked: boom") {
		t.Fatalf("Recover = %v", err)
	}
	if _, err := client.Write([]byte("x")); err == nil {
		t.Error("the client side is still open")
	}
	if _, err := up.Write([]byte("x")); err == nil {
		t.Error("the upstream side is still open")
	}
	if err := c.Recover("test relay", func() error { return io.EOF }); err != io.EOF {
		t.Errorf("Recover without a panic = %v", err)
	}
}
