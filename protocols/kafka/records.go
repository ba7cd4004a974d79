package kafka

import (
	"bytes"
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// batchMeta and recordMeta are what the proxy needs from the record-batch codec (recbatch) about a
// batch and a record.
type batchMeta struct {
	BaseOffset    int64
	LastOffset    int64 // BaseOffset + the batch's last offset delta
	ProducerID    int64
	Transactional bool
	Control       bool
	Legacy        bool // a magic 0/1 message set, whose messages Walk does not read
}

type recordMeta struct {
	OffsetDelta int32
	PayloadSize int64  // key + value + headers, before injection
	Context     []byte // value of an existing dd-pathway-ctx-base64 header
	HasContext  bool
}

// batchCodec splices headers into produced batches and walks fetched ones.
type batchCodec interface {
	// Inject adds the header decide returns (nil: leave the record) to every record of batch,
	// appending the result to dst. changed=false means batch must go upstream as it was; skip
	// then says why ("" when nothing needed a header).
	Inject(dst, batch []byte, decide func(batchMeta, *recordMeta) []byte) (out []byte, changed bool, skip string, err error)
	// Walk calls fn for every record of the batches in records, and once with a nil record for
	// each control batch; a truncated last batch is normal.
	Walk(records []byte, fn func(batchMeta, *recordMeta)) error
	// Grown describes the last Inject's output (size: its length, which the caller knows): its
	// size uncompressed and the codec of its rewritten batches.
	Grown(size int) grownBatch
	// Malformed says what was wrong when the last Inject reported skipMalformed (nil otherwise).
	Malformed() error
	// Shed gives the buffers over keptBufBytes to the front's list: the connection is idle.
	Shed()
}

// maxBatchPoints bounds the produce checkpoints one partition's batches collect (96 bytes each).
// The aggregator's queue holds aggregator.DefaultQueueSize (65,536) points and a batch hands its
// points over at once, so more would be dropped there anyway; unbounded, a small compressed batch
// of minimal records that decompresses to the 64 MiB limit collected about a million of them, half
// a gigabyte allocated as the slice grew. Records past the bound still get the header; their
// checkpoints are counted as dropped when the batch's points are released.
var maxBatchPoints = 1 << 16

// maxConnHeldPoints bounds the produce checkpoints one connection's requests hold for the
// broker's answers (96 bytes each: 24 MiB). Each partition's batches hold up to maxBatchPoints,
// and a connection may queue many requests of many partitions; past this, a batch's checkpoints
// count when it is sent (Stats.UnheldBatches).
var maxConnHeldPoints int64 = 1 << 18

// maxHeldPoints bounds what all connections hold together (96 MiB), so the memory does not
// grow with the number of connections, which is unlimited unless max_conns is set.
var maxHeldPoints int64 = 1 << 20

// holdRoom takes room for n held checkpoints under both bounds, or reports that there is none.
func (s *session) holdRoom(n int64) bool {
	return s.heldPoints.Held()+n <= maxConnHeldPoints && s.p.heldPoints.Take(&s.heldPoints, n)
}

// injectPartition splices the pathway context into one partition's batch, appending the result
// to s.scratch (it returns where), and records a produce checkpoint for every record that got it.
// Records that already carry a context are left alone (an instrumented client checkpointed them)
// and counted.
//
// With hold, the checkpoints are not handed over but returned in a pooled buffer, for the
// broker's answer to release, with over: the records past maxBatchPoints, whose checkpoints are
// to be counted as dropped then. Without hold both happen here: no answer will be read for the
// batch (acks=0, or the request's facts were not kept).
func (s *session) injectPartition(ci *clientInfo, topic string, partition int32, records []byte, hold bool) (start, end int, held *[]pathway.Point, over int, ok bool) {
	if len(records) == 0 {
		return 0, 0, nil, 0, false
	}
	p := s.p
	now := p.now()
	edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: topic, ClusterID: p.cluster()}
	var parent pathway.Context
	if p.cfg.LinkConsumeProduce {
		parent = p.links.get(linkKey{ci.addr, ci.service}, now, p.cfg.LinkWindow)
	}
	point, ctx := p.cp.Checkpoint(parent, ci.service, edge, 0, now)
	s.hdr = ctx.AppendBase64(s.hdr[:0])
	pts := s.points[:0] // one per record that gets the header, handed over if the batch is rewritten
	existing := 0
	if s.codec == nil {
		s.codec = newCodec(p.cfg.MaxBatchBytes, p.bufs)
	}
	start = len(s.scratch)
	// Without respect for existing contexts, a record's own context is the parent of its
	// checkpoint and is replaced (as AMQP does); a traced producer's batch shares one context, so
	// the checkpoint is taken once per run of equal ones.
	own := &s.own // kept in the session: variables the closure sets would cost allocations per batch
	own.have, own.over = false, 0
	out, changed, skip, err := s.codec.Inject(s.scratch, records, func(_ batchMeta, r *recordMeta) []byte {
		if r.HasContext {
			if !own.have || !bytes.Equal(own.ctx, r.Context) {
				own.ctx, own.have = append(own.ctx[:0], r.Context...), true
				parent, _ := pathway.DecodeBase64(r.Context) // undecodable: no parent, as the tracers do
				// A context the proxy handed a consumer lately is sent on by a client without a
				// tracer (a relay copying headers): its next hop, not a tracer's checkpoint.
				fwd, forwarded := p.handed.Parent(parent, ci.service)
				if own.left = p.respect && !forwarded; !own.left {
					if forwarded {
						parent = fwd
					}
					var c pathway.Context
					own.point, c = p.cp.Checkpoint(parent, ci.service, edge, 0, now)
					own.hdr = c.AppendBase64(own.hdr[:0])
				}
			}
			if own.left {
				existing++
				return nil
			}
			return own.take(&pts, r.PayloadSize, own.point, own.hdr)
		}
		return own.take(&pts, r.PayloadSize, point, s.hdr)
	})
	s.points = pts[:0]
	if cap(pts) > maxPointRun {
		s.points = nil // a huge batch's points are not kept per connection
	}
	if existing > 0 {
		// Counted only: a traced producer's records are on their pathway, nothing to track.
		p.stats.existing.Add(uint64(existing))
	}
	if err != nil {
		p.stats.skipped.Add(1)
		p.decodeError("record batch", keyProduce, -1, err)
		return 0, 0, nil, 0, false
	}
	if changed {
		// Without hold, a refusal would not be read, so the proxy could not learn the topic's limit
		// from it (its only way on clusters whose topic configs it cannot read): the batch grows
		// only under a limit known to fit.
		g := s.codec.Grown(len(out) - start)
		g.orig = len(records)
		if why := p.limits.check(topic, g, !hold, s.limitWait); why != "" {
			changed, skip = false, why
		}
	}
	if !changed {
		if skip != "" {
			p.stats.skipped.Add(1)
		}
		if skip != "" && skip != skipOverLimitAsSent { // that refusal is the broker's event
			msg := "batch forwarded unmodified"
			if cause := s.codec.Malformed(); skip == skipMalformed && cause != nil {
				msg += ": " + cause.Error()
			}
			p.skip(skip, msg, ci.service, edge, partition, batchRecordCount(records))
		}
		return 0, 0, nil, 0, false
	}
	s.scratch = out
	if hold && !s.holdRoom(int64(len(pts))) {
		// The connection, or the proxy, already holds its share: these count now, as if the
		// broker stores them, instead of growing what waits for answers.
		hold = false
		p.stats.unheld.Add(1)
	}
	if hold {
		held = p.pointBufs.Get().(*[]pathway.Point)
		*held = append((*held)[:0], pts...)
	} else {
		p.addPoints(pts)
	}
	over = own.over
	p.stats.injected.Add(uint64(pathway.CountCheckpoints(pts)) + uint64(over))
	if !hold {
		p.dropPoints(over)
		over = 0
	}
	return start, len(out), held, over, true
}

// take records pt, with the record's payload size, as the checkpoint of a record that gets hdr,
// or counts it in over past maxBatchPoints, and returns hdr. A record alike the last one (its
// checkpoint and size: service, edge and time are the batch's) counts in the last point.
func (o *ownContext) take(pts *[]pathway.Point, size int64, pt pathway.Point, hdr []byte) []byte {
	if k := len(*pts) - 1; k >= 0 {
		if last := &(*pts)[k]; last.PayloadSize == size && last.Hash == pt.Hash && last.ParentHash == pt.ParentHash &&
			last.PathwayLatency == pt.PathwayLatency && last.EdgeLatency == pt.EdgeLatency {
			last.Count = last.Checkpoints() + 1
			return hdr
		}
	}
	if len(*pts) >= maxBatchPoints {
		o.over++
		return hdr
	}
	pt.PayloadSize = size
	*pts = append(*pts, pt)
	return hdr
}

// maxPointRun bounds the points consumeRecords collects before handing them to the observer, so
// a partition of many small records does not grow its buffer without limit.
const maxPointRun = 1024

// appendPoint appends pt to pts, first handing pts over when it holds maxPointRun points.
func (p *Proxy) appendPoint(pts []pathway.Point, pt pathway.Point) []pathway.Point {
	if len(pts) >= maxPointRun {
		p.addPoints(pts)
		pts = pts[:0]
	}
	return append(pts, pt)
}

// pointBuffers recycles the point slices consumeRecords collects a partition's checkpoints in.
type pointBuffers struct{ sync.Pool }

func newPointBuffers() *pointBuffers {
	return &pointBuffers{sync.Pool{New: func() any { b := make([]pathway.Point, 0, maxPointRun); return &b }}}
}

// consumeRecords checkpoints every record of a fetched partition: direction:in with the group
// when known, parent = the record's context. Records before the fetch offset (whole compressed
// batches start early) and, for read_committed consumers, aborted transactional records are not
// counted: the client never sees them.
//
// Aborted records are found as the Java consumer finds them: a producer's aborted transaction
// starts at its FirstOffset, once a batch reaches it, and ends at the producer's next control
// batch (its abort marker). Later transactions of the producer, committed, count again.
func (p *Proxy) consumeRecords(ci *clientInfo, edge pathway.Edge, part *kmsg.FetchResponseTopicPartition, from int64, readCommitted bool, now time.Time) {
	p.checkpointRecords(ci, edge, fetchedPartition{op: keyFetch, partition: part.Partition, records: part.RecordBatches,
		aborted: part.AbortedTransactions, from: from, readCommitted: readCommitted}, now)
}

// fetchedPartition is one partition's records as a consumer receives them.
type fetchedPartition struct {
	op            int16 // the API that fetched them (keyFetch, keyShareFetch), for events
	partition     int32
	records       []byte
	aborted       []kmsg.FetchResponseTopicPartitionAbortedTransaction
	from          int64 // the fetch offset; records before it are not delivered (-1: unknown)
	readCommitted bool
	// acquired, for a share fetch (op keyShareFetch, KIP-932): the offset ranges the consumer
	// acquired, sorted; only their records are delivered.
	acquired []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord
}

// checkpointRecords is consumeRecords for any fetched partition (fetch or share fetch).
func (p *Proxy) checkpointRecords(ci *clientInfo, edge pathway.Edge, fp fetchedPartition, now time.Time) {
	if ci.traced {
		return // its tracer checkpoints what it consumes
	}
	acquired, share := fp.acquired, fp.op == keyShareFetch
	var pendingAborts []kmsg.FetchResponseTopicPartitionAbortedTransaction // by FirstOffset
	var aborting map[int64]bool                                            // producers inside an aborted transaction
	if fp.readCommitted && len(fp.aborted) > 0 {
		pendingAborts = slices.SortedFunc(slices.Values(fp.aborted), func(a, b kmsg.FetchResponseTopicPartitionAbortedTransaction) int {
			return cmp.Compare(a.FirstOffset, b.FirstOffset)
		})
		aborting = map[int64]bool{}
	}
	lk := linkKey{ci.addr, ci.service}
	var last pathway.Context
	n := 0
	// Records produced together carry the same context bytes, and with the same parent, edge and
	// time their checkpoints differ only in payload size: decode and hash once per run of them. (An
	// empty context and none give the same checkpoint: an empty one does not decode.)
	var prev pathway.Point
	var prevCtx []byte
	havePrev := false
	pp := p.pointBufs.Get().(*[]pathway.Point)
	pts := (*pp)[:0]
	legacy := 0
	err := p.walker.Walk(fp.records, func(b batchMeta, r *recordMeta) {
		if b.Legacy {
			legacy++
			return
		}
		if aborting != nil && b.ProducerID >= 0 {
			for len(pendingAborts) > 0 && pendingAborts[0].FirstOffset <= b.LastOffset {
				aborting[pendingAborts[0].ProducerID] = true
				pendingAborts = pendingAborts[1:]
			}
			if b.Control {
				delete(aborting, b.ProducerID)
			} else if b.Transactional && aborting[b.ProducerID] {
				return
			}
		}
		if b.Control {
			return
		}
		off := b.BaseOffset + int64(r.OffsetDelta)
		if off < fp.from {
			return
		}
		if share {
			for len(acquired) > 0 && acquired[0].LastOffset < off {
				acquired = acquired[1:]
			}
			if len(acquired) == 0 || off < acquired[0].FirstOffset {
				return // not acquired: the share consumer does not get it
			}
		}
		n++
		if havePrev && bytes.Equal(prevCtx, r.Context) {
			// The last point is prev's: one of the same size too is one more of it, which costs
			// the aggregator no more than the first (records of one producer's batch are often
			// the same size).
			if k := len(pts) - 1; k >= 0 && pts[k].PayloadSize == r.PayloadSize {
				pts[k].Count = pts[k].Checkpoints() + 1
				return
			}
			prev.PayloadSize = r.PayloadSize
			pts = p.appendPoint(pts, prev)
			return
		}
		var parent pathway.Context
		if r.HasContext {
			parent, _ = pathway.DecodeBase64(r.Context) // undecodable: no parent, as the tracers do
		}
		pt, ctx := p.cp.Checkpoint(parent, ci.service, edge, r.PayloadSize, now)
		p.handed.Put(parent, ci.service, ctx) // before the point: whoever sees it can forward
		pts = p.appendPoint(pts, pt)
		last = ctx
		prev, prevCtx, havePrev = pt, append(prevCtx[:0], r.Context...), true
	})
	// The link goes in before the last points: whoever sees those points sees the link.
	if n > 0 && p.cfg.LinkConsumeProduce {
		p.links.put(lk, last, now)
	}
	p.addPoints(pts)
	*pp = pts[:0]
	p.pointBufs.Put(pp)
	if err != nil {
		p.decodeError("fetched record batch", fp.op, -1, err)
	}
	if legacy > 0 {
		// Old data, or a client fetching below v4: the tracers checkpoint such messages
		// (without a parent); the proxy does not read them, and says so.
		p.skipOp(kmsg.NameForKey(fp.op), skipLegacyMagic, "fetched magic 0/1 message sets are not read: their messages get no consume checkpoint",
			ci.service, edge, fp.partition, legacy)
	}
	p.stats.consumed.Add(uint64(n))
}
