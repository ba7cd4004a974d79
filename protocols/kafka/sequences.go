package kafka

import (
	"encoding/binary"
	"sync"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// An idempotent producer that times out or loses its connection sends the same batch again (same
// producer id, epoch and sequence). The broker stores it once and answers the copy with success
// and the first copy's offset, so a checkpoint released by each success would count the records
// twice. producedSequences remembers the batches the broker reported stored, per producer and
// partition, as the broker does: its duplicate check covers the last five batches of each
// (max.in.flight.requests.per.connection is at most 5 with idempotence). A success is a resend's
// only if it also names the offset the first copy got: a broker that forgot the producer
// (producer.id.expiration.ms) stores a batch with a sequence seen before at a new offset, and that
// one counts.
type producedSequences struct {
	mu      sync.Mutex
	windows *proxy.RecentMap[sequenceKey, *sequenceWindow]
}

// maxSequenceWindows bounds the producer-partitions remembered (about 150 bytes each): at least
// the half of it used most recently are kept, and a resend of one forgotten counts again.
const maxSequenceWindows = 1 << 16

// brokerDedupWindow is how many recent batches per producer-partition a broker checks a new one
// against (ProducerStateEntry.NUM_BATCHES_TO_RETAIN in Kafka).
const brokerDedupWindow = 5

type sequenceKey struct {
	producerID int64
	topic      string
	partition  int32
}

// batchSequence is an idempotent batch's place in its producer's sequence.
type batchSequence struct {
	epoch   int16
	first   int32 // baseSequence
	records int32
}

type sequenceWindow struct {
	next    int
	batches [brokerDedupWindow]storedBatch
}

type storedBatch struct {
	seq    batchSequence
	offset int64 // the base offset the broker gave it
}

func newProducedSequences() *producedSequences {
	return &producedSequences{windows: proxy.NewRecentMap[sequenceKey, *sequenceWindow](maxSequenceWindows)}
}

// idempotentBatch reads the producer id and sequence of the first batch in records; ok is false
// for batches of producers without idempotence (producer id or sequence -1) and for anything that
// is not a magic-2 batch.
func idempotentBatch(records []byte) (producerID int64, seq batchSequence, ok bool) {
	if len(records) < 61 || records[16] != 2 {
		return 0, seq, false
	}
	producerID = int64(binary.BigEndian.Uint64(records[43:]))
	seq = batchSequence{
		epoch:   int16(binary.BigEndian.Uint16(records[51:])),
		first:   int32(binary.BigEndian.Uint32(records[53:])),
		records: int32(binary.BigEndian.Uint32(records[57:])),
	}
	return producerID, seq, producerID >= 0 && seq.first >= 0 && seq.records > 0
}

// stored records that the broker stored the batch seq for k at offset and reports whether it had
// already reported storing it there: then this success is the answer to a resend.
func (s *producedSequences) stored(k sequenceKey, seq batchSequence, offset int64) (resent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.windows.Get(k)
	if !ok {
		w = &sequenceWindow{}
		s.windows.Put(k, w)
	}
	for i, b := range w.batches {
		if b.seq == seq {
			if b.offset == offset && offset >= 0 {
				return true
			}
			w.batches[i].offset = offset // stored again: the broker had forgotten the producer
			return false
		}
	}
	w.batches[w.next] = storedBatch{seq: seq, offset: offset}
	w.next = (w.next + 1) % brokerDedupWindow
	return false
}
