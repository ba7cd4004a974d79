//go:build !linux

package proxy

import "net"

// RawSyscallConn returns c: the raw system call relay is Linux-only.
func RawSyscallConn(c net.Conn) net.Conn { return c }

// Parking returns nil: waiting without a buffer needs the raw system call relay.
func Parking(net.Conn) Parkable { return nil }
