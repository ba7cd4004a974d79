package amqp

import (
	"cmp"
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
	s.mu.Lock()
	cs := s.shared[ch]
	if cs == nil || cs.pubRing == nil {
		s.mu.Unlock()
		return
	}
	if len(cs.held)-cs.heldHead < maxHeldPerChannel && s.p.heldConfirms.Take(&s.heldConfirms, 1) {
		cs.held = append(cs.held, heldPub{tag: cs.seq, pt: pt})
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.p.stats.confirmUnheld.Add(1)
	s.p.addPoint(pt)
}

// confirmHeld settles the held checkpoints an ack or nack of tag names (with multiple, every
// one up to it): an ack counts those not returned, a nack none.
func (s *session) confirmHeld(ch uint16, tag uint64, multiple, nack bool) {
	s.mu.Lock()
	cs := s.shared[ch]
	if cs == nil || cs.heldHead == len(cs.held) {
		s.mu.Unlock()
		return
	}
	q := cs.held[cs.heldHead:]
	pts, n := s.acked[:0], 0
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
	} else if i, ok := slices.BinarySearchFunc(q, tag, func(h heldPub, t uint64) int { return cmp.Compare(h.tag, t) }); ok {
		settle(&q[i])
	}
	cs.trimHeldLocked()
	s.mu.Unlock()
	s.p.heldConfirms.Give(&s.heldConfirms, int64(n))
	for _, pt := range pts {
		s.p.addPoint(pt)
	}
	clear(pts) // the points' strings and tags are not kept past their use
	s.acked = pts[:0]
}

// trimHeldLocked drops settled publishes from the front of cs.held, and moves the rest down once
// the dead front is the bigger part.
func (cs *chanShared) trimHeldLocked() {
	for cs.heldHead < len(cs.held) && cs.held[cs.heldHead].done {
		cs.held[cs.heldHead] = heldPub{}
		cs.heldHead++
	}
	switch {
	case cs.heldHead == len(cs.held):
		cs.held, cs.heldHead = cs.held[:0], 0
	case cs.heldHead > 1024 && 2*cs.heldHead > len(cs.held):
		n := copy(cs.held, cs.held[cs.heldHead:])
		clear(cs.held[n:])
		cs.held, cs.heldHead = cs.held[:n], 0
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
// closed it, not counted when the broker did. It returns the points to count and how many
// were held.
func (cs *chanShared) endHeldLocked(count bool, pts []pathway.Point) ([]pathway.Point, int) {
	n := 0
	for i := cs.heldHead; i < len(cs.held); i++ {
		if h := &cs.held[i]; !h.done {
			n++
			if count && !h.returned {
				pts = append(pts, h.pt)
			}
		}
	}
	cs.held, cs.heldHead = nil, 0
	return pts, n
}

// endConnHeld settles what the connection's channels hold when it ends: counted where the
// client closed it and the broker's CloseOk came, not counted otherwise.
func (s *session) endConnHeld() {
	count := s.closeOkSignaled.Load()
	var pts []pathway.Point
	held := 0
	s.mu.Lock()
	for _, cs := range s.shared {
		var n int
		pts, n = cs.endHeldLocked(count, pts)
		held += n
	}
	s.mu.Unlock()
	s.endHeld(pts, held)
	s.p.heldConfirms.Release(&s.heldConfirms)
}
