package proxy

import "net"

// RawSyscallListener returns ln with every accepted connection passed through RawSyscallConn.
func RawSyscallListener(ln net.Listener) net.Listener { return rawSyscallListener{ln} }

type rawSyscallListener struct{ net.Listener }

func (l rawSyscallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return RawSyscallConn(c), nil
}
