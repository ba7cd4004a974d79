package amqp

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// confirm is one broker ack or nack in TestSettle.
type confirm struct {
	tag            uint64
	multiple, nack bool
}

// TestSettle checks which publishes a confirm settles and where a nack counts them, when
// RabbitMQ confirms out of order for longer than the ring of publishes remembers.
func TestSettle(t *testing.T) {
	a := pathway.Edge{Type: pathway.TypeRabbitMQ, Topic: "slow"}
	b := pathway.Edge{Type: pathway.TypeRabbitMQ, Topic: "fast"}
	c := pathway.Edge{Type: pathway.TypeRabbitMQ, Topic: "rejecting"}
	bare := pathway.Edge{Type: pathway.TypeRabbitMQ}
	// publish n publishes to e; ackEach acks tags from..to one by one.
	type step struct {
		publish  int
		edge     pathway.Edge
		ackEach  [2]uint64
		confirms []confirm
	}
	tests := []struct {
		name          string
		steps         []step
		want          map[pathway.Edge]int // nacked, per edge, over every step
		unconfirmed   bool                 // unconfirmed() after the last step
		wantEvicted   int
		wantUntracked int
	}{
		{
			name: "multiple nack after single acks counts only the nacked",
			steps: []step{
				{publish: 1, edge: a}, {publish: 1500, edge: b, ackEach: [2]uint64{2, 1501}},
				{confirms: []confirm{{tag: 1}}}, // the slow one, long evicted
				{publish: 1, edge: c, confirms: []confirm{{tag: 1502, multiple: true, nack: true}}},
			},
			want: map[pathway.Edge]int{c: 1},
		},
		{
			name: "multiple nack reaches an evicted publish",
			steps: []step{
				{publish: 1, edge: a}, {publish: 1100, edge: b, ackEach: [2]uint64{2, 1101}},
				{confirms: []confirm{{tag: 1101, multiple: true, nack: true}}},
			},
			want: map[pathway.Edge]int{a: 1},
		},
		{
			name: "single nack of an evicted publish names its edge",
			steps: []step{
				{publish: 1, edge: a}, {publish: 1100, edge: b, ackEach: [2]uint64{2, 1101}},
				{confirms: []confirm{{tag: 1, nack: true}}},
			},
			want: map[pathway.Edge]int{a: 1},
		},
		{
			name: "an evicted publish keeps the drain waiting",
			steps: []step{
				{publish: 1, edge: a}, {publish: 1100, edge: b, ackEach: [2]uint64{2, 1101}},
			},
			want:        map[pathway.Edge]int{},
			unconfirmed: true,
			wantEvicted: 1,
		},
		{
			name: "beyond maxEvicted only the number is kept",
			steps: []step{
				{publish: maxEvicted + 5, edge: a},
				{publish: pubRingSize, edge: b, ackEach: [2]uint64{maxEvicted + 6, maxEvicted + 5 + pubRingSize}},
			},
			want:          map[pathway.Edge]int{},
			unconfirmed:   true,
			wantEvicted:   maxEvicted,
			wantUntracked: 5,
		},
		{
			name: "a multiple nack counts tracked and untracked evicted publishes",
			steps: []step{
				{publish: maxEvicted + 5, edge: a},
				{publish: pubRingSize, edge: b, ackEach: [2]uint64{maxEvicted + 6, maxEvicted + 5 + pubRingSize}},
				{confirms: []confirm{{tag: maxEvicted + 5 + pubRingSize, multiple: true, nack: true}}},
			},
			want: map[pathway.Edge]int{a: maxEvicted, bare: 5},
		},
		{
			name: "in order, nothing is left",
			steps: []step{
				{publish: 3000, edge: b, ackEach: [2]uint64{1, 2999}},
				{confirms: []confirm{{tag: 3000, nack: true}}},
			},
			want: map[pathway.Edge]int{b: 1},
		},
	}
	// A ring that starts small (as Confirm.Select makes it) and grows must settle as one made
	// full size at once.
	for _, tt := range tests {
		for _, start := range []int{pubRingMin, pubRingSize} {
			t.Run(fmt.Sprintf("%s/ring %d", tt.name, start), func(t *testing.T) {
				s := &session{shared: map[uint16]*chanShared{1: {pubRing: make([]*pathway.Edge, start)}}}
				cs := s.shared[1]
				got := map[pathway.Edge]int{}
				for _, st := range tt.steps {
					for range st.publish {
						e := st.edge
						cs.trackPublishLocked(&e)
					}
					var cf []confirm
					if st.ackEach[0] != 0 {
						for k := st.ackEach[0]; k <= st.ackEach[1]; k++ {
							cf = append(cf, confirm{tag: k})
						}
					}
					for _, c := range append(cf, st.confirms...) {
						for e, n := range settleOn(s, c.tag, c.multiple, c.nack) {
							got[e] += n
						}
					}
				}
				if !maps.Equal(got, tt.want) {
					t.Errorf("nacked %v, want %v", got, tt.want)
				}
				if u := s.unconfirmed(); u != tt.unconfirmed {
					t.Errorf("unconfirmed() = %v, want %v", u, tt.unconfirmed)
				}
				if len(cs.evicted) != tt.wantEvicted || cs.untracked != tt.wantUntracked {
					t.Errorf("evicted %d, untracked %d; want %d, %d", len(cs.evicted), cs.untracked, tt.wantEvicted, tt.wantUntracked)
				}
			})
		}
	}
}

// TestRingGrowth: random publishes and out-of-order acks and nacks on a ring that starts at
// pubRingMin leave the same state after every step (nacked counts per edge, evictions,
// untracked, settled, unconfirmed()) as on a ring of pubRingSize from the start. Some runs keep a
// publish unconfirmed past the full ring, so both evict; confirms of tag 0, of tags never
// published and of tags already confirmed come in too. The small ring grows only as far as the
// publishes left unconfirmed need.
func TestRingGrowth(t *testing.T) {
	edges := []pathway.Edge{{Type: pathway.TypeRabbitMQ, Topic: "a"}, {Type: pathway.TypeRabbitMQ, Topic: "b"}, {Type: pathway.TypeRabbitMQ, Topic: "c"}}
	evicting := 0
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		window := 1 + rng.IntN(1500) // how far behind the broker's confirms run
		stuck := seed%4 == 0         // the first publish stays unconfirmed until late
		grown := &session{shared: map[uint16]*chanShared{1: {pubRing: make([]*pathway.Edge, pubRingMin)}}}
		full := &session{shared: map[uint16]*chanShared{1: {pubRing: make([]*pathway.Edge, pubRingSize)}}}
		g, f := grown.shared[1], full.shared[1]
		gotG, gotF := map[pathway.Edge]int{}, map[pathway.Edge]int{}
		var open []uint64 // unconfirmed tags
		seq := uint64(0)
		confirm := func(tag uint64, multiple, nack bool) {
			for e, n := range settleOn(grown, tag, multiple, nack) {
				gotG[e] += n
			}
			for e, n := range settleOn(full, tag, multiple, nack) {
				gotF[e] += n
			}
		}
		for step := range 4000 {
			switch {
			case stuck && step == 3500 && len(open) > 0:
				confirm(open[0], false, true) // the stuck one, nacked at last
				open = open[1:]
			case rng.IntN(50) == 0:
				// Confirms naming nothing unconfirmed: tag 0, a tag not published yet, or (single) one
				// already confirmed.
				tag := []uint64{0, seq + 1 + uint64(rng.IntN(3))}[rng.IntN(2)]
				if k := 1 + uint64(rng.IntN(int(seq)+1)); k <= seq && !slices.Contains(open, k) && rng.IntN(2) == 0 {
					confirm(k, false, rng.IntN(2) == 0)
					break
				}
				confirm(tag, rng.IntN(2) == 0, rng.IntN(2) == 0)
			case len(open) < window+map[bool]int{true: 1}[stuck] && rng.IntN(3) > 0:
				seq++
				e := edges[rng.IntN(len(edges))]
				g.trackPublishLocked(&e)
				f.trackPublishLocked(&e)
				open = append(open, seq)
			case len(open) > 0:
				lo := 0
				if stuck && open[0] == 1 {
					lo = 1 // leave the stuck one
				}
				if lo >= len(open) {
					continue
				}
				i := lo + rng.IntN(len(open)-lo)
				if rng.IntN(4) == 0 {
					i = lo // the oldest, as a slow queue confirms it at last
				}
				tag, multiple, nack := open[i], rng.IntN(5) == 0 && lo == 0, rng.IntN(6) == 0
				if multiple {
					open = slices.DeleteFunc(open, func(k uint64) bool { return k <= tag })
				} else {
					open = slices.Delete(open, i, i+1)
				}
				confirm(tag, multiple, nack)
			}
			if step == 3499 && (len(f.evicted) > 0 || f.untracked > 0) {
				evicting++
			}
			if !maps.Equal(gotG, gotF) || !maps.Equal(g.evicted, f.evicted) || g.untracked != f.untracked || g.settled != f.settled ||
				grown.unconfirmed() != full.unconfirmed() {
				t.Fatalf("seed %d (window %d) step %d: grown ring nacked %v, evicted %d, untracked %d, settled %d, unconfirmed %v; full ring %v, %d, %d, %d, %v",
					seed, window, step, gotG, len(g.evicted), g.untracked, g.settled, grown.unconfirmed(), gotF, len(f.evicted), f.untracked, f.settled, full.unconfirmed())
			}
		}
		if window < pubRingMin/2 && !stuck && len(g.pubRing) > pubRingMin {
			t.Errorf("seed %d: the ring grew to %d with at most %d publishes unconfirmed", seed, len(g.pubRing), window)
		}
	}
	if evicting < 10 {
		t.Errorf("%d runs evicted a publish: the full ring's paths went almost untested", evicting)
	}
}

// settleOn is the ring's part of confirm on channel 1 of s, a session without a proxy.
func settleOn(s *session, tag uint64, multiple, nack bool) map[pathway.Edge]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return settleLocked(s.shared[1], tag, multiple, nack)
}
