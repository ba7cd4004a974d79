package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// partitionsRequest is a request of kind key naming n partitions of one topic, as a client
// encodes it.
func partitionsRequest(t *testing.T, key int16, n int) (requestHeader, []byte) {
	t.Helper()
	var req kmsg.Request
	switch key {
	case keyFetch:
		r := kmsg.NewPtrFetchRequest()
		r.Version = 11
		ft := kmsg.NewFetchRequestTopic()
		ft.Topic = "orders"
		for i := range n {
			p := kmsg.NewFetchRequestTopicPartition()
			p.Partition = int32(i)
			ft.Partitions = append(ft.Partitions, p)
		}
		r.Topics = append(r.Topics, ft)
		req = r
	case keyOffsetCommit:
		r := kmsg.NewPtrOffsetCommitRequest()
		r.Version = 8
		r.Group = "billing"
		ct := kmsg.NewOffsetCommitRequestTopic()
		ct.Topic = "orders"
		for i := range n {
			p := kmsg.NewOffsetCommitRequestTopicPartition()
			p.Partition, p.Offset = int32(i), 42
			ct.Partitions = append(ct.Partitions, p)
		}
		r.Topics = append(r.Topics, ct)
		req = r
	default:
		t.Fatalf("no request of key %d", key)
	}
	frame := requestFrame(req, 7)
	h, err := parseRequestHeader(frame)
	if err != nil {
		t.Fatal(err)
	}
	return h, frame
}

// answer pairs a response with pd the way the response goroutine does.
func answer(t *testing.T, s *session, pd *pending) {
	t.Helper()
	s.push(pd)
	frame := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 4}, uint32(pd.corr))
	if got, ok := s.pop(frame); !ok || got != pd {
		t.Fatal("the response did not find its request")
	}
}

// TestFactsBounded: what requests awaiting answers keep for them is bounded per connection and
// for all connections, in partitions, for produce, fetch and commit alike. A produce past a bound
// is handled as acks=0: its batch grows only where the topic's limit is known. Each request past
// a bound is counted; an answer, or the end of the connection, gives the room back.
func TestFactsBounded(t *testing.T) {
	defer func(conn, all int64) { maxConnFacts, maxFacts = conn, all }(maxConnFacts, maxFacts)
	maxConnFacts, maxFacts = 150, 250
	a := offlineSession(t)
	b := secondSession(a)
	c := secondSession(a)
	injected := false
	produce := func(s *session) (bool, *pending) {
		batches := make([][]byte, 100)
		batches[0] = buildBatchApart(t, 3, 10) // 3 points
		var pd *pending
		injected, pd = produceThrough(t, s, batches...)
		return pd.facts != nil, pd
	}
	other := func(key int16) func(*session) (bool, *pending) {
		return func(s *session) (bool, *pending) {
			h, frame := partitionsRequest(t, key, 100)
			_, pd := s.handleRequest(h, frame)
			injected = false
			return pd.facts != nil, pd
		}
	}
	type step struct {
		name     string
		s        *session
		send     func(*session) (bool, *pending)
		kept     bool
		injected bool
		unkept   uint64 // Stats.UnkeptFacts after it
		used     int64  // partitions all connections' requests keep after it
		pointsA  int64  // produce checkpoints a holds for answers after it
	}
	var held []*pending
	for _, st := range []step{
		{"a produce", a, produce, true, true, 0, 100, 3},
		{"a produce over its connection's bound, topic limit unknown", a, produce, false, false, 1, 100, 3},
		{"b fetch", b, other(keyFetch), true, false, 1, 200, 3},
		{"c commit over all connections' bound", c, other(keyOffsetCommit), false, false, 2, 200, 3},
	} {
		kept, pd := st.send(st.s)
		if kept {
			held = append(held, pd)
		}
		if got := a.p.Stats().UnkeptFacts; kept != st.kept || injected != st.injected || got != st.unkept || a.p.facts.Used() != st.used || a.heldPoints.Held() != st.pointsA {
			t.Fatalf("%s: kept %v, injected %v, %d unkept, %d partitions kept, a holds %d points; want %v, %v, %d, %d, %d",
				st.name, kept, injected, got, a.p.facts.Used(), a.heldPoints.Held(), st.kept, st.injected, st.unkept, st.used, st.pointsA)
		}
	}
	a.p.limits.learned("orders", 1<<20, "producer")
	if kept, _ := produce(a); kept || !injected || a.heldPoints.Held() != 3 {
		t.Fatalf("unkept produce to a topic of known limit: kept %v, injected %v, a holds %d points; want false, true, 3 (counted when sent)",
			kept, injected, a.heldPoints.Held())
	}
	answer(t, b, held[1]) // the fetch's answer frees room on every connection
	if kept, _ := other(keyOffsetCommit)(c); !kept || a.p.facts.Used() != 200 {
		t.Fatalf("after the fetch's answer: commit kept %v, %d partitions kept; want true, 200", kept, a.p.facts.Used())
	}
	a.abandon(held[0])
	if a.factShare.Held() != 0 || a.p.facts.Used() != 100 {
		t.Fatalf("after a's request was abandoned: a keeps %d, all %d; want 0, 100", a.factShare.Held(), a.p.facts.Used())
	}
	if kept, _ := produce(a); !kept {
		t.Fatal("a's produce was not kept once its room was back")
	}
	a.p.facts.Release(&a.factShare) // a's connection ends: what its requests took is back
	a.p.facts.Release(&c.factShare)
	if got := a.p.facts.Used(); got != 0 {
		t.Errorf("%d partitions kept after the connections ended, want 0", got)
	}
}

// TestUnkeptFactsThroughProxy: with no room for any request's facts, kgo's producer and group
// consumer work through the proxy as before. A produce is handled as acks=0: a batch gets the
// header once the topic's size limit is known (the first, sent while the broker holds the
// proxy's lookup of it, goes as it came), and its checkpoints count when sent; only the offsets
// the answers would have given are missing, and each such request is counted. With room, a producer's answered requests keep nothing.
func TestUnkeptFactsThroughProxy(t *testing.T) {
	defer func(old int64) { maxFacts = old }(maxFacts)
	for _, room := range []bool{false, true} {
		maxFacts = map[bool]int64{false: 0, true: 1 << 20}[room]
		c, guard := startCluster(t)
		p := startProxy(t, c, nil)
		ctx := testCtx(t)
		topic := uniqueTopic(t, "unkept")
		prod := kgoClient(t, p, kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0))
		if _, err := kadm.NewClient(prod).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
			t.Fatal(err)
		}
		// Before the proxy knows the topic's limit: the broker holds the lookup past the wait.
		release := holdNext(c, kmsg.DescribeConfigs.Int16())
		produceEach(t, ctx, prod, topic, []byte("w"))
		release()
		waitFor(t, "the proxy to read the topic's limit", func() bool { return p.limits.known(topic) > 0 })
		for i := range 5 {
			produceEach(t, ctx, prod, topic, []byte{'a' + byte(i)})
			if got := p.facts.Used(); got != 0 {
				t.Fatalf("room %v: %d partitions kept after the produce was answered, want 0", room, got)
			}
		}
		group := "unkept-" + map[bool]string{false: "none", true: "room"}[room]
		cons := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.DisableAutoCommit())
		for got := 0; got < 6; {
			fs := cons.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				t.Fatalf("room %v: read %d of 6 records: %v", room, got, err)
			}
			for _, r := range fs.Records() {
				n := 0
				for _, h := range r.Headers {
					if h.Key == pathway.HeaderKey {
						n++
					}
				}
				if want := map[bool]int{true: 1}[room || string(r.Value) != "w"]; n != want {
					t.Errorf("room %v: record %q has %d pathway headers, want %d", room, r.Value, n, want)
				}
				got++
			}
		}
		if err := cons.CommitUncommittedOffsets(context.WithoutCancel(ctx)); err != nil {
			t.Fatalf("room %v: commit: %v", room, err)
		}
		cons.Close()
		prod.Close()
		waitFor(t, "the consume checkpoints", func() bool {
			return len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka")) == 6
		})
		if n, want := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")), map[bool]int{false: 5, true: 6}[room]; n != want {
			t.Errorf("room %v: %d produce checkpoints, want %d", room, n, want)
		}
		_, offsets := p.rec.snapshot()
		kinds := map[pathway.OffsetKind]int{}
		for _, o := range offsets {
			if o.Topic == topic && (o.Kind != pathway.KafkaCommit || o.Group == group) {
				kinds[o.Kind]++
			}
		}
		if got := kinds[pathway.KafkaProduce] > 0 && kinds[pathway.KafkaCommit] > 0; got != room {
			t.Errorf("room %v: produce and commit offsets %v, want %v", room, kinds, room)
		}
		if got := p.Stats().UnkeptFacts > 0; got == room {
			t.Errorf("room %v: %d requests unkept", room, p.Stats().UnkeptFacts)
		}
		waitFor(t, "no room taken once the connections ended", func() bool { return p.facts.Used() == 0 })
		guard.check(t)
	}
}

// TestObserveQueueCountsFacts: a fetch answer waiting for observation counts its request's facts
// against ObserveQueueBytes as well as its bytes (a small answer to a request naming many
// partitions is not free), and the worker gives back the same amount once it is done.
func TestObserveQueueCountsFacts(t *testing.T) {
	s := offlineSession(t)
	p := s.p
	p.cfg.ObserveQueueBytes = 10 * factBytes
	h, frame := partitionsRequest(t, keyFetch, 10)
	_, pd := s.handleRequest(h, frame)
	f, _ := pd.facts.(*fetchFacts)
	if f == nil || len(f.offsets) != 10 {
		t.Fatalf("fetch facts %+v, want 10 partitions", f)
	}
	small := make([]byte, 64)
	// Over the budget, but alone: an answer bigger than the budget is observed when none waits.
	if !p.enqueueObserve(observeJob{frame: small, facts: f, client: s.info.Load()}) {
		t.Fatal("a 64-byte answer with 10 partitions' facts was not queued with nothing else waiting")
	}
	if got, want := p.queued.Load(), int64(len(small)+10*factBytes); got != want {
		t.Errorf("%d bytes queued, want %d", got, want)
	}
	if p.enqueueObserve(observeJob{frame: small, client: s.info.Load()}) {
		t.Errorf("a 64-byte answer queued behind %d bytes, budget %d", p.queued.Load(), p.cfg.ObserveQueueBytes)
	}
	if p.Stats().ObserveDropped != 1 {
		t.Errorf("%d answers dropped from observation, want 1", p.Stats().ObserveDropped)
	}
	close(p.observeQ) // the proxy was never started: no worker reads it
	p.observeLoop()
	if got := p.queued.Load(); got != 0 {
		t.Errorf("%d bytes still counted once the worker was done, want 0", got)
	}
}

// holdNext makes kfake wait, before it handles the next request of key, until the returned
// function is called.
func holdNext(c *kfake.Cluster, key int16) (release func()) {
	ch := make(chan struct{})
	c.ControlKey(key, func(kmsg.Request) (kmsg.Response, error, bool) {
		c.DropControl()
		c.SleepControl(func() { <-ch })
		return nil, nil, false
	})
	return func() { close(ch) }
}

// TestAnsweredRequestsKeepNothing: a produce and a fetch keep their partitions while the broker
// holds them, and once the client has their answers, on a connection still open, nothing stays
// kept: fetch answers forwarded whole or streamed while they arrive (two different ways of
// taking a request off the queue).
func TestAnsweredRequestsKeepNothing(t *testing.T) {
	for _, streamed := range []bool{false, true} {
		topic := uniqueTopic(t, "answered")
		c, guard := startCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, topic))
		var opt func(*Config)
		if streamed {
			opt = streamAll
		}
		p := startProxy(t, c, opt)
		conn := rawClient(t, p)
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		inFlight := func(what string, release func()) {
			t.Helper()
			waitFor(t, what+" to keep its 2 partitions while the broker holds it", func() bool { return p.facts.Used() == 2 })
			release()
		}
		release := holdNext(c, kmsg.Produce.Int16())
		if _, err := conn.Write(produceFrame(9, topic, buildBatch(t, 3, 10, nil), buildBatch(t, 2, 10, nil))); err != nil {
			t.Fatal(err)
		}
		inFlight("the produce", release)
		presp := kmsg.NewPtrProduceResponse()
		presp.SetVersion(9)
		readResponse(t, conn, presp)
		if got := p.facts.Used(); got != 0 {
			t.Fatalf("streamed %v: %d partitions kept after the produce answer, want 0", streamed, got)
		}
		req := kmsg.NewPtrFetchRequest()
		req.Version, req.ReplicaID, req.MaxBytes, req.SessionEpoch = 11, -1, 1<<20, -1
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic = topic
		for id := range int32(2) {
			rp := kmsg.NewFetchRequestTopicPartition()
			rp.Partition, rp.PartitionMaxBytes, rp.CurrentLeaderEpoch = id, 1<<20, -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
		// The fetch on a connection of its own: kfake keeps one queue of held requests per
		// connection, and two holds in a row on one race in kfake itself (bsleep.waitQueue).
		fconn := rawClient(t, p)
		fconn.SetDeadline(time.Now().Add(30 * time.Second))
		release = holdNext(c, kmsg.Fetch.Int16())
		if _, err := fconn.Write(requestFrame(req, 2)); err != nil {
			t.Fatal(err)
		}
		inFlight("the fetch", release)
		resp := kmsg.NewPtrFetchResponse()
		resp.SetVersion(11)
		readResponse(t, fconn, resp)
		if n := len(resp.Topics); n != 1 || len(resp.Topics[0].Partitions) != 2 {
			t.Fatalf("streamed %v: fetch answer %+v", streamed, resp)
		}
		if got := p.facts.Used(); got != 0 {
			t.Errorf("streamed %v: %d partitions kept after the fetch answer, want 0", streamed, got)
		}
		if got := p.Stats().StreamedFetches > 0; got != streamed {
			t.Errorf("streamed %v: %d fetch answers streamed", streamed, p.Stats().StreamedFetches)
		}
		guard.check(t)
	}
}

// TestUnkeptProduceNotRefused: on a SASL cluster the proxy cannot read topic configs and learns a
// topic's size limit only from a refusal of a batch the header grew past it. With room, one
// near-limit batch is refused and the rest get through. With no room for facts the refusal would
// go unread and every such batch would be refused: those batches go as they came instead.
func TestUnkeptProduceNotRefused(t *testing.T) {
	defer func(old int64) { maxFacts = old }(maxFacts)
	for _, room := range []bool{true, false} {
		maxFacts = map[bool]int64{false: 0, true: 1 << 20}[room]
		c, guard := startCluster(t, saslUsers...)
		login := kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism())
		p := startProxy(t, c, nil)
		ctx := testCtx(t)
		topic := uniqueTopic(t, "unkept-limit")
		cl := kgoClient(t, p, login, kgo.DisableIdempotentWrite(), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0),
			kgo.ProducerBatchCompression(kgo.NoCompression()))
		limit := "2000"
		if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
			t.Fatal(err)
		}
		near := bytes.Repeat([]byte("n"), 1900)
		refused := 0
		for range 4 {
			if err := cl.ProduceSync(ctx, &kgo.Record{Value: near}).FirstErr(); errors.Is(err, kerr.MessageTooLarge) {
				refused++
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if want := map[bool]int{true: 1}[room]; refused != want {
			t.Errorf("room %v: %d of 4 near-limit batches refused, want %d (UnkeptFacts %d)", room, refused, want, p.Stats().UnkeptFacts)
		}
		guard.check(t)
	}
}

// TestUnkeptFetchUsesSession: with no room for a fetch's facts, a fetch in a fetch session is
// still observed from its fetch offsets, which the session keeps anyway, and with its isolation
// level; one outside a session has no fetch offsets to go by.
func TestUnkeptFetchUsesSession(t *testing.T) {
	defer func(old int64) { maxFacts = old }(maxFacts)
	maxFacts = 0
	for _, tc := range []struct {
		epoch int32
		want  int64 // partition 1's fetch offset as observation sees it
	}{{0, 20}, {-1, -1}} {
		s := offlineSession(t)
		req := kmsg.NewPtrFetchRequest()
		req.Version, req.ReplicaID, req.IsolationLevel, req.SessionEpoch = 11, -1, 1, tc.epoch
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic = "orders"
		for i := range int32(3) {
			rp := kmsg.NewFetchRequestTopicPartition()
			rp.Partition, rp.FetchOffset = i, 10*int64(i+1)
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
		frame := requestFrame(req, 3)
		h, err := parseRequestHeader(frame)
		if err != nil {
			t.Fatal(err)
		}
		_, pd := s.handleRequest(h, frame)
		f, _ := pd.facts.(*fetchFacts)
		if f == nil || len(f.offsets) != 0 || !f.readCommitted || s.p.Stats().UnkeptFacts != 1 {
			t.Fatalf("epoch %d: facts %+v, %d unkept; want no offsets of its own, read committed, 1 unkept", tc.epoch, f, s.p.Stats().UnkeptFacts)
		}
		if got := f.offset(fetchKey{topic: "orders", partition: 1}); got != tc.want {
			t.Errorf("epoch %d: partition 1 observed from offset %d, want %d", tc.epoch, got, tc.want)
		}
	}
}
