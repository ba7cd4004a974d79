package amqp

import (
	"fmt"
	"math"
	"sync/atomic"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// A channel the broker closes discards what the client sends on it until the client's
// Channel.CloseOk (AMQP 0-9-1 channel.close), and with it the publishes of a transaction not
// committed yet; a connection the broker closes, on all its channels until Connection.CloseOk.
// The broker relay reads the close; the client relay, which owns the publish side, learns of it
// from one shared word, without waiting for anything.

// tallyClosed is the bit of a pubTally set once the broker closed its channel.
const tallyClosed = math.MinInt64

// pubTally is shared by a channel's publish side (client goroutine) and its chanShared (broker
// goroutine): in Tx mode the publishes sent since the last Tx.Commit or Rollback, and
// tallyClosed once the broker closed the channel. One word, so that each publish is in exactly
// one of the broker's count at its close and the client relay's discarded publishes, however
// the two goroutines interleave.
type pubTally struct {
	v    atomic.Int64
	code atomic.Uint32 // the broker's reply code, stored before tallyClosed is set
}

// publish counts a publish (in the uncommitted ones when inTx); it reports whether the broker
// closed the channel before it, which then discards it.
func (t *pubTally) publish(inTx bool) bool {
	if inTx {
		return t.v.Add(1) < 0
	}
	return t.v.Load() < 0
}

func (t *pubTally) closed() bool { return t.v.Load() < 0 }

// uncount takes n publishes out of the uncommitted ones (committed or rolled back).
func (t *pubTally) uncount(n int) { t.v.Add(-int64(n)) }

// close marks the channel closed by the broker with code; it returns the uncommitted
// publishes the close discards.
func (t *pubTally) close(code uint16) int {
	t.code.Store(uint32(code))
	if old := t.v.Or(tallyClosed); old > 0 {
		return int(old)
	}
	return 0
}

// pubOf is channel ch's publish side, created with its tally linked to the channel's shared
// state; closed at once if the broker closed the channel before the client's first publish
// method on it.
func (s *session) pubOf(ch uint16) *pubState {
	if ps := s.pubFor(ch); ps != nil {
		return ps
	}
	ps := &pubState{}
	s.pub[ch] = ps
	s.mu.Lock()
	cs := s.sharedLocked(ch)
	cs.tally = &ps.tally
	if cs.brokerClosed {
		ps.tally.close(cs.closeCode)
	} else if s.connClosed {
		ps.tally.close(s.connCloseCode)
	}
	s.mu.Unlock()
	return ps
}

// closedByBroker forgets channel ch at the broker's Channel.Close, as resetShared does, and keeps
// that the broker closed it until the client's CloseOk. It returns the edge of the method the
// broker refused, the edge of the channel's latest publish, the publishes of its transactions
// the close discards, and whether the latest publish is among them (discardLocked).
func (s *session) closedByBroker(ch uint16, c closeArgs) (refused, pub *pathway.Edge, discarded int, lastIn bool) {
	s.mu.Lock()
	var tally *pubTally
	if cs := s.shared[ch]; cs != nil {
		refused, pub, tally = cs.refusedLocked(c), cs.lastPub, cs.tally
		discarded, lastIn = cs.discardLocked(c.Code)
		if c.Method == basicPublish && c.Code != replySuccess {
			cs.refuseLatestLocked()
		}
	}
	r := s.forgetLocked(ch, false)
	cs := s.sharedLocked(ch)
	cs.brokerClosed, cs.closeCode, cs.tally = true, c.Code, tally
	s.mu.Unlock()
	s.release(r)
	return refused, pub, discarded, lastIn
}

// discardLocked marks the channel's publish side closed by the broker with code, and returns
// the publishes the close discards: a transaction's uncommitted ones and those of commits whose
// CommitOk has not come. Not the uncommitted ones of a channel the client was closing when the
// broker's close crossed its own: the client abandoned them, as with Tx.Rollback, while it had
// sent its commits to be stored. lastIn reports whether the channel's latest publish, the one a
// close over Basic.Publish refused, is among them: it is the last uncommitted one, or, with none
// since, the last of a commit. s.mu is held.
func (cs *chanShared) discardLocked(code uint16) (n int, lastIn bool) {
	n, cs.committingMsgs = cs.committingMsgs, 0
	u := 0
	if cs.tally != nil {
		u = cs.tally.close(code)
	}
	switch {
	case u > 0 && cs.closing:
		return n, false // the latest is among those the client abandoned
	case u > 0:
		return n + u, true
	}
	return n, n > 0 // none since the last commit: the latest is that commit's last
}

// connClosedByBroker marks every channel closed at the broker's Connection.Close, which discards
// what the client sends on any of them until its CloseOk, and reports lost the publishes of the
// transactions it ends: those not committed and those of commits whose CommitOk had not come
// (but not those a client closing the channel abandoned: discardLocked).
// refusedPublish: the broker closed the connection over a Basic.Publish, which is lost too, as a
// return or a nack is (a channel's: closeLost). The close names no channel: the refused publish
// is taken to be the client's latest, counted with its channel's transaction when it has one.
// It returns that publish's edge (nil when the close was over no publish, or none is known), where
// the close itself is tracked too.
func (s *session) connClosedByBroker(c closeArgs, refusedPublish bool) *pathway.Edge {
	type chanLost struct {
		ch  uint16
		pub *pathway.Edge
		n   int
	}
	var lost []chanLost
	var refusedEdge *pathway.Edge
	refusedCh, refusedCounted := uint16(s.lastPubCh.Load()), false
	s.mu.Lock()
	s.connClosed, s.connCloseCode = true, c.Code
	if cs := s.shared[refusedCh]; cs != nil {
		refusedEdge = cs.lastPub
		if refusedPublish {
			cs.refuseLatestLocked()
		}
	}
	for ch, cs := range s.shared {
		if n, lastIn := cs.discardLocked(c.Code); n > 0 {
			lost = append(lost, chanLost{ch, cs.lastPub, n})
			refusedCounted = refusedCounted || refusedPublish && ch == refusedCh && lastIn
		}
	}
	s.mu.Unlock()
	for _, l := range lost {
		msg := fmt.Sprintf("broker sent Connection.Close: %s; %d publishes of the transaction on channel %d discarded", c.Text, l.n, l.ch)
		if refusedCounted && l.ch == refusedCh {
			msg += ", the refused one included"
		}
		s.reportLost(c.Code, l.pub, l.n, msg)
	}
	if !refusedPublish {
		return nil
	}
	if !refusedCounted {
		s.reportLost(c.Code, refusedEdge, 1, fmt.Sprintf("broker sent Connection.Close over a publish: %s", c.Text))
	}
	return refusedEdge
}

// refusedLocked is the edge the method a broker's Channel.Close refused concerned: the
// channel's latest publish, or the queue or exchange the latest method naming one named.
func (cs *chanShared) refusedLocked(c closeArgs) *pathway.Edge {
	switch {
	case c.Method == basicPublish:
		return cs.lastPub
	case cs.lastTarget.method == c.Method && c.Method != 0:
		e := cs.lastTarget.refused(c.Text)
		return &e
	case c.Method == basicAck || c.Method == basicNack || c.Method == basicReject:
		return cs.consumedQueueLocked()
	}
	return nil
}

// closeLost reports the publishes a broker's Channel.Close on ch discarded: the one it refused,
// on its edge, and a transaction's publishes not committed, on the edge of the latest publish.
// lastIn: the refused publish is among the discarded ones (closedByBroker).
func (s *session) closeLost(ch uint16, c closeArgs, refused, pub *pathway.Edge, discarded int, lastIn bool) {
	edge, n := pub, discarded
	if c.Method == basicPublish {
		edge = refused
		if !lastIn {
			n++
		}
	}
	if n == 0 {
		return
	}
	msg := fmt.Sprintf("broker sent Channel.Close on channel %d: %s", ch, c.Text)
	if discarded > 0 {
		msg += fmt.Sprintf("; %d publishes of its transaction discarded", discarded)
	}
	s.reportLost(c.Code, edge, n, msg)
}

// reportLost reports n publishes a broker's close with code discarded, on edge (nil: the bare
// rabbitmq edge).
func (s *session) reportLost(code uint16, edge *pathway.Edge, n int, msg string) {
	ev := errtrack.Event{
		Time: s.p.now(), Category: errtrack.LostMessage, Protocol: "amqp", Operation: "Basic.Publish",
		Code: int32(code), Name: replyName(code), Message: msg, Service: *s.service.Load(),
		Edge: pathway.Edge{Type: pathway.TypeRabbitMQ}, Partition: -1, Messages: n,
	}
	if edge != nil {
		ev.Edge = *edge
	}
	s.p.errs.Report(ev)
}

// discardedPublish reports the current publish on ch, sent after the broker closed the channel
// or the connection and before the client read the close: the broker discards it.
func (s *session) discardedPublish(ch uint16, ps *pubState) {
	s.reportLost(uint16(ps.tally.code.Load()), ps.edge, 1,
		fmt.Sprintf("published on channel %d after the broker closed it or its connection, before the client read the close: discarded", ch))
}
