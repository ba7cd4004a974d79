package kafka

import (
	"regexp"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestTracedConsumerNotCheckpointed: a consumer a services rule calls traced (its own tracer
// checkpoints what it consumes) gets no consume checkpoint from the proxy, while it still gets
// the records with their context and its fetches still give high watermarks; an untraced
// consumer of the same records is checkpointed as before.
func TestTracedConsumerNotCheckpointed(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, func(cfg *Config) {
		cfg.Services = &proxy.Services{Default: "default-svc", Rules: []proxy.ServiceRule{
			{Traced: true, ClientID: regexp.MustCompile(`^traced-reader$`)},
		}}
	})
	ctx := testCtx(t)
	topic := uniqueTopic(t, "traced")
	const n = 20

	prod, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.ClientID("writer"), kgo.DefaultProduceTopic(topic),
		kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for i := range n {
		if err := prod.ProduceSync(ctx, &kgo.Record{Value: []byte{byte(i)}}).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}

	consume := func(clientID string) {
		t.Helper()
		cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.ClientID(clientID), kgo.ConsumeTopics(topic),
			kgo.ConsumerGroup(clientID+"-group"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		got := 0
		for got < n {
			fs := cl.PollFetches(ctx)
			if err := fs.Err0(); err != nil {
				t.Fatalf("%s: poll: %v", clientID, err)
			}
			fs.EachRecord(func(r *kgo.Record) {
				got++
				if !hasPathwayHeader(r) {
					t.Errorf("%s: record %d came without %s", clientID, r.Offset, pathway.HeaderKey)
				}
			})
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			t.Fatalf("%s: commit: %v", clientID, err)
		}
	}
	consume("traced-reader")
	consume("plain-reader")

	count := func(service string) (consumes, watermarks int) {
		pts, offs := p.rec.snapshot()
		for _, pt := range pts {
			if pt.Service == service && slices.Contains(pt.EdgeTags, "direction:in") {
				consumes++
			}
		}
		for _, o := range offs {
			if o.Service == service && o.Kind == pathway.KafkaHighWatermark && o.Topic == topic {
				watermarks++
			}
		}
		return
	}
	waitFor(t, "the plain reader's consume checkpoints", func() bool { n2, _ := count("plain-reader"); return n2 >= n })
	if got, _ := count("plain-reader"); got != n {
		t.Errorf("plain reader: %d consume checkpoints, want %d", got, n)
	}
	got, wm := count("traced-reader")
	if got != 0 {
		t.Errorf("traced reader: %d consume checkpoints, want none (its tracer takes them)", got)
	}
	if wm == 0 {
		t.Error("traced reader: no high watermark recorded from its fetches")
	}
}

func hasPathwayHeader(r *kgo.Record) bool {
	for _, h := range r.Headers {
		if h.Key == pathway.HeaderKey {
			return true
		}
	}
	return false
}
