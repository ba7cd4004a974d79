package amqp

import (
	"maps"
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
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &session{shared: map[uint16]*chanShared{1: {pubRing: make([]*pathway.Edge, pubRingSize)}}}
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
