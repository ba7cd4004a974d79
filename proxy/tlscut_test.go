package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// TestTLSCutWritesNothing: cutting a TLS client (the drain deadline, the idle timeout) closes its
// socket without a close_notify. tls.Conn.Close writes one first, and on a client that reads
// nothing (a vanished host, a consumer at its prefetch limit) that write blocked up to 5 s per
// connection, holding the listener's lock: drains overran their deadline, new connections
// waited. Over net.Pipe a write reaches the peer only when it reads, so the peer's first read
// tells whether closeBoth wrote anything.
func TestTLSCutWritesNothing(t *testing.T) {
	pki := testpki.New(t, "cut CA")
	_, _, pair := pki.Issue(t, "proxy", "127.0.0.1")
	server, peer := net.Pipe()
	defer peer.Close()
	tc := tls.Server(server, &tls.Config{Certificates: []tls.Certificate{pair}})
	client := tls.Client(peer, &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"})
	done := make(chan error, 1)
	go func() { done <- tc.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c := &Conn{Client: tc, tlsConn: tc}
	go c.closeBoth()
	n, err := peer.Read(make([]byte, 64))
	if n != 0 || err != io.EOF {
		t.Errorf("the client read %d bytes (%v) at the cut, want none and EOF: a close_notify that blocks while the client reads nothing", n, err)
	}
}
