package kafka

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kmsg"
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
	p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{upLn.Addr().String()}, Log: zerolog.Nop()})
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
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req := kmsg.NewPtrSASLHandshakeRequest()
	req.Version, req.Mechanism = 0, "GSSAPI"
	frame := binary.BigEndian.AppendUint16(nil, uint16(req.Key()))
	frame = binary.BigEndian.AppendUint16(frame, 0)
	frame = binary.BigEndian.AppendUint32(frame, 7)                       // correlation id
	frame = binary.BigEndian.AppendUint16(frame, uint16(len("old-java"))) // client id
	frame = append(frame, "old-java"...)
	frame = req.AppendTo(frame)
	c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(frame))), frame...))
	if _, err := readRawFrame(c); err != nil {
		t.Fatalf("handshake answer: %v", err)
	}
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
