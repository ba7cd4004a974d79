package agenttest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/pathway"
)

func info(t *testing.T, a *agenttest.Agent) (int, []string) {
	t.Helper()
	resp, err := http.Get(a.URL() + "/info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Endpoints []string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Endpoints
}

func TestInfoOptions(t *testing.T) {
	if code, eps := info(t, agenttest.New(t)); code != 200 || !slices.Contains(eps, "/v0.1/pipeline_stats") {
		t.Errorf("default /info: %d %v", code, eps)
	}
	if code, eps := info(t, agenttest.New(t, agenttest.WithoutDSMEndpoint())); code != 200 || slices.Contains(eps, "/v0.1/pipeline_stats") || len(eps) == 0 {
		t.Errorf("WithoutDSMEndpoint /info: %d %v", code, eps)
	}
	if code, _ := info(t, agenttest.New(t, agenttest.Info404())); code != 404 {
		t.Errorf("Info404 /info: %d", code)
	}
}

// TestDownAndBack: a down Agent fails the sink's send with a connection error; back up, it gets
// the payload the sink kept.
func TestDownAndBack(t *testing.T) {
	agent := agenttest.New(t, agenttest.Down())
	sink, err := aggregator.NewAgentSink(aggregator.AgentConfig{URL: agent.URL(), TracerVersion: "test", Retries: -1, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	a := aggregator.New(aggregator.Config{})
	a.Add(pathway.Point{Service: "s", Hash: 3, EdgeTags: []string{"direction:in", "type:kafka"}, Time: time.Unix(1700000000, 0).UnixNano()})
	a.Add(pathway.Point{Service: "s", Hash: 4, Time: time.Unix(1700000000, 0).UnixNano()}) // no edge tags
	a.Close()
	if err := sink.Send(context.Background(), a.Flush(time.Time{}, true)); err == nil {
		t.Fatal("send to a down Agent succeeded")
	}
	if agent.Refused() == 0 || agent.Posts() != 0 || sink.Stats().Pending != 1 {
		t.Fatalf("refused %d, posts %d, sink %+v", agent.Refused(), agent.Posts(), sink.Stats())
	}
	agent.SetDown(false)
	if err := sink.Send(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	agent.WaitFor(t, 10*time.Second, "all points", func(a *agenttest.Agent) bool { return len(a.Points()) == 4 })
	if pts := agenttest.PointsWith(agent.Points(), "origin", "direction:in", "type:kafka"); len(pts) != 1 || pts[0].Hash != 3 || pts[0].Count() != 1 {
		t.Fatalf("origin point: %+v", pts)
	}
	for _, p := range agent.Points() {
		if p.Hash == 4 && p.EdgeTags == nil {
			t.Errorf("a point without edge tags came as msgpack nil, not an empty array")
		}
	}
}
