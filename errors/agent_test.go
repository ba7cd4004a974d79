package errtrack

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// fakeAgent is an httptest Agent that decodes /v0.4/traces bodies the way the trace-agent does
// (msgpack array of traces, each an array of span maps) and keeps them.
type fakeAgent struct {
	mu      sync.Mutex
	traces  [][]map[string]any
	headers []http.Header
	status  int
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != TracesPath {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var traces [][]map[string]any
	if err := msgpack.Unmarshal(body, &traces); err != nil {
		http.Error(w, "msgpack: "+err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.traces = append(f.traces, traces...)
	f.headers = append(f.headers, r.Header.Clone())
	status := f.status
	f.mu.Unlock()
	if status != 0 {
		http.Error(w, "agent says no", status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"rate_by_service":{"service:,env:":1}}`)
}

func (f *fakeAgent) spans() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []map[string]any
	for _, tr := range f.traces {
		out = append(out, tr...)
	}
	return out
}

// num reads a msgpack number whatever width the encoder chose.
func num(t *testing.T, v any) float64 {
	t.Helper()
	switch n := v.(type) {
	case int8:
		return float64(n)
	case int16:
		return float64(n)
	case int32:
		return float64(n)
	case int64:
		return float64(n)
	case uint8:
		return float64(n)
	case uint16:
		return float64(n)
	case uint32:
		return float64(n)
	case uint64:
		return float64(n)
	case float64:
		return n
	case float32:
		return float64(n)
	}
	t.Fatalf("not a number: %T %v", v, v)
	return 0
}

func lostInterval() Interval {
	edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "orders"}
	first := t0.Add(2 * time.Second)
	return Interval{Start: t0, End: t0.Add(10 * time.Second), Groups: []Group{
		{
			Fingerprint: Fingerprint{Category: LostMessage, Protocol: "kafka", Operation: "Produce", Code: 10,
				Name: "MESSAGE_TOO_LARGE", Service: "orders-api", Edge: edge},
			Partitions: []int32{0, 2}, Sample: "the broker refused the batch with a non-retriable error",
			FirstSeen: first, LastSeen: first.Add(3 * time.Second), TotalCount: 4, TotalMessages: 40,
			Count: 4, Messages: 40, IntervalFirst: first, IntervalLast: first.Add(3 * time.Second),
		},
		{
			Fingerprint: Fingerprint{Category: DecodeError, Protocol: "kafka", Operation: "Fetch", Name: "undecodable"},
			Count:       1, IntervalFirst: first, IntervalLast: first,
		},
	}}
}

func TestAgentReporterSpans(t *testing.T) {
	for _, native := range []bool{false, true} {
		t.Run(map[bool]string{false: "meta events json", true: "native span_events"}[native], func(t *testing.T) {
			fa := &fakeAgent{}
			srv := httptest.NewServer(fa)
			defer srv.Close()
			a := NewAgentReporter(AgentConfig{Enabled: true, URL: srv.URL, Env: "test", Version: "1.2", NativeSpanEvents: native})
			if err := a.Send(context.Background(), lostInterval()); err != nil {
				t.Fatal(err)
			}
			fa.mu.Lock()
			h := fa.headers[0]
			fa.mu.Unlock()
			if h.Get("Content-Type") != "application/msgpack" || h.Get("X-Datadog-Trace-Count") != "2" || h.Get("Datadog-Meta-Lang") != "go" {
				t.Errorf("headers: %v", h)
			}
			spans := fa.spans()
			if len(spans) != 2 {
				t.Fatalf("spans = %d, want 2 (one trace per group)", len(spans))
			}
			s := spans[0]
			wantStr := map[string]string{
				"service": "orders-api", "name": "dsmproxy.lost_message",
				"resource": "direction:out,topic:orders,type:kafka", "type": "queue",
			}
			for k, v := range wantStr {
				if s[k] != v {
					t.Errorf("%s = %v, want %q", k, s[k], v)
				}
			}
			if num(t, s["error"]) != 1 || num(t, s["parent_id"]) != 0 || num(t, s["trace_id"]) == 0 || num(t, s["span_id"]) == 0 {
				t.Errorf("ids/error: %v %v %v %v", s["error"], s["parent_id"], s["trace_id"], s["span_id"])
			}
			if num(t, s["start"]) != float64(t0.Add(2*time.Second).UnixNano()) || num(t, s["duration"]) != float64(3*time.Second) {
				t.Errorf("start %v duration %v", s["start"], s["duration"])
			}
			meta := s["meta"].(map[string]any)
			etype := "kafka.lost_message.MESSAGE_TOO_LARGE"
			emsg := "Produce orders: MESSAGE_TOO_LARGE (code 10): the broker refused the batch with a non-retriable error"
			for k, v := range map[string]string{
				"error.type": etype, "error.message": emsg, "env": "test", "version": "1.2",
				"_dd.span_events.has_exception": "true", "dsmproxy.partitions": "0,2",
				"messaging.destination.name": "orders", "dsmproxy.error.retriable": "false",
			} {
				if meta[k] != v {
					t.Errorf("meta[%s] = %v, want %q", k, meta[k], v)
				}
			}
			metrics := s["metrics"].(map[string]any)
			if num(t, metrics["dsmproxy.lost_messages"]) != 40 || num(t, metrics["dsmproxy.errors.count"]) != 4 ||
				num(t, metrics["_sampling_priority_v1"]) != 2 {
				t.Errorf("metrics: %v", metrics)
			}
			var evName string
			var evTime float64
			attrs := map[string]string{}
			if native {
				if _, ok := meta["events"]; ok {
					t.Error("native mode also wrote meta events")
				}
				evs := s["span_events"].([]any)
				e := evs[0].(map[string]any)
				evName, evTime = e["name"].(string), num(t, e["time_unix_nano"])
				for k, v := range e["attributes"].(map[string]any) {
					tv := v.(map[string]any)
					if num(t, tv["type"]) != 0 {
						t.Errorf("attribute %s type %v, want 0 (string)", k, tv["type"])
					}
					attrs[k] = tv["string_value"].(string)
				}
			} else {
				if _, ok := s["span_events"]; ok {
					t.Error("json mode also wrote span_events")
				}
				var evs []struct {
					Name       string            `json:"name"`
					Time       int64             `json:"time_unix_nano"`
					Attributes map[string]string `json:"attributes"`
				}
				if err := json.Unmarshal([]byte(meta["events"].(string)), &evs); err != nil || len(evs) != 1 {
					t.Fatalf("meta events %q: %v", meta["events"], err)
				}
				evName, evTime, attrs = evs[0].Name, float64(evs[0].Time), evs[0].Attributes
			}
			if evName != "exception" || evTime != float64(t0.Add(5*time.Second).UnixNano()) ||
				attrs["exception.type"] != etype || attrs["exception.message"] != emsg {
				t.Errorf("exception event %q at %v: %v", evName, evTime, attrs)
			}
			// The decode error has no service or edge: the proxy's own name and the operation stand in.
			d := spans[1]
			if d["service"] != "dsmproxy" || d["resource"] != "Fetch" || d["meta"].(map[string]any)["error.type"] != "kafka.decode_error.undecodable" {
				t.Errorf("decode error span: %v", d)
			}
		})
	}
}

func TestAgentReporterErrors(t *testing.T) {
	fa := &fakeAgent{status: http.StatusRequestEntityTooLarge}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	err := NewAgentReporter(AgentConfig{URL: srv.URL}).Send(context.Background(), lostInterval())
	if err == nil || !strings.Contains(err.Error(), "413") || !strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), TracesPath) {
		t.Errorf("status error = %v", err)
	}
	for _, u := range []string{"ftp://x", "unix://", "http://", "::"} {
		if err := NewAgentReporter(AgentConfig{URL: u}).Send(context.Background(), lostInterval()); err == nil {
			t.Errorf("URL %q: no error", u)
		}
	}
	if err := NewAgentReporter(AgentConfig{URL: "::"}).Send(context.Background(), Interval{}); err != nil {
		t.Errorf("empty interval should send nothing: %v", err)
	}
}

func TestAgentReporterUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "apm.socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Skipf("unix sockets: %v", err)
	}
	fa := &fakeAgent{}
	srv := &http.Server{Handler: fa, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	if err := NewAgentReporter(AgentConfig{URL: "unix://" + sock}).Send(context.Background(), lostInterval()); err != nil {
		t.Fatal(err)
	}
	if n := len(fa.spans()); n != 2 {
		t.Errorf("spans over unix socket = %d, want 2", n)
	}
}

// TestCollectorToAgent runs the whole path: events in, Flush, spans decoded by the fake Agent.
func TestCollectorToAgent(t *testing.T) {
	fa := &fakeAgent{}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	clk := &clock{now: t0}
	c := New(Config{Clock: clk.Now, Agent: AgentConfig{Enabled: true, URL: srv.URL}})
	for range 10000 {
		c.Report(ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "a", ordersOut, 1, 5, time.Second))
	}
	if err := c.Flush(context.Background(), t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(context.Background(), t0.Add(20*time.Second)); err != nil { // empty: no request
		t.Fatal(err)
	}
	spans := fa.spans()
	if len(spans) != 1 {
		t.Fatalf("spans = %d, want 1 for a storm of 10000", len(spans))
	}
	if m := spans[0]["metrics"].(map[string]any); num(t, m["dsmproxy.errors.count"]) != 10000 || num(t, m["dsmproxy.messages"]) != 50000 {
		t.Errorf("metrics %v", m)
	}
	fa.mu.Lock()
	reqs := len(fa.headers)
	fa.mu.Unlock()
	if reqs != 1 {
		t.Errorf("requests = %d, want 1", reqs)
	}
}

// TestAgentReporterKeepsTracesForAFailingAgent: traces an Agent answered 5xx to (or could not be
// reached for) go out again with the next interval; after a 4xx, which would refuse them again,
// they do not.
func TestAgentReporterKeepsTracesForAFailingAgent(t *testing.T) {
	for _, tc := range []struct {
		status int
		resent bool
	}{{http.StatusServiceUnavailable, true}, {http.StatusRequestEntityTooLarge, false}} {
		fa := &fakeAgent{status: tc.status}
		srv := httptest.NewServer(fa)
		r := NewAgentReporter(AgentConfig{URL: srv.URL})
		err := r.Send(context.Background(), lostInterval())
		if err == nil {
			t.Fatalf("status %d: no error", tc.status)
		}
		// The error is the log line ("error tracking: flush failed"): it says what became of
		// the traces, which a failed flush alone does not.
		if fate := "2 error traces wait for the next flush"; tc.resent != strings.Contains(err.Error(), fate) ||
			!tc.resent && !strings.Contains(err.Error(), "2 error traces dropped") {
			t.Errorf("status %d: error %q does not say whether the traces are sent again", tc.status, err)
		}
		fa.mu.Lock()
		fa.status, fa.traces = 0, nil
		fa.mu.Unlock()
		if err := r.Send(context.Background(), lostInterval()); err != nil {
			t.Fatalf("status %d, then a healthy Agent: %v", tc.status, err)
		}
		want := 2 // the second interval's two groups
		if tc.resent {
			want = 4
		}
		if n := len(fa.spans()); n != want {
			t.Errorf("after a %d: the next send carried %d traces, want %d", tc.status, n, want)
		}
		srv.Close()
	}
	gone := httptest.NewServer(&fakeAgent{})
	gone.Close()
	err := NewAgentReporter(AgentConfig{URL: gone.URL}).Send(context.Background(), lostInterval())
	if err == nil || !strings.Contains(err.Error(), "2 error traces wait for the next flush") {
		t.Errorf("an Agent that cannot be reached: error %v does not say the traces are sent again", err)
	}
}

// TestAgentURLSecretStaysOutOfErrors: a refused Agent URL's password is masked in Send's error.
func TestAgentURLSecretStaysOutOfErrors(t *testing.T) {
	for _, u := range []string{"ftp://dd:s3cret@agent", "http://dd:s3cret%@agent:8126", "http://dd:s3cret#x@agent:8126", "dd:s3cret@agent:8126"} {
		a := NewAgentReporter(AgentConfig{URL: u})
		if err := a.Send(context.Background(), Interval{Groups: []Group{{}}}); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Send with %q: %v", u, err)
		}
	}
}

// TestAgentReporterCountsDroppedTraces: past maxPendingTraces waiting for a failing Agent, the
// oldest traces go, and each one is counted (Dropped, and /errors' agent_traces_dropped).
func TestAgentReporterCountsDroppedTraces(t *testing.T) {
	srv := httptest.NewServer(&fakeAgent{status: http.StatusServiceUnavailable})
	defer srv.Close()
	r := NewAgentReporter(AgentConfig{URL: srv.URL})
	iv := lostInterval()
	for len(iv.Groups) < 700 {
		iv.Groups = append(iv.Groups, iv.Groups[:2]...)
	}
	for range 3 {
		_ = r.Send(context.Background(), iv)
	}
	if got, want := r.Dropped(), int64(3*len(iv.Groups)-maxPendingTraces); got != want {
		t.Errorf("Dropped = %d after %d traces, want %d over the %d kept", got, 3*len(iv.Groups), want, maxPendingTraces)
	}
	c := New(Config{Agent: AgentConfig{Enabled: true, URL: srv.URL}})
	c.agent.dropped.Store(7)
	if doc := c.Snapshot().JSON(); doc.AgentTracesDropped != 7 {
		t.Errorf("/errors agent_traces_dropped = %d, want 7", doc.AgentTracesDropped)
	}
}
