package proxy

import "net"

// FirstByteConn records whether anything was ever read from its connection. A client TLS
// handshake that fails before its first byte (a port probe, a TCP health check, a client that
// never spoke) is not a client failing TLS, and is neither counted nor warned about.
type FirstByteConn struct {
	net.Conn
	got bool // written once, by the first read that returns data (the handshake's)
}

func (c *FirstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.got {
		c.got = true
	}
	return n, err
}

// NetConn is the connection it wraps (Linger and Unread look through it).
func (c *FirstByteConn) NetConn() net.Conn { return c.Conn }

// ReadAny reports whether a byte was read. Call it from the goroutine that read.
func (c *FirstByteConn) ReadAny() bool { return c.got }

// SpokeFirst reports whether the client under tc (a *tls.Conn made over a FirstByteConn) sent
// anything; true when tc is not over one, so that its failures still count.
func SpokeFirst(tc interface{ NetConn() net.Conn }) bool {
	fb, ok := tc.NetConn().(*FirstByteConn)
	return !ok || fb.ReadAny()
}

// FirstByteListener wraps each accepted connection in a FirstByteConn (under a TLS listener).
type FirstByteListener struct{ net.Listener }

func (l FirstByteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &FirstByteConn{Conn: c}, nil
}
