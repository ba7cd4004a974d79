package proxy

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestHandlerPanic: a handler that panics on one connection closes that connection; the listener
// keeps serving the next one.
func TestHandlerPanic(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	h := HandlerFunc(func(_ context.Context, c *Conn) error {
		var b [1]byte
		if _, err := c.Client.Read(b[:]); err != nil {
			return err
		}
		if b[0] == 'p' {
			panic("decoder bug")
		}
		_, err := c.Client.Write([]byte("ok"))
		return err
	})
	ln, err := Listen(ListenerConfig{Protocol: "test", Addr: "127.0.0.1:0", Upstream: up.Addr().String()}, h, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = ln.Serve(ctx) }()
	defer ln.Close()

	bad, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = bad.Write([]byte("p"))
	_ = bad.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := bad.Read(make([]byte, 2)); err == nil {
		t.Fatalf("the panicking connection stayed open (read %d bytes)", n)
	}
	bad.Close()

	good, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	_, _ = good.Write([]byte("g"))
	_ = good.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(good, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("next connection after a panic: %q, %v", buf, err)
	}
}
