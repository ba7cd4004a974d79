package proxy

import (
	"crypto/tls"
	"net"
)

// FirstByteConn records whether anything was ever read from its connection. A client TLS
// handshake that fails before its first byte (a port probe, a TCP health check, a client that
// never spoke) is not a client failing TLS, and is neither counted nor warned about.
//
// Until HandshakeDone it also keeps the last bytes read: a client that refuses the front's
// certificate in TLS 1.3 may send its alert unencrypted (OpenSSL does), which Go's handshake
// reports only as "bad record MAC" (PlaintextAlert finds it).
type FirstByteConn struct {
	net.Conn
	got bool // written once, by the first read that returns data (the handshake's)

	done  bool // HandshakeDone was called: tail is no longer kept
	tail  [plainAlertLen]byte
	tailN int
}

// plainAlertLen is the length of an unencrypted TLS alert record: a 5-byte header, then the
// alert's level and description.
const plainAlertLen = 7

func (c *FirstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.done {
		c.got = true
		c.keepTail(p[:n])
	}
	return n, err
}

func (c *FirstByteConn) keepTail(b []byte) {
	if len(b) >= len(c.tail) {
		c.tailN = copy(c.tail[:], b[len(b)-len(c.tail):])
		return
	}
	keep := min(c.tailN, len(c.tail)-len(b))
	copy(c.tail[:keep], c.tail[c.tailN-keep:c.tailN])
	c.tailN = keep + copy(c.tail[keep:], b)
}

// HandshakeDone stops keeping the bytes read, once the handshake succeeded. Call it from the
// goroutine that read.
func (c *FirstByteConn) HandshakeDone() { c.done = true }

// PlaintextAlert is the description of the unencrypted TLS alert the client's last bytes were,
// if they were one. Call it from the goroutine that read.
func (c *FirstByteConn) PlaintextAlert() (tls.AlertError, bool) {
	t := c.tail
	if c.tailN != len(t) || t[0] != 0x15 || t[1] != 0x03 || t[3] != 0 || t[4] != 2 {
		return 0, false
	}
	return tls.AlertError(t[6]), true
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
