package amqp

import (
	"io"
	"net"
	"testing"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// BenchmarkConnReaderPingPong: one 1 KiB frame each way per round trip over loopback TCP, the
// shape of a publisher waiting for each confirm, where every read finds the socket empty first:
// what parking (buffers given back at each wait) costs against holding them.
func BenchmarkConnReaderPingPong(b *testing.B) {
	for _, parked := range []bool{false, true} {
		name := "held"
		if parked {
			name = "parked"
		}
		b.Run(name, func(b *testing.B) {
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
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c := proxy.RawSyscallConn(raw)
			defer c.Close()
			var pk proxy.Parkable
			if parked {
				pk = proxy.Parking(c)
			}
			r, w := newConnReader(c, pk), newConnWriter(c)
			r.onPark = w.park
			msg, got := make([]byte, 1024), make([]byte, 1024)
			b.SetBytes(2048)
			b.ReportAllocs()
			for b.Loop() {
				w.Write(msg)
				if err := w.Flush(); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(r, got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
