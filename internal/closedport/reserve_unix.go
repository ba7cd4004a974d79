//go:build unix

package closedport

import (
	"fmt"
	"net"
	"strconv"

	"golang.org/x/sys/unix"
)

// reserve binds a socket to a loopback port and never listens on it: a SYN to a port with no
// listening socket is answered with a reset, and without SO_REUSEADDR on it no other socket can
// bind the port while it is held.
func reserve() (string, func(), error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return "", nil, fmt.Errorf("bind: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return "", nil, fmt.Errorf("getsockname: %w", err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), func() { unix.Close(fd) }, nil
}
