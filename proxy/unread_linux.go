package proxy

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Unread is how many bytes the kernel holds for c that no read has taken yet: 0 when there are
// none or it cannot tell. Wrappers with NetConn (TLS, the listener's byte counter) are looked
// through, so for TLS it counts record bytes. A graceful drain uses it so as not to close a
// connection on a request the client has sent but the proxy has not read.
func Unread(c net.Conn) int {
	for {
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = w.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}
