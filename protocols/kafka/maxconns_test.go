package kafka

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestRefusedConnsCounted: connections refused because a listener (bootstrap or node) was at
// MaxConns show in Stats, which /stats and /metrics serve.
func TestRefusedConnsCounted(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, func(cfg *Config) { cfg.Listener.MaxConns = 1 })
	addrs := []func() string{
		func() string { return p.Addr().String() },
		func() string {
			node, ok := p.NodeAddr(0) // opened by the Metadata answer on the bootstrap connection
			if !ok {
				t.Fatal("no listener for node 0")
			}
			return node.String()
		},
	}
	for i, addrOf := range addrs {
		addr := addrOf()
		held, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		// An answer on the held connection: it is registered before the next one arrives.
		if _, err := held.Write(requestFrame(emptyMetadata(), 1)); err != nil {
			t.Fatal(err)
		}
		held.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := readFrame(held, DefaultMaxFrameBytes); err != nil {
			t.Fatalf("%s: the first connection got no answer: %v", addr, err)
		}
		// The reset can come before the connect returns, which then fails with it.
		refused, err := net.Dial("tcp", addr)
		if err == nil {
			refused.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err = refused.Read(make([]byte, 1))
			refused.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("%s: a connection past MaxConns gave %v, want a reset, as a refused connection", addr, err)
		}
		if got, want := p.Stats().RefusedConns, uint64(i+1); got != want {
			t.Fatalf("after a refusal on %s: RefusedConns = %d, want %d", addr, got, want)
		}
	}
}
