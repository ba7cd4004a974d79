package kafka

import (
	"context"
	"encoding/binary"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
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
	conn := rawClient(t, p)
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
	// A response awaited for the acks=0 produce would stay queued: a leak, and a drain that waits.
	if n := p.inflight(); n != 0 {
		t.Errorf("%d requests still wait for a response after every answer came", n)
	}
}

// TestAcksZeroProducer: kgo producing with acks=0 (no idempotence, which needs acks=all) through
// the proxy. Its records arrive with the pathway header and produce checkpoints (the first batch
// waits for the proxy to read the topic's size limit), and no request is left waiting for an
// answer the broker never sends.
func TestAcksZeroProducer(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	answeredLimits(p)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "acks0")
	cl := kgoClient(t, p, kgo.ClientID("fire-and-forget"), kgo.RequiredAcks(kgo.NoAck()), kgo.DisableIdempotentWrite())
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	// No answer would show a refusal, so batches get the header only where the topic's
	// max.message.bytes is known: the first batch asks for it and waits for the answer.
	sent := testRecords(12, time.UnixMilli(1700000700000))
	produceKgo(t, ctx, cl, topic, sent)
	got := consumeKgo(t, ctx, p, topic, "g-acks0", len(sent))
	checkRecords(t, sent, got, 1)
	if n := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")); n != len(sent) {
		t.Errorf("%d produce points, want %d", n, len(sent))
	}
	// kgo completes acks=0 produces when it has written them, maybe before the proxy read them;
	// by now (the records were consumed) the proxy has, and has nothing to wait for.
	waitFor(t, "the producer's connections to wait for nothing", func() bool { return p.inflightOf("fire-and-forget") == 0 })
	guard.check(t)
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

// inflightOf counts the requests waiting for a response on clientID's connections.
func (p *Proxy) inflightOf(clientID string) int {
	n := 0
	p.sessions.Range(func(k, _ any) bool {
		s := k.(*session)
		if ci := s.info.Load(); ci != nil && ci.clientID == clientID {
			s.mu.Lock()
			n += len(s.queue)
			s.mu.Unlock()
		}
		return true
	})
	return n
}

// TestPipelineBoundedByAnswers: a client that pipelines many small requests without reading its
// answers gets no more than maxQueuedRequests of them awaiting answers in the proxy: past that the
// proxy stops reading, as a broker would. Once the client reads, every answer arrives in order.
func TestPipelineBoundedByAnswers(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	meta := emptyMetadata()
	const n = 50000
	var buf []byte
	for i := range n {
		buf = append(buf, requestFrame(meta, int32(i))...)
	}
	wrote := make(chan error, 1)
	go func() { _, err := conn.Write(buf); wrote <- err }()
	waitFor(t, "the proxy to hold a full queue", func() bool { return p.inflightOf("raw") >= maxQueuedRequests-10 })
	for range 100 {
		if q := p.inflightOf("raw"); q > maxQueuedRequests {
			t.Fatalf("%d requests await answers, bound %d", q, maxQueuedRequests)
		}
		time.Sleep(time.Millisecond)
	}
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	for i := range n {
		frame, err := readFrame(conn, DefaultMaxFrameBytes)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if got := int32(binary.BigEndian.Uint32(frame[4:])); got != int32(i) {
			t.Fatalf("answer %d has correlation id %d", i, got)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatalf("writing the requests: %v", err)
	}
}

// TestMetadataEveryVersion: Metadata answers of every version kfake speaks name proxy listeners
// only, whichever request and response header versions they use.
func TestMetadataEveryVersion(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	conn.SetDeadline(time.Now().Add(time.Minute))
	for v := int16(0); v <= kmsg.NewPtrMetadataRequest().MaxVersion(); v++ {
		req := kmsg.NewPtrMetadataRequest()
		req.Version = v
		if v == 0 {
			req.Topics = []kmsg.MetadataRequestTopic{} // v0: an empty list means all topics
		}
		if _, err := conn.Write(requestFrame(req, int32(v))); err != nil {
			t.Fatal(err)
		}
		frame, err := readFrame(conn, DefaultMaxFrameBytes)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		resp := kmsg.NewPtrMetadataResponse()
		resp.SetVersion(v)
		start, err := responseBodyStart(frame, keyMetadata, resp.IsFlexible())
		if err != nil || resp.ReadFrom(frame[start:]) != nil {
			t.Fatalf("v%d: answer does not decode: %v", v, err)
		}
		if len(resp.Brokers) != 3 {
			t.Fatalf("v%d: %d brokers, want 3", v, len(resp.Brokers))
		}
		for _, b := range resp.Brokers {
			if !p.isProxyAddr(net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))) {
				t.Errorf("v%d: broker %d advertised at %s:%d, not a proxy listener", v, b.NodeID, b.Host, b.Port)
			}
		}
	}
}
