package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// tcpPair returns a connected pair: a, wrapped by RawSyscallConn, and its plain peer b.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := RawSyscallListener(ln).Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	b, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a = <-accepted
	if a == nil {
		t.Fatal("accept failed")
	}
	if _, isTCP := a.(*net.TCPConn); isTCP && runtime.GOOS == "linux" {
		t.Fatal("RawSyscallListener returned the plain *net.TCPConn on Linux")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRawSyscallConnMovesLargeWritesBothWays(t *testing.T) {
	a, b := tcpPair(t)
	// Far more than the socket buffers hold: writes meet EAGAIN and wait in the poller.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	for _, dir := range []struct {
		name     string
		from, to net.Conn
	}{{"raw writes", a, b}, {"raw reads", b, a}} {
		t.Run(dir.name, func(t *testing.T) {
			errc := make(chan error, 1)
			go func() {
				n, err := dir.from.Write(payload)
				if err == nil && n != len(payload) {
					err = errors.New("short write without an error")
				}
				errc <- err
			}()
			got := make([]byte, len(payload))
			// Small reads, slowly at first, so the writer fills the buffer and waits.
			time.Sleep(20 * time.Millisecond)
			if _, err := io.ReadFull(dir.to, got); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("bytes differ")
			}
		})
	}
}

func TestRawSyscallConnConcurrentWritesDoNotInterleave(t *testing.T) {
	a, b := tcpPair(t)
	const writers, each, size = 4, 20, 256 << 10
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte('A' + w)}, size)
			for i := 0; i < each; i++ {
				if _, err := a.Write(buf); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); a.Close(); close(done) }()
	chunk := make([]byte, size)
	for i := 0; i < writers*each; i++ {
		if _, err := io.ReadFull(b, chunk); err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if c := bytes.Count(chunk, chunk[:1]); c != size {
			t.Fatalf("chunk %d mixes writers: %d of %d bytes are %q", i, c, size, chunk[0])
		}
	}
	<-done
}

func TestRawSyscallConnErrorsMatchNet(t *testing.T) {
	t.Run("peer close is EOF", func(t *testing.T) {
		a, b := tcpPair(t)
		b.Write([]byte("x"))
		b.Close()
		buf := make([]byte, 8)
		if n, err := a.Read(buf); n != 1 || err != nil {
			t.Fatalf("first read: %d, %v", n, err)
		}
		if n, err := a.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("read after peer close: %d, %v; want 0, io.EOF", n, err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		a, b := tcpPair(t)
		a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := a.Read(make([]byte, 8))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read past deadline: %v; want a timeout wrapping os.ErrDeadlineExceeded", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("error %v is not a read *net.OpError", err)
		}
		a.SetReadDeadline(time.Time{}) // and reading goes on after clearing it
		b.Write([]byte("go on"))
		got := make([]byte, 5)
		if _, err := io.ReadFull(a, got); err != nil || string(got) != "go on" {
			t.Fatalf("read after clearing the deadline: %q, %v", got, err)
		}
	})
	t.Run("closed while reading", func(t *testing.T) {
		a, _ := tcpPair(t)
		go func() { time.Sleep(20 * time.Millisecond); a.Close() }()
		if _, err := a.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on closed conn: %v; want net.ErrClosed", err)
		}
		if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write on closed conn: %v; want net.ErrClosed", err)
		}
	})
	t.Run("write to a reset peer fails, no SIGPIPE", func(t *testing.T) {
		a, b := tcpPair(t)
		b.(*net.TCPConn).SetLinger(0) // close with RST
		b.Close()
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = a.Write(make([]byte, 64<<10))
			time.Sleep(time.Millisecond)
		}
		if err == nil {
			t.Fatal("writes to a reset peer kept succeeding")
		}
	})
	t.Run("half close", func(t *testing.T) {
		a, b := tcpPair(t)
		cw, ok := a.(interface{ CloseWrite() error })
		if !ok {
			t.Fatal("wrapped conn lost CloseWrite")
		}
		cw.CloseWrite()
		if n, err := b.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("peer read after CloseWrite: %d, %v", n, err)
		}
		b.Write([]byte("still open"))
		got := make([]byte, 10)
		if _, err := io.ReadFull(a, got); err != nil || string(got) != "still open" {
			t.Fatalf("read after CloseWrite: %q, %v", got, err)
		}
	})
	t.Run("zero-length calls", func(t *testing.T) {
		a, _ := tcpPair(t)
		if n, err := a.Read(nil); n != 0 || err != nil {
			t.Fatalf("Read(nil) = %d, %v", n, err)
		}
		if n, err := a.Write(nil); n != 0 || err != nil {
			t.Fatalf("Write(nil) = %d, %v", n, err)
		}
	})
}

func TestRawSyscallConnLeavesOtherConnsAlone(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if RawSyscallConn(p1) != p1 {
		t.Fatal("a non-TCP conn was wrapped")
	}
}

// BenchmarkConnPingPong bounces 1 KiB between two goroutines over loopback TCP, with the net
// package's calls and with RawSyscallConn on the side that echoes (a relay's position). Both
// allocate nothing per call. With nothing else runnable, sysmon has no P to hand off, so the two
// take the same time here; the gain shows in a busy process (perf stat on dsmbench's proxy).
func BenchmarkConnPingPong(b *testing.B) {
	for _, bc := range []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{{"net", func(c net.Conn) net.Conn { return c }}, {"raw", RawSyscallConn}} {
		b.Run(bc.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c = bc.wrap(c)
				defer c.Close()
				buf := make([]byte, 1024)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 1024)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
