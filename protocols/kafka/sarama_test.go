package kafka

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kgo"
)

func saramaConfig(clientID string) *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.ClientID = clientID
	cfg.Version = sarama.V2_8_0_0
	cfg.Producer.Return.Successes = true
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	cfg.Consumer.Offsets.AutoCommit.Enable = false
	cfg.Metadata.AllowAutoTopicCreation = true
	return cfg
}

func produceSarama(t *testing.T, p *testProxy, cfg *sarama.Config, topic string, recs []sentRecord) {
	t.Helper()
	prod, err := sarama.NewSyncProducer([]string{p.Addr().String()}, cfg)
	if err != nil {
		t.Fatalf("sarama producer: %v", err)
	}
	defer prod.Close()
	msgs := make([]*sarama.ProducerMessage, len(recs))
	for i, r := range recs {
		m := &sarama.ProducerMessage{Topic: topic, Timestamp: r.ts}
		if r.key != nil {
			m.Key = sarama.ByteEncoder(r.key)
		}
		if r.value != nil {
			m.Value = sarama.ByteEncoder(r.value)
		}
		for _, h := range r.headers {
			m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value})
		}
		msgs[i] = m
	}
	if err := prod.SendMessages(msgs); err != nil {
		t.Fatalf("sarama produce to %s: %v", topic, err)
	}
}

// saramaHandler collects n messages and commits them. A session that ends before the commit
// (a rebalance) starts the next one at the last committed offset, so a message can arrive again
// in a later generation: that is the group protocol's at-least-once delivery, not a duplicate
// record, and is skipped. The same offset twice in one generation is kept, and fails the count.
type saramaHandler struct {
	n           int
	mu          sync.Mutex
	got         []*kgo.Record
	seen        map[[2]int64]int32 // partition, offset -> generation
	redelivered int
	done        chan struct{}
	once        sync.Once
}

func (h *saramaHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *saramaHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *saramaHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		r := &kgo.Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Key: m.Key, Value: m.Value, Timestamp: m.Timestamp}
		for _, hd := range m.Headers {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: string(hd.Key), Value: hd.Value})
		}
		sess.MarkMessage(m, "")
		h.mu.Lock()
		at, gen := [2]int64{int64(m.Partition), m.Offset}, sess.GenerationID()
		if g, ok := h.seen[at]; ok && g != gen {
			h.redelivered++
			h.mu.Unlock()
			continue
		}
		h.seen[at] = gen
		h.got = append(h.got, r)
		full := len(h.got) >= h.n
		h.mu.Unlock()
		if full {
			sess.Commit()
			h.once.Do(func() { close(h.done) })
		}
	}
	return nil
}

func consumeSarama(t *testing.T, ctx context.Context, p *testProxy, topic, group string, n int) []*kgo.Record {
	t.Helper()
	return consumeSaramaWith(t, ctx, p, topic, group, n, sarama.V2_8_0_0)
}

// consumeSaramaWith is consumeSarama with sarama set to Kafka version v.
func consumeSaramaWith(t *testing.T, ctx context.Context, p *testProxy, topic, group string, n int, v sarama.KafkaVersion) []*kgo.Record {
	t.Helper()
	cfg := saramaConfig("sarama-consumer")
	cfg.Version = v
	cg, err := sarama.NewConsumerGroup([]string{p.Addr().String()}, group, cfg)
	if err != nil {
		t.Fatalf("sarama group: %v", err)
	}
	defer cg.Close()
	h := &saramaHandler{n: n, seen: map[[2]int64]int32{}, done: make(chan struct{})}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := consumeUntilDone(cctx, cg, topic, h)
	select {
	case <-h.done:
	case err := <-errc:
		t.Fatalf("sarama consume: %v", err)
	case <-ctx.Done():
		t.Fatalf("sarama consumed %d of %d", len(h.got), n)
	}
	cancel()
	<-errc
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.redelivered > 0 {
		t.Logf("%d messages redelivered by a later group generation (at-least-once), skipped", h.redelivered)
	}
	return h.got
}

func TestSarama(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name       string
		codec      sarama.CompressionCodec
		idempotent bool
	}{
		{"none", sarama.CompressionNone, false},
		{"gzip", sarama.CompressionGZIP, false},
		{"snappy", sarama.CompressionSnappy, false},
		{"lz4", sarama.CompressionLZ4, false},
		{"zstd", sarama.CompressionZSTD, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "sarama-"+tc.name)
			cfg := saramaConfig("sarama-producer")
			cfg.Producer.Compression = tc.codec
			if tc.idempotent {
				cfg.Producer.Idempotent = true
				cfg.Net.MaxOpenRequests = 1
			}
			sent := testRecords(12, time.UnixMilli(1700000100000))
			produceSarama(t, p, cfg, topic, sent)
			got := consumeSarama(t, ctx, p, topic, "sarama-"+tc.name, len(sent))
			checkDelivered(t, p, topic, "sarama-"+tc.name, "sarama-producer", sent, got)
		})
	}
	guard.check(t)
}

// TestSaramaVersions: sarama set to older and newer Kafka versions picks other request versions
// (Produce v3 up, Metadata v1 up, older group APIs), each of which the proxy must read or relay:
// the same records, backlogs and chain as with V2_8_0_0. The tap records the versions seen.
func TestSaramaVersions(t *testing.T) {
	c, guard := startCluster(t)
	rv := newRequestVersions()
	p := startProxyWith(t, c, nil, func(p *Proxy) { p.tap = rv.tap })
	ctx := testCtx(t)
	for _, tc := range []struct {
		name    string
		version sarama.KafkaVersion
		codec   sarama.CompressionCodec
	}{
		{"0.11", sarama.V0_11_0_0, sarama.CompressionGZIP},
		{"1.0", sarama.V1_0_0_0, sarama.CompressionLZ4},
		{"2.1", sarama.V2_1_0_0, sarama.CompressionZSTD},
		{"3.6", sarama.V3_6_0_0, sarama.CompressionSnappy},
		{"4.0", sarama.V4_0_0_0, sarama.CompressionNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "sarama-v"+tc.name)
			group := "sarama-v" + tc.name
			rv.setLabel(tc.name)
			cfg := saramaConfig("sarama-producer")
			cfg.Version = tc.version
			cfg.Producer.Compression = tc.codec
			sent := testRecords(12, time.UnixMilli(1700000500000))
			produceSarama(t, p, cfg, topic, sent)
			got := consumeSaramaWith(t, ctx, p, topic, group, len(sent), tc.version)
			checkDelivered(t, p, topic, group, "sarama-producer", sent, got)
			t.Logf("requests: %s", rv.of(tc.name))
		})
	}
	guard.check(t)
}

// consumeUntilDone runs cg's Consume of topic again after each rebalance until ctx is done, and
// reports its first error, or nil once ctx ended it.
func consumeUntilDone(ctx context.Context, cg sarama.ConsumerGroup, topic string, h sarama.ConsumerGroupHandler) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if err := cg.Consume(ctx, []string{topic}, h); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	return errc
}
