package kafka

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// kafkaPythonPeer is kafka-python's peer script; /usr/bin/python3 is Debian's, which
// python3-kafka (2.0.2) and python3-lz4 install into.
var kafkaPythonPeer = filepath.Join("..", "..", "testdata", "kafka", "python", "peer.py")

const debianPython = "/usr/bin/python3"

// The peer's client ids: the proxy names the services after them (kafka-python's own defaults,
// kafka-python-producer-1 and the like, name the library and no service).
const (
	kafkaPythonProducer = "python-orders"
	kafkaPythonConsumer = "python-billing"
)

// needKafkaPython fails, saying how to install them, when Debian's python3-kafka or python3-lz4
// (kafka-python's lz4 codec) is missing.
func needKafkaPython(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(debianPython, "-c", "import kafka, lz4.frame").CombinedOutput(); err != nil {
		t.Fatalf("kafka-python and its lz4 codec are required: install them with `apt-get install -y python3-kafka python3-lz4` (%v: %s)", err, out)
	}
}

// kafkaPythonCodecs are the codecs kafka-python produces here; snappy and zstd would need
// python3-snappy and python3-zstandard, and sarama, kgo and kafka-go cover those codecs.
var kafkaPythonCodecs = []string{"none", "gzip", "lz4"}

// kafkaPythonRecords are n test records with every null header value made empty: kafka-python's
// send() takes bytes header values only.
func kafkaPythonRecords(n int, base time.Time) []sentRecord {
	return kafkajsRecords(testRecords(n, base))
}

// runKafkaPython runs one step of the peer (create, produce, group or assign) against broker and returns
// the records it consumed: sent goes to its stdin as kafkajs's peer reads it, and a consumer
// reads as many records as sent holds. env is added to the peer's (PEER_API_VERSION: see peer.py).
func runKafkaPython(t *testing.T, broker, topic, group, codec, step string, sent []sentRecord, env ...string) []*kgo.Record {
	t.Helper()
	needKafkaPython(t)
	in := make([]kafkajsRecord, len(sent))
	for i, s := range sent {
		in[i] = kafkajsRecord{TS: s.ts.UnixMilli(), Key: s.key, Value: s.value, Headers: []kafkajsHeader{}}
		for _, h := range s.headers {
			in[i].Headers = append(in[i].Headers, kafkajsHeader{h.Key, h.Value})
		}
	}
	stdin, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(testCtx(t), debianPython, kafkaPythonPeer, broker, topic, group, codec, step)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kafka-python peer %s of %s via %s: %v\n%s", step, topic, broker, err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("kafka-python peer stderr:\n%s", stderr.String())
	}
	return parsePeerRecords(t, topic, out)
}

// parsePeerRecords reads the JSON lines a peer printed, one consumed record each.
func parsePeerRecords(t *testing.T, topic string, out []byte) []*kgo.Record {
	t.Helper()
	var got []*kgo.Record
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r kafkajsRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("peer output %q: %v", sc.Text(), err)
		}
		rec := &kgo.Record{Topic: topic, Partition: r.Partition, Offset: r.Offset, Key: r.Key, Value: r.Value, Timestamp: time.UnixMilli(r.TS)}
		for _, h := range r.Headers {
			rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
		got = append(got, rec)
	}
	return got
}

// TestKafkaPython: kafka-python, a pure-Python implementation of the protocol that speaks older
// versions than kgo (Produce v7, Fetch v4, Metadata v1, FindCoordinator v0, JoinGroup v2,
// SyncGroup v1, OffsetCommit v2, ListOffsets v1), creates a topic with its admin client, produces
// with acks=all in each codec it has through the proxy, consumes in a group and commits, then
// reads every partition again with assign() and seek() and no group: each record arrives with its
// headers and one pathway header, the proxy records the backlogs, the chain and the group-less
// consume checkpoints, and no connection of the peer reaches a broker but through the proxy's
// rewritten addresses. (kafka-python 2.0.2 has no idempotent producer.)
func TestKafkaPython(t *testing.T) {
	needKafkaPython(t)
	c, guard := startCluster(t)
	rv := newRequestVersions()
	p := startProxyWith(t, c, nil, func(p *Proxy) { p.tap = rv.tap })
	for _, codec := range kafkaPythonCodecs {
		t.Run(codec, func(t *testing.T) {
			rv.setLabel(codec)
			topic := uniqueTopic(t, "kafka-python-"+codec)
			group := "kafka-python-" + codec
			sent := kafkaPythonRecords(12, time.UnixMilli(1700000700000))
			runKafkaPython(t, p.Addr().String(), topic, group, codec, "create", nil)
			runKafkaPython(t, p.Addr().String(), topic, group, codec, "produce", sent)
			got := runKafkaPython(t, p.Addr().String(), topic, group, codec, "group", sent)
			checkDelivered(t, p, topic, group, kafkaPythonProducer, sent, got)
			again := runKafkaPython(t, p.Addr().String(), topic, group, codec, "assign", sent)
			checkRecords(t, sent, again, wantInjected)
			waitFor(t, "consume points of the reader without a group", func() bool {
				return len(pointsOn(p, "direction:in", "topic:"+topic, "type:kafka")) >= len(sent)
			})
			t.Logf("requests: %s", rv.of(codec))
		})
	}
	guard.check(t)
	checkCleanDecode(t, p)
}

// TestKafkaPythonVersions: kafka-python set to older brokers' versions sends Produce v3 to v6
// (JoinGroup, Fetch v4 and the other group requests stay as they are): each reaches the same
// records, backlogs and chain through the proxy.
func TestKafkaPythonVersions(t *testing.T) {
	needKafkaPython(t)
	c, guard := startCluster(t)
	rv := newRequestVersions()
	p := startProxyWith(t, c, nil, func(p *Proxy) { p.tap = rv.tap })
	for _, tc := range []struct{ version, codec string }{
		{"0.11.0", "gzip"}, {"1.0.0", "none"}, {"1.1.0", "lz4"}, {"2.0.0", "gzip"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			rv.setLabel(tc.version)
			topic := uniqueTopic(t, "kafka-python-v"+tc.version)
			group := "kafka-python-v" + tc.version
			env := "PEER_API_VERSION=" + tc.version
			sent := kafkaPythonRecords(12, time.UnixMilli(1700000750000))
			runKafkaPython(t, p.Addr().String(), topic, group, tc.codec, "create", nil)
			runKafkaPython(t, p.Addr().String(), topic, group, tc.codec, "produce", sent, env)
			got := runKafkaPython(t, p.Addr().String(), topic, group, tc.codec, "group", sent, env)
			checkDelivered(t, p, topic, group, kafkaPythonProducer, sent, got)
			t.Logf("requests: %s", rv.of(tc.version))
		})
	}
	guard.check(t)
	checkCleanDecode(t, p)
}

// TestKafkaPythonDirectProduceProxyConsume: records kafka-python produced straight to the broker
// carry no pathway header; consumed through the proxy in a group they arrive as sent, the proxy
// records consume checkpoints tagged with the group and the group's commits.
func TestKafkaPythonDirectProduceProxyConsume(t *testing.T) {
	needKafkaPython(t)
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	topic, group := uniqueTopic(t, "kafka-python-direct-in"), "kafka-python-direct-in"
	sent := kafkaPythonRecords(12, time.UnixMilli(1700000800000))
	runKafkaPython(t, p.Addr().String(), topic, group, "none", "create", nil)
	runKafkaPython(t, c.ListenAddrs()[0], topic, group, "gzip", "produce", sent)
	got := runKafkaPython(t, p.Addr().String(), topic, group, "gzip", "group", sent)
	checkRecords(t, sent, got, 0)
	checkConsumeGroup(t, p, topic, group, len(sent))
	checkCommits(t, p, topic, group, got)
	guard.checkDirectOnly(t, kafkaPythonProducer)
	checkCleanDecode(t, p)
}

// TestKafkaPythonProxyProduceDirectConsume: records kafka-python produced through the proxy and
// consumed straight from the broker carry their headers plus one pathway header, and the proxy
// recorded one produce checkpoint each, of the producer's service.
func TestKafkaPythonProxyProduceDirectConsume(t *testing.T) {
	needKafkaPython(t)
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	topic, group := uniqueTopic(t, "kafka-python-direct-out"), "kafka-python-direct-out"
	sent := kafkaPythonRecords(12, time.UnixMilli(1700000900000))
	runKafkaPython(t, p.Addr().String(), topic, group, "none", "create", nil)
	runKafkaPython(t, p.Addr().String(), topic, group, "gzip", "produce", sent)
	got := runKafkaPython(t, c.ListenAddrs()[0], topic, group, "gzip", "group", sent)
	checkRecords(t, sent, got, wantInjected)
	prod := pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
	if len(prod) != len(sent) {
		t.Errorf("%d produce points on %s, want %d", len(prod), topic, len(sent))
	}
	for i, pt := range prod {
		if pt.Service != kafkaPythonProducer || pt.ParentHash != 0 {
			t.Errorf("produce point %d: service %q parent %x, want %s and none", i, pt.Service, pt.ParentHash, kafkaPythonProducer)
		}
	}
	guard.checkDirectOnly(t, kafkaPythonConsumer)
	checkCleanDecode(t, p)
}

// checkCommits waits for group's kafka_commit offset of each partition of topic that got holds
// records of: the offset after the last one.
func checkCommits(t *testing.T, p *testProxy, topic, group string, got []*kgo.Record) {
	t.Helper()
	next := map[int32]int64{}
	for _, r := range got {
		next[r.Partition] = max(next[r.Partition], r.Offset+1)
	}
	waitFor(t, fmt.Sprintf("commits of %s on %s: %v", group, topic, next), func() bool {
		_, offs := p.rec.snapshot()
		seen := map[int32]int64{}
		for _, o := range offs {
			if o.Kind == pathway.KafkaCommit && o.Topic == topic && o.Group == group {
				seen[o.Partition] = max(seen[o.Partition], o.Value)
			}
		}
		for part, n := range next {
			if seen[part] != n {
				return false
			}
		}
		return true
	})
}

// checkCleanDecode fails the test if the proxy met a frame it could not pair or read.
func checkCleanDecode(t *testing.T, p *testProxy) {
	t.Helper()
	if st := p.Stats(); st.UnknownCorrIDs != 0 || st.DecodeErrors != 0 {
		t.Errorf("stats %+v", st)
	}
	if ev := p.errs.byCategory(errtrack.DecodeError); len(ev) > 0 {
		t.Errorf("decode errors: %+v", ev)
	}
}

// checkDirectOnly is check for a test that also drives the broker directly: every connection that
// bypassed the proxy must be the one client, by its client id, that the test sent there.
func (g *brokerGuard) checkDirectOnly(t *testing.T, clientID string) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, d := range g.direct {
		if !strings.HasSuffix(d, fmt.Sprintf("client id %q)", clientID)) {
			t.Errorf("a client other than %s connected to a real broker port directly: %s", clientID, d)
		}
	}
	if g.accepted == len(g.direct) {
		t.Errorf("no broker connection at all went through the proxy")
	}
}
