package errtrack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestStaleOneOffsMakeRoom: one-off fingerprints (a service per connection, generated queue
// names) fill the bound and then see no more events. A new error after them (a new topic's
// NOT_LEADER) must show in the next interval and in /errors, not wait up to Retain as overflow.
func TestStaleOneOffsMakeRoom(t *testing.T) {
	clk := &clock{now: t0}
	c := New(Config{Clock: clk.Now})
	for i := range DefaultMaxFingerprints {
		c.Report(ev(BrokerError, "Produce", 3, "UNKNOWN_TOPIC_OR_PARTITION", fmt.Sprint("conn-", i), ordersOut, 0, 1,
			time.Duration(i)*time.Millisecond))
	}
	c.Close(t0.Add(10 * time.Second))
	newTopic := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "invoices"}
	c.Report(ev(BrokerError, "Produce", 6, "NOT_LEADER_OR_FOLLOWER", "billing", newTopic, 2, 5, 12*time.Second))

	snap := c.Snapshot()
	if !slices.ContainsFunc(snap.Groups, func(g Group) bool { return g.Edge == newTopic }) {
		t.Errorf("the new error is not in the snapshot (%d groups, overflow %d)", len(snap.Groups), snap.Overflow)
	}
	if len(snap.Groups) != DefaultMaxFingerprints || snap.Evicted != 1 {
		t.Errorf("snapshot: %d groups, %d evicted; want %d and 1", len(snap.Groups), snap.Evicted, DefaultMaxFingerprints)
	}
	if slices.ContainsFunc(snap.Groups, func(g Group) bool { return g.Service == "conn-0" }) {
		t.Error("conn-0, the least recently seen group, is still kept")
	}
	iv := c.Close(t0.Add(20 * time.Second))
	if len(iv.Groups) != 1 || iv.Groups[0].Edge != newTopic || iv.Groups[0].Count != 1 || iv.Overflow != 0 || iv.Evicted != 1 {
		t.Errorf("next interval: groups %+v, overflow %d, evicted %d; want the new error alone, 0, 1", iv.Groups, iv.Overflow, iv.Evicted)
	}
}

// TestEviction: with the bound reached, a new fingerprint replaces the least recently seen group
// without an event in the open interval; only when every group has one is it overflow.
func TestEviction(t *testing.T) {
	at := func(svc string, s int) Event {
		return ev(BrokerError, "Produce", 6, "NOT_LEADER_OR_FOLLOWER", svc, ordersOut, 0, 1, time.Duration(s)*time.Second)
	}
	tests := []struct {
		name      string
		before    []Event // first interval, flushed at 10 s
		open      []Event // the interval after, flushed at 20 s
		flushed   []string
		kept      []string // services of the groups kept after it, sorted
		over, evi int64
	}{
		{
			name:    "idle groups make room, least recently seen first",
			before:  []Event{at("b", 2), at("a", 1), at("c", 3)},
			open:    []Event{at("d", 11), at("e", 12)},
			flushed: []string{"d", "e"}, kept: []string{"c", "d", "e"}, evi: 2,
		},
		{
			name:    "every group active: overflow",
			before:  []Event{at("a", 1), at("b", 2), at("c", 3)},
			open:    []Event{at("c", 11), at("b", 11), at("a", 11), at("d", 12), at("d", 13)},
			flushed: []string{"a", "b", "c"}, kept: []string{"a", "b", "c"}, over: 2,
		},
		{
			name:    "active groups are passed over, then overflow",
			before:  []Event{at("a", 1), at("b", 2), at("c", 3)},
			open:    []Event{at("a", 11), at("d", 12), at("e", 13), at("f", 14)},
			flushed: []string{"a", "d", "e"}, kept: []string{"a", "d", "e"}, over: 1, evi: 2,
		},
		{
			// c was in the group cache: its next event must not be counted in the group
			// that was dropped.
			name:    "an evicted fingerprint comes back as a new group",
			before:  []Event{at("a", 2), at("b", 3), at("c", 1)},
			open:    []Event{at("d", 11), at("c", 12), at("c", 13)},
			flushed: []string{"c", "d"}, kept: []string{"b", "c", "d"}, evi: 2,
		},
		{
			name:    "groups made in the open interval are active",
			before:  []Event{at("a", 1)},
			open:    []Event{at("b", 11), at("c", 12), at("d", 13), at("e", 14)},
			flushed: []string{"b", "c", "d"}, kept: []string{"b", "c", "d"}, over: 1, evi: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{MaxFingerprints: 3})
			for _, e := range tt.before {
				c.Report(e)
			}
			c.Close(t0.Add(10 * time.Second))
			for _, e := range tt.open {
				c.Report(e)
			}
			snap := c.Snapshot()
			iv := c.Close(t0.Add(20 * time.Second))
			var flushed, kept []string
			var total int64
			for _, g := range iv.Groups {
				flushed = append(flushed, g.Service)
				total += g.Count
			}
			for _, g := range snap.Groups {
				kept = append(kept, g.Service)
			}
			if !slices.Equal(flushed, tt.flushed) || !slices.Equal(kept, tt.kept) {
				t.Errorf("flushed %v kept %v, want %v and %v", flushed, kept, tt.flushed, tt.kept)
			}
			if iv.Overflow != tt.over || iv.Evicted != tt.evi || snap.Evicted != tt.evi {
				t.Errorf("overflow %d evicted %d (snapshot %d), want %d and %d", iv.Overflow, iv.Evicted, snap.Evicted, tt.over, tt.evi)
			}
			if total+iv.Overflow != int64(len(tt.open)) {
				t.Errorf("%d events flushed and %d overflow, want %d in all", total, iv.Overflow, len(tt.open))
			}
		})
	}
}

// TestEvictedLostStaysCounted: the lost messages of an evicted group stay in /errors' totals, in
// the open interval and after the flush, as those of a group dropped after Retain do.
func TestEvictedLostStaysCounted(t *testing.T) {
	c := New(Config{MaxFingerprints: 1})
	sqsEdge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: "refusing"}
	lost := Event{Time: t0, Category: LostMessage, Protocol: "sqs", Operation: "SendMessage", Code: 400,
		Name: "QueueDoesNotExist", Service: "billing", Edge: sqsEdge, Partition: -1, Messages: 7}
	c.Report(lost)
	c.Close(t0.Add(10 * time.Second))
	other := lost
	other.Time, other.Name, other.Messages = t0.Add(11*time.Second), "KmsAccessDenied", 2
	c.Report(other) // evicts the QueueDoesNotExist group
	for _, when := range []string{"open interval", "after flush"} {
		s := c.Snapshot()
		if l := s.Lost(); len(l) != 1 || l[0].Messages != 9 || s.Evicted != 1 {
			t.Errorf("%s: lost %+v, evicted %d; want 9 messages on one edge, 1", when, l, s.Evicted)
		}
		c.Close(t0.Add(20 * time.Second))
	}
	// KmsAccessDenied evicted too: the edge's lost messages are now both retired at the flush
	// and waiting for the next one, and must still read as one edge.
	elsewhere := lost
	elsewhere.Edge.Topic = "elsewhere"
	c.Report(elsewhere)
	l := c.Snapshot().Lost()
	if len(l) != 2 || l[0].Edge != elsewhere.Edge || l[0].Messages != 7 || l[1].Edge != sqsEdge || l[1].Messages != 9 {
		t.Errorf("lost %+v, want 7 messages on elsewhere and 9 on refusing", l)
	}
}

// TestEvictionLogged: evictions are one Warn line per interval naming the setting to raise.
func TestEvictionLogged(t *testing.T) {
	var buf bytes.Buffer
	c := New(Config{Log: zerolog.New(&buf), MaxFingerprints: 2})
	c.Report(ev(BrokerError, "Produce", 6, "E", "a", ordersOut, 0, 1, 0))
	c.Report(ev(BrokerError, "Produce", 6, "E", "b", ordersOut, 0, 1, 0))
	ctx := context.Background()
	if err := c.Flush(ctx, t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	for i := range 5 {
		c.Report(ev(BrokerError, "Produce", 6, "E", fmt.Sprint("new-", i), ordersOut, 0, 1, 11*time.Second))
	}
	if err := c.Flush(ctx, t0.Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	var evicted, overflow map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		switch {
		case m["groups"] != nil:
			evicted = m
		case m["events"] != nil:
			overflow = m
		}
	}
	if evicted == nil || evicted["groups"] != 2.0 || evicted["level"] != "warn" || evicted["max_fingerprints"] != 2.0 ||
		!strings.Contains(evicted["message"].(string), MaxFingerprintsKey) {
		t.Errorf("eviction line: %v\n%s", evicted, buf.String())
	}
	if overflow == nil || overflow["events"] != 3.0 || !strings.Contains(overflow["message"].(string), MaxFingerprintsKey) {
		t.Errorf("overflow line: %v\n%s", overflow, buf.String())
	}
}

// TestConcurrentEviction runs reporters of ever new fingerprints against flushes and snapshots:
// -race checks the locking, and every event is either in a flushed interval or overflow.
func TestConcurrentEviction(t *testing.T) {
	rec := &sinkRecorder{}
	c := New(Config{MaxFingerprints: 16, Sinks: []Sink{rec}})
	const workers, each = 4, 3000
	var wg sync.WaitGroup
	var fresh atomic.Int64
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				svc := fmt.Sprint("steady-", w)
				if i%2 == 1 {
					svc = fmt.Sprint("conn-", fresh.Add(1))
				}
				e := ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", svc, ordersOut, 0, 1, 0)
				e.Time = time.Time{} // the collector's clock, so recent groups stay recent
				c.Report(e)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		_ = c.FlushNow(context.Background())
		_ = c.Snapshot().Lost()
	}
	_ = c.FlushNow(context.Background())
	var counted, over, evicted int64
	for _, iv := range rec.ivs {
		for _, g := range iv.Groups {
			counted += g.Count
		}
		over += iv.Overflow
		evicted += iv.Evicted
	}
	if counted+over != workers*each {
		t.Errorf("%d events flushed and %d overflow, want %d in all", counted, over, workers*each)
	}
	s := c.Snapshot()
	var lost int64
	for _, l := range s.Lost() {
		lost += l.Messages
	}
	if lost+s.OverflowLost != workers*each || s.Evicted != evicted {
		t.Errorf("lost %d + overflow %d, want %d; evicted %d, intervals say %d", lost, s.OverflowLost, workers*each, s.Evicted, evicted)
	}
}
