package proxy

import (
	"io"
	"net"
	"time"
)

// Linger ends the sending side of c and reads what the peer still sends for a moment (at most
// 500 ms and 4 MiB), so that the close that follows is not a reset: closing a socket with unread
// data sends one, which can destroy answers the peer has not read yet (net/http waits the same
// way). Wrappers with NetConn (TLS, the connection registry) are looked through; a connection
// that cannot half-close is left as it is.
func Linger(c net.Conn) {
	for {
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = w.NetConn()
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, io.LimitReader(c, 4<<20))
}
