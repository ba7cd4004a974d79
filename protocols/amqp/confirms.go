package amqp

import (
	"cmp"
	"math"
	"slices"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// On a channel in confirm mode a publish's checkpoint waits for the broker's ack, as a Kafka
// produce's waits for its answer: what the broker refused is not counted as produced. A nack
// drops it, and so does a Basic.Return (RabbitMQ returns an unroutable mandatory message, then
// acks it). When the broker closes the channel, or the connection ends without the client
// closing it, whether the unconfirmed publishes were stored is unknown and they are not
// counted, as a transaction whose CommitOk did not come; a client that closes the channel or
// the connection itself had nothing refused, and its unconfirmed publishes count then (RabbitMQ
// answers a Channel.Close before it has confirmed everything).

// heldPub is a confirm-mode publish's checkpoint awaiting its ack.
type heldPub struct {
	tag      uint64
	pt       pathway.Point
	done     bool // acked, nacked or returned: only still in the queue for its order
	returned bool
	refused  bool // the broker closed the channel or connection over it: lost, not of unknown fate
}

// maxHeldPerChannel bounds the checkpoints one channel holds for acks; maxHeldConfirms those of
// all connections (about 120 bytes each: 120 MiB). Past either a publish counts when sent
// (Stats.ConfirmUnheld).
const maxHeldPerChannel = 16384

var maxHeldConfirms int64 = 1 << 20

// holdConfirm keeps pt, the checkpoint of channel ch's latest publish, for its ack. A channel
// with no ring was closed by the broker while the publish was on its way: the broker drops it,
// and it is not counted.
func (s *session) holdConfirm(ch uint16, pt pathway.Point) {
	if held, closed := s.tryHold(ch, pt); !held && !closed {
		s.p.stats.confirmUnheld.Add(1)
		s.p.addPoint(pt)
	}
}

func (s *session) tryHold(ch uint16, pt pathway.Point) (held, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.shared[ch]
	if cs == nil || cs.pubRing == nil {
		return false, true
	}
	if cs.heldLive >= maxHeldPerChannel || !s.p.heldConfirms.Take(&s.heldConfirms, 1) {
		return false, false
	}
	if len(cs.held) == cap(cs.held) && 2*(len(cs.held)-cs.heldHead) <= cap(cs.held) {
		cs.moveHeldDownLocked()
	}
	cs.held = append(cs.held, heldPub{tag: cs.seq, pt: pt})
	cs.heldLive++
	return true, false
}

// moveHeldDownLocked moves the publishes not dropped from cs.held yet to its start. A full
// queue whose settled front is half of it or more moves down rather than grow (a copy of at most
// one publish per publish since the last move): a publisher keeping a window unconfirmed stays in
// a queue of twice its window or less, within heldKeep for a window of up to about half that, which is
// kept when its acks catch up with it (a larger one was dropped and grown again from nothing).
func (cs *chanShared) moveHeldDownLocked() {
	n := copy(cs.held, cs.held[cs.heldHead:])
	clear(cs.held[max(n, cs.heldHead):]) // the front was cleared as it was settled
	cs.held, cs.heldHead = cs.held[:n], 0
}

// confirm takes in the broker's ack or nack of tag on channel ch (with multiple, tag 0 is every
// publish outstanding): its publishes leave the ring of their edges (settleLocked) and their held
// checkpoints are settled and counted (settleHeldLocked), under one lock. It returns
// settleLocked's counts.
func (s *session) confirm(ch uint16, tag uint64, multiple, nack bool) map[pathway.Edge]int {
	s.mu.Lock()
	cs := s.shared[ch]
	counts := settleLocked(cs, tag, multiple, nack)
	pts, n := s.settleHeldLocked(cs, heldTag(tag, multiple), multiple, nack)
	s.mu.Unlock()
	s.countSettled(pts, n)
	return counts
}

// heldTag is the last tag an ack or nack settles: with multiple, tag 0 is every one.
func heldTag(tag uint64, multiple bool) uint64 {
	if multiple && tag == 0 {
		return math.MaxUint64
	}
	return tag
}

// countSettled counts pts, the checkpoints of settled publishes, and gives back the room of the n
// settled.
func (s *session) countSettled(pts []pathway.Point, n int) {
	s.p.heldConfirms.Give(&s.heldConfirms, int64(n))
	for _, pt := range pts {
		s.p.addPoint(pt)
	}
	clear(pts) // the points' strings and tags are not kept past their use
	if cap(pts) > heldKeep {
		pts = nil // a burst's buffer is not kept for the connection's life
	}
	s.acked = pts[:0]
}

// settleHeldLocked settles the held checkpoints of cs (the channel's shared state, nil for none)
// that an ack or nack of tag names (with multiple, every one up to it): an ack counts those not
// returned, a nack none. It returns the points to count and how many publishes it settled; s.mu
// is held.
func (s *session) settleHeldLocked(cs *chanShared, tag uint64, multiple, nack bool) ([]pathway.Point, int) {
	pts, n := s.acked[:0], 0
	if cs == nil || cs.heldHead == len(cs.held) {
		return pts, 0
	}
	q := cs.held[cs.heldHead:]
	settle := func(h *heldPub) {
		if h.done {
			return
		}
		h.done = true
		n++
		if !nack && !h.returned {
			pts = append(pts, h.pt)
		}
	}
	if multiple {
		for i := 0; i < len(q) && q[i].tag <= tag; i++ {
			settle(&q[i])
		}
	} else if i, ok := heldIndex(q, tag); ok {
		settle(&q[i])
	}
	cs.heldLive -= n
	cs.trimHeldLocked()
	return pts, n
}

// heldIndex is the index of tag in q, held publishes in the order of their tags. Those are
// consecutive unless a publish went unheld (past a limit, or discarded), so tag's place is
// looked at first; a search finds it otherwise.
func heldIndex(q []heldPub, tag uint64) (int, bool) {
	if len(q) == 0 || tag < q[0].tag {
		return 0, false
	}
	if d := tag - q[0].tag; d < uint64(len(q)) && q[d].tag == tag {
		return int(d), true
	}
	return slices.BinarySearchFunc(q, tag, func(h heldPub, t uint64) int { return cmp.Compare(h.tag, t) })
}

// heldKeep is the capacity a settled channel's queue (and the ack buffer) keeps: past it, the
// memory a burst of unconfirmed publishes took is given back once they are settled, so that
// channels which each had a burst do not keep their peaks.
const heldKeep = 1024

// trimHeldLocked drops settled publishes from the front of cs.held, and moves the rest down once
// the dead front is the bigger part: into a smaller queue after a burst, to give its memory
// back, and in place while the queue is no more than twice what a steady publisher fills it to
// between two moves (heldKeep or as many settled ones as live ones, and the live ones), so that
// one keeping a large window unconfirmed allocates nothing either (a new queue of twice the live
// ones grew back by copies, a few times every heldKeep publishes).
func (cs *chanShared) trimHeldLocked() {
	for cs.heldHead < len(cs.held) && cs.held[cs.heldHead].done {
		cs.held[cs.heldHead] = heldPub{}
		cs.heldHead++
	}
	live := cs.held[cs.heldHead:]
	switch {
	case len(live) == 0 && cap(cs.held) > heldKeep:
		cs.held, cs.heldHead = nil, 0
	case len(live) == 0:
		cs.held, cs.heldHead = cs.held[:0], 0
	case cs.heldHead > heldKeep && 2*cs.heldHead > len(cs.held):
		if cap(cs.held) > max(4*len(live), 2*(heldKeep+len(live))) {
			cs.held = append(make([]heldPub, 0, 2*len(live)), live...)
			cs.heldHead = 0
		} else {
			cs.moveHeldDownLocked()
		}
	}
}

// returnHeld marks the held publish a Basic.Return brought back. The pathway context the proxy
// gave it names the checkpoint's hash and time (to the millisecond); of publishes alike in both,
// the one of the same size, as the broker returns the properties as published.
func (s *session) returnHeld(ch uint16, ctx pathway.Context, size int64) {
	if ctx.IsZero() {
		return
	}
	ms := ctx.EdgeStart.UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.shared[ch]
	if cs == nil {
		return
	}
	// In Tx mode RabbitMQ routes a transaction's publishes at its commit and returns the
	// unroutable mandatory ones before its CommitOk: they reached no queue, so they leave the
	// commit's checkpoints, as a returned publish is not counted in confirm mode either.
	if i := returnedPoint(cs.committing, ctx.Hash, ms, size); i >= 0 {
		cs.committing = slices.Delete(cs.committing, i, i+1)
		cs.committingMsgs-- // reported lost as returned, not again if the channel closes
		s.releaseTx(1)
		return
	}
	var alike *heldPub
	for i := cs.heldHead; i < len(cs.held); i++ {
		h := &cs.held[i]
		if h.done || h.returned || h.pt.Hash != ctx.Hash || h.pt.Time/1e6 != ms {
			continue
		}
		if h.pt.PayloadSize == size {
			h.returned = true
			return
		}
		if alike == nil {
			alike = h
		}
	}
	if alike != nil {
		alike.returned = true
	}
}

// endHeldLocked settles what cs still holds when its channel ends: counted when the client
// closed it, not counted when the broker did. It returns the points to count, how many were
// held and how many of those go uncounted for want of a confirm (returned ones are not).
func (cs *chanShared) endHeldLocked(count bool, pts []pathway.Point) ([]pathway.Point, int, int) {
	held, unconfirmed := 0, 0
	for i := cs.heldHead; i < len(cs.held); i++ {
		h := &cs.held[i]
		if h.done {
			continue
		}
		held++
		switch {
		case h.returned, h.refused:
		case count:
			pts = append(pts, h.pt)
		default:
			unconfirmed++
		}
	}
	cs.held, cs.heldHead, cs.heldLive = nil, 0, 0
	return pts, held, unconfirmed
}

// refuseLatestLocked marks the channel's latest publish, which a broker's close over
// Basic.Publish refused, when it is held: it is reported lost, so it is not also Unconfirmed.
// (One whose content header the proxy has not read yet is not held: it is never counted.)
func (cs *chanShared) refuseLatestLocked() {
	if n := len(cs.held); n > cs.heldHead && cs.held[n-1].tag == cs.seq {
		cs.held[n-1].refused = true
	}
}

// endConnHeld settles what the connection's channels hold when it ends: counted where the
// client closed it and the broker's CloseOk came, not counted otherwise.
func (s *session) endConnHeld() {
	count := s.closeOkSignaled.Load()
	var pts []pathway.Point
	held, unconfirmed := 0, 0
	s.mu.Lock()
	for _, cs := range s.shared {
		var h, u int
		pts, h, u = cs.endHeldLocked(count, pts)
		held, unconfirmed = held+h, unconfirmed+u
	}
	s.mu.Unlock()
	s.endHeld(pts, held, unconfirmed)
	s.p.heldConfirms.Release(&s.heldConfirms)
}

// returnedPoint is the index in pts of the checkpoint a returned message's context names (hash
// and time to the millisecond), preferring one of the returned size; -1 when none is.
func returnedPoint(pts []pathway.Point, hash uint64, ms, size int64) int {
	alike := -1
	for i, pt := range pts {
		if pt.Hash != hash || pt.Time/1e6 != ms {
			continue
		}
		if pt.PayloadSize == size {
			return i
		}
		if alike < 0 {
			alike = i
		}
	}
	return alike
}
