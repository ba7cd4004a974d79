package amqp

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestRefusedConnsCounted: connections refused because the listener was at MaxConns show in
// Stats, which /stats and /metrics serve.
func TestRefusedConnsCounted(t *testing.T) {
	h := startProxy(t, func(cfg *Config) { cfg.Listener.MaxConns = 1 })
	held := dial(t, h.url, "held", 0) // open: registered before the next one arrives
	defer held.Close()
	// The reset can come before the connect returns, which then fails with it.
	refused, err := net.Dial("tcp", h.p.Addr().String())
	if err == nil {
		defer refused.Close()
		refused.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = refused.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a connection past MaxConns gave %v, want a reset, as a refused connection", err)
	}
	if got := h.p.Stats().RefusedConns; got != 1 {
		t.Fatalf("RefusedConns = %d, want 1", got)
	}
}
