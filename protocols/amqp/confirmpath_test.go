package amqp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"testing"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// confirmWindow is how many publishes dsmbench's confirm-mode publishers keep unconfirmed.
const confirmWindow = 200

// selectConfirms puts channel 1 of s in confirm mode, as a client's Confirm.Select does.
func selectConfirms(t testing.TB, s *session) {
	t.Helper()
	sel := binary.BigEndian.AppendUint16(nil, classConfirm)
	sel = binary.BigEndian.AppendUint16(sel, 10)
	f, _, err := splitFrame(appendFrame(nil, frameMethod, 1, append(sel, 0)))
	if err != nil {
		t.Fatal(err)
	}
	s.clientMethod(f)
}

// ackFrames appends the broker's acks of tags from..to on channel 1: one each, or one with
// multiple every `every` tags (and one for the last).
func ackFrames(dst []byte, from, to uint64, every int) []byte {
	var p [13]byte
	binary.BigEndian.PutUint16(p[0:], classBasic)
	binary.BigEndian.PutUint16(p[2:], 80)
	for t := from; t <= to; t++ {
		if every > 1 && (t-from+1)%uint64(every) != 0 && t != to {
			continue
		}
		binary.BigEndian.PutUint64(p[4:], t)
		p[12] = 0
		if every > 1 {
			p[12] = 1
		}
		dst = appendFrame(dst, frameMethod, 1, p[:])
	}
	return dst
}

// publishStreamOf is n publishes of 1 KiB with content header payload hdr on channel 1.
func publishStreamOf(n int, hdr []byte) []byte {
	method := binary.BigEndian.AppendUint16(nil, classBasic)
	method = binary.BigEndian.AppendUint16(method, 40)
	method = append(append(append(method, 0, 0), sstr("")...), sstr("orders")...)
	method = append(method, 0)
	var s []byte
	for range n {
		s = appendFrame(s, frameMethod, 1, method)
		s = appendFrame(s, frameHeader, 1, hdr)
		s = appendFrame(s, frameBody, 1, make([]byte, 1024))
	}
	return s
}

// confirmRelay runs rounds of bare 1 KiB publishes on a confirm-mode channel through the client
// relay and the broker's acks through the broker relay, confirmWindow publishes behind.
type confirmRelay struct {
	s      *session
	stream []byte // one round of publishes
	round  uint64
	every  int // acks: one each (1), or one with multiple every so many
	cr, br *connReader
	rd, bd *bytes.Reader
	uw, cw *connWriter
	acks   []byte
	acked  uint64
}

func newConfirmRelay(t testing.TB, round, every int, confirms bool) *confirmRelay {
	r := &confirmRelay{s: offlineSession(t, nil), stream: publishStreamOf(round, contentPayload(1024, 0)),
		round: uint64(round), every: every, rd: bytes.NewReader(nil), bd: bytes.NewReader(nil),
		uw: newConnWriter(io.Discard), cw: newConnWriter(io.Discard)}
	r.cr, r.br = newConnReader(r.rd, nil), newConnReader(r.bd, nil)
	if confirms {
		selectConfirms(t, r.s)
	}
	for range confirmWindow / round {
		r.publish(t)
	}
	return r
}

func (r *confirmRelay) publish(t testing.TB) {
	r.rd.Reset(r.stream)
	r.cr.r, r.cr.w = 0, 0
	if err := r.s.fromClient(r.cr, r.uw); err != io.EOF {
		t.Fatal(err)
	}
}

// step publishes a round and acks as many, the oldest unconfirmed.
func (r *confirmRelay) step(t testing.TB) {
	r.publish(t)
	r.acks = ackFrames(r.acks[:0], r.acked+1, r.acked+r.round, r.every)
	r.acked += r.round
	r.bd.Reset(r.acks)
	r.br.r, r.br.w = 0, 0
	if err := r.s.fromBroker(r.br, r.cw); err != io.EOF {
		t.Fatal(err)
	}
}

// TestConfirmPathAllocations: a confirm-mode publisher that keeps a window of publishes
// unconfirmed, as pipelining ones do, costs the proxy no allocation per publish or ack once
// its queue of held checkpoints has grown: 1000 publishes and their acks allocate what the same
// frames cost on a channel without confirms (the relays' frame readers, per call).
func TestConfirmPathAllocations(t *testing.T) {
	thousand := func(confirms bool, every int) float64 {
		r := newConfirmRelay(t, 50, every, confirms)
		for range 100 { // the held queue reaches its size
			r.step(t)
		}
		allocs := testing.AllocsPerRun(20, func() {
			for range 20 {
				r.step(t)
			}
		})
		if cs := r.s.shared[1]; confirms && cs.heldLive != confirmWindow {
			t.Fatalf("%d publishes held, want %d", cs.heldLive, confirmWindow)
		}
		return allocs
	}
	base := thousand(false, 1)
	for _, every := range []int{1, 10} {
		if allocs := thousand(true, every); allocs > base {
			t.Errorf("acks every %d: 1000 confirmed publishes allocate %.0f times, %.0f without confirms", every, allocs, base)
		}
	}
}

// BenchmarkConfirmPath: bare 1 KiB publishes on a confirm-mode channel through the client relay
// and the broker's acks through the broker relay, with confirmWindow publishes unconfirmed, as
// dsmbench's "publish, confirms on" runs them. One op is a round of 50 publishes and their acks.
func BenchmarkConfirmPath(b *testing.B) {
	const round = 50
	for _, acks := range []struct {
		name  string
		every int
	}{{"ack-each", 1}, {"ack-multiple-10", 10}} {
		b.Run(acks.name, func(b *testing.B) {
			r := newConfirmRelay(b, round, acks.every, true)
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				r.step(b)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*round), "ns/msg")
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N*round), "cpu-ns/msg")
			if got := r.s.shared[1].heldLive; got != confirmWindow {
				b.Fatalf("%d publishes held, want %d", got, confirmWindow)
			}
		})
	}
}

// TestHeldIndex: a held publish is found by its tag whether the tags before it are consecutive
// or not (publishes that went unheld leave gaps), and a tag not held is not found.
func TestHeldIndex(t *testing.T) {
	var q []heldPub
	for tag := uint64(5); tag < 400; tag++ {
		if tag%7 != 0 && tag%50 != 3 { // gaps, and a run of consecutive tags between them
			q = append(q, heldPub{tag: tag})
		}
	}
	for _, from := range []int{0, 1, 100} { // the queue's live part starts anywhere
		live := q[from:]
		for tag := uint64(0); tag < 410; tag++ {
			want := -1
			for i, h := range live {
				if h.tag == tag {
					want = i
				}
			}
			if i, ok := heldIndex(live, tag); ok != (want >= 0) || ok && i != want {
				t.Fatalf("tag %d from %d: index %d %v, want %d", tag, from, i, ok, want)
			}
		}
	}
	if _, ok := heldIndex(nil, 1); ok {
		t.Fatal("found in an empty queue")
	}
}

// TestChannelsKeepTheirNodes: a channel publishing to one queue, or consuming one, does not
// look its checkpoint node up again for every message: with a node cache too small for the
// edges in use (other channels', other fronts' on the shared checkpointer), messages on a few
// channels in turn would each rebuild their node, tags and hash.
func TestChannelsKeepTheirNodes(t *testing.T) {
	s := offlineSession(t, nil)
	s.p.cp = pathway.NewCheckpointer("golden", 1)
	header, _, err := splitFrame(appendFrame(nil, frameHeader, 1, typicalHeader()))
	if err != nil {
		t.Fatal(err)
	}
	var pubs []frame
	var dels []*delState
	for ch := uint16(1); ch <= 3; ch++ {
		method := binary.BigEndian.AppendUint16(nil, classBasic)
		method = binary.BigEndian.AppendUint16(method, 40)
		method = append(append(append(method, 0, 0), sstr("")...), sstr(fmt.Sprintf("orders-%d", ch))...)
		f, _, err := splitFrame(appendFrame(nil, frameMethod, ch, append(method, 0)))
		if err != nil {
			t.Fatal(err)
		}
		pubs = append(pubs, f)
		ds := &delState{}
		ds.setQueue(fmt.Sprintf("orders-%d", ch))
		dels = append(dels, ds)
	}
	messages := func() {
		for i, f := range pubs {
			s.clientMethod(f)
			header.Channel = f.Channel
			s.publishHeader(s.pub[f.Channel], header)
			dels[i].awaiting = contentDeliver
			s.deliveredHeader(dels[i], header)
		}
	}
	messages()
	if allocs := testing.AllocsPerRun(100, messages); allocs != 0 {
		t.Errorf("a publish and a delivery on each of 3 channels allocate %.0f times", allocs)
	}
}

// TestReopenedChannelPublishesAnew: a channel closed and opened again has a new publish side,
// out of confirm mode, whichever channel's frames came last before.
func TestReopenedChannelPublishesAnew(t *testing.T) {
	s := offlineSession(t, nil)
	method := func(ch uint16, class, id uint16, args ...byte) frame {
		t.Helper()
		p := binary.BigEndian.AppendUint16(nil, class)
		p = binary.BigEndian.AppendUint16(p, id)
		f, _, err := splitFrame(appendFrame(nil, frameMethod, ch, append(p, args...)))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	sel := method(1, classConfirm, 10, 0)
	for _, closing := range []frame{method(1, classChannel, 41), method(1, classChannel, 10, 0)} { // CloseOk, Open
		s.clientMethod(sel)
		s.clientMethod(method(2, classConfirm, 10, 0))
		s.pubOf(1) // channel 1's side is the one found last
		s.clientMethod(closing)
		if ps := s.pubOf(1); ps.confirm {
			t.Fatalf("after %s, channel 1 publishes in confirm mode", methodName(methodOf(closing.Payload)))
		}
		if ps := s.pubOf(2); !ps.confirm {
			t.Fatal("channel 2 left confirm mode")
		}
	}
}

// TestHeldQueueKeptBetweenQuietMoments: a publisher keeping a window unconfirmed whose
// publishes are all confirmed now and then (the broker caught up while it waited), more than
// heldKeep publishes apart, has its held queue reused, not built again from nothing each time.
func TestHeldQueueKeptBetweenQuietMoments(t *testing.T) {
	cycles := func(confirms bool) float64 {
		r := newConfirmRelay(t, 50, 1, confirms)
		cycle := func() {
			for range 25 { // 1250 publishes, 200 unconfirmed
				r.step(t)
			}
			seq := r.acked + confirmWindow
			r.acks = ackFrames(r.acks[:0], seq, seq, 10) // all, with multiple
			r.acked = seq
			r.bd.Reset(r.acks)
			r.br.r, r.br.w = 0, 0
			if err := r.s.fromBroker(r.br, r.cw); err != io.EOF {
				t.Fatal(err)
			}
			if cs := r.s.shared[1]; confirms && cs.heldLive != 0 {
				t.Fatalf("%d publishes held after all were acked", cs.heldLive)
			}
			for range confirmWindow / 50 {
				r.publish(t)
			}
		}
		cycle()
		return testing.AllocsPerRun(20, cycle)
	}
	base := cycles(false)
	if allocs := cycles(true); allocs > base {
		t.Errorf("1450 publishes confirmed, all at once at the end, allocate %.0f times, %.0f without confirms", allocs, base)
	}
}
