package kafka

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// withSequence returns batch as idempotent producer pid's, at epoch and sequence seq.
func withSequence(batch []byte, pid int64, epoch int16, seq int32) []byte {
	b := append([]byte(nil), batch...)
	binary.BigEndian.PutUint64(b[43:], uint64(pid))
	binary.BigEndian.PutUint16(b[51:], uint16(epoch))
	binary.BigEndian.PutUint32(b[53:], uint32(seq))
	binary.BigEndian.PutUint32(b[17:], crc32.Checksum(b[21:], castagnoli))
	return b
}

// TestIdempotentResendCountedOnce: an idempotent producer sends a stored batch again (as after a
// timeout), on its connection and on a new one. kfake answers each copy with success and the
// first copy's offset and stores one; the produce checkpoints count the records once, and a
// batch with the next sequence counts as usual.
func TestIdempotentResendCountedOnce(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "resend")
	cl := kgoClient(t, p)
	produceKgo(t, ctx, cl, topic, testRecords(1, time.UnixMilli(1700000720000)))
	produced := func() int { return len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")) }
	waitFor(t, "the first record's checkpoint", func() bool { return produced() == 1 })

	id := topicID(t, ctx, cl, topic) // Produce v13 names topics by id
	init := kmsg.NewPtrInitProducerIDRequest()
	ir, err := init.RequestWith(ctx, cl)
	if err != nil || ir.ErrorCode != 0 {
		t.Fatalf("InitProducerID: %v %+v", err, ir)
	}
	send := func(cl interface {
		Request(ctx2 context.Context, req kmsg.Request) (kmsg.Response, error)
	}, seq int32) int64 {
		t.Helper()
		req := kmsg.NewPtrProduceRequest()
		req.Acks, req.TimeoutMillis = -1, 5000
		rt := kmsg.NewProduceRequestTopic()
		rt.Topic, rt.TopicID = topic, id
		rp := kmsg.NewProduceRequestTopicPartition()
		rp.Records = withSequence(buildBatch(t, 3, 10, nil), ir.ProducerID, ir.ProducerEpoch, seq)
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil || len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 || resp.Topics[0].Partitions[0].ErrorCode != 0 {
			t.Fatalf("produce of sequence %d: %v %+v", seq, err, resp)
		}
		return resp.Topics[0].Partitions[0].BaseOffset
	}
	first := send(cl, 0)
	if again := send(cl, 0); again != first {
		t.Fatalf("the resend was stored at offset %d, the first copy at %d: kfake did not deduplicate", again, first)
	}
	if again := send(kgoClient(t, p), 0); again != first {
		t.Fatalf("the resend on a new connection was stored at offset %d, the first copy at %d", again, first)
	}
	if n := produced(); n != 1+3 {
		t.Errorf("%d produce checkpoints after one batch of 3 sent three times, want %d", n, 1+3)
	}
	if next := send(cl, 3); next != first+3 {
		t.Errorf("the next batch was stored at offset %d, want %d", next, first+3)
	}
	if n := produced(); n != 1+3+3 {
		t.Errorf("%d produce checkpoints after the next batch, want %d", n, 1+3+3)
	}
	if got := p.Stats().ResentBatches; got != 2 {
		t.Errorf("ResentBatches = %d, want 2", got)
	}
	guard.check(t)
}

func TestProducedSequencesWindow(t *testing.T) {
	s := newProducedSequences()
	k := sequenceKey{producerID: 7, topic: "t", partition: 1}
	b := func(epoch int16, first int32) batchSequence {
		return batchSequence{epoch: epoch, first: first, records: 10}
	}
	steps := []struct {
		key    sequenceKey
		seq    batchSequence
		offset int64
		resent bool
	}{
		{k, b(0, 0), 100, false},
		{k, b(0, 0), 100, true},                              // the same batch again, answered with its offset
		{k, batchSequence{0, 0, 9}, 110, false},              // same start, other length: another batch
		{sequenceKey{8, "t", 1}, b(0, 0), 100, false},        // another producer
		{sequenceKey{7, "t", 2}, b(0, 0), 100, false},        // another partition
		{sequenceKey{7, "u", 1}, b(0, 0), 100, false},        // another topic
		{k, b(1, 0), 120, false},                             // a new epoch restarts the sequence
		{k, b(1, 10), 130, false}, {k, b(1, 20), 140, false}, // fills the window of five with epoch 1
		{k, b(1, 30), 150, false},
		{k, b(0, 0), 100, false}, // six batches back: out of the broker's window as well
		{k, b(1, 30), 150, true},
		{k, b(1, 30), 500, false}, // a sequence seen before, stored at a new offset: the broker forgot the producer
		{k, b(1, 30), 500, true},
		{k, b(1, 20), -1, false}, // no offset in the answer: counted
	}
	for i, st := range steps {
		if got := s.stored(st.key, st.seq, st.offset); got != st.resent {
			t.Errorf("step %d (%+v %+v at %d): resent = %v, want %v", i, st.key, st.seq, st.offset, got, st.resent)
		}
	}
}

func TestIdempotentBatch(t *testing.T) {
	plain := buildBatch(t, 2, 5, nil)
	if _, _, ok := idempotentBatch(plain); ok {
		t.Error("a batch with producer id -1 read as idempotent")
	}
	pid, seq, ok := idempotentBatch(withSequence(plain, 42, 3, 17))
	if !ok || pid != 42 || seq != (batchSequence{epoch: 3, first: 17, records: 2}) {
		t.Errorf("idempotentBatch = %d %+v %v", pid, seq, ok)
	}
	if _, _, ok := idempotentBatch(plain[:60]); ok {
		t.Error("a truncated batch read as idempotent")
	}
}
