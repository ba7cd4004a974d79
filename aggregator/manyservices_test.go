package aggregator_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestManyServicesFlushCostsLittle: a flush sends one payload per service, so a proxy in front of
// thousands of clients that each name their own service encodes thousands of payloads every
// interval. Each one's gzip stream must not cost a compressor of its own (about 1.1 MB of
// allocations at BestSpeed: 5,000 services cost 5.7 GB and 1.8 s of CPU per flush, found in a soak
// run), and every payload still decodes.
func TestManyServicesFlushCostsLittle(t *testing.T) {
	const services = 300
	agent, f, sink := pipelineOfServices(t, services)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f.FlushNow(context.Background(), false)
	runtime.ReadMemStats(&after)
	agent.WaitFor(t, 10*time.Second, "a payload per service", func(a *agenttest.Agent) bool { return len(a.Payloads()) == services })
	if st := sink.Stats(); st.Payloads != services || st.Pending != 0 {
		t.Fatalf("sink stats %+v, want %d payloads sent", st, services)
	}
	// The fake Agent decoding them in this process allocates too (a gzip reader each): 256 KiB a
	// payload is room for both, a quarter of one compressor.
	if per := (after.TotalAlloc - before.TotalAlloc) / services; per > 256<<10 {
		t.Errorf("a flush of %d services allocated %d bytes per payload, want at most %d", services, per, 256<<10)
	}
}

// TestSlowAgentGetsPayloadsAtOnce: the Agent's pipeline_stats handler forwards each payload to the
// intake before it answers, so every answer costs the Agent's round trip to Datadog, and a flush
// posts one payload per service. Posted one after the other, a few hundred services fill the
// flush interval with waiting: in a soak run, an Agent answering in 2 s took 4 payloads of ~300 a
// flush and the rest were dropped once 8 MiB waited. Once the Agent has answered a payload of the
// flush, the others go several at once: here, while the Agent sits on its answers, more than one
// reaches it.
func TestSlowAgentGetsPayloadsAtOnce(t *testing.T) {
	const services = 20
	agent, f, sink := pipelineOfServices(t, services)
	release := agent.HoldAnswersAfter(1)
	defer release()
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		f.FlushNow(context.Background(), false)
	}()
	// The first payload answered, then 4 more unanswered at once.
	agent.WaitFor(t, 10*time.Second, "4 payloads posted while the Agent sits on the first one's answer",
		func(a *agenttest.Agent) bool { return a.Posts() >= 1+4 })
	release()
	<-flushed
	if st := sink.Stats(); st.Payloads != services || st.Pending != 0 || st.Unconfirmed != 0 {
		t.Fatalf("sink stats %+v, want %d payloads sent", st, services)
	}
}

// pipelineOfServices is a pipeline to a fake Agent whose next flush holds a point of each of n
// services (svc-0...), the bucket already over.
func pipelineOfServices(t *testing.T, n int) (*agenttest.Agent, *aggregator.Flusher, *aggregator.AgentSink) {
	t.Helper()
	agent := agenttest.New(t)
	clk := &fakeClock{t: t0}
	a, f, sink := newPipeline(t, agent.URL(), clk, zerolog.Nop(), nil)
	for i := range n {
		a.Add(pathway.Point{Service: fmt.Sprintf("svc-%d", i), Hash: uint64(i + 1), EdgeTags: []string{"direction:out", "topic:t", "type:kafka"},
			Time: t0.Add(time.Second).UnixNano(), EdgeLatency: int64(time.Millisecond), PathwayLatency: int64(time.Millisecond), PayloadSize: 100})
	}
	clk.Add(10 * time.Second)
	return agent, f, sink
}
