package proxy

import (
	"net"
	"sort"
	"sync/atomic"
	"time"
)

// trackedConn counts the bytes a client connection moves and stamps its last activity, for the
// registry and the idle timeout. It costs an atomic add and a copy of the listener's coarse clock
// per call, no allocation and no deadline change, so it can sit on every read and write.
type trackedConn struct {
	net.Conn
	clock   *atomic.Int64 // the listener's coarse clock
	in, out atomic.Uint64
	last    atomic.Int64
	// chunk, when set (an idle timeout applies), splits big writes so that each part stamps
	// activity: one write of a large fetch answer to a slow client moves bytes all along, and
	// must not look idle until it returns.
	chunk int
}

// writeChunk is the part of a big write after which activity is stamped.
const writeChunk = 256 << 10

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.last.Store(c.clock.Load()) // before the count: whoever sees the count sees the stamp
		c.in.Add(uint64(n))
	}
	return n, err
}

// ReadParked implements Parkable for a connection Parking returned.
func (c *trackedConn) ReadParked(pb ParkBuffer) (int, error) {
	n, err := c.Conn.(Parkable).ReadParked(pb)
	if n > 0 {
		c.last.Store(c.clock.Load())
		c.in.Add(uint64(n))
	}
	return n, err
}

func (c *trackedConn) Write(b []byte) (int, error) {
	if c.chunk == 0 || len(b) <= c.chunk {
		n, err := c.Conn.Write(b)
		if n > 0 {
			c.last.Store(c.clock.Load())
			c.out.Add(uint64(n))
		}
		return n, err
	}
	total := 0
	for len(b) > 0 {
		n, err := c.Conn.Write(b[:min(len(b), c.chunk)])
		if n > 0 {
			c.last.Store(c.clock.Load())
			c.out.Add(uint64(n))
		}
		total += n
		if err != nil {
			return total, err
		}
		b = b[n:]
	}
	return total, nil
}

// NetConn returns the wrapped connection (a *tls.Conn when the listener terminates TLS).
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// ConnInfo describes one open client connection.
type ConnInfo struct {
	ID       uint64
	Protocol string
	Client   string // client address
	Upstream string // upstream address actually dialed; empty while dialing
	Since    time.Time
	BytesIn  uint64        // read from the client
	BytesOut uint64        // written to the client
	Idle     time.Duration // since the last byte, to the listener's clock tick (a second without IdleTimeout)
}

// Connections lists the open client connections, oldest first.
func (l *Listener) Connections() []ConnInfo {
	now := l.elapsed()
	l.mu.Lock()
	out := make([]ConnInfo, 0, len(l.conns))
	for _, c := range l.conns {
		ci := ConnInfo{ID: c.ID, Protocol: c.Protocol, Client: AddrString(c.Client.RemoteAddr()), Since: c.since}
		if c.Upstream != nil {
			ci.Upstream = AddrString(c.Upstream.RemoteAddr())
		}
		if t := c.tracked; t != nil {
			ci.BytesIn, ci.BytesOut = t.in.Load(), t.out.Load()
			ci.Idle = time.Duration(max(now-t.last.Load(), 0))
		}
		out = append(out, ci)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
