package kafka

// Topic-id misses (Produce v13 and Fetch v13+ through a proxy that has seen no Metadata naming
// the topic) and ShareAcknowledge node endpoints (which kfake never sends) being rewritten.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// tidmissProduces keeps a copy of the records of every partition of every Produce request the
// broker (a kfake control hook) receives for one topic, by id (v13) or by name (older versions).
type tidmissProduces struct {
	mu       sync.Mutex
	topic    string
	id       [16]byte
	versions []int16
	records  [][]byte
}

func (b *tidmissProduces) add(req *kmsg.ProduceRequest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, rt := range req.Topics {
		if rt.TopicID != b.id && (rt.Topic == "" || rt.Topic != b.topic) {
			continue
		}
		for _, rp := range rt.Partitions {
			b.versions = append(b.versions, req.Version)
			b.records = append(b.records, append([]byte(nil), rp.Records...))
		}
	}
}

func (b *tidmissProduces) snapshot() ([]int16, [][]byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.versions), slices.Clone(b.records)
}

// tidmissHook installs an observe-only Produce control hook on c for topic (id).
func tidmissHook(c *kfake.Cluster, topic string, id [16]byte) *tidmissProduces {
	b := &tidmissProduces{topic: topic, id: id}
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		b.add(req.(*kmsg.ProduceRequest))
		return nil, nil, false // observe only: the cluster handles the request
	})
	return b
}

// tidmissSplit splits a partition's Records field into its magic-2 batches.
func tidmissSplit(t *testing.T, records []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(records) > 0 {
		if len(records) < 61 {
			t.Fatalf("%d trailing bytes are no record batch", len(records))
		}
		n := 12 + int(int32(binary.BigEndian.Uint32(records[8:])))
		if n < 61 || n > len(records) {
			t.Fatalf("a record batch of %d bytes in %d", n, len(records))
		}
		out = append(out, records[:n])
		records = records[n:]
	}
	return out
}

// tidmissMasked is batch without the two fields the broker assigns when it stores it (base offset
// and partition leader epoch): what must reach a consumer exactly as the producer's batch was.
func tidmissMasked(batch []byte) []byte {
	b := slices.Clone(batch)
	clear(b[0:8])
	clear(b[12:16])
	return b
}

// TestTopicIDMissProduceV13ForwardedUnmodified: a topic created on the cluster itself, then a
// Produce v13 (topics by id only) for it through a fresh proxy, which has seen no Metadata and so
// cannot name the topic. The proxy must forward the batch as the client sent it: the broker
// accepts it, its control hook sees the request's batch byte for byte, and the record read back
// carries its own header and no pathway header. The proxy counts one topic-id miss and one
// skipped batch, reports an unknown_topic_id ProxySkip for the 3 records, and makes no
// checkpoint or offset for a topic it cannot name.
func TestTopicIDMissProduceV13ForwardedUnmodified(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	ctx := testCtx(t)
	topic, id := tidmissTopic(t, c, "tidmiss-produce")
	broker := tidmissHook(c, topic, id)

	p := startProxy(t, c, nil)
	if name, ok := p.topics.get(id); ok {
		t.Fatalf("the fresh proxy already maps topic id %x to %q", id, name)
	}
	const n = 3
	batch := buildBatchHeader(t, n, 10, nil, "origin", []byte("tidmiss"))
	req := kmsg.NewPtrProduceRequest()
	req.Version, req.Acks, req.TimeoutMillis = 13, -1, 5000
	rt := kmsg.NewProduceRequestTopic()
	rt.TopicID = id // v13 carries no name
	rp := kmsg.NewProduceRequestTopicPartition()
	rp.Partition, rp.Records = 0, batch
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)

	conn := rawClient(t, p) // no ApiVersions, no Metadata: the proxy learns nothing on it
	if _, err := conn.Write(requestFrame(req, 1)); err != nil {
		t.Fatal(err)
	}
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	resp.Version = req.Version
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	readResponse(t, conn, resp)
	conn.SetReadDeadline(time.Time{})

	if len(resp.Topics) != 1 || resp.Topics[0].TopicID != id || len(resp.Topics[0].Partitions) != 1 {
		t.Fatalf("produce response %+v, want one partition of topic id %x", resp, id)
	}
	if pr := resp.Topics[0].Partitions[0]; pr.ErrorCode != 0 || pr.BaseOffset != 0 {
		msg := ""
		if pr.ErrorMessage != nil {
			msg = *pr.ErrorMessage
		}
		t.Fatalf("the broker answered partition %d with error %d (%v: %q) at base offset %d, want error 0 at offset 0",
			pr.Partition, pr.ErrorCode, kerr.ErrorForCode(pr.ErrorCode), msg, pr.BaseOffset)
	}

	versions, got := broker.snapshot()
	if len(got) != 1 {
		t.Fatalf("the broker received %d produce partitions for %s (versions %v), want 1", len(got), topic, versions)
	}
	if versions[0] != 13 {
		t.Errorf("the broker received Produce v%d, the client sent v13", versions[0])
	}
	if !bytes.Equal(got[0], batch) {
		t.Errorf("the batch reached the broker changed: %d bytes, the client sent %d\nbroker: %x\nclient: %x",
			len(got[0]), len(batch), got[0], batch)
	}

	st := p.Stats()
	if st.TopicIDMisses != 1 {
		t.Errorf("TopicIDMisses = %d, want 1", st.TopicIDMisses)
	}
	if st.SkippedBatches != 1 || st.InjectedRecords != 0 {
		t.Errorf("SkippedBatches = %d, InjectedRecords = %d; want 1 and 0", st.SkippedBatches, st.InjectedRecords)
	}
	skips := p.errs.byName("unknown_topic_id")
	if len(skips) != 1 {
		t.Errorf("%d unknown_topic_id events, want 1: %+v", len(skips), p.errs.events)
	} else if e := skips[0]; e.Category != errtrack.ProxySkip || e.Operation != "Produce" || e.Partition != 0 || e.Messages != n ||
		e.Service != "raw" || e.Edge != (pathway.Edge{}) {
		t.Errorf("skip event %+v, want a ProxySkip of Produce for %d messages of partition 0, service raw (the client id), no edge", e, n)
	}
	if others := p.errs.where(func(e errtrack.Event) bool { return e.Name != "unknown_topic_id" }); len(others) > 0 {
		t.Errorf("other events: %+v", others)
	}
	if pts, offs := p.rec.snapshot(); len(pts) != 0 || len(offs) != 0 {
		t.Errorf("%d checkpoints and %d offsets for a topic the proxy cannot name: %+v %+v", len(pts), len(offs), pts, offs)
	}

	// Read back (kgo sends Metadata first, so this proxy now knows the topic).
	recs := readTopic(t, ctx, p, topic, n)
	if len(recs) != n {
		t.Fatalf("read %d records, produced %d", len(recs), n)
	}
	for i, r := range recs {
		if hasContext(r) {
			t.Errorf("record %d (%q) carries a pathway header: %+v", i, r.Key, r.Headers)
		}
		if len(r.Headers) != 1 || r.Headers[0].Key != "origin" || string(r.Headers[0].Value) != "tidmiss" {
			t.Errorf("record %d (%q): headers %+v, want only origin=tidmiss", i, r.Key, r.Headers)
		}
		if want := string([]byte{'k', byte(i)}); r.Offset != int64(i) || string(r.Key) != want || len(r.Value) != 10 {
			t.Errorf("record %d: offset %d key %q value of %d bytes; want offset %d key %q, 10 bytes", i, r.Offset, r.Key, len(r.Value), i, want)
		}
	}
	guard.check(t)
}

// TestTopicIDMissFetchByIDUnchanged: records produced through one proxy (which injects the
// pathway header), fetched by topic id (Fetch v13 and the highest version the proxy offers) on a
// raw connection through a fresh proxy that has seen no Metadata naming the topic. The client
// gets the batches the broker stored, byte for byte but for the base offset and leader epoch the
// broker assigns; the fresh proxy counts one topic-id miss per response and observes nothing of
// the topic: no consume checkpoint, no high watermark. (It is kept from asking the cluster for
// the id, which would name it after the first miss: TestReplicaNamesTopicIDsItDidNotSee.)
func TestTopicIDMissFetchByIDUnchanged(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	ctx := testCtx(t)
	topic, id := tidmissTopic(t, c, "tidmiss-fetch")
	broker := tidmissHook(c, topic, id)

	writer := startProxy(t, c, nil)
	const n = 4
	produceKgo(t, ctx, kgoClient(t, writer), topic, testRecords(n, time.UnixMilli(1700000930000)))
	_, stored := broker.snapshot()
	var want [][]byte
	for _, r := range stored {
		want = append(want, tidmissSplit(t, r)...)
	}
	if len(want) == 0 {
		t.Fatal("the broker saw no batch of the produced records")
	}

	p := startProxyWith(t, c, nil, func(p *Proxy) { p.topics.askedAt.Store(time.Now().Add(time.Hour).UnixNano()) })
	if name, ok := p.topics.get(id); ok {
		t.Fatalf("the fresh proxy already maps topic id %x to %q", id, name)
	}
	conn := rawClient(t, p)
	corr := int32(0)
	roundTrip := func(req kmsg.Request, resp kmsg.Response) {
		t.Helper()
		corr++
		if _, err := conn.Write(requestFrame(req, corr)); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		readResponse(t, conn, resp)
		conn.SetReadDeadline(time.Time{})
	}

	// As a client does, learn the versions the proxy offers (ApiVersions teaches it no topic).
	av := kmsg.NewPtrApiVersionsRequest()
	av.Version, av.ClientSoftwareName, av.ClientSoftwareVersion = 3, "tidmiss-fetcher", "1.0"
	avr := av.ResponseKind().(*kmsg.ApiVersionsResponse)
	avr.Version = av.Version
	roundTrip(av, avr)
	maxFetch := int16(-1)
	for _, k := range avr.ApiKeys {
		if k.ApiKey == keyFetch {
			maxFetch = k.MaxVersion
		}
	}
	if avr.ErrorCode != 0 || maxFetch < 13 {
		t.Fatalf("ApiVersions: error %d, Fetch up to v%d: the test needs v13+", avr.ErrorCode, maxFetch)
	}
	versions := []int16{13}
	if maxFetch > 13 {
		versions = append(versions, maxFetch) // v16+ responses take the decoded path (node endpoints)
	}

	fetch := func(v int16, offset int64, waitMillis int32) *kmsg.FetchResponse {
		req := kmsg.NewPtrFetchRequest()
		req.Version = v
		req.ReplicaID, req.MaxWaitMillis, req.MinBytes, req.MaxBytes = -1, waitMillis, 1, 1<<20
		req.SessionID, req.SessionEpoch = 0, -1 // no fetch session
		ft := kmsg.NewFetchRequestTopic()
		ft.TopicID = id // v13+ carries no name
		fp := kmsg.NewFetchRequestTopicPartition()
		fp.Partition, fp.FetchOffset, fp.PartitionMaxBytes = 0, offset, 1<<20
		ft.Partitions = append(ft.Partitions, fp)
		req.Topics = append(req.Topics, ft)
		resp := req.ResponseKind().(*kmsg.FetchResponse)
		resp.Version = v
		roundTrip(req, resp)
		return resp
	}
	for i, v := range versions {
		resp := fetch(v, 0, 5000)

		if resp.ErrorCode != 0 || len(resp.Topics) != 1 || resp.Topics[0].TopicID != id || len(resp.Topics[0].Partitions) != 1 {
			t.Fatalf("Fetch v%d: error %d, response %+v; want one partition of topic id %x", v, resp.ErrorCode, resp.Topics, id)
		}
		part := resp.Topics[0].Partitions[0]
		if part.ErrorCode != 0 || part.HighWatermark != n {
			t.Fatalf("Fetch v%d: partition error %d, high watermark %d; want 0 and %d", v, part.ErrorCode, part.HighWatermark, n)
		}
		got := tidmissSplit(t, part.RecordBatches)
		if len(got) != len(want) {
			t.Fatalf("Fetch v%d: %d batches, the broker stored %d", v, len(got), len(want))
		}
		next := int64(0)
		for j := range got {
			if base := int64(binary.BigEndian.Uint64(got[j])); base != next {
				t.Errorf("Fetch v%d: batch %d at base offset %d, want %d", v, j, base, next)
			}
			next += int64(int32(binary.BigEndian.Uint32(got[j][23:]))) + 1
			if !bytes.Equal(tidmissMasked(got[j]), tidmissMasked(want[j])) {
				t.Errorf("Fetch v%d: batch %d differs from the one the broker stored\nfetched: %x\nstored:  %x", v, j, got[j], want[j])
			}
		}
		// Observation runs after the response is forwarded, on the proxy's observer goroutine.
		misses := uint64(i + 1)
		waitFor(t, fmt.Sprintf("the topic-id miss of the Fetch v%d response", v), func() bool { return p.Stats().TopicIDMisses >= misses })
		if got := p.Stats().TopicIDMisses; got != misses {
			t.Errorf("after Fetch v%d: TopicIDMisses = %d, want %d", v, got, misses)
		}
	}
	// Every response has passed the topic (each counted its miss there) and skipped it.
	if pts, offs := p.rec.snapshot(); len(pts) != 0 || len(offs) != 0 {
		t.Errorf("%d checkpoints and %d offsets from responses of a topic the proxy cannot name: %+v %+v", len(pts), len(offs), pts, offs)
	}
	if ev := p.errs.byCategory(errtrack.DecodeError); len(ev) > 0 {
		t.Errorf("decode errors: %+v", ev)
	}
	// An empty answer (a long poll past the end) is counted as a miss but lost nothing to tell.
	if resp := fetch(versions[0], n, 10); len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 || len(resp.Topics[0].Partitions[0].RecordBatches) != 0 {
		t.Fatalf("a fetch at the high watermark returned %+v, want one empty partition", resp.Topics)
	}
	misses := uint64(len(versions) + 1)
	waitFor(t, "the empty Fetch's topic-id miss", func() bool { return p.Stats().TopicIDMisses >= misses })
	// One unknown_topic_id skip per response with records: the fetched records of a topic the
	// proxy cannot name get no consume checkpoints, and the user is told so.
	waitFor(t, "the Fetch skip events", func() bool { return len(p.errs.byName("unknown_topic_id")) >= len(versions) })
	skips := p.errs.byName("unknown_topic_id")
	if len(skips) != len(versions) {
		t.Errorf("%d unknown_topic_id events for %d fetches: %+v", len(skips), len(versions), skips)
	}
	for _, e := range skips {
		if e.Category != errtrack.ProxySkip || e.Operation != "Fetch" || e.Edge.Direction != pathway.In {
			t.Errorf("skip event %+v, want a ProxySkip of Fetch on the consume side", e)
		}
	}
	guard.check(t)
}

// TestShareAcknowledgeNodeEndpointsRewritten: kfake never puts NodeEndpoints in a
// ShareAcknowledge response, so no broker here can exercise that rewrite; this builds one naming
// every real broker (node i listens on the cluster's i-th address) and passes it through the
// proxy's response address rewriting. Every endpoint must then be the proxy's listener for its
// node, none a broker's, and each listener must reach its own broker: an ApiVersions sent to the
// advertised address arrives at that node (kfake's control hook tells which node received it).
func TestShareAcknowledgeNodeEndpointsRewritten(t *testing.T) {
	c, guard := startCluster(t)
	probe := fmt.Sprintf("tidmiss-shareack-%d", time.Now().UnixNano()%1e9)
	var mu sync.Mutex
	reached := map[string]int32{} // probe software name -> the node that received it
	c.ControlKey(kmsg.ApiVersions.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if r := req.(*kmsg.ApiVersionsRequest); len(r.ClientSoftwareName) > len(probe) && r.ClientSoftwareName[:len(probe)] == probe {
			mu.Lock()
			reached[r.ClientSoftwareName] = c.CurrentNode()
			mu.Unlock()
		}
		return nil, nil, false // observe only
	})
	p := startProxy(t, c, nil)
	brokers := c.ListenAddrs()
	if len(brokers) != 3 {
		t.Fatalf("cluster listens on %v, want 3 brokers", brokers)
	}

	for _, v := range []int16{0, (&kmsg.ShareAcknowledgeResponse{}).MaxVersion()} {
		resp := kmsg.NewPtrShareAcknowledgeResponse()
		resp.Version = v
		for i, a := range brokers {
			host, port, err := net.SplitHostPort(a)
			if err != nil {
				t.Fatal(err)
			}
			pn, _ := strconv.Atoi(port)
			ep := kmsg.NewShareAcknowledgeResponseNodeEndpoint()
			ep.NodeID, ep.Host, ep.Port = int32(i), host, int32(pn)
			resp.NodeEndpoints = append(resp.NodeEndpoints, ep)
		}
		changed, err := p.rewriteResponseAddresses(resp)
		if err != nil || !changed {
			t.Errorf("v%d: rewriteResponseAddresses = %v, %v; want true, nil", v, changed, err)
		}
		if len(resp.NodeEndpoints) != len(brokers) {
			t.Fatalf("v%d: %d node endpoints after the rewrite, %d before", v, len(resp.NodeEndpoints), len(brokers))
		}
		for i, ep := range resp.NodeEndpoints {
			addr := net.JoinHostPort(ep.Host, strconv.Itoa(int(ep.Port)))
			if ep.NodeID != int32(i) {
				t.Errorf("v%d: endpoint %d names node %d, want %d", v, i, ep.NodeID, i)
			}
			if slices.Contains(brokers, addr) {
				t.Errorf("v%d: node %d still advertised at the real broker %s", v, ep.NodeID, addr)
			}
			want, ok := txncoordNodeAddr(p, ep.NodeID)
			if !ok {
				t.Errorf("v%d: node %d at %s, and the proxy has no listener for that node", v, ep.NodeID, addr)
				continue
			}
			if addr != want || !p.isProxyAddr(addr) {
				t.Errorf("v%d: node %d at %s, want the proxy's node listener %s", v, ep.NodeID, addr, want)
			}
		}
	}
	if err := p.Problem(); err != nil {
		t.Errorf("proxy problem after the rewrite: %v", err)
	}

	// Each advertised listener forwards to its own broker.
	for id := range int32(len(brokers)) {
		addr, ok := txncoordNodeAddr(p, id)
		if !ok {
			continue // reported above
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Errorf("dial node %d's listener %s: %v", id, addr, err)
			continue
		}
		name := fmt.Sprintf("%s-node-%d", probe, id)
		req := kmsg.NewPtrApiVersionsRequest()
		req.Version, req.ClientSoftwareName, req.ClientSoftwareVersion = 3, name, "1.0"
		if _, err := conn.Write(requestFrame(req, 1)); err != nil {
			t.Fatal(err)
		}
		resp := req.ResponseKind().(*kmsg.ApiVersionsResponse)
		resp.Version = req.Version
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		readResponse(t, conn, resp)
		conn.Close()
		if resp.ErrorCode != 0 {
			t.Errorf("ApiVersions through node %d's listener: error %d", id, resp.ErrorCode)
		}
		mu.Lock()
		got, seen := reached[name]
		mu.Unlock()
		if !seen || got != id {
			t.Errorf("ApiVersions sent to node %d's listener %s reached node %d (seen %v), want node %d", id, addr, got, seen, id)
		}
	}
	guard.check(t)
}

// TestTopicIDMissCommit: an OffsetCommit v10 names its topic by id; a fresh proxy that has seen
// no Metadata for it passes the commit on (the broker accepts it), records no kafka_commit
// backlog under an empty topic, and reports one unknown_topic_id skip on the group's edge. (It is
// kept from asking the cluster for the id: an answer that came before the commit's would name the
// topic, and the commit would be recorded under it.)
func TestTopicIDMissCommit(t *testing.T) {
	c, _ := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	_, id := tidmissTopic(t, c, "tidmiss-commit")
	p := startProxyWith(t, c, nil, func(p *Proxy) { p.topics.askedAt.Store(time.Now().Add(time.Hour).UnixNano()) })
	const group = "tidmiss-commit-group"
	req := kmsg.NewPtrOffsetCommitRequest()
	req.Version, req.Group, req.Generation = 10, group, -1 // a commit outside group membership
	rt := kmsg.NewOffsetCommitRequestTopic()
	rt.TopicID = id
	rp := kmsg.NewOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset = 0, 1
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	conn := rawClient(t, p)
	if _, err := conn.Write(requestFrame(req, 1)); err != nil {
		t.Fatal(err)
	}
	resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
	resp.Version = req.Version
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	readResponse(t, conn, resp)
	if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 || resp.Topics[0].Partitions[0].ErrorCode != 0 {
		t.Fatalf("commit response %+v, want partition 0 accepted", resp)
	}
	waitFor(t, "the commit's unknown_topic_id skip", func() bool { return len(p.errs.byName("unknown_topic_id")) > 0 })
	skips := p.errs.byName("unknown_topic_id")
	want := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: group}
	if len(skips) != 1 || skips[0].Category != errtrack.ProxySkip || skips[0].Operation != "OffsetCommit" || skips[0].Edge != want || skips[0].Partition != 0 {
		t.Errorf("skip events %+v, want one ProxySkip of OffsetCommit on %v, partition 0", skips, want)
	}
	if _, offs := p.rec.snapshot(); len(offs) != 0 {
		t.Errorf("offsets %+v recorded for a topic the proxy cannot name", offs)
	}
	if n := p.Stats().TopicIDMisses; n == 0 {
		t.Error("the miss was not counted")
	}
}

// tidmissTopic creates a one-partition topic straight on the cluster, so no proxy has seen its
// Metadata, and returns its name and id.
func tidmissTopic(t *testing.T, c *kfake.Cluster, prefix string) (string, [16]byte) {
	t.Helper()
	topic := uniqueTopic(t, prefix)
	if err := c.CreateTopic(topic, 1, nil); err != nil {
		t.Fatalf("create %s on the cluster: %v", topic, err)
	}
	info := c.TopicInfo(topic)
	if info == nil || info.TopicID == ([16]byte{}) {
		t.Fatalf("the cluster has no id for %s: %+v", topic, info)
	}
	return topic, info.TopicID
}
