package kafka

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

// codecBatches records the codec bits (attributes & 7) of every record batch of every Produce
// request seen at one point of the path, per topic: by name up to Produce v12, by topic id from
// v13 (resolved by codecsOf).
type codecBatches struct {
	mu      sync.Mutex
	byName  map[string][]batchSeen
	byID    map[[16]byte][]batchSeen
	undecod []string
}

// batchSeen is one record batch as it was seen: its codec bits (or -1 for a message set that is
// not a magic-2 batch) and how many records it declares.
type batchSeen struct {
	codec   int16
	records int32
	xerial  bool // snappy in the xerial framing Java producers and kafka-go write
}

func newCodecBatches() *codecBatches {
	return &codecBatches{byName: map[string][]batchSeen{}, byID: map[[16]byte][]batchSeen{}}
}

// add records every batch of req.
func (cb *codecBatches) add(req *kmsg.ProduceRequest) {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	for _, tp := range req.Topics {
		for _, part := range tp.Partitions {
			seen, err := batchesOf(part.Records)
			if err != nil {
				cb.undecod = append(cb.undecod, fmt.Sprintf("%s/%x partition %d: %v", tp.Topic, tp.TopicID, part.Partition, err))
			}
			if req.Version >= 13 {
				cb.byID[tp.TopicID] = append(cb.byID[tp.TopicID], seen...)
			} else {
				cb.byName[tp.Topic] = append(cb.byName[tp.Topic], seen...)
			}
		}
	}
}

// tap is a Proxy tap: it records the Produce requests as the client sent them.
func (cb *codecBatches) tap(h requestHeader, frame []byte) {
	if h.Key != keyProduce {
		return
	}
	req := kmsg.NewPtrProduceRequest()
	req.SetVersion(h.Version)
	if err := req.ReadFrom(frame[h.BodyStart:]); err != nil {
		cb.mu.Lock()
		cb.undecod = append(cb.undecod, fmt.Sprintf("client Produce v%d: %v", h.Version, err))
		cb.mu.Unlock()
		return
	}
	cb.add(req)
}

// codecsOf returns the batches seen for topic, named either way.
func (cb *codecBatches) codecsOf(topic string, id [16]byte) (seen []batchSeen, undecodable []string) {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	seen = append(append(seen, cb.byName[topic]...), cb.byID[id]...)
	return seen, append([]string(nil), cb.undecod...)
}

// batchesOf splits a partition's Records into record batches, each decoded with kmsg.RecordBatch.
func batchesOf(records []byte) ([]batchSeen, error) {
	var out []batchSeen
	for len(records) > 0 {
		if len(records) < 17 {
			return out, fmt.Errorf("%d trailing bytes", len(records))
		}
		length := int(int32(binary.BigEndian.Uint32(records[8:])))
		if length < 0 || 12+length > len(records) {
			return out, fmt.Errorf("batch of length %d in %d bytes", length, len(records))
		}
		b := records[:12+length]
		records = records[12+length:]
		if b[16] != 2 {
			out = append(out, batchSeen{codec: -1})
			continue
		}
		var rb kmsg.RecordBatch
		if err := rb.ReadFrom(b); err != nil {
			return out, err
		}
		codec := rb.Attributes & 7
		out = append(out, batchSeen{codec: codec, records: rb.NumRecords, xerial: codec == 2 && bytes.HasPrefix(rb.Records, xerialMagic)})
	}
	return out, nil
}

// codecValue is a ~1 KiB JSON-like order, repetitive enough that every codec shrinks a batch of
// even one of them (kgo and librdkafka send a batch uncompressed when compressing does not).
func codecValue(i int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `{"order_id":%d,"customer":"customer-%03d","currency":"EUR","lines":[`, i, i%7)
	for j := 0; b.Len() < 1000; j++ {
		if j > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sku":"SKU-%04d","name":"blue widget, large","qty":%d,"price":"19.99","warehouse":"eu-west-1"}`, j%4, j%3+1)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// codecNames are the batch attributes' codec bits by name.
var codecNames = map[string]int16{"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

// TestEveryClientCodecReachesTheBrokerCompressed: for every client and codec, a batch of records
// that every codec shrinks is sent compressed by the client (seen by the proxy's tap), reaches the
// broker (seen by a kfake control hook on Produce) with the same codec bits after the proxy
// spliced the pathway header in and recompressed it, and reads back with its values intact and
// exactly one pathway header per record. kgo, sarama (V2_8_0_0, so zstd is allowed) and kafka-go
// produce every codec; kafkajs none, gzip and snappy, kcat only none and zstd, kafka-python none,
// gzip and lz4 here (see the table).
func TestEveryClientCodecReachesTheBrokerCompressed(t *testing.T) {
	c, guard := startCluster(t)
	broker := newCodecBatches()
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		broker.add(req.(*kmsg.ProduceRequest))
		return nil, nil, false // observe only: the cluster handles the request
	})
	client := newCodecBatches()
	p := startProxyWith(t, c, nil, func(p *Proxy) { p.tap = client.tap })
	ctx := testCtx(t)
	const n = 20
	base := time.UnixMilli(1700000900000)
	sent := make([]sentRecord, n)
	var kcatIn strings.Builder
	for i := range sent {
		sent[i] = sentRecord{key: []byte(fmt.Sprintf("k%d", i)), value: codecValue(i), ts: base.Add(time.Duration(i) * time.Millisecond),
			headers: []kgo.RecordHeader{{Key: "h1", Value: []byte("v1")}}}
		fmt.Fprintf(&kcatIn, "%s:%s\n", sent[i].key, sent[i].value) // -K: splits at the first ':', the key's end
	}
	producers := map[string]func(t *testing.T, topic, codec string){
		"kgo": func(t *testing.T, topic, codec string) {
			cc := map[string]kgo.CompressionCodec{"none": kgo.NoCompression(), "gzip": kgo.GzipCompression(),
				"snappy": kgo.SnappyCompression(), "lz4": kgo.Lz4Compression(), "zstd": kgo.ZstdCompression()}[codec]
			produceKgo(t, ctx, kgoClient(t, p, kgo.ClientID("codecs-kgo"), kgo.ProducerBatchCompression(cc)), topic, sent)
		},
		"sarama": func(t *testing.T, topic, codec string) {
			cfg := saramaConfig("codecs-sarama")
			cfg.Producer.Compression = map[string]sarama.CompressionCodec{"none": sarama.CompressionNone, "gzip": sarama.CompressionGZIP,
				"snappy": sarama.CompressionSnappy, "lz4": sarama.CompressionLZ4, "zstd": sarama.CompressionZSTD}[codec]
			produceSarama(t, p, cfg, topic, sent)
		},
		"kafka-go": func(t *testing.T, topic, codec string) {
			cc := map[string]kafkago.Compression{"none": 0, "gzip": kafkago.Gzip, "snappy": kafkago.Snappy,
				"lz4": kafkago.Lz4, "zstd": kafkago.Zstd}[codec]
			produceKafkaGo(t, ctx, p, "codecs-kafkago", topic, cc, sent)
		},
		"kafkajs": func(t *testing.T, topic, codec string) {
			runKafkajs(t, p, topic, "codecs-kafkajs", codec, "plain", sent, "PEER_STEPS=produce", "PEER_CLIENT_ID=codecs-kafkajs")
		},
		"kcat": func(t *testing.T, topic, codec string) {
			runKcat(t, ctx, kcatIn.String(), "-P", "-b", p.Addr().String(), "-t", topic, "-K:", "-z", codec,
				"-H", "h1=v1", "-X", "client.id=codecs-kcat", "-X", "allow.auto.create.topics=true")
		},
		"kafka-python": func(t *testing.T, topic, codec string) {
			runKafkaPython(t, p.Addr().String(), topic, "", codec, "create", nil)
			runKafkaPython(t, p.Addr().String(), topic, "", codec, "produce", sent)
		},
	}
	all := []string{"none", "gzip", "snappy", "lz4", "zstd"}
	for _, tc := range []struct {
		client string
		codecs []string
		xerial bool // the client frames snappy the xerial way
	}{
		{"kgo", all, false},
		{"sarama", all, true},
		{"kafka-go", all, true},
		{"kafkajs", []string{"none", "gzip", "snappy"}, false}, // lz4 and zstd are native-built plugins
		// kcat's gzip, snappy and lz4 are left out: librdkafka 2.0.2 enables those codecs only
		// when the broker accepts Produce v0, and kfake (like Kafka 4.0, KAFKA-18659) advertises
		// Produce v3..13, so librdkafka logs "Broker does not support compression type gzip: not
		// compressing batch" and sends them uncompressed, directly to kfake as through the proxy
		// (whose ApiVersions cap never touches minimum versions). zstd needs only Produce v7.
		{"kcat", []string{"none", "zstd"}, false},
		{"kafka-python", kafkaPythonCodecs, false},
	} {
		cl := tc.client
		for _, codec := range tc.codecs {
			t.Run(cl+"/"+codec, func(t *testing.T) {
				topic := uniqueTopic(t, "codecs-"+cl+"-"+codec)
				producers[cl](t, topic, codec)
				id := topicID(t, ctx, kgoClient(t, p), topic)
				want := codecNames[codec]
				for _, side := range []struct {
					name string
					cb   *codecBatches
				}{{"client (proxy tap)", client}, {"broker (kfake control)", broker}} {
					seen, undecodable := side.cb.codecsOf(topic, id)
					for _, u := range undecodable {
						t.Errorf("%s: undecodable produce records: %s", side.name, u)
					}
					records, xerial := 0, 0
					var codecs []int16
					for _, b := range seen {
						records += int(b.records)
						codecs = append(codecs, b.codec)
						if b.xerial {
							xerial++
						}
						if b.codec != want {
							t.Errorf("%s: a batch of %d records of %s has codec bits %d, want %d (%s)", side.name, b.records, topic, b.codec, want, codec)
						}
					}
					if records < n {
						t.Errorf("%s: batches of %s hold %d records, want at least the %d produced (codecs %v)", side.name, topic, records, n, codecs)
					}
					t.Logf("%s: %d batches, codecs %v, %d xerial-framed", side.name, len(seen), codecs, xerial)
					if side.cb == client && codec == "snappy" && tc.xerial && xerial == 0 {
						t.Errorf("%s sent no xerial-framed snappy batch: this case no longer covers that input", cl)
					}
				}
				checkCodecRecords(t, sent, readTopic(t, ctx, p, topic, n))
			})
		}
	}
	if ev := p.errs.byCategory(errtrack.ProxySkip); len(ev) > 0 {
		t.Errorf("the proxy left batches alone: %+v", ev)
	}
	if ev := p.errs.byCategory(errtrack.DecodeError); len(ev) > 0 {
		t.Errorf("decode errors: %+v", ev)
	}
	guard.check(t)
}

// checkCodecRecords: got holds every sent record once (by key), with its value, its original
// headers and exactly one pathway header that decodes. Timestamps are not compared: kcat sets
// its own.
func checkCodecRecords(t *testing.T, sent []sentRecord, got []*kgo.Record) {
	t.Helper()
	if len(got) != len(sent) {
		t.Errorf("read %d records, sent %d", len(got), len(sent))
	}
	byKey := map[string]*kgo.Record{}
	for _, r := range got {
		if byKey[string(r.Key)] != nil {
			t.Errorf("record %q read twice", r.Key)
		}
		byKey[string(r.Key)] = r
	}
	for _, s := range sent {
		r := byKey[string(s.key)]
		if r == nil {
			t.Errorf("record %q not read back", s.key)
			continue
		}
		if string(r.Value) != string(s.value) {
			t.Errorf("record %q: value of %d bytes differs from the %d bytes sent", s.key, len(r.Value), len(s.value))
		}
		others, nctx := pathwayHeaders(t, r)
		var orig []string
		for _, h := range others {
			orig = append(orig, h.Key+"="+string(h.Value))
		}
		if nctx != 1 {
			t.Errorf("record %q: %d pathway headers, want exactly 1", s.key, nctx)
		}
		if strings.Join(orig, ",") != "h1=v1" {
			t.Errorf("record %q: other headers %v, want [h1=v1]", s.key, orig)
		}
	}
}
