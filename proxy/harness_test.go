package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// relay is the simplest Handler: bytes both ways until either side ends.
func relay(_ context.Context, c *Conn) error {
	done := make(chan struct{})
	go func() {
		io.Copy(c.Upstream, c.Client)
		c.Upstream.Close()
		close(done)
	}()
	io.Copy(c.Client, c.Upstream)
	c.Client.Close()
	<-done
	return nil
}

// echoServer is the upstream peer: a TCP (or, with conf, TLS) server that echoes every byte. Each
// accepted connection is sent on accepted.
type echoServer struct {
	ln       net.Listener
	accepted chan net.Conn
	wg       sync.WaitGroup
}

func startEcho(t *testing.T, conf *tls.Config) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if conf != nil {
		ln = tls.NewListener(ln, conf)
	}
	e := &echoServer{ln: ln, accepted: make(chan net.Conn, 64)}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case e.accepted <- c:
			default:
			}
			e.wg.Add(1)
			go func() { defer e.wg.Done(); io.Copy(c, c); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-e.accepted:
				c.Close()
				continue
			default:
			}
			break
		}
		e.wg.Wait()
	})
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

func testLog() zerolog.Logger {
	if os.Getenv("PROXY_TEST_LOG") != "" {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// startListener listens on an ephemeral port and serves; cleanup closes it.
func startListener(t *testing.T, cfg ListenerConfig, h Handler) *Listener {
	t.Helper()
	return startListenerLog(t, cfg, h, testLog())
}

// startListenerLog is startListener logging to log.
func startListenerLog(t *testing.T, cfg ListenerConfig, h Handler, log zerolog.Logger) *Listener {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Protocol == "" {
		cfg.Protocol = "test"
	}
	l, err := Listen(cfg, h, log)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- l.Serve(context.Background()) }()
	t.Cleanup(func() {
		l.Close()
		if err := <-served; err != ErrClosed {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})
	return l
}

// roundTrip writes msg on c and reads the echo back (deadline: a correctness bound only).
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, []byte(msg)) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

// expectClosed waits for the peer to close c: a read returns EOF or a reset, not data.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n > 0 {
		t.Fatalf("read %d bytes from a connection that should be closed", n)
	}
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("connection still open: %v", err)
	}
}

// expectReset connects to addr and expects the proxy to refuse the connection with a TCP reset,
// as a refused connection reads to a client, not with a clean end of stream. The reset can come
// before the client's connect returns, which then fails with it.
func expectReset(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connecting and reading gave %v, want a connection reset", err)
	}
}

// waitFor polls cond until it holds or a generous deadline passes (a correctness bound, not a
// timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
