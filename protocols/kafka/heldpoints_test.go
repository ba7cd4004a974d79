package kafka

import (
	"bytes"
	"errors"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// produceThrough runs a v9 produce request of batches (one per partition, nil for a null one)
// through s, and reports whether it was rewritten.
func produceThrough(t *testing.T, s *session, batches ...[]byte) (injected bool, pd *pending) {
	t.Helper()
	frame := produceFrame(9, "orders", batches...)
	h, err := parseRequestHeader(frame)
	if err != nil {
		t.Fatal(err)
	}
	pd = &pending{corr: h.CorrID, key: h.Key, version: h.Version}
	out, _ := s.produceRequest(h, frame, pd)
	return !bytes.Equal(out, frame), pd
}

// sendHeld runs one produce request of 10 records, each a point of its own, through s and
// returns its partition, held or not.
func sendHeld(t *testing.T, s *session) (*producedPart, *pending) {
	t.Helper()
	if injected, pd := produceThrough(t, s, buildBatchApart(t, 10, 10)); injected {
		return &pd.facts.(*produceFacts).parts[0], pd
	}
	t.Fatal("the batch did not get the header")
	return nil, nil
}

// TestProxyHeldPointsBounded: all connections together hold at most maxHeldPoints checkpoints
// for answers, each well under its own bound; past it a batch counts when sent, and an answer
// on any connection frees the room.
func TestProxyHeldPointsBounded(t *testing.T) {
	defer func(old int64) { maxHeldPoints = old }(maxHeldPoints)
	maxHeldPoints = 25
	a := offlineSession(t)
	b := secondSession(a)
	first, _ := sendHeld(t, a)
	second, _ := sendHeld(t, b)
	third, _ := sendHeld(t, a)
	if first.points == nil || second.points == nil || third.points != nil {
		t.Fatalf("held: %v %v %v; want the first two only (25 points for all connections)", first.points != nil, second.points != nil, third.points != nil)
	}
	if got := a.p.heldPoints.Used(); got != 20 || a.p.Stats().UnheldBatches != 1 {
		t.Fatalf("%d points held by the proxy, %d unheld batches; want 20, 1", got, a.p.Stats().UnheldBatches)
	}
	b.releasePoints(second, true)
	if fourth, _ := sendHeld(t, a); fourth.points == nil || a.p.heldPoints.Used() != 20 || a.heldPoints.Held() != 20 {
		t.Errorf("after an answer on the other connection: held %v, %d by the proxy, %d by the connection; want held, 20, 20",
			fourth.points != nil, a.p.heldPoints.Used(), a.heldPoints.Held())
	}
}

// secondSession is another connection of s's proxy, from the same client.
func secondSession(s *session) *session {
	b := &session{p: s.p, log: s.log, idle: make(chan struct{}, 1), respClosed: make(chan struct{}), addr: s.addr}
	b.info.Store(s.info.Load())
	return b
}

// TestAbandonedRequestFreesHeldPoints: a request whose answer never comes gives its held
// checkpoints up as dropped, and its room back.
func TestAbandonedRequestFreesHeldPoints(t *testing.T) {
	s := offlineSession(t)
	part, pd := sendHeld(t, s)
	if part.points == nil || s.p.heldPoints.Used() != 10 {
		t.Fatalf("held %v, %d points; want held, 10", part.points != nil, s.p.heldPoints.Used())
	}
	s.abandon(pd)
	if st := s.p.Stats(); s.p.heldPoints.Used() != 0 || s.heldPoints.Held() != 0 || st.PointsDropped != 10 {
		t.Errorf("after abandon: proxy holds %d, connection %d, %d dropped; want 0, 0, 10",
			s.p.heldPoints.Used(), s.heldPoints.Held(), st.PointsDropped)
	}
}

// TestProduceConnectionLostBeforeAnswer: the broker closes the connection on a Produce before
// answering it. kgo resends the batch on a new connection and the broker stores it then: it is
// counted once (the resend), the first sending's held checkpoints count as dropped, and nothing
// stays held once the connections are gone.
func TestProduceConnectionLostBeforeAnswer(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "lost-answer")
	cl := kgoClient(t, p, kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0))
	produceEach(t, ctx, cl, topic, []byte("creates the topic"))
	c.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		return nil, errors.New("connection lost before the answer"), true // once: the resend goes through
	})
	recs := make([]*kgo.Record, 5)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Value: []byte{'a' + byte(i)}}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	waitFor(t, "the lost sending's checkpoints to count as dropped", func() bool { return p.Stats().PointsDropped == 5 })
	cl.Close()
	waitFor(t, "no checkpoint held", func() bool { return p.heldPoints.Used() == 0 })
	if n := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")); n != 6 {
		t.Errorf("%d produce checkpoints for %s, want 6 (the first record, and the 5 once)", n, topic)
	}
	guard.check(t)
}

// TestFetchSessionRoomFreedAtConnectionEnd: a consumer's fetch session offsets count against
// maxSessionEntries while its connection lasts, and not after.
func TestFetchSessionRoomFreedAtConnectionEnd(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "session-room")
	produceEach(t, ctx, kgoClient(t, p), topic, []byte("a"), []byte("b"))
	cl := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	for n := 0; n < 2; {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %d of 2 records: %v", n, err)
		}
		n += len(fs.Records())
	}
	waitFor(t, "the consumer's fetch session to be counted", func() bool { return p.sessionEntries.Used() > 0 })
	cl.Close()
	waitFor(t, "its room to be free after the connection ended", func() bool { return p.sessionEntries.Used() == 0 })
	guard.check(t)
}

// TestHugeProduceBuffersNotKept: a produce request naming many partitions grows the
// connection's parse buffers once; they are not kept for its later requests.
func TestHugeProduceBuffersNotKept(t *testing.T) {
	s := offlineSession(t)
	batches := make([][]byte, 3*maxReusedParts)
	batches[0] = buildBatch(t, 2, 10, nil) // one partition with records, the rest null
	injected, pd := produceThrough(t, s, batches...)
	if !injected {
		t.Fatal("the batch did not get the header")
	}
	if n := len(pd.facts.(*produceFacts).parts); n != len(batches) {
		t.Fatalf("%d partitions in the request's facts, want %d", n, len(batches))
	}
	if cap(s.produce.parts) > maxReusedParts || cap(s.spans) > maxReusedParts || cap(s.repl) > maxReusedParts {
		t.Errorf("kept after the request: %d parsed partitions, %d spans, %d replacements; want at most %d each",
			cap(s.produce.parts), cap(s.spans), cap(s.repl), maxReusedParts)
	}
}

// TestTooManyPartitionsForwardedUnmodified: a produce request naming more than
// maxProducePartitions partitions goes upstream as it came, with no checkpoints and nothing held
// for its answer, and the skip is counted.
func TestTooManyPartitionsForwardedUnmodified(t *testing.T) {
	defer func(old int) { maxProducePartitions = old }(maxProducePartitions)
	maxProducePartitions = 100
	for _, tc := range []struct {
		partitions int
		inject     bool
	}{{100, true}, {101, false}} {
		s := offlineSession(t)
		batches := make([][]byte, tc.partitions)
		batches[0] = buildBatchApart(t, 3, 10)
		injected, pd := produceThrough(t, s, batches...)
		if st := s.p.Stats(); injected != tc.inject || (st.SkippedBatches == 1) == tc.inject || (pd.facts == nil) == tc.inject || s.heldPoints.Held() != map[bool]int64{true: 3}[tc.inject] {
			t.Errorf("%d partitions: injected %v, %d skips, facts %v, %d points held; want injected %v",
				tc.partitions, injected, st.SkippedBatches, pd.facts != nil, s.heldPoints.Held(), tc.inject)
		}
	}
}
