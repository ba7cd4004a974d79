package kafka

import (
	"encoding/binary"
	"hash/crc32"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestIncrementalFetchSession: with a KIP-227 fetch session, a partition whose fetch offset did not
// change is left out of the next (incremental) Fetch request, yet the broker still answers it, from
// the offset the session holds. When that offset lies inside a batch (a consumer resuming from a
// committed offset in the middle of a batch), the batch comes back whole: the client drops the
// records before its fetch offset, and the proxy must too, from the session's offsets.
func TestIncrementalFetchSession(t *testing.T) {
	topic := uniqueTopic(t, "fsess")
	c, _ := startCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, topic))
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	conn.SetDeadline(time.Now().Add(30 * time.Second))

	gz, err := kgo.DefaultCompressor(kgo.GzipCompression())
	if err != nil {
		t.Fatal(err)
	}
	// Partition 0: one big record; partition 1: one gzip batch of ten records, offsets 0..9.
	if _, err := conn.Write(produceFrame(9, topic, buildBatch(t, 1, 4000, nil), buildBatch(t, 10, 10, gz))); err != nil {
		t.Fatal(err)
	}
	presp := kmsg.NewPtrProduceResponse()
	presp.SetVersion(9)
	readResponse(t, conn, presp)
	for _, pt := range presp.Topics[0].Partitions {
		if pt.ErrorCode != 0 {
			t.Fatalf("produce partition %d: error %d", pt.Partition, pt.ErrorCode)
		}
	}

	fetch := func(corr int32, sessionID, epoch int32, maxBytes int32, parts map[int32]int64) *kmsg.FetchResponse {
		t.Helper()
		req := kmsg.NewPtrFetchRequest()
		req.Version = 12
		req.ReplicaID = -1
		req.MaxWaitMillis = 200
		req.MinBytes = 1
		req.MaxBytes = maxBytes
		req.SessionID, req.SessionEpoch = sessionID, epoch
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic = topic
		for _, id := range []int32{0, 1} {
			off, ok := parts[id]
			if !ok {
				continue
			}
			rp := kmsg.NewFetchRequestTopicPartition()
			rp.Partition, rp.FetchOffset, rp.PartitionMaxBytes, rp.CurrentLeaderEpoch = id, off, 1<<20, -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		if len(rt.Partitions) > 0 {
			req.Topics = append(req.Topics, rt)
		}
		if _, err := conn.Write(requestFrame(req, corr)); err != nil {
			t.Fatal(err)
		}
		resp := kmsg.NewPtrFetchResponse()
		resp.SetVersion(12)
		readResponse(t, conn, resp)
		return resp
	}
	partRecords := func(resp *kmsg.FetchResponse, id int32) []byte {
		for _, rt := range resp.Topics {
			for _, rp := range rt.Partitions {
				if rp.Partition == id {
					return rp.RecordBatches
				}
			}
		}
		return nil
	}

	// Full fetch opening a session: partition 0 from 0, partition 1 from 5 (inside its batch).
	// A 1-byte response limit lets only partition 0's batch in.
	r1 := fetch(10, 0, 0, 1, map[int32]int64{0: 0, 1: 5})
	if r1.ErrorCode != 0 || r1.SessionID == 0 {
		t.Fatalf("no fetch session: error %d, session %d", r1.ErrorCode, r1.SessionID)
	}
	if len(partRecords(r1, 0)) == 0 || len(partRecords(r1, 1)) != 0 {
		t.Fatalf("setup: want records for partition 0 only, got %d and %d bytes", len(partRecords(r1, 0)), len(partRecords(r1, 1)))
	}
	waitFor(t, "partition 0's record observed", func() bool { return p.Stats().ConsumedRecords >= 1 })

	// Incremental fetch: partition 0 moved to 1, partition 1 (still at 5) is not named.
	r2 := fetch(11, r1.SessionID, 1, 1<<20, map[int32]int64{0: 1})
	recs := partRecords(r2, 1)
	if len(recs) < 61 || int64(binary.BigEndian.Uint64(recs)) != 0 {
		t.Fatalf("setup: want partition 1's batch from offset 0 in the incremental answer, got %d bytes", len(recs))
	}
	// The client's fetch offset for partition 1 is 5: it sees offsets 5..9, five records.
	waitFor(t, "partition 1's records observed", func() bool { return p.Stats().ConsumedRecords >= 1+5 })
	waitFor(t, "the observer done with the response", func() bool { return p.queued.Load() == 0 })
	if got := p.Stats().ConsumedRecords; got != 1+5 {
		t.Errorf("consume checkpoints: %d, want 6 (1 of partition 0, offsets 5..9 of partition 1): records before the session's fetch offset were counted", got)
	}
	pts, _ := p.rec.snapshot()
	in := 0
	for _, pt := range pts {
		if slices.Contains(pt.EdgeTags, "direction:in") && slices.Contains(pt.EdgeTags, "topic:"+topic) {
			in++
		}
	}
	if in != 1+5 {
		t.Errorf("%d direction:in points on %s, want 6", in, topic)
	}
}

// legacyMessageSet encodes magic-1 messages (offset, size, IEEE CRC, magic, attributes,
// timestamp, key, value), uncompressed, as a broker returns them for old-format data or old
// fetch versions.
func legacyMessageSet(base int64, values ...string) []byte {
	var out []byte
	for i, v := range values {
		var m []byte
		m = append(m, 1, 0)                                  // magic 1, attributes
		m = binary.BigEndian.AppendUint64(m, 1700000000000)  // timestamp
		m = binary.BigEndian.AppendUint32(m, 0xffffffff)     // null key
		m = binary.BigEndian.AppendUint32(m, uint32(len(v))) // value
		m = append(m, v...)
		msg := binary.BigEndian.AppendUint32(nil, crc32.ChecksumIEEE(m))
		msg = append(msg, m...)
		out = binary.BigEndian.AppendUint64(out, uint64(base+int64(i)))
		out = binary.BigEndian.AppendUint32(out, uint32(len(msg)))
		out = append(out, msg...)
	}
	return out
}

// TestLegacyMessageSetFetched: records fetched as magic 0/1 message sets reach the application like
// any other (a traced consumer checkpoints each, with no parent), but the proxy does not read them:
// it says so with a skip event, instead of leaving the consumer's edge silently empty.
func TestLegacyMessageSetFetched(t *testing.T) {
	now := time.Unix(1700000100, 0)
	rec := &recorder{}
	errs := &errRecorder{}
	p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, Env: "test", Observer: rec, Errors: errs, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: "orders", Group: "g"}
	part := &kmsg.FetchResponseTopicPartition{RecordBatches: legacyMessageSet(40, "alpha", "beta", "gamma")}
	p.consumeRecords(&clientInfo{service: "svc"}, edge, part, 40, false, now)
	if got, _ := rec.snapshot(); len(got) != 0 {
		t.Errorf("%d consume checkpoints for records the proxy does not read", len(got))
	}
	skips := errs.where(func(e errtrack.Event) bool {
		return e.Category == errtrack.ProxySkip && e.Name == skipLegacyMagic && e.Operation == "Fetch"
	})
	if len(skips) != 1 || skips[0].Messages != 3 || skips[0].Edge.Topic != "orders" {
		t.Errorf("skip events %+v, want one for the 3 messages on orders", errs.events)
	}
}

// readResponse reads the next response frame from conn into resp, whose version is set.
func readResponse(t *testing.T, conn net.Conn, resp kmsg.Response) {
	t.Helper()
	frame, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatal(err)
	}
	start, err := responseBodyStart(frame, resp.Key(), resp.IsFlexible())
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.ReadFrom(frame[start:]); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkTrackFetchSession: an incremental fetch in a session of 1000 partitions that moves
// the offsets of 10 of them (a consumer that got records from those).
func BenchmarkTrackFetchSession(b *testing.B) {
	s := offlineSession(b)
	full := &fetchFacts{offsets: map[fetchKey]int64{}}
	for i := range 1000 {
		full.offsets[fetchKey{topic: "t", partition: int32(i)}] = 0
	}
	s.trackFetchSession(full)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		f := &fetchFacts{sessionEpoch: int32(i%1000 + 1), offsets: make(map[fetchKey]int64, 10)}
		for j := range 10 {
			f.offsets[fetchKey{topic: "t", partition: int32((i*10 + j) % 1000)}] = int64(i)
		}
		s.trackFetchSession(f)
	}
}

// TestSessionOffsetsMatchACopiedMap: the chained session gives, after every request, the offsets
// a session copied in full at every request gives: full and incremental requests, forgotten
// partitions (a few, many, and named in the same request), and sessions closed and reopened;
// and a snapshot taken earlier keeps the offsets of its time.
func TestSessionOffsetsMatchACopiedMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := offlineSession(t)
	var model map[fetchKey]int64
	type snapshot struct {
		f    *fetchFacts
		want map[fetchKey]int64
	}
	var snaps []snapshot
	key := func(i int) fetchKey { return fetchKey{topic: "t", partition: int32(i)} }
	for req := range 2000 {
		f := &fetchFacts{offsets: map[fetchKey]int64{}}
		switch r := rng.IntN(100); {
		case r < 3:
			f.sessionEpoch = -1
		case r < 8:
			f.sessionEpoch = 0
			for i := range rng.IntN(50) {
				f.offsets[key(i)] = rng.Int64N(1000)
			}
		default:
			f.sessionEpoch = int32(req + 1)
			for range rng.IntN(5) {
				f.offsets[key(rng.IntN(60))] = rng.Int64N(1000)
			}
			n := rng.IntN(3)
			if rng.IntN(20) == 0 {
				n = 30 // a rebalance that takes many partitions away
			}
			for range n {
				f.forgotten = append(f.forgotten, key(rng.IntN(60)))
			}
		}
		s.trackFetchSession(f)
		switch {
		case f.sessionEpoch < 0:
			model = nil
		case f.sessionEpoch == 0:
			model = maps.Clone(f.offsets)
		default:
			next := maps.Clone(model)
			if next == nil {
				next = map[fetchKey]int64{}
			}
			maps.Copy(next, f.offsets)
			for _, k := range f.forgotten {
				delete(next, k)
			}
			model = next
			if len(snaps) < 50 && rng.IntN(10) == 0 {
				snaps = append(snaps, snapshot{f, model})
			}
		}
		for i := range 60 {
			k := key(i)
			want, ok := model[k]
			if !ok {
				want = -1
			}
			if got := s.fetchSession.offset(k); got != want {
				t.Fatalf("request %d (epoch %d): partition %d at %d, want %d", req, f.sessionEpoch, i, got, want)
			}
		}
	}
	for j, sn := range snaps {
		for i := range 60 {
			k := key(i)
			want, ok := sn.f.offsets[k]
			if !ok {
				if want, ok = sn.want[k]; !ok {
					want = -1
				}
			}
			if got := sn.f.offset(k); got != want {
				t.Fatalf("snapshot %d: partition %d at %d, want %d", j, i, got, want)
			}
		}
	}
}

// TestFetchSessionBounded: incremental requests that each name new partitions (no consumer does;
// a buggy or hostile client can) do not grow the connection's session past maxSessionPartitions
// (plus the requests not yet flattened).
func TestFetchSessionBounded(t *testing.T) {
	s := offlineSession(t)
	const perRequest = 5000
	next := 0
	for req := range 2 * maxSessionPartitions / perRequest {
		f := &fetchFacts{sessionEpoch: int32(req), offsets: make(map[fetchKey]int64, perRequest)}
		for range perRequest {
			f.offsets[fetchKey{topic: "t", partition: int32(next)}] = 1
			next++
		}
		s.trackFetchSession(f)
		held := 0
		for so := s.fetchSession; so != nil; so = so.parent {
			held += len(so.named)
		}
		if limit := maxSessionPartitions + maxSessionDepth*perRequest; held > limit {
			t.Fatalf("after request %d: the session holds %d offsets, over %d", req, held, limit)
		}
		if int64(held) != s.p.sessionEntries.Used() {
			t.Fatalf("after request %d: the session holds %d offsets, the proxy counts %d", req, held, s.p.sessionEntries.Used())
		}
	}
	if s.p.Stats().ForgottenSessions == 0 {
		t.Error("the session was forgotten without a count (Stats.ForgottenSessions)")
	}
}

// TestFetchSessionsBoundedForAll: the sessions of all connections hold at most
// maxSessionEntries offsets together; a session that would pass it is forgotten and counted,
// and a session's end gives its room back.
func TestFetchSessionsBoundedForAll(t *testing.T) {
	defer func(old int64) { maxSessionEntries = old }(maxSessionEntries)
	maxSessionEntries = 10
	full := func(s *session, epoch int32, from, n int) *fetchFacts {
		f := &fetchFacts{sessionEpoch: epoch, offsets: map[fetchKey]int64{}}
		for i := range n {
			f.offsets[fetchKey{topic: "t", partition: int32(from + i)}] = 7
		}
		s.trackFetchSession(f)
		return f
	}
	a := offlineSession(t)
	b := secondSession(a)
	full(a, 0, 0, 6)
	full(b, 0, 100, 6)
	if got, st := a.p.sessionEntries.Used(), a.p.Stats(); got != 6 || b.fetchSession != nil || a.fetchSession == nil || st.ForgottenSessions != 1 {
		t.Fatalf("%d offsets held, sessions kept: a %v, b %v, %d forgotten; want 6, a only, 1",
			got, a.fetchSession != nil, b.fetchSession != nil, st.ForgottenSessions)
	}
	if f := full(a, 1, 6, 2); f.session.offset(fetchKey{topic: "t", partition: 7}) != 7 || a.p.sessionEntries.Used() != 8 {
		t.Errorf("an incremental request of a's: partition 7 at %d, %d offsets held; want 7, 8",
			f.session.offset(fetchKey{topic: "t", partition: 7}), a.p.sessionEntries.Used())
	}
	full(a, -1, 0, 0) // the session ends
	if got := a.p.sessionEntries.Used(); got != 0 {
		t.Errorf("%d offsets held after a's session ended, want 0", got)
	}
	full(b, 0, 100, 6)
	if b.fetchSession == nil || a.p.sessionEntries.Used() != 6 {
		t.Errorf("b's new session kept %v, %d offsets held; want kept, 6", b.fetchSession != nil, a.p.sessionEntries.Used())
	}
}
