package kafka

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Client requests the proxy reads are parsed by hand, reading only the fields it needs: kmsg's
// generated readers keep looping over a tagged-field count after the input ran out, so a hostile
// client could make one frame cost seconds of CPU (found by FuzzRequestFrame). Broker responses
// are trusted and decoded with kmsg.

// wire is a kbin.Reader that knows whether the message is flexible and rejects array and tag
// counts the remaining bytes cannot hold.
type wire struct {
	kbin.Reader
	flex bool
}

func (w *wire) str() string {
	if w.flex {
		return w.CompactString()
	}
	return w.String()
}

// strLen reads a string and returns its length; it copies nothing (str would, for each call).
func (w *wire) strLen() int {
	if w.flex {
		return len(w.UnsafeCompactString())
	}
	return len(w.UnsafeString())
}

// nullableStr reads a nullable string: nil for null.
func (w *wire) nullableStr() *string {
	if w.flex {
		return w.CompactNullableString()
	}
	return w.NullableString()
}

func (w *wire) array() int { return arrayLen(&w.Reader, w.flex) }

func (w *wire) tags() {
	if w.flex {
		skipTagsReader(&w.Reader)
	}
}

func (w *wire) uuid() (id [16]byte) {
	copy(id[:], w.Span(16))
	return id
}

func newWire(h requestHeader, frame []byte) *wire {
	return &wire{Reader: kbin.Reader{Src: frame[h.BodyStart:]}, flex: h.Flexible}
}

func (w *wire) err(h requestHeader) error {
	if w.Ok() {
		return nil
	}
	return fmt.Errorf("%s v%d body truncated or malformed: a field or a length does not fit the frame", kmsg.NameForKey(h.Key), h.Version)
}

// parseFetch reads the isolation level and every partition's fetch offset, and where in frame the
// rack id (v11+) lies when it is not empty (zero when it is, or the version has none).
func parseFetch(h requestHeader, frame []byte) (*fetchFacts, [2]int, error) {
	w := newWire(h, frame)
	v := h.Version
	if v <= 14 {
		w.Int32() // replica id
	}
	w.Int32() // max wait
	w.Int32() // min bytes
	if v >= 3 {
		w.Int32() // max bytes
	}
	f := &fetchFacts{offsets: make(map[fetchKey]int64)}
	if v >= 4 {
		f.readCommitted = w.Int8() == 1
	}
	if v >= 7 {
		w.Int32() // session id
		f.sessionEpoch = w.Int32()
	} else {
		f.sessionEpoch = -1
	}
	for ti, nt := 0, w.array(); ti < nt && w.Ok(); ti++ {
		k := w.fetchTopic(v)
		for pi, np := 0, w.array(); pi < np && w.Ok(); pi++ {
			k.partition = w.Int32()
			if v >= 9 {
				w.Int32() // current leader epoch
			}
			off := w.Int64()
			if v >= 12 {
				w.Int32() // last fetched epoch
			}
			if v >= 5 {
				w.Int64() // log start offset
			}
			w.Int32() // partition max bytes
			w.tags()
			if w.Ok() {
				f.offsets[k] = off
			}
		}
		w.tags()
	}
	if v >= 7 { // forgotten topics: the partitions an incremental request drops from the session
		for ti, nt := 0, w.array(); ti < nt && w.Ok(); ti++ {
			k := w.fetchTopic(v)
			for pi, np := 0, w.array(); pi < np && w.Ok(); pi++ {
				k.partition = w.Int32()
				f.forgotten = append(f.forgotten, k)
			}
			w.tags()
		}
	}
	var rack [2]int
	if r := *w; v >= 11 && r.Ok() { // read apart: a bad rack id costs the request its rewrite only
		at := len(frame) - len(r.Src)
		if r.strLen() > 0 && r.Ok() { // every fetch of a consumer with client.rack: no copy
			rack = [2]int{at, len(frame) - len(r.Src)}
		}
	}
	// The top-level tags are not needed.
	return f, rack, w.err(h)
}

// parseOffsetCommit reads group and offsets of an OffsetCommit request.
func parseOffsetCommit(h requestHeader, frame []byte) (*commitFacts, error) {
	w := newWire(h, frame)
	v := h.Version
	f := &commitFacts{group: w.str()}
	if v >= 1 {
		w.Int32() // generation
		w.str()   // member id
	}
	if v >= 7 {
		w.nullableStr() // instance id
	}
	if v >= 2 && v <= 4 {
		w.Int64() // retention
	}
	for ti, nt := 0, w.array(); ti < nt && w.Ok(); ti++ {
		var c committed
		if v >= 10 {
			c.topicID = w.uuid()
		} else {
			c.topic = w.str()
		}
		for pi, np := 0, w.array(); pi < np && w.Ok(); pi++ {
			c.partition = w.Int32()
			c.offset = w.Int64()
			if v == 1 {
				w.Int64() // timestamp
			}
			if v >= 6 {
				w.Int32() // leader epoch
			}
			w.nullableStr() // metadata
			w.tags()
			if w.Ok() {
				f.offsets = append(f.offsets, c)
			}
		}
		w.tags()
	}
	return f, w.err(h)
}

// parseTxnOffsetCommit reads group and offsets of a TxnOffsetCommit request.
// parseEndTxn reads an EndTxn request: which transaction, and whether it commits.
func parseEndTxn(h requestHeader, frame []byte) (endTxnFacts, error) {
	w := newWire(h, frame)
	var f endTxnFacts
	f.txnID = w.str()
	f.producer.id = w.Int64()
	f.producer.epoch = w.Int16()
	f.commit = w.Bool()
	return f, w.err(h)
}

func parseTxnOffsetCommit(h requestHeader, frame []byte) (*commitFacts, error) {
	w := newWire(h, frame)
	v := h.Version
	txnID := w.str()
	f := &commitFacts{group: w.str(), txnID: txnID}
	f.producer.id = w.Int64()
	f.producer.epoch = w.Int16()
	if v >= 3 {
		w.Int32()       // generation
		w.str()         // member id
		w.nullableStr() // instance id
	}
	for ti, nt := 0, w.array(); ti < nt && w.Ok(); ti++ {
		var c committed
		if v >= 6 {
			c.topicID = w.uuid()
		} else {
			c.topic = w.str()
		}
		for pi, np := 0, w.array(); pi < np && w.Ok(); pi++ {
			c.partition = w.Int32()
			c.offset = w.Int64()
			if v >= 2 {
				w.Int32() // leader epoch
			}
			w.nullableStr() // metadata
			w.tags()
			if w.Ok() {
				f.offsets = append(f.offsets, c)
			}
		}
		w.tags()
	}
	return f, w.err(h)
}

// fetchTopic reads a Fetch topic's name (v12 and below) or id (v13+).
func (w *wire) fetchTopic(v int16) fetchKey {
	var k fetchKey
	if v >= 13 {
		k.id = w.uuid()
	} else {
		k.topic = w.str()
	}
	return k
}

// parseGroupHeartbeat reads the group, member and member epoch of a ConsumerGroupHeartbeat
// request (a negative epoch: the member leaves).
func parseGroupHeartbeat(h requestHeader, frame []byte) (groupMember, int32, error) {
	w := newWire(h, frame)
	var m groupMember
	m.group = w.str()
	m.member = w.str()
	epoch := w.Int32()
	return m, epoch, w.err(h)
}

// parseSyncGroup reads a SyncGroup (or Heartbeat) request's group, generation and member id.
func parseSyncGroup(h requestHeader, frame []byte) (groupMember, error) {
	w := newWire(h, frame)
	var m groupMember
	m.group = w.str()
	m.gen = w.Int32()
	m.member = w.str()
	return m, w.err(h)
}

// parseLeaveGroup reads a LeaveGroup request's group and the members leaving it.
func parseLeaveGroup(h requestHeader, frame []byte) (groupLeave, error) {
	w := newWire(h, frame)
	l := groupLeave{group: w.str()}
	if h.Version < 3 {
		l.members = []string{w.str()}
		return l, w.err(h)
	}
	for i, n := 0, w.array(); i < n && w.Ok(); i++ {
		l.members = append(l.members, w.str())
		w.nullableStr() // instance id
		if h.Version >= 5 {
			w.nullableStr() // reason
		}
		w.tags()
	}
	return l, w.err(h)
}

// parseShareGroup reads a ShareFetch or ShareAcknowledge request's group id ("" when null).
func parseShareGroup(h requestHeader, frame []byte) (string, error) {
	w := newWire(h, frame)
	g := w.nullableStr()
	if err := w.err(h); err != nil || g == nil {
		return "", err
	}
	return *g, nil
}

// parseFirstString reads the first field of a request body, a string: the group of JoinGroup,
// SyncGroup and ConsumerGroupHeartbeat, the mechanism of SaslHandshake, the client software name
// of ApiVersions v3+.
func parseFirstString(h requestHeader, frame []byte) (string, error) {
	w := newWire(h, frame)
	s := w.str()
	return s, w.err(h)
}

// parseFindCoordinator reads the key type and, before v4 (whose answer echoes each key), the key.
func parseFindCoordinator(h requestHeader, frame []byte) (coordinatorKey, error) {
	w := newWire(h, frame)
	var k coordinatorKey
	if h.Version < 4 {
		k.key = w.str()
	}
	if h.Version >= 1 {
		k.keyType = w.Int8()
	}
	return k, w.err(h)
}

// parseInitProducerID reads the transactional id ("" for an idempotent producer's null).
func parseInitProducerID(h requestHeader, frame []byte) (txnFacts, error) {
	w := newWire(h, frame)
	id := w.nullableStr()
	var f txnFacts
	if id != nil {
		f.txnID = *id
	}
	return f, w.err(h)
}

// parseAddOffsetsToTxn reads the transactional id and the group whose offsets join it.
func parseAddOffsetsToTxn(h requestHeader, frame []byte) (txnFacts, error) {
	w := newWire(h, frame)
	f := txnFacts{txnID: w.str()}
	w.Int64() // producer id
	w.Int16() // producer epoch
	f.group = w.str()
	return f, w.err(h)
}
