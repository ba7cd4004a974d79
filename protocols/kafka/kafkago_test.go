package kafka

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// segmentio/kafka-go has a wire codec of its own: its Writer and its group Reader pick their
// request versions and build their batches without any code kgo or sarama share.

// produceKafkaGo writes recs to topic with kafka-go's Writer, logging in with auth when given.
func produceKafkaGo(t *testing.T, ctx context.Context, p *testProxy, clientID, topic string, codec kafkago.Compression, recs []sentRecord, auth ...sasl.Mechanism) {
	t.Helper()
	tr := &kafkago.Transport{ClientID: clientID}
	if len(auth) > 0 {
		tr.SASL = auth[0]
	}
	// Writer.Close leaves a Transport it was given open, and an open Transport refreshes its
	// metadata from the bootstrap address every few seconds, forever: after this test it would
	// keep dialing the proxy's freed port, which the OS may hand to a later test's broker.
	defer tr.CloseIdleConnections()
	w := &kafkago.Writer{
		Addr:                   kafkago.TCP(p.Addr().String()),
		Topic:                  topic,
		Balancer:               &kafkago.RoundRobin{},
		RequiredAcks:           kafkago.RequireAll,
		Compression:            codec,
		AllowAutoTopicCreation: true,
		BatchTimeout:           10 * time.Millisecond,
		Transport:              tr,
	}
	defer w.Close()
	msgs := make([]kafkago.Message, len(recs))
	for i, r := range recs {
		msgs[i] = kafkago.Message{Key: r.key, Value: r.value, Time: r.ts}
		for _, h := range r.headers {
			msgs[i].Headers = append(msgs[i].Headers, kafkago.Header{Key: h.Key, Value: h.Value})
		}
	}
	// A topic that does not exist yet answers its first writes with a retriable error while the
	// broker creates it; the Writer's own retries cover that.
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("kafka-go produce to %s: %v", topic, err)
	}
}

// consumeKafkaGo reads n messages of topic in group and commits them, logging in with auth when
// given.
func consumeKafkaGo(t *testing.T, ctx context.Context, p *testProxy, clientID, topic, group string, n int, auth ...sasl.Mechanism) []*kgo.Record {
	t.Helper()
	dialer := &kafkago.Dialer{Timeout: 10 * time.Second}
	if len(auth) > 0 {
		dialer.SASLMechanism = auth[0]
	}
	if clientID != "" {
		dialer.ClientID = clientID // else kafka-go's default, "<program>@<host> (github.com/segmentio/kafka-go)"
	}
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:     []string{p.Addr().String()},
		GroupID:     group,
		Topic:       topic,
		StartOffset: kafkago.FirstOffset,
		MaxWait:     100 * time.Millisecond,
		Dialer:      dialer,
	})
	defer r.Close()
	var msgs []kafkago.Message
	var got []*kgo.Record
	for len(got) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("kafka-go consumed %d of %d from %s: %v", len(got), n, topic, err)
		}
		msgs = append(msgs, m)
		got = append(got, kafkaGoRecord(m))
	}
	if err := r.CommitMessages(ctx, msgs...); err != nil {
		t.Fatalf("kafka-go commit: %v", err)
	}
	return got
}

// kafkaGoRecord is m as a kgo.Record, for the checks the client tests share.
func kafkaGoRecord(m kafkago.Message) *kgo.Record {
	rec := &kgo.Record{Topic: m.Topic, Partition: int32(m.Partition), Offset: m.Offset, Key: m.Key, Value: m.Value, Timestamp: m.Time}
	for _, h := range m.Headers {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	return rec
}

func TestKafkaGo(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name  string
		codec kafkago.Compression
	}{
		{"none", 0},
		{"gzip", kafkago.Gzip},
		{"snappy", kafkago.Snappy},
		{"lz4", kafkago.Lz4},
		{"zstd", kafkago.Zstd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "kafkago-"+tc.name)
			group := "kafkago-" + tc.name
			sent := testRecords(12, time.UnixMilli(1700000200000))
			produceKafkaGo(t, ctx, p, "kafkago-producer", topic, tc.codec, sent)
			got := consumeKafkaGo(t, ctx, p, "kafkago-consumer", topic, group, len(sent))
			checkDelivered(t, p, topic, group, "kafkago-producer", sent, got)
		})
	}
	t.Run("partition reader", func(t *testing.T) {
		// Without a group, kafka-go reads one partition over its older Conn API (ListOffsets and
		// Fetch at versions it picks itself); the consume points then carry no group.
		topic := uniqueTopic(t, "kafkago-partition")
		sent := testRecords(12, time.UnixMilli(1700000260000))
		produceKafkaGo(t, ctx, p, "kafkago-producer", topic, 0, sent)
		read := func(pt int) []*kgo.Record {
			r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: []string{p.Addr().String()}, Topic: topic, Partition: pt,
				MaxWait: 100 * time.Millisecond, Dialer: &kafkago.Dialer{ClientID: "kafkago-reader", Timeout: 10 * time.Second}})
			defer r.Close()
			hwm, err := r.ReadLag(ctx)
			if err != nil {
				t.Fatalf("partition %d: lag: %v", pt, err)
			}
			var got []*kgo.Record
			for int64(len(got)) < hwm {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					t.Fatalf("partition %d: read %d of %d: %v", pt, len(got), hwm, err)
				}
				got = append(got, kafkaGoRecord(m))
			}
			return got
		}
		all := append(append(read(0), read(1)...), read(2)...)
		checkRecords(t, sent, all, wantInjected)
		var cons []pathway.Point
		waitFor(t, "consume points without a group", func() bool {
			cons = pointsOn(p, "direction:in", "topic:"+topic, "type:kafka")
			return len(cons) >= len(sent)
		})
		prod := pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
		for _, pt := range cons {
			if len(prod) == 0 || pt.ParentHash != prod[0].Hash || pt.Service != "kafkago-reader" {
				t.Fatalf("consume point %+v: want service kafkago-reader and the produce hash as parent (%d produce points)", pt, len(prod))
			}
		}
	})
	t.Run("default client id", func(t *testing.T) {
		// kafka-go's consumer names itself after the program; the proxy takes that as the service.
		topic := uniqueTopic(t, "kafkago-default-id")
		group := "kafkago-default-id"
		sent := testRecords(4, time.UnixMilli(1700000250000))
		produceKafkaGo(t, ctx, p, "kafkago-producer", topic, 0, sent)
		consumeKafkaGo(t, ctx, p, "", topic, group, len(sent))
		checkConsumeGroup(t, p, topic, group, len(sent))
		want := filepath.Base(os.Args[0])
		for _, pt := range pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka") {
			if pt.Service != want {
				t.Errorf("consume point of kafka-go's default client id %q has service %q, want %q", kafkago.DefaultClientID, pt.Service, want)
			}
		}
	})
	guard.check(t)
}

// kafkaGoRefreshers counts the metadata refreshers of kafka-go transports still open in this
// process: each dials its bootstrap address every few seconds for as long as it lives.
func kafkaGoRefreshers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "kafka-go.(*connPool).discover")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestKafkaGoLeavesNoTransport: produceKafkaGo closes the Transport it gives its Writer. Left
// open, the transport kept dialing the proxy's address after its test; when the OS gave that
// port to a later test's broker, that test's brokerGuard saw a client bypass the proxy.
func TestKafkaGoLeavesNoTransport(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	waitFor(t, "earlier tests' kafka-go transports to close", func() bool { return kafkaGoRefreshers() == 0 })
	// The count sees an open transport (else it would pass whatever leaks).
	tr := &kafkago.Transport{ClientID: "kafkago-refresher"}
	defer tr.CloseIdleConnections() // on a failure below; closing twice is harmless
	if _, err := (&kafkago.Client{Addr: kafkago.TCP(p.Addr().String()), Transport: tr}).Metadata(ctx, &kafkago.MetadataRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := kafkaGoRefreshers(); n != 1 {
		t.Fatalf("%d kafka-go metadata refreshers with one transport open", n)
	}
	tr.CloseIdleConnections()
	waitFor(t, "the closed transport's refresher to stop", func() bool { return kafkaGoRefreshers() == 0 })

	produceKafkaGo(t, ctx, p, "kafkago-producer", uniqueTopic(t, "kafkago-closed"), 0, testRecords(4, time.UnixMilli(1700000270000)))
	waitFor(t, "produceKafkaGo's transport to close", func() bool { return kafkaGoRefreshers() == 0 })
}
