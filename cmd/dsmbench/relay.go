package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// relayArg re-executes dsmbench as a plain TCP relay: one more TCP hop and nothing else. It
// parses nothing and reads and writes its sockets as the proxy does (proxy.RawSyscallConn), so
// proxy against relay is the cost of the proxy's protocol work, and relay against direct the cost
// of the hop. (io.Copy's splice(2) through a pipe moved Kafka batches at the same rate and small
// AMQP frames with more CPU: 4.4-5.1 s/GB against 3.4-4.4 consuming, on 2026-12-04.)
const relayArg = "__relay"

// relayBuffer bounds one read: a 100-record Kafka batch of 1 KiB records fits.
const relayBuffer = 256 << 10

// runRelay: dsmbench __relay UPSTREAM. It prints "LISTEN addr", forwards every connection to
// UPSTREAM byte for byte and serves until stdin closes.
func runRelay(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "dsmbench __relay UPSTREAM")
		return 2
	}
	if err := pinFromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go relayAll(ln, args[0])
	fmt.Printf("LISTEN %s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = ln.Close()
	return 0
}

func relayAll(ln net.Listener, upstream string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go relayConn(c.(*net.TCPConn), upstream)
	}
}

// relayConn copies each direction until its reader ends, then half-closes the other side, as a
// client closing its write side expects.
func relayConn(c *net.TCPConn, upstream string) {
	defer c.Close()
	uc, err := net.Dial("tcp", upstream)
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay %s: %v\n", c.RemoteAddr(), err)
		return
	}
	u := uc.(*net.TCPConn)
	defer u.Close()
	cp := func(dst, src *net.TCPConn) {
		// Wrapped so that io.CopyBuffer finds no ReaderFrom or WriterTo: TCPConn's would splice(2)
		// through a pipe, which is not what the proxy does with its sockets.
		w := struct{ io.Writer }{proxy.RawSyscallConn(dst)}
		r := struct{ io.Reader }{proxy.RawSyscallConn(src)}
		_, _ = io.CopyBuffer(w, r, make([]byte, relayBuffer))
		_ = dst.CloseWrite()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cp(u, c)
	}()
	cp(c, u)
	wg.Wait()
}

// benchPath is one way from the clients to a broker: direct, through the proxy, or through the
// relay. target is what the client is pointed at (a Kafka seed broker or a URL); via, for Kafka,
// is where the client dials every broker instead; proc is the process in between, if any.
type benchPath struct {
	name, target, via string
	proc              *childProcess
}

func startRelay(upstream string, stderr io.Writer) (*childProcess, error) {
	return startChild(stderr, withGODEBUG(os.Environ(), shipMemory), relayArg, upstream)
}
