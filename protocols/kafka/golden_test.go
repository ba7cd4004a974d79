package kafka

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var update = flag.Bool("update", false, "recapture the golden client requests under testdata/kafka")

const goldenDir = "../../testdata/kafka"

// captureProduces records, for every (client, label), the largest produce request with records,
// the largest fetch request naming partitions, and the first OffsetCommit, JoinGroup and SyncGroup:
// a client's first produce may hold one tiny record that no codec shrinks, which it sends
// uncompressed, and its first fetch may name no partition yet.
type captureProduces struct {
	mu     sync.Mutex
	label  string
	frames map[string][]byte
}

// goldenAPIs are the captured request kinds by key, as named in the fixture files.
var goldenAPIs = map[int16]string{keyProduce: "produce", keyFetch: "fetch", keyOffsetCommit: "offsetcommit",
	keyJoinGroup: "joingroup", keySyncGroup: "syncgroup"}

func (c *captureProduces) tap(h requestHeader, frame []byte) {
	api, ok := goldenAPIs[h.Key]
	if !ok {
		return
	}
	biggest := false // keep the largest of its kind rather than the first
	switch h.Key {
	case keyProduce:
		req := kmsg.NewPtrProduceRequest()
		req.SetVersion(h.Version)
		if req.ReadFrom(frame[h.BodyStart:]) != nil || len(req.Topics) == 0 || len(req.Topics[0].Partitions) == 0 || len(req.Topics[0].Partitions[0].Records) == 0 {
			return
		}
		// Only a request whose every batch is in the label's codec: a partition that got one
		// tiny record goes uncompressed.
		if _, codec, ok := strings.Cut(c.label, "-"); ok {
			if want, known := codecNames[codec]; known {
				for _, tp := range req.Topics {
					for _, pp := range tp.Partitions {
						seen, err := batchesOf(pp.Records)
						for _, b := range seen {
							if err != nil || b.codec != want {
								return
							}
						}
					}
				}
			}
		}
		biggest = true
	case keyFetch:
		req := kmsg.NewPtrFetchRequest()
		req.SetVersion(h.Version)
		if req.ReadFrom(frame[h.BodyStart:]) != nil {
			return
		}
		if len(req.ForgottenTopics) > 0 { // an incremental fetch that drops partitions: kept apart
			api = "fetchforgotten"
		} else if len(req.Topics) == 0 {
			return
		} else {
			biggest = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	name := fmt.Sprintf("%s.%s-v%d.bin", c.label, api, h.Version)
	if old, ok := c.frames[name]; !ok || biggest && len(frame) > len(old) {
		c.frames[name] = append([]byte(nil), frame...)
	}
}

func (c *captureProduces) setLabel(l string) {
	c.mu.Lock()
	c.label = l
	c.mu.Unlock()
}

// TestCaptureGolden regenerates the fixtures from real clients when run with -update.
func TestCaptureGolden(t *testing.T) {
	if !*update {
		t.Log("fixtures are recaptured only with -update")
		return
	}
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	capt := &captureProduces{frames: map[string][]byte{}}
	p.tap = capt.tap
	ctx := testCtx(t)
	for _, codec := range []struct {
		name string
		c    kgo.CompressionCodec
	}{{"none", kgo.NoCompression()}, {"gzip", kgo.GzipCompression()}, {"snappy", kgo.SnappyCompression()}, {"lz4", kgo.Lz4Compression()}, {"zstd", kgo.ZstdCompression()}} {
		capt.setLabel("kgo-" + codec.name)
		cl := kgoClient(t, p, kgo.ProducerBatchCompression(codec.c), kgo.ClientID("golden-kgo"))
		produceKgo(t, ctx, cl, "golden", goldenRecords())
		cl.Close()
	}
	for _, codec := range []struct {
		name string
		c    sarama.CompressionCodec
	}{{"gzip", sarama.CompressionGZIP}, {"snappy", sarama.CompressionSnappy}, {"lz4", sarama.CompressionLZ4}} {
		capt.setLabel("sarama-" + codec.name)
		cfg := saramaConfig("golden-sarama")
		cfg.Producer.Compression = codec.c
		produceSarama(t, p, cfg, "golden", goldenRecords())
	}
	for _, codec := range []string{"none", "zstd"} {
		capt.setLabel("kcat-" + codec)
		runKcat(t, ctx, fmt.Sprintf("k1:%s\nk2:%s\n:%s\n", codecValue(1), codecValue(2), codecValue(3)), "-P", "-b", p.Addr().String(), "-t", "golden", "-K:", "-z", codec,
			"-H", "h1=v1", "-X", "client.id=golden-kcat")
	}
	for _, codec := range []struct {
		name string
		c    kafkago.Compression
	}{{"none", 0}, {"gzip", kafkago.Gzip}, {"snappy", kafkago.Snappy}, {"lz4", kafkago.Lz4}, {"zstd", kafkago.Zstd}} {
		capt.setLabel("kafkago-" + codec.name)
		produceKafkaGo(t, ctx, p, "golden-kafkago", "golden", codec.c, goldenRecords())
	}
	// kafkajs decodes no codec but gzip without plugins: it gets a topic of its own.
	for _, codec := range []string{"none", "gzip"} {
		capt.setLabel("kafkajs-" + codec)
		runKafkajs(t, p, "golden-js", "golden-kafkajs", codec, "plain", kafkajsRecords(goldenRecords()), "PEER_STEPS=produce", "PEER_CLIENT_ID=golden-kafkajs")
	}
	// Each client reads the topic back in a group of its own and commits.
	n := 8*5 + 8*3 + 3*2 + 8*5
	capt.setLabel("kgo-group")
	consumeKgo(t, ctx, p, "golden", "golden-kgo", n, kgo.ClientID("golden-kgo"))
	capt.setLabel("sarama-group")
	consumeSarama(t, ctx, p, "golden", "golden-sarama", n)
	capt.setLabel("kafkago-group")
	consumeKafkaGo(t, ctx, p, "golden-kafkago", "golden", "golden-kafkago", n)
	capt.setLabel("kafkajs-group")
	runKafkajs(t, p, "golden-js", "golden-kafkajs", "none", "plain", kafkajsRecords(testRecords(8*2, time.UnixMilli(0))), "PEER_STEPS=consume", "PEER_CLIENT_ID=golden-kafkajs")
	capt.setLabel("kcat-group")
	runKcat(t, ctx, "", "-C", "-b", p.Addr().String(), "-G", "golden-kcat", "-c", fmt.Sprint(n), "-X", "auto.offset.reset=earliest",
		"-X", "client.id=golden-kcat", "golden")
	// kgo pausing a partition in the middle of a fetch session: its next fetch forgets it.
	capt.setLabel("kgo-pause")
	pc := kgoClient(t, p, kgo.ConsumeTopics("golden"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ClientID("golden-kgo"),
		kgo.FetchMaxWait(100*time.Millisecond))
	for got := 0; got < n; {
		got += len(pc.PollFetches(ctx).Records())
	}
	pc.PauseFetchPartitions(map[string][]int32{"golden": {0}})
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second) // the fetches after the pause wait for records that never come
	pc.PollFetches(pctx)
	cancel()
	pc.Close()
	if err := os.MkdirAll(goldenDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, frame := range capt.frames {
		if err := os.WriteFile(filepath.Join(goldenDir, name), frame, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %d fixtures", len(capt.frames))
}

// goldenRecords are testRecords whose values every codec shrinks, so that the clients, which send
// a batch uncompressed when compressing does not pay, capture batches in the codec they are named for.
func goldenRecords() []sentRecord {
	rs := testRecords(8, time.UnixMilli(1700000400000))
	for i := range rs {
		if rs[i].value != nil {
			rs[i].value = codecValue(i)
		}
	}
	return rs
}

// goldenProduces loads every captured produce request.
func goldenProduces(t testing.TB) map[string][]byte { return goldenOf(t, "produce") }

// TestGoldenRequestHeaders: the fixed header of every captured real-client request parses to the
// produce key and version in its name and its client id.
func TestGoldenRequestHeaders(t *testing.T) {
	for name, frame := range goldenProduces(t) {
		h, err := parseRequestHeader(frame)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if h.Key != keyProduce || !strings.Contains(name, fmt.Sprintf(".produce-v%d.", h.Version)) {
			t.Errorf("%s: key %d version %d", name, h.Key, h.Version)
		}
		client := strings.SplitN(name, "-", 2)[0]
		if string(h.ClientID) != "golden-"+client {
			t.Errorf("%s: client id %q", name, h.ClientID)
		}
		var v produceRequestView
		if err := parseProduce(h, frame, &v); err != nil || v.acks == 0 || len(v.parts) == 0 {
			t.Errorf("%s: acks %d, %d partitions, %v", name, v.acks, len(v.parts), err)
			continue
		}
		// The hand parser agrees with kmsg on every partition's records.
		req := kmsg.NewPtrProduceRequest()
		req.SetVersion(h.Version)
		if err := req.ReadFrom(frame[h.BodyStart:]); err != nil {
			t.Errorf("%s: body: %v", name, err)
			continue
		}
		i := 0
		for _, tp := range req.Topics {
			for _, pp := range tp.Partitions {
				got := v.parts[i]
				if got.partition != pp.Partition || got.topic != tp.Topic || got.topicID != tp.TopicID || string(frame[got.recStart:got.recEnd]) != string(pp.Records) {
					t.Errorf("%s: partition %d parsed as %+v", name, i, got)
				}
				i++
			}
		}
		if i != len(v.parts) {
			t.Errorf("%s: %d partitions parsed, kmsg has %d", name, len(v.parts), i)
		}
		if n := batchRecordCount(req.Topics[0].Partitions[0].Records); n == 0 {
			t.Errorf("%s: no records counted", name)
		}
		// Every batch is in the codec the fixture is named for.
		codec := strings.SplitN(strings.SplitN(name, "-", 2)[1], ".", 2)[0]
		for _, tp := range req.Topics {
			for _, pp := range tp.Partitions {
				seen, err := batchesOf(pp.Records)
				if err != nil {
					t.Errorf("%s: %v", name, err)
				}
				for _, b := range seen {
					if b.codec != codecNames[codec] {
						t.Errorf("%s: partition %d has a batch with codec bits %d, want %d (%s)", name, pp.Partition, b.codec, codecNames[codec], codec)
					}
				}
			}
		}
	}
}

// goldenOf loads the captured requests of one kind (goldenAPIs), at least one per client.
func goldenOf(t testing.TB, api string) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(goldenDir, "*."+api+"-v*.bin"))
	want := 5 // one per client: kgo, sarama, kcat, kafka-go, kafkajs
	if api == "fetchforgotten" {
		want = 1 // kgo's
	}
	if err != nil || len(files) < want {
		t.Fatalf("%d golden %s requests under %s, want %d (run go test -run TestCaptureGolden -update): %v", len(files), api, goldenDir, want, err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// kmsgOf decodes a golden request with kmsg, the reference the hand parsers are checked against.
func kmsgOf(t *testing.T, name string, h requestHeader, frame []byte) kmsg.Request {
	t.Helper()
	req := kmsg.RequestForKey(h.Key)
	req.SetVersion(h.Version)
	if err := req.ReadFrom(frame[h.BodyStart:]); err != nil {
		t.Fatalf("%s: kmsg: %v", name, err)
	}
	return req
}

// TestGoldenGroupRequests: the hand parsers read the Fetch, OffsetCommit, JoinGroup and SyncGroup
// requests that kgo, sarama, kcat, kafka-go and kafkajs sent, as kmsg decodes them.
func TestGoldenGroupRequests(t *testing.T) {
	fetches := goldenOf(t, "fetch")
	maps.Copy(fetches, goldenOf(t, "fetchforgotten"))
	for name, frame := range fetches {
		h := headerOf(t, frame)
		f, _, err := parseFetch(h, frame)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		req := kmsgOf(t, name, h, frame).(*kmsg.FetchRequest)
		want := map[fetchKey]int64{}
		for _, tp := range req.Topics {
			for _, pp := range tp.Partitions {
				k := fetchKey{topic: tp.Topic, partition: pp.Partition}
				if h.Version >= 13 {
					k = fetchKey{id: tp.TopicID, partition: pp.Partition}
				}
				want[k] = pp.FetchOffset
			}
		}
		epoch := req.SessionEpoch
		if h.Version < 7 {
			epoch = -1
		}
		var forgotten []fetchKey
		for _, ft := range req.ForgottenTopics {
			for _, part := range ft.Partitions {
				k := fetchKey{topic: ft.Topic, partition: part}
				if h.Version >= 13 {
					k = fetchKey{id: ft.TopicID, partition: part}
				}
				forgotten = append(forgotten, k)
			}
		}
		if !slices.Equal(f.forgotten, forgotten) || strings.Contains(name, "forgotten") != (len(forgotten) > 0) {
			t.Errorf("%s: parsed forgotten %v, kmsg %v", name, f.forgotten, forgotten)
		}
		if !maps.Equal(f.offsets, want) || f.readCommitted != (req.IsolationLevel == 1) || f.sessionEpoch != epoch || len(want) == 0 && len(forgotten) == 0 {
			t.Errorf("%s: parsed offsets %v, read_committed %v, epoch %d; kmsg %v, isolation %d, epoch %d",
				name, f.offsets, f.readCommitted, f.sessionEpoch, want, req.IsolationLevel, epoch)
		}
	}
	for name, frame := range goldenOf(t, "offsetcommit") {
		h := headerOf(t, frame)
		f, err := parseOffsetCommit(h, frame)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		req := kmsgOf(t, name, h, frame).(*kmsg.OffsetCommitRequest)
		var want []committed
		for _, tp := range req.Topics {
			for _, pp := range tp.Partitions {
				c := committed{topic: tp.Topic, partition: pp.Partition, offset: pp.Offset}
				if h.Version >= 10 {
					c = committed{topicID: tp.TopicID, partition: pp.Partition, offset: pp.Offset}
				}
				want = append(want, c)
			}
		}
		if f.group != req.Group || !slices.Equal(f.offsets, want) || len(want) == 0 {
			t.Errorf("%s: parsed group %q offsets %+v; kmsg %q %+v", name, f.group, f.offsets, req.Group, want)
		}
	}
	for _, api := range []string{"joingroup", "syncgroup"} {
		for name, frame := range goldenOf(t, api) {
			h := headerOf(t, frame)
			got, err := parseFirstString(h, frame)
			var group string
			switch r := kmsgOf(t, name, h, frame).(type) {
			case *kmsg.JoinGroupRequest:
				group = r.Group
			case *kmsg.SyncGroupRequest:
				group = r.Group
			}
			if err != nil || got != group || !strings.HasPrefix(group, "golden-") {
				t.Errorf("%s: parsed group %q (%v), kmsg %q", name, got, err, group)
			}
		}
	}
}
