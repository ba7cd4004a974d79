package kafka

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestRelayCopyingHeadersCheckpointed: a client without a tracer that consumes records and
// produces them on with the headers it was handed (a relay, MirrorMaker's header copy, a retry
// topic) sends a context the proxy handed it, no tracer's: its produce is checkpointed with its
// consume as the parent and a new context, so the next consumer follows the relay, not the
// first producer.
func TestRelayCopyingHeadersCheckpointed(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	in, out := uniqueTopic(t, "relay-in"), uniqueTopic(t, "relay-out")
	produceKgo(t, ctx, kgoClient(t, p, kgo.ClientID("source-app")), in, testRecords(4, time.UnixMilli(1700002000000)))

	relay := kgoClient(t, p, kgo.ClientID("relay"), kgo.ConsumeTopics(in), kgo.ConsumerGroup("g-relay"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	var handed []*kgo.Record
	for len(handed) < 4 {
		fs := relay.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("relay consumed %d of 4: %v", len(handed), err)
		}
		handed = append(handed, fs.Records()...)
	}
	var cons []pathway.Point
	waitFor(t, "the relay's consume points", func() bool {
		cons = pointsOn(p, "direction:in", "group:g-relay", "topic:"+in, "type:kafka")
		return len(cons) == 4
	})
	sent := make([]*kgo.Record, len(handed))
	for i, r := range handed {
		sent[i] = &kgo.Record{Topic: out, Key: r.Key, Value: r.Value, Headers: r.Headers}
	}
	if err := relay.ProduceSync(ctx, sent...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	prod := pointsOn(p, "direction:out", "topic:"+out, "type:kafka")
	if len(prod) != 4 {
		t.Fatalf("%d produce points of the relay on %s, want 4 (stats %+v)", len(prod), out, p.Stats())
	}
	for _, pt := range prod {
		if pt.Service != "relay" || pt.ParentHash != cons[0].Hash {
			t.Errorf("relay produce point: service %q parent %x, want relay and its consume %x", pt.Service, pt.ParentHash, cons[0].Hash)
		}
	}
	got := consumeKgo(t, ctx, p, out, "g-sink", 4)
	for _, r := range got {
		n, old := 0, false
		for _, h := range r.Headers {
			if h.Key == pathway.HeaderKey {
				n++
				for _, hr := range handed[0].Headers {
					old = old || hr.Key == pathway.HeaderKey && string(hr.Value) == string(h.Value)
				}
			}
		}
		if n != 1 || old {
			t.Errorf("sink record %q: %d pathway headers, the relay's handed one kept: %v; want one new", r.Value, n, old)
		}
	}
	waitFor(t, "the sink's consume points", func() bool {
		return len(pointsOn(p, "direction:in", "group:g-sink", "topic:"+out, "type:kafka")) == 4
	})
	for _, pt := range pointsOn(p, "direction:in", "group:g-sink", "topic:"+out, "type:kafka") {
		if pt.ParentHash != prod[0].Hash {
			t.Errorf("sink consume parent %x, want the relay's produce %x", pt.ParentHash, prod[0].Hash)
		}
	}
	guard.check(t)
}
