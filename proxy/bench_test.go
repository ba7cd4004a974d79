package proxy

import (
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// sink is the upstream for throughput runs: it reads and counts.
func startSink(b *testing.B) (string, *atomic.Int64) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 256<<10)
				for {
					k, err := c.Read(buf)
					n.Add(int64(k))
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &n
}

var directMBps float64 // set by the direct run, so the proxied runs report their ratio to it

func BenchmarkRelay(b *testing.B) {
	const chunk = 64 << 10
	run := func(b *testing.B, dial func(b *testing.B) net.Conn, got *atomic.Int64) float64 {
		c := dial(b)
		defer c.Close()
		buf := make([]byte, chunk)
		// Warm the path (and a TLS handshake) outside the timer.
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		waitBench(b, func() bool { return got.Load() >= chunk })
		b.SetBytes(chunk)
		b.ReportAllocs()
		b.ResetTimer()
		t0 := time.Now()
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		want := int64(b.N+1) * chunk
		waitBench(b, func() bool { return got.Load() >= want })
		el := time.Since(t0)
		b.StopTimer()
		return float64(b.N) * chunk / el.Seconds() / 1e6
	}

	b.Run("direct", func(b *testing.B) {
		addr, got := startSink(b)
		directMBps = run(b, func(b *testing.B) net.Conn { return mustDial(b, addr) }, got)
	})
	b.Run("proxy", func(b *testing.B) {
		addr, got := startSink(b)
		l := benchListener(b, ListenerConfig{Upstream: addr, IdleTimeout: time.Minute})
		mbps := run(b, func(b *testing.B) net.Conn { return mustDial(b, l.Addr().String()) }, got)
		if directMBps > 0 {
			b.ReportMetric(mbps/directMBps, "x-direct")
		}
	})
	b.Run("proxy-tls-in", func(b *testing.B) {
		pki := testpki.New(b, "bench CA")
		dir := b.TempDir()
		certFile, keyFile, _ := pki.IssueFiles(b, dir, "proxy", "proxy")
		_, conf, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile})
		if err != nil {
			b.Fatal(err)
		}
		addr, got := startSink(b)
		l := benchListener(b, ListenerConfig{Upstream: addr, TLS: conf})
		mbps := run(b, func(b *testing.B) net.Conn {
			c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"})
			if err != nil {
				b.Fatal(err)
			}
			return c
		}, got)
		if directMBps > 0 {
			b.ReportMetric(mbps/directMBps, "x-direct")
		}
	})
}

func mustDial(b *testing.B, addr string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func benchListener(b *testing.B, cfg ListenerConfig) *Listener {
	cfg.Addr, cfg.Protocol = "127.0.0.1:0", "bench"
	l, err := Listen(cfg, HandlerFunc(relay), testLog())
	if err != nil {
		b.Fatal(err)
	}
	go l.Serve(b.Context())
	b.Cleanup(func() { l.Close() })
	return l
}

func waitBench(b *testing.B, cond func() bool) {
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatal("sink did not receive every byte")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// nopConn is an endless in-memory connection: it isolates what the tracking wrapper costs.
type nopConn struct{ net.Conn }

func (nopConn) Read(b []byte) (int, error)  { return len(b), nil }
func (nopConn) Write(b []byte) (int, error) { return len(b), nil }

// BenchmarkTrackedConn is the per-read/write price of the registry counters and idle stamp.
func BenchmarkTrackedConn(b *testing.B) {
	buf := make([]byte, 512)
	var clock atomic.Int64
	for _, bc := range []struct {
		name string
		c    net.Conn
	}{{"raw", nopConn{}}, {"tracked", &trackedConn{Conn: nopConn{}, clock: &clock}}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				bc.c.Read(buf)
				bc.c.Write(buf)
			}
		})
	}
}
