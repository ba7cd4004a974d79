package kafka

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// stalledObserver stands for an observation worker that has fallen behind: while stalled, Add
// does not return.
type stalledObserver struct {
	stalled atomic.Bool
	release chan struct{}
}

func (o *stalledObserver) Add(pathway.Point) bool {
	if o.stalled.Load() {
		<-o.release
	}
	return true
}

func (o *stalledObserver) Offset(pathway.Offset) bool { return true }

// TestObserveQueueBoundedInBytes: with the observer stalled, a consumer reading 24 MiB in
// fetches of up to 4 MiB through the proxy gets every record, while the responses waiting to be
// observed stay within the byte budget (8 MiB here); the rest are forwarded unobserved, counted
// and logged: a Warn line names the connection, or the drop showed only in /stats (a soak run's
// stalled consumers dropped 162 answers, thousands of consume checkpoints, without a line).
func TestObserveQueueBoundedInBytes(t *testing.T) {
	c, guard := startCluster(t)
	obs := &stalledObserver{release: make(chan struct{})}
	const budget = 8 << 20
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Observer, cfg.ObserveQueueBytes, cfg.Log = obs, budget, zerolog.New(&logs) })
	ctx := testCtx(t)
	topic := uniqueTopic(t, "observe-bytes")
	prod := kgoClient(t, p, kgo.DefaultProduceTopic(topic), kgo.ProducerBatchMaxBytes(2<<20), kgo.ProducerBatchCompression(kgo.NoCompression()))
	value := make([]byte, 256<<10)
	const records = 96 // 24 MiB
	for range records {
		if err := prod.ProduceSync(ctx, &kgo.Record{Value: value}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	obs.stalled.Store(true)
	defer close(obs.release)
	cons := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(4<<20), kgo.FetchMaxPartitionBytes(4<<20))
	most := int64(0)
	for got := 0; got < records; {
		fs := cons.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d records with the observer stalled", got, records)
		}
		got += fs.NumRecords()
		most = max(most, p.queued.Load())
	}
	most = max(most, p.queued.Load())
	if most > budget {
		t.Errorf("%d bytes waited for observation, budget %d", most, budget)
	}
	t.Logf("at most %d bytes queued; stats %+v", most, p.Stats())
	dropped := p.Stats().ObserveDropped
	if dropped == 0 {
		t.Error("no response was dropped from observation; the budget was never reached")
	}
	var warned uint64
	for _, l := range logLines(t, logs.String()) {
		if l["message"] == observeDroppedMessage {
			if l["level"] != "warn" || l["conn"] == nil || l["client"] == nil || l["observe_dropped_total"] == nil {
				t.Errorf("drop line without its level, connection or total: %v", l)
			}
			warned++
		}
	}
	if want := min(dropped, 10); warned < want {
		t.Errorf("%d Warn lines for %d answers dropped from observation, want %d", warned, dropped, want)
	}
	guard.check(t)
}

// TestShutdownDropsWhatItCannotObserve: when the drain's time is up while fetch answers still
// wait for observation, the rest is dropped and counted instead of holding the shutdown.
func TestShutdownDropsWhatItCannotObserve(t *testing.T) {
	c, _ := startCluster(t)
	obs := &stalledObserver{release: make(chan struct{})}
	p := startProxy(t, c, func(cfg *Config) { cfg.Observer = obs })
	ctx := testCtx(t)
	topic := uniqueTopic(t, "observe-late")
	prod := kgoClient(t, p, kgo.DefaultProduceTopic(topic), kgo.ProducerBatchCompression(kgo.NoCompression()))
	value := make([]byte, 256<<10)
	const records = 24
	for range records {
		if err := prod.ProduceSync(ctx, &kgo.Record{Value: value}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	obs.stalled.Store(true)
	cons := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(1<<20), kgo.FetchMaxPartitionBytes(1<<20))
	for got := 0; got < records; {
		fs := cons.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d", got, records)
		}
		got += fs.NumRecords()
	}
	cons.Close()
	prod.Close()
	waitFor(t, "answers waiting for observation", func() bool { return len(p.observeQ) > 0 })
	before := p.Stats().ObserveDropped
	sctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- p.Shutdown(sctx) }()
	waitFor(t, "the drain to run out of time", p.observeLate.Load)
	close(obs.release)
	<-shut
	if dropped := p.Stats().ObserveDropped - before; dropped == 0 {
		t.Error("the answers still waiting at the deadline were observed, holding the shutdown")
	}
}

// logLines decodes the JSON log lines in s.
func logLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var m map[string]any
		if line != "" && json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
