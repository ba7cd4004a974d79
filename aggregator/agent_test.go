package aggregator_test

import (
	"bytes"
	"context"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/internal/closedport"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/pathway"
)

var t0 = time.Unix(1700000000, 0)

// fakeClock is the one clock of a test: flushes and /info re-checks read it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newPipeline(t *testing.T, url string, clk *fakeClock, log zerolog.Logger, mod func(*aggregator.AgentConfig)) (*aggregator.Aggregator, *aggregator.Flusher, *aggregator.AgentSink) {
	t.Helper()
	a := aggregator.New(aggregator.Config{Env: "test", DefaultService: "dsmproxy", Clock: clk.Now})
	a.Start()
	t.Cleanup(a.Close)
	cfg := aggregator.AgentConfig{URL: url, Env: "test", Version: "1.2.3", TracerVersion: "dsmproxy-test", Clock: clk.Now, Log: log, Retries: -1}
	if mod != nil {
		mod(&cfg)
	}
	sink, err := aggregator.NewAgentSink(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a, aggregator.NewFlusher(a, 10*time.Second, log, sink), sink
}

// TestEndToEnd: points and offsets through Aggregator -> Flusher -> AgentSink -> fake Agent come
// out with the exact hashes, tags and backlog values, and sketch counts and quantiles within the
// sketch's accuracy.
func TestEndToEnd(t *testing.T) {
	agent := agenttest.New(t)
	clk := &fakeClock{t: t0}
	a, f, _ := newPipeline(t, agent.URL(), clk, zerolog.Nop(), nil)

	cp := pathway.NewCheckpointer("test", 0)
	out := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "orders"}
	in := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: "orders", Group: "billing"}
	var edgeLat []float64
	var prodHash, consHash uint64
	for i := range 200 {
		now := t0.Add(time.Duration(i) * 10 * time.Millisecond)
		pp, ctx := cp.Checkpoint(pathway.Context{}, "orders", out, int64(100+i), now)
		a.Add(pp)
		lat := time.Duration(i+1) * time.Millisecond
		cpnt, _ := cp.Checkpoint(ctx, "billing", in, int64(100+i), now.Add(lat))
		a.Add(cpnt)
		edgeLat = append(edgeLat, lat.Seconds())
		prodHash, consHash = pp.Hash, cpnt.Hash
	}
	a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Service: "orders", Topic: "orders", Partition: 2, Value: 199, Time: t0.UnixNano()})
	a.Offset(pathway.Offset{Kind: pathway.KafkaCommit, Service: "billing", Group: "billing", Topic: "orders", Partition: 2, Value: 150, Time: t0.UnixNano()})
	a.Offset(pathway.Offset{Kind: pathway.KafkaHighWatermark, Topic: "orders", Partition: 2, Value: 200, Time: t0.UnixNano()})

	clk.Add(10 * time.Second)
	f.FlushNow(context.Background(), false)
	agent.WaitFor(t, 10*time.Second, "three payloads", func(a *agenttest.Agent) bool { return len(a.Payloads()) == 3 })

	services := map[string]bool{}
	for _, p := range agent.Payloads() {
		services[p.Service] = true
		if p.Env != "test" || p.Lang != "go" || p.TracerVersion != "dsmproxy-test" || p.Version != "1.2.3" {
			t.Errorf("payload header fields: %+v", p)
		}
		if p.Header.Get("Datadog-Meta-Tracer-Version") != "dsmproxy-test" {
			t.Errorf("tracer version header %q", p.Header.Get("Datadog-Meta-Tracer-Version"))
		}
	}
	if !services["orders"] || !services["billing"] || !services["dsmproxy"] {
		t.Fatalf("payload services %v, want orders, billing and dsmproxy (default, high watermark)", services)
	}
	pts := agent.Points()
	prod := agenttest.PointsWith(pts, "current", "direction:out", "topic:orders", "type:kafka")
	cons := agenttest.PointsWith(pts, "current", "direction:in", "group:billing", "topic:orders", "type:kafka")
	if len(prod) != 1 || len(cons) != 1 {
		t.Fatalf("current points: %d produce, %d consume, want 1 each", len(prod), len(cons))
	}
	if prod[0].Hash != prodHash || prod[0].ParentHash != 0 || cons[0].Hash != consHash || cons[0].ParentHash != prodHash {
		t.Errorf("hash chain: produce %x<-%x, consume %x<-%x; want %x<-0, %x<-%x",
			prod[0].Hash, prod[0].ParentHash, cons[0].Hash, cons[0].ParentHash, prodHash, consHash, prodHash)
	}
	if prod[0].Service != "orders" || cons[0].Service != "billing" {
		t.Errorf("services %q %q", prod[0].Service, cons[0].Service)
	}
	// Start and Duration are nanoseconds on the wire (dsm-protocol.md): decoded as such, the
	// bucket is the 10 s from t0, a bucket boundary.
	for _, p := range append(prod, cons...) {
		if !p.Start.Equal(t0) || p.Duration != 10*time.Second {
			t.Errorf("bucket of %s: start %v, duration %v; want %v and 10s", p.Service, p.Start, p.Duration, t0)
		}
	}
	if got := agenttest.PointsWith(pts, "origin", "direction:in", "group:billing", "topic:orders", "type:kafka"); len(got) != 1 || got[0].Count() != 200 {
		t.Errorf("origin consume points: %+v", got)
	}
	c := cons[0]
	if c.Count() != 200 || c.PayloadSize.GetCount() != 200 || c.PathwayLatency.GetCount() != 200 {
		t.Fatalf("consume counts %v/%v/%v, want 200", c.Count(), c.PayloadSize.GetCount(), c.PathwayLatency.GetCount())
	}
	slices.Sort(edgeLat)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		got, err := c.EdgeLatency.GetValueAtQuantile(q)
		if err != nil {
			t.Fatal(err)
		}
		want := edgeLat[int(q*float64(len(edgeLat)-1))]
		if math.Abs(got-want)/want > 0.0078 {
			t.Errorf("edge latency p%v = %v, want %v within 0.78%%", q*100, got, want)
		}
	}
	if s := c.PayloadSize.GetSum(); math.Abs(s-39900)/39900 > 0.0078 {
		t.Errorf("payload size sum %v, want ~39900", s)
	}
	want := map[string]int64{
		"orders|partition:2,topic:orders,type:kafka_produce":                        199,
		"billing|consumer_group:billing,partition:2,topic:orders,type:kafka_commit": 150,
		"dsmproxy|partition:2,topic:orders,type:kafka_high_watermark":               200,
	}
	got := map[string]int64{}
	for _, b := range agent.Backlogs() {
		got[b.Service+"|"+strings.Join(b.Tags, ",")] = b.Value
	}
	if len(got) != len(want) {
		t.Errorf("backlogs %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("backlog %s = %d, want %d", k, got[k], v)
		}
	}
}

// TestAgentDown: ten minutes of flushes with the Agent unreachable keep pending bytes under the
// bound (oldest dropped, counted); when it comes back the pending payloads arrive.
func TestAgentDown(t *testing.T) {
	down := closedport.New(t) // nothing listens: connection refused
	addr := down.Addr()

	clk := &fakeClock{t: t0}
	var logs syncbuf.Buffer
	const bound = 4096
	a, f, sink := newPipeline(t, "http://"+addr, clk, zerolog.New(&logs), func(c *aggregator.AgentConfig) { c.MaxPendingBytes = bound })
	tags := []string{"direction:out", "topic:t", "type:kafka"}
	peak := 0
	for i := range 60 { // 60 flushes of 10 s
		for j := range 50 {
			// A distinct hash per flush and point, so every payload is new data.
			a.Add(pathway.Point{Service: "svc", EdgeTags: tags, Hash: uint64(i*1000 + j + 1), Time: clk.Now().UnixNano(), PayloadSize: 10})
		}
		clk.Add(10 * time.Second)
		f.FlushNow(context.Background(), false)
		st := sink.Stats()
		peak = max(peak, st.PendingBytes)
		if st.PendingBytes > bound {
			t.Fatalf("flush %d: %d pending bytes over the %d bound", i, st.PendingBytes, bound)
		}
		// The aggregator side stays flat too: every finished bucket left it at the flush.
		if open := a.Stats().OpenBuckets; open != 0 {
			t.Fatalf("flush %d: %d buckets still open in the aggregator", i, open)
		}
	}
	st := sink.Stats()
	if st.Dropped == 0 || st.Payloads != 0 {
		t.Fatalf("after 10 minutes down: %+v; want drops and nothing sent", st)
	}
	if n := strings.Count(logs.String(), "cannot be reached"); n != 1 {
		t.Errorf("%d 'cannot be reached' warnings over 60 flushes, want 1", n)
	}
	// The Agent comes back on the same address.
	agent := agenttest.New(t)
	down.Release()
	proxyTo(t, addr, agent.URL())
	clk.Add(10 * time.Second)
	f.FlushNow(context.Background(), false)
	agent.WaitFor(t, 10*time.Second, "the pending payloads", func(a *agenttest.Agent) bool { return len(a.Payloads()) == st.Pending })
	if after := sink.Stats(); after.Pending != 0 || after.PendingBytes != 0 || after.Payloads == 0 {
		t.Fatalf("after recovery: %+v", after)
	}
	// The recovery is logged once as such, not as a first payload.
	if n := strings.Count(logs.String(), "accepts DSM payloads again"); n != 1 || strings.Contains(logs.String(), "accepted the first") {
		t.Errorf("recovery logged %d times (want 1), or as a first payload:\n%s", n, logs.String())
	}
	t.Logf("peak pending %d bytes (bound %d), dropped %d payloads, recovered %d", peak, bound, st.Dropped, st.Pending)
}

// proxyTo makes addr serve what target serves (the Agent coming back on its old address).
func proxyTo(t *testing.T, addr, target string) { proxyOn(t, "tcp", addr, target) }

// proxyOn serves target's answers on a tcp or unix listener.
func proxyOn(t *testing.T, network, addr, target string) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, target+r.URL.Path, r.Body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		_, _ = w.Write(buf.Bytes())
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

// TestInfo404: an Agent without /info gets one warning over many flushes, not one per flush, and
// nothing is posted to it.
func TestInfo404(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  agenttest.Option
		warn string
	}{{"no /info", agenttest.Info404(), "no /info endpoint"}, {"endpoint not listed", agenttest.WithoutDSMEndpoint(), "does not list"}} {
		t.Run(tc.name, func(t *testing.T) {
			agent := agenttest.New(t, tc.opt)
			clk := &fakeClock{t: t0}
			var logs syncbuf.Buffer
			a, f, sink := newPipeline(t, agent.URL(), clk, zerolog.New(&logs), nil)
			for range 100 {
				a.Add(pathway.Point{Service: "s", Hash: 1, Time: clk.Now().UnixNano()})
				clk.Add(10 * time.Second)
				f.FlushNow(context.Background(), false)
			}
			if n := strings.Count(logs.String(), tc.warn); n != 1 {
				t.Errorf("%d warnings over 100 flushes, want 1; logs:\n%s", n, logs.String())
			}
			if n := strings.Count(logs.String(), `"level":"warn"`); n != 1 {
				t.Errorf("%d warn lines, want 1", n)
			}
			// /info re-checked every 5 minutes of the fake clock, not per flush.
			if n := agent.InfoRequests(); n < 3 || n > 5 {
				t.Errorf("%d /info requests over 1000 s, want about 1000/300", n)
			}
			if agent.Posts() != 0 {
				t.Errorf("%d payloads posted to an Agent that cannot take them", agent.Posts())
			}
			if st := sink.Stats(); st.EndpointListed || st.PendingBytes > aggregator.DefaultMaxPendingBytes {
				t.Errorf("stats %+v", st)
			}
			// At exit the payloads still waiting are lost: that is said, not only counted.
			f.FlushNow(context.Background(), true)
			if l := logs.String(); !strings.Contains(l, "DSM flush at exit failed") || !strings.Contains(l, "payload(s) waiting") {
				t.Errorf("no warning that the waiting payloads are lost at exit; logs:\n%s", l)
			}
		})
	}
}

// TestRejected: a 4xx is not retried and the payload is dropped.
func TestRejected(t *testing.T) {
	agent := agenttest.New(t)
	agent.SetStatus(http.StatusRequestEntityTooLarge)
	clk := &fakeClock{t: t0}
	a, f, sink := newPipeline(t, agent.URL(), clk, zerolog.Nop(), func(c *aggregator.AgentConfig) { c.Retries = 5 })
	a.Add(pathway.Point{Service: "s", Hash: 1, Time: t0.UnixNano()})
	clk.Add(10 * time.Second)
	f.FlushNow(context.Background(), false)
	if st := sink.Stats(); st.Rejected != 1 || st.Pending != 0 || agent.Posts() != 1 {
		t.Fatalf("stats %+v, posts %d; want one rejected post and nothing pending", st, agent.Posts())
	}
}

// TestUnixSocket: unix:// Agent URLs reach the Agent over the socket.
func TestUnixSocket(t *testing.T) {
	agent := agenttest.New(t)
	sock := t.TempDir() + "/apm.socket"
	proxyOn(t, "unix", sock, agent.URL())
	clk := &fakeClock{t: t0}
	a, f, _ := newPipeline(t, "unix://"+sock, clk, zerolog.Nop(), nil)
	a.Add(pathway.Point{Service: "s", Hash: 7, Time: t0.UnixNano()})
	clk.Add(10 * time.Second)
	f.FlushNow(context.Background(), false)
	agent.WaitFor(t, 10*time.Second, "a payload over the socket", func(a *agenttest.Agent) bool { return len(a.Points()) == 2 })
}

// TestFlusherRun: the ticking flusher delivers on its own (real time, short interval; only a
// generous deadline for the payload to arrive). Each flush has one interval to post: at 10 ms a
// loaded machine could leave a post unanswered in time, and such a payload is dropped, not resent.
func TestFlusherRun(t *testing.T) {
	agent := agenttest.New(t)
	a := aggregator.New(aggregator.Config{BucketDuration: time.Second})
	a.Start()
	defer a.Close()
	sink, err := aggregator.NewAgentSink(aggregator.AgentConfig{URL: agent.URL(), TracerVersion: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	f := aggregator.NewFlusher(a, 0, zerolog.Nop(), sink) // 0: the bucket duration
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	a.Add(pathway.Point{Service: "s", Hash: 5, Time: time.Now().UnixNano()})
	agent.WaitFor(t, 10*time.Second, "the ticking flush", func(a *agenttest.Agent) bool { return len(a.Points()) == 2 })
	cancel()
	<-done
}

// TestAgentFailureWarning: the Warn line for payloads kept for later says what happened: an
// Agent that answered with a server error was reached (its 500 is the intake's refusal, or
// "Pipeline stats forwarder is OFF"), one that could not be dialed was not.
func TestAgentFailureWarning(t *testing.T) {
	for _, tc := range []struct {
		name      string
		agent     func(t *testing.T) string // URL
		want, not string
	}{
		{"server error", func(t *testing.T) string {
			agent := agenttest.New(t)
			agent.SetStatus(http.StatusInternalServerError)
			return agent.URL()
		}, "the Agent answered a DSM payload with a server error", "cannot be reached"},
		{"nothing listening", func(t *testing.T) string {
			return "http://" + closedport.New(t).Addr()
		}, "the Agent cannot be reached", "server error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			clk := &fakeClock{t: t0}
			a, f, sink := newPipeline(t, tc.agent(t), clk, zerolog.New(&logs), nil)
			a.Add(pathway.Point{Service: "s", Hash: 1, Time: t0.UnixNano()})
			clk.Add(10 * time.Second)
			f.FlushNow(context.Background(), false)
			if st := sink.Stats(); st.Pending != 1 {
				t.Fatalf("stats %+v; want the payload kept", st)
			}
			if l := logs.String(); !strings.Contains(l, tc.want) || strings.Contains(l, tc.not) {
				t.Errorf("log %q: want %q, not %q", l, tc.want, tc.not)
			}
		})
	}
}

// TestAgentFailureWarningFollowsTheCause: an Agent that could not be reached and then answers with
// server errors (or the reverse) gets a warning for each: one warning for both left the first
// cause in the log while the Agent's own log was where to look.
func TestAgentFailureWarningFollowsTheCause(t *testing.T) {
	agent := agenttest.New(t, agenttest.Down())
	var logs syncbuf.Buffer
	clk := &fakeClock{t: t0}
	a, f, _ := newPipeline(t, agent.URL(), clk, zerolog.New(&logs), nil)
	flush := func() {
		a.Add(pathway.Point{Service: "s", Hash: 1, Time: clk.Now().UnixNano()})
		clk.Add(10 * time.Second)
		f.FlushNow(context.Background(), false)
	}
	flush()
	agent.SetDown(false)
	agent.SetStatus(http.StatusInternalServerError)
	flush()
	agent.SetDown(true)
	flush()
	l := logs.String()
	for what, want := range map[string]int{"the Agent cannot be reached": 2, "the Agent answered a DSM payload with a server error": 1} {
		if n := strings.Count(l, what); n != want {
			t.Errorf("%d warnings %q, want %d; logs:\n%s", n, what, want, l)
		}
	}
}

// TestFlappingAgentLoggedSparingly: an Agent that is down at one flush and back at the next (as
// one that answers just past the flush's deadline is) writes one Warn line and one line of its
// recovery, not two lines a flush; a condition that comes back 10 minutes after its last Warn
// line is a Warn line again.
func TestFlappingAgentLoggedSparingly(t *testing.T) {
	agent := agenttest.New(t)
	clk := &fakeClock{t: t0}
	var logs syncbuf.Buffer
	a, f, _ := newPipeline(t, agent.URL(), clk, zerolog.New(&logs).Level(zerolog.InfoLevel), nil)
	tags := []string{"direction:out", "topic:t", "type:kafka"}
	flush := func(i int, down bool) {
		agent.SetDown(down)
		a.Add(pathway.Point{Service: "svc", EdgeTags: tags, Hash: uint64(i + 1), Time: clk.Now().UnixNano(), PayloadSize: 10})
		clk.Add(10 * time.Second)
		f.FlushNow(context.Background(), false)
	}
	count := func() (down, again int) {
		return strings.Count(logs.String(), "the Agent cannot be reached"), strings.Count(logs.String(), "accepts DSM payloads again")
	}
	for i := range 30 { // 5 minutes: down, up, down, up...
		flush(i, i%2 == 0)
	}
	if down, again := count(); down != 1 || again != 1 {
		t.Errorf("15 outages in 5 minutes: %d 'cannot be reached' and %d 'accepts again' lines, want 1 and 1", down, again)
	}
	clk.Add(11 * time.Minute)
	flush(30, true)
	flush(31, false)
	if down, again := count(); down != 2 || again != 2 {
		t.Errorf("an outage 11 minutes later: %d 'cannot be reached' and %d 'accepts again' lines in all, want 2 and 2", down, again)
	}
}

// TestEndpointListedOnlyWhenInfoSaid: EndpointListed (the stop line's, /stats', the
// endpoint_listed gauge) says the Agent's /info listed /v0.1/pipeline_stats. An Agent that never
// answered /info was reported as listing it: the stop line of a proxy whose Agent was never
// reachable said "EndpointListed":true.
func TestEndpointListedOnlyWhenInfoSaid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		url    func(t *testing.T) string
		listed bool
	}{
		{"never reachable", func(t *testing.T) string { return "http://" + closedport.New(t).Addr() }, false},
		{"closes every connection", func(t *testing.T) string { return agenttest.New(t, agenttest.Down()).URL() }, false},
		{"lists it", func(t *testing.T) string { return agenttest.New(t).URL() }, true},
		{"does not list it", func(t *testing.T) string { return agenttest.New(t, agenttest.WithoutDSMEndpoint()).URL() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fakeClock{t: t0}
			a, f, sink := newPipeline(t, tc.url(t), clk, zerolog.Nop(), nil)
			if sink.Stats().EndpointListed {
				t.Errorf("EndpointListed before /info was asked")
			}
			a.Add(pathway.Point{Service: "s", Hash: 1, Time: clk.Now().UnixNano()})
			clk.Add(10 * time.Second)
			f.FlushNow(context.Background(), false)
			if got := sink.Stats().EndpointListed; got != tc.listed {
				t.Errorf("EndpointListed = %v after the first flush, want %v", got, tc.listed)
			}
			// What /dsm says payloads wait for: only an answer that left the endpoint out.
			if got, want := sink.EndpointMissing(), tc.name == "does not list it"; got != want {
				t.Errorf("EndpointMissing = %v, want %v", got, want)
			}
		})
	}
}
