//go:build !linux

package proxy

import "net"

// RawSyscallConn returns c: the raw system call relay is Linux-only.
func RawSyscallConn(c net.Conn) net.Conn { return c }
