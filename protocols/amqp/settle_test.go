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
						for e, n := range s.settle(1, c.tag, c.multiple, c.nack) {
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
// pubRingMin give the same nacked counts per edge, the same evictions and the same
// unconfirmed() as on a ring of pubRingSize from the start; the small one grows only as far as
// the publishes left unconfirmed need.
func TestRingGrowth(t *testing.T) {
	edges := []pathway.Edge{{Type: pathway.TypeRabbitMQ, Topic: "a"}, {Type: pathway.TypeRabbitMQ, Topic: "b"}, {Type: pathway.TypeRabbitMQ, Topic: "c"}}
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		window := 1 + rng.IntN(1500) // how far behind the broker's confirms run
		grown := &session{shared: map[uint16]*chanShared{1: {pubRing: make([]*pathway.Edge, pubRingMin)}}}
		full := &session{shared: map[uint16]*chanShared{1: {pubRing: make([]*pathway.Edge, pubRingSize)}}}
		gotG, gotF := map[pathway.Edge]int{}, map[pathway.Edge]int{}
		var open []uint64 // unconfirmed tags
		seq := uint64(0)
		for range 3000 {
			if len(open) < window && rng.IntN(3) > 0 {
				seq++
				e := edges[rng.IntN(len(edges))]
				grown.shared[1].trackPublishLocked(&e)
				full.shared[1].trackPublishLocked(&e)
				open = append(open, seq)
				continue
			}
			if len(open) == 0 {
				continue
			}
			i := rng.IntN(len(open))
			if rng.IntN(4) == 0 {
				i = 0 // the oldest, as a slow queue confirms it at last
			}
			tag, multiple, nack := open[i], rng.IntN(5) == 0, rng.IntN(6) == 0
			if multiple {
				open = slices.DeleteFunc(open, func(k uint64) bool { return k <= tag })
			} else {
				open = slices.Delete(open, i, i+1)
			}
			for e, n := range grown.settle(1, tag, multiple, nack) {
				gotG[e] += n
			}
			for e, n := range full.settle(1, tag, multiple, nack) {
				gotF[e] += n
			}
		}
		g, f := grown.shared[1], full.shared[1]
		if !maps.Equal(gotG, gotF) || len(g.evicted) != len(f.evicted) || g.untracked != f.untracked || grown.unconfirmed() != full.unconfirmed() {
			t.Fatalf("seed %d (window %d): grown ring nacked %v, evicted %d, untracked %d, unconfirmed %v; full ring %v, %d, %d, %v",
				seed, window, gotG, len(g.evicted), g.untracked, grown.unconfirmed(), gotF, len(f.evicted), f.untracked, full.unconfirmed())
		}
		if window < pubRingMin/2 && len(g.pubRing) > pubRingMin {
			t.Errorf("seed %d: the ring grew to %d with at most %d publishes unconfirmed", seed, len(g.pubRing), window)
		}
	}
}
