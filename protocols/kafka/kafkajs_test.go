package kafka

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/npmpeer"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// kafkajsDir holds the kafkajs peer; its node_modules is installed by the test when missing.
var kafkajsDir = filepath.Join("..", "..", "testdata", "kafka", "node")

// needKafkajs installs kafkajs (npm) for the peer script, failing with what CI must provide.
func needKafkajs(t *testing.T) {
	t.Helper()
	npmpeer.Install(t, kafkajsDir, "the Kafka tests (they drive kafkajs too)", "kafkajs", "kafkajs-snappy")
}

// kafkajsRecord is a record as peer.js reads and prints it: bytes in base64 (encoding/json's
// []byte), null as null.
type kafkajsRecord struct {
	Partition int32           `json:"partition,omitempty"`
	Offset    int64           `json:"offset,omitempty"`
	TS        int64           `json:"ts"`
	Key       []byte          `json:"key"`
	Value     []byte          `json:"value"`
	Headers   []kafkajsHeader `json:"headers"`
}

type kafkajsHeader struct {
	Key   string `json:"k"`
	Value []byte `json:"v"`
}

// runKafkajs produces sent with kafkajs through the proxy (codec none, gzip, or snappy with the
// kafkajs-snappy plugin; lz4 and zstd plugins need native builds), consumes them in group,
// commits, and returns what it consumed.
// env is added to the peer's (PEER_STEPS, PEER_CLIENT_ID: see peer.js). kafkajs cannot send a
// null header value: sent must hold none.
func runKafkajs(t *testing.T, p *testProxy, topic, group, codec, mode string, sent []sentRecord, env ...string) []*kgo.Record {
	t.Helper()
	needKafkajs(t)
	in := make([]kafkajsRecord, len(sent))
	for i, s := range sent {
		in[i] = kafkajsRecord{TS: s.ts.UnixMilli(), Key: s.key, Value: s.value, Headers: []kafkajsHeader{}}
		for _, h := range s.headers {
			if h.Value == nil {
				t.Fatalf("record %q: kafkajs cannot send the null value of header %q", s.key, h.Key)
			}
			in[i].Headers = append(in[i].Headers, kafkajsHeader{h.Key, h.Value})
		}
	}
	stdin, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(testCtx(t), "node", "peer.js", p.Addr().String(), topic, group, codec, mode)
	cmd.Dir = kafkajsDir
	cmd.Env = append(append(os.Environ(), "KAFKAJS_NO_PARTITIONER_WARNING=1"), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kafkajs peer: %v\n%s", err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("kafkajs peer stderr:\n%s", stderr.String())
	}
	return parsePeerRecords(t, topic, out)
}

// TestKafkajs: Node's kafkajs, a client with a wire codec of its own in another language,
// produces (plain, idempotent and in a transaction that also commits a group's offsets;
// uncompressed, gzip and snappy) and consumes in a group through the proxy.
func TestKafkajs(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	for _, tc := range []struct{ codec, mode string }{
		{"none", "plain"},
		{"gzip", "idempotent"},
		{"snappy", "plain"},
		{"none", "transactional"},
	} {
		t.Run(tc.codec+"-"+tc.mode, func(t *testing.T) {
			topic := uniqueTopic(t, "kafkajs-"+tc.codec+"-"+tc.mode)
			group := "kafkajs-" + tc.codec + "-" + tc.mode
			sent := kafkajsRecords(testRecords(12, time.UnixMilli(1700000300000)))
			got := runKafkajs(t, p, topic, group, tc.codec, tc.mode, sent)
			checkRecords(t, sent, got, wantInjected)
			markers := int64(0)
			if tc.mode == "transactional" {
				markers = 1 // the commit marker after each partition's records
			}
			checkBacklogsMarked(t, p, topic, group, got, markers)
			checkConsumeGroup(t, p, topic, group, len(sent))
			checkChain(t, p, topic, group, "kafkajs-producer", len(sent))
			if tc.mode == "transactional" {
				checkTxnCommit(t, p, topic, group+"-txn", 0, 5)
			}
		})
	}
	guard.check(t)
}

// checkTxnCommit waits for the kafka_commit offset a transaction committed for group (its
// TxnOffsetCommit) on topic's partition.
func checkTxnCommit(t *testing.T, p *testProxy, topic, group string, partition int32, want int64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("commit offset %d of %s on %s/%d", want, group, topic, partition), func() bool {
		_, offs := p.rec.snapshot()
		for _, o := range offs {
			if o.Kind == pathway.KafkaCommit && o.Topic == topic && o.Group == group && o.Partition == partition && o.Value == want {
				return true
			}
		}
		return false
	})
}

// kafkajsRecords is rs with every null header value made empty: kafkajs cannot send one.
func kafkajsRecords(rs []sentRecord) []sentRecord {
	for _, r := range rs {
		for i := range r.headers {
			if r.headers[i].Value == nil {
				r.headers[i].Value = []byte{}
			}
		}
	}
	return rs
}
