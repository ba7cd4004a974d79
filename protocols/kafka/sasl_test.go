package kafka

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestSASLv0UnknownMechanismRelaysTokens: after a SaslHandshake v0 for a mechanism the proxy
// has no exchange count for (GSSAPI), the client's raw tokens, which have no Kafka header, reach
// the broker byte for byte, however soon the client sends them.
//
// No peer here speaks SaslHandshake v0 (kfake refuses it; Kafka clients of that age are Java
// and Python 0.x), so the broker side is scripted: one handshake answer, then raw tokens.
func TestSASLv0UnknownMechanismRelaysTokens(t *testing.T) {
	token := []byte{0x60, 0x82, 0x02, 0x50, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02}
	reply := []byte{0x60, 0x30, 0x06, 0x09, 0x2a, 0x86, 0x48}
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upLn.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := upLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := readRawFrame(c)
		if err != nil || len(req) < 8 {
			got <- nil
			return
		}
		resp := kmsg.NewPtrSASLHandshakeResponse()
		resp.Version = 0
		resp.SupportedMechanisms = []string{"GSSAPI"}
		body := append(append([]byte{}, req[4:8]...), resp.AppendTo(nil)...) // correlation id, body
		c.Write(binary.BigEndian.AppendUint32(nil, uint32(len(body))))
		c.Write(body)
		tok, err := readRawFrame(c)
		if err != nil {
			got <- nil
			return
		}
		got <- tok
		c.Write(binary.BigEndian.AppendUint32(nil, uint32(len(reply))))
		c.Write(reply)
	}()
	_, c := v0Handshake(t, upLn.Addr().String(), "GSSAPI")
	// The token goes out at once, as a client's does: the proxy may still be reading for the
	// next request when the handshake's answer tells it what follows.
	c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(token))), token...))
	if tok := <-got; !bytes.Equal(tok, token) {
		t.Fatalf("broker got token %x, want %x", tok, token)
	}
	back, err := readRawFrame(c)
	if err != nil || !bytes.Equal(back, reply) {
		t.Fatalf("client got %x (%v), want the broker's token %x", back, err, reply)
	}
}

// readFrame reads one int32-length-prefixed frame and returns what follows the length.
func readRawFrame(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(n[:]))
	_, err := io.ReadFull(r, b)
	return b, err
}

// TestSASLv0KnownMechanisms: after a SaslHandshake v0 for PLAIN, SCRAM or OAUTHBEARER the proxy
// relays exactly that mechanism's raw exchanges, then parses frames again: the client's next
// Metadata answer names the proxy's listener, not the broker. Counting one exchange too few
// would parse a raw token as a request; one too many would relay the Metadata answer unrewritten.
// The broker side is scripted, as no peer here speaks v0.
func TestSASLv0KnownMechanisms(t *testing.T) {
	for _, tc := range []struct {
		mechanism string
		client    [][]byte // raw tokens, in order
		server    [][]byte // the broker's answer to each
	}{
		{"PLAIN", [][]byte{[]byte("\x00alice\x00secret")}, [][]byte{{}}},
		{"SCRAM-SHA-256", [][]byte{[]byte("n,,n=alice,r=abc"), []byte("c=biws,r=abcdef,p=cHJvb2Y=")},
			[][]byte{[]byte("r=abcdef,s=c2FsdA==,i=4096"), []byte("v=c2lnbmF0dXJl")}},
		{"OAUTHBEARER", [][]byte{[]byte("n,,\x01auth=Bearer eyJ0\x01\x01")}, [][]byte{{}}},
		// An error challenge: the client answers it with one more token, %x01.
		{"OAUTHBEARER", [][]byte{[]byte("n,,\x01auth=Bearer bad\x01\x01"), {0x01}},
			[][]byte{[]byte(`{"status":"invalid_token"}`), {}}},
	} {
		t.Run(fmt.Sprintf("%s_%d_tokens", tc.mechanism, len(tc.client)), func(t *testing.T) {
			upLn, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer upLn.Close()
			upPort := upLn.Addr().(*net.TCPAddr).Port
			brokerErr := make(chan error, 1)
			go func() { brokerErr <- scriptV0Broker(upLn, tc.mechanism, tc.client, tc.server, int32(upPort)) }()
			p, c := v0Handshake(t, upLn.Addr().String(), tc.mechanism)
			for i, tok := range tc.client {
				c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(tok))), tok...))
				back, err := readRawFrame(c)
				if err != nil || !bytes.Equal(back, tc.server[i]) {
					t.Fatalf("exchange %d: client got %q (%v), want %q", i, back, err, tc.server[i])
				}
			}
			meta := kmsg.NewPtrMetadataRequest()
			meta.Version = 1
			c.Write(requestFrame(meta, 8))
			frame, err := readRawFrame(c)
			if err != nil {
				t.Fatalf("metadata answer: %v", err)
			}
			if err := <-brokerErr; err != nil {
				t.Fatalf("scripted broker: %v", err)
			}
			resp := kmsg.NewPtrMetadataResponse()
			resp.Version = 1
			if len(frame) < 4 || resp.ReadFrom(frame[4:]) != nil || len(resp.Brokers) != 1 {
				t.Fatalf("metadata answer %x does not decode", frame)
			}
			want, ok := p.NodeAddr(1)
			got := net.JoinHostPort(resp.Brokers[0].Host, fmt.Sprint(resp.Brokers[0].Port))
			if !ok || got != want.String() {
				t.Errorf("metadata names %s, want the proxy's listener %v (the proxy did not parse it)", got, want)
			}
		})
	}
}

// scriptV0Broker plays a pre-1.0 broker for one connection: a SaslHandshake v0 answer, the raw
// token exchanges, then a Metadata v1 answer naming node 1 at its own port.
func scriptV0Broker(ln net.Listener, mechanism string, client, server [][]byte, port int32) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	answer := func(req []byte, body []byte) {
		frame := append(append([]byte{}, req[4:8]...), body...) // correlation id, body
		c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(frame))), frame...))
	}
	req, err := readRawFrame(c)
	if err != nil || len(req) < 8 {
		return fmt.Errorf("handshake: %v", err)
	}
	hs := kmsg.NewPtrSASLHandshakeResponse()
	hs.SupportedMechanisms = []string{mechanism}
	answer(req, hs.AppendTo(nil))
	for i := range client {
		tok, err := readRawFrame(c)
		if err != nil {
			return fmt.Errorf("token %d: %v", i, err)
		}
		if !bytes.Equal(tok, client[i]) {
			return fmt.Errorf("token %d is %q, want %q", i, tok, client[i])
		}
		c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(server[i]))), server[i]...))
	}
	req, err = readRawFrame(c)
	if err != nil || len(req) < 8 || int16(binary.BigEndian.Uint16(req)) != 3 {
		return fmt.Errorf("the request after the tokens is not Metadata: %x %v", req, err)
	}
	meta := kmsg.NewPtrMetadataResponse()
	meta.Version = 1
	b := kmsg.NewMetadataResponseBroker()
	b.NodeID, b.Host, b.Port = 1, "127.0.0.1", port
	meta.Brokers = append(meta.Brokers, b)
	answer(req, meta.AppendTo(nil))
	return nil
}

// v0Handshake starts a proxy in front of upstream and has a client send it a SaslHandshake v0
// for mechanism, as a pre-1.0 Java client does; it returns once the answer came back.
func v0Handshake(t *testing.T, upstream, mechanism string) (*Proxy, net.Conn) {
	t.Helper()
	p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{upstream}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	hs := kmsg.NewPtrSASLHandshakeRequest()
	hs.Version, hs.Mechanism = 0, mechanism
	c.Write(requestFrame(hs, 7))
	if _, err := readRawFrame(c); err != nil {
		t.Fatalf("handshake answer: %v", err)
	}
	return p, c
}

// TestUnauthenticatedGroupNames: on a cluster that wants SASL, connections that never
// authenticate send JoinGroup requests with 1 MiB group ids and 30 KB client ids (the broker
// refuses them). The proxy must keep neither: an anonymous peer could otherwise fill its memory
// (MaxClients x 64 groups x MaxFrameBytes).
func TestUnauthenticatedGroupNames(t *testing.T) {
	c, _ := startCluster(t, saslUsers...)
	p := startProxy(t, c, nil)
	const conns, nameBytes = 32, 1 << 20
	for i := 0; i < conns; i++ {
		conn, err := net.Dial("tcp", p.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		join := kmsg.NewPtrJoinGroupRequest()
		join.Version = 9
		join.Group = fmt.Sprintf("g%03d-", i) + strings.Repeat("x", nameBytes)
		join.ProtocolType = "consumer"
		proto := kmsg.NewJoinGroupRequestProtocol()
		proto.Name = "range"
		join.Protocols = append(join.Protocols, proto)
		id := kmsg.FormatterClientID(fmt.Sprintf("c%03d-", i) + strings.Repeat("y", 30000))
		if _, err := conn.Write(kmsg.NewRequestFormatter(id).AppendRequest(nil, join, 1)); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, conn) // the broker refuses (closes) an unauthenticated JoinGroup
		conn.Close()
	}
	retained, ids := 0, 0
	p.groups.mu.Lock()
	for k, cg := range p.groups.clients.All() {
		ids += len(k.clientID)
		for name := range cg.groups {
			retained += len(name)
		}
	}
	p.groups.mu.Unlock()
	for _, k := range p.seen.Keys() {
		ids += len(k.client.clientID)
	}
	if retained > 0 {
		t.Errorf("the proxy keeps %d bytes of group names sent by connections the broker refused", retained)
	}
	if ids > 2*conns*maxIdentityBytes {
		t.Errorf("the proxy keeps %d bytes of client ids for %d clients", ids, conns)
	}
}

// TestSASLv0RefusedLoginTracked: a pre-1.0 broker refuses a SaslHandshake v0 login (a wrong
// PLAIN password) by closing the connection after the client's raw token: there is no answer to
// carry an error. That is a refused login, tracked as the SaslAuthenticate refusals are, and not
// a broker cut: the raw token has no Kafka header, and the cut's Warn named it "Produce v0".
// The broker side is scripted, as no peer here speaks v0.
func TestSASLv0RefusedLoginTracked(t *testing.T) {
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upLn.Close()
	brokerErr := make(chan error, 1)
	go func() {
		c, err := upLn.Accept()
		if err != nil {
			brokerErr <- err
			return
		}
		defer c.Close()
		req, err := readRawFrame(c)
		if err != nil || len(req) < 8 {
			brokerErr <- fmt.Errorf("handshake: %v", err)
			return
		}
		hs := kmsg.NewPtrSASLHandshakeResponse()
		hs.SupportedMechanisms = []string{"PLAIN"}
		frame := append(append([]byte{}, req[4:8]...), hs.AppendTo(nil)...)
		c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(frame))), frame...))
		_, err = readRawFrame(c) // the token: refused, so the connection ends unanswered
		brokerErr <- err
	}()
	var logs syncbuf.Buffer
	p := startProxy(t, nil, func(cfg *Config) {
		cfg.Bootstrap = []string{upLn.Addr().String()}
		cfg.Log = zerolog.New(&logs)
	})
	c := rawClient(t, p)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	hs := kmsg.NewPtrSASLHandshakeRequest()
	hs.Version, hs.Mechanism = 0, "PLAIN"
	c.Write(requestFrame(hs, 7))
	if _, err := readRawFrame(c); err != nil {
		t.Fatalf("handshake answer: %v", err)
	}
	tok := []byte("\x00alice\x00wrong")
	c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(tok))), tok...))
	if err := <-brokerErr; err != nil {
		t.Fatalf("scripted broker: %v", err)
	}
	if b, err := readRawFrame(c); err == nil {
		t.Fatalf("the client got %x after its refused token, want the connection's end", b)
	}
	waitFor(t, "the connection to end", func() bool { return p.Stats().OpenConnections == 0 })
	refused := p.errs.where(func(e errtrack.Event) bool { return e.Name == "SASL_AUTHENTICATION_FAILED" })
	if len(refused) != 1 || !strings.Contains(refused[0].Message, "PLAIN") {
		t.Errorf("refused login events %+v; want one SASL_AUTHENTICATION_FAILED naming PLAIN", refused)
	}
	if n := p.Stats().BrokerCuts; n != 0 || strings.Contains(logs.String(), "requests unanswered") {
		t.Errorf("the refused login was told as a broker cut (BrokerCuts %d):\n%s", n, logs.String())
	}
}
