//go:build !linux

package proxy

import "net"

// Unread is how many bytes the kernel holds for c that no read has taken yet; outside Linux the
// proxy cannot tell and says 0.
func Unread(net.Conn) int { return 0 }
