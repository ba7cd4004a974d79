package kafka

import (
	"context"
	"encoding/binary"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// requestFrame encodes req as a client would (header v1/v2 with client id "raw").
func requestFrame(req kmsg.Request, corr int32) []byte {
	return kmsg.NewRequestFormatter(kmsg.FormatterClientID("raw")).AppendRequest(nil, req, corr)
}

// TestPipelinedAndAcksZero sends several requests back to back, one of them an acks=0 produce
// that gets no response, and checks every response comes back in order with its correlation id.
func TestPipelinedAndAcksZero(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	conn, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	meta := kmsg.NewPtrMetadataRequest()
	meta.Version = 12
	prod := kmsg.NewPtrProduceRequest()
	prod.Version = 9
	prod.Acks = 0
	topic := "acks0"
	prod.Topics = []kmsg.ProduceRequestTopic{{Topic: topic, Partitions: []kmsg.ProduceRequestTopicPartition{{Partition: 0}}}}
	var buf []byte
	buf = append(buf, requestFrame(meta, 1)...)
	buf = append(buf, requestFrame(prod, 2)...) // no response expected
	api := kmsg.NewPtrApiVersionsRequest()
	api.Version = 3
	buf = append(buf, requestFrame(api, 3)...)
	buf = append(buf, requestFrame(meta, 4)...)
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for _, want := range []int32{1, 3, 4} {
		frame, err := readFrame(conn, DefaultMaxFrameBytes)
		if err != nil {
			t.Fatalf("waiting for response %d: %v", want, err)
		}
		if got := int32(binary.BigEndian.Uint32(frame[4:])); got != want {
			t.Fatalf("response correlation id %d, want %d", got, want)
		}
		if want == 4 {
			resp := kmsg.NewPtrMetadataResponse()
			resp.SetVersion(12)
			start, _ := responseBodyStart(frame, keyMetadata, true)
			if err := resp.ReadFrom(frame[start:]); err != nil {
				t.Fatal(err)
			}
			for _, b := range resp.Brokers {
				if !p.isProxyAddr(net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))) {
					t.Errorf("metadata advertises %s:%d, not a proxy listener", b.Host, b.Port)
				}
			}
		}
	}
}

// TestUnknownCorrelationForwarded drives a session over pipes: a response whose correlation id
// matches no request is forwarded unchanged and counted, and pairing continues.
func TestUnknownCorrelationForwarded(t *testing.T) {
	p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	client, clientEnd := net.Pipe()
	upstream, upstreamEnd := net.Pipe()
	conn := &proxy.Conn{ID: 1, Protocol: "kafka", Client: clientEnd, Upstream: upstreamEnd, Log: zerolog.Nop()}
	done := make(chan error, 1)
	go func() { done <- p.ServeConn(context.Background(), conn) }()

	hb := kmsg.NewPtrHeartbeatRequest()
	hb.Version = 0
	go client.Write(requestFrame(hb, 5))
	if _, err := readFrame(upstream, DefaultMaxFrameBytes); err != nil {
		t.Fatal(err)
	}
	stray := []byte{0, 0, 0, 6, 0, 0, 0, 99, 0, 0}
	real := []byte{0, 0, 0, 6, 0, 0, 0, 5, 0, 0}
	go func() { upstream.Write(stray); upstream.Write(real) }()
	for _, want := range [][]byte{stray, real} {
		got, err := readFrame(client, DefaultMaxFrameBytes)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("forwarded %x, want %x", got, want)
		}
	}
	if n := p.Stats().UnknownCorrIDs; n != 1 {
		t.Errorf("unknown correlation ids counted %d, want 1", n)
	}
	client.Close()
	upstream.Close()
	<-done
}
