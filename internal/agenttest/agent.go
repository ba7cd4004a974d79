// Package agenttest is a fake Datadog Agent for tests: an HTTP server that serves /info, decodes
// every DSM payload strictly (internal/agentpayload), and lets tests wait for and assert on the
// points and backlogs it received.
package agenttest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
)

// The decoded types, under the names tests use.
type (
	Payload      = agentpayload.Payload
	Point        = agentpayload.Point
	BacklogEntry = agentpayload.BacklogEntry
)

// DecodePayload decodes one /v0.1/pipeline_stats body; see agentpayload.DecodePayload.
var DecodePayload = agentpayload.DecodePayload

// Option configures the fake Agent.
type Option func(*Agent)

// Info404 makes /info answer 404, like an Agent too old for DSM.
func Info404() Option { return func(a *Agent) { a.info = http.StatusNotFound } }

// WithoutDSMEndpoint makes /info list endpoints but not /v0.1/pipeline_stats.
func WithoutDSMEndpoint() Option { return func(a *Agent) { a.listDSM = false } }

// Down starts the Agent unreachable: every connection is closed without an answer until
// SetDown(false).
func Down() Option { return func(a *Agent) { a.down = true } }

// Agent is the fake Datadog Agent.
type Agent struct {
	srv     *httptest.Server
	info    int
	listDSM bool

	mu        sync.Mutex
	down      bool
	status    int // answer for pipeline_stats
	payloads  []*Payload
	points    []Point
	backlogs  []BacklogEntry
	infoHits  int
	posts     int
	refused   int
	decodeErr []error
	changed   chan struct{}
	hold      chan struct{} // while set, payloads are taken but not answered until it closes
	holdFrom  int           // posts up to this one are answered all the same (HoldAnswersAfter)
}

// New starts a fake Agent; it stops when the test ends. A payload that does not decode fails t.
func New(t testing.TB, opts ...Option) *Agent {
	a := &Agent{info: http.StatusOK, listDSM: true, status: http.StatusAccepted, changed: make(chan struct{})}
	for _, o := range opts {
		o(a)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", a.serveInfo)
	mux.HandleFunc("POST /v0.1/pipeline_stats", a.servePipelineStats)
	a.srv = httptest.NewServer(a.unlessDown(mux))
	t.Cleanup(func() {
		a.mu.Lock()
		if a.hold != nil { // a held handler would keep Close waiting for the client to give up
			close(a.hold)
			a.hold = nil
		}
		a.mu.Unlock()
		a.srv.Close()
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, err := range a.decodeErr {
			t.Errorf("fake Agent: payload did not decode: %v", err)
		}
	})
	return a
}

// URL is the Agent's base URL (http://127.0.0.1:port).
func (a *Agent) URL() string { return a.srv.URL }

// SetDown makes the Agent unreachable (true) or reachable again (false). While down, requests
// get their connection closed without a response: the client sees a connection error, as with an
// Agent that is restarting.
func (a *Agent) SetDown(down bool) {
	a.mu.Lock()
	a.down = down
	a.mu.Unlock()
	if down {
		// Idle keep-alive connections would otherwise still answer.
		a.srv.CloseClientConnections()
	}
}

func (a *Agent) unlessDown(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		down := a.down
		if down {
			a.refused++
		}
		a.mu.Unlock()
		if !down {
			h.ServeHTTP(w, r)
			return
		}
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
	})
}

// Refused counts requests dropped while down.
func (a *Agent) Refused() int { a.mu.Lock(); defer a.mu.Unlock(); return a.refused }

// HoldAnswers makes the Agent take each payload (it is recorded) and then not answer until
// release is called or the sender gives up: the sender cannot tell whether it was taken, as with
// an overloaded Agent.
func (a *Agent) HoldAnswers() (release func()) { return a.HoldAnswersAfter(0) }

// HoldAnswersAfter is HoldAnswers for the posts after the next n, which are answered as usual:
// an Agent that answers, then is slow to.
func (a *Agent) HoldAnswersAfter(n int) (release func()) {
	ch := make(chan struct{})
	a.mu.Lock()
	a.hold = ch
	a.holdFrom = a.posts + n
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.hold == ch {
			close(ch)
			a.hold = nil
		}
	}
}

// SetStatus sets the status code answered to pipeline_stats posts (default 202).
func (a *Agent) SetStatus(code int) {
	a.mu.Lock()
	a.status = code
	a.mu.Unlock()
}

func (a *Agent) serveInfo(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	a.infoHits++
	a.mu.Unlock()
	if a.info != http.StatusOK {
		http.Error(w, "404 page not found", a.info)
		return
	}
	eps := []string{"/v0.4/traces", "/v0.6/stats", "/info"}
	if a.listDSM {
		eps = append(eps, "/v0.1/pipeline_stats")
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"version":"7.60.0","endpoints":["%s"]}`, joinQuoted(eps))
}

func joinQuoted(s []string) string {
	var b bytes.Buffer
	for i, e := range s {
		if i > 0 {
			b.WriteString(`","`)
		}
		b.WriteString(e)
	}
	return b.String()
}

func (a *Agent) servePipelineStats(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, agentpayload.MaxPayload))
	a.mu.Lock()
	defer a.mu.Unlock()
	a.posts++
	if a.status >= 300 {
		w.WriteHeader(a.status)
		return
	}
	if err == nil {
		err = checkHeaders(r.Header)
	}
	var p *Payload
	var pts []Point
	if err == nil {
		p, pts, err = DecodePayload(body)
	}
	if err != nil {
		a.decodeErr = append(a.decodeErr, err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p.Header = r.Header.Clone()
	a.payloads = append(a.payloads, p)
	a.points = append(a.points, pts...)
	for _, b := range p.Stats {
		for _, bl := range b.Backlogs {
			a.backlogs = append(a.backlogs, BacklogEntry{Service: p.Service, Start: time.Unix(0, int64(b.Start)), Tags: bl.Tags, Value: bl.Value})
		}
	}
	close(a.changed)
	a.changed = make(chan struct{})
	if hold := a.hold; hold != nil && a.posts > a.holdFrom {
		a.mu.Unlock()
		select {
		case <-hold:
		case <-r.Context().Done():
		}
		a.mu.Lock()
	}
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write([]byte(`{"acknowledged":true}`))
}

func checkHeaders(h http.Header) error {
	for k, want := range map[string]string{"Content-Type": "application/msgpack", "Content-Encoding": "gzip", "Datadog-Meta-Lang": "go"} {
		if got := h.Get(k); got != want {
			return fmt.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if h.Get("Datadog-Meta-Tracer-Version") == "" {
		return fmt.Errorf("header Datadog-Meta-Tracer-Version missing")
	}
	return nil
}

// Payloads returns every payload decoded so far.
func (a *Agent) Payloads() []*Payload {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.payloads)
}

// Points returns every point decoded so far, in arrival order.
func (a *Agent) Points() []Point {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.points)
}

// Backlogs returns every backlog entry decoded so far.
func (a *Agent) Backlogs() []BacklogEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.backlogs)
}

// InfoRequests and Posts count requests, for tests of the sink's behaviour.
func (a *Agent) InfoRequests() int { a.mu.Lock(); defer a.mu.Unlock(); return a.infoHits }

// Posts counts pipeline_stats requests, accepted or not.
func (a *Agent) Posts() int { a.mu.Lock(); defer a.mu.Unlock(); return a.posts }

// WaitFor waits until cond holds over the Agent's state, or fails t after timeout (a generous
// deadline for something to arrive, not a timing assertion).
func (a *Agent) WaitFor(t testing.TB, timeout time.Duration, what string, cond func(a *Agent) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		ch := a.changed
		a.mu.Unlock()
		if cond(a) {
			return
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			t.Fatalf("fake Agent: gave up after %s waiting for %s; got %d payloads, %d points", timeout, what, len(a.Payloads()), len(a.Points()))
		}
	}
}

// PointsWith returns the points whose edge tags equal tags exactly, of one timestamp type.
func PointsWith(pts []Point, timestampType string, tags ...string) []Point {
	var out []Point
	for _, p := range pts {
		if p.TimestampType == timestampType && slices.Equal(p.EdgeTags, tags) {
			out = append(out, p)
		}
	}
	return out
}

// OneNode checks that pts, the points of one edge, are a single pathway node (service, hash,
// parent) which checkpoints close in time may have put in one bucket or, across a boundary, in
// two; it returns the node and its total count. what names the edge in failures.
func OneNode(t testing.TB, what string, pts []Point) (Point, float64) {
	t.Helper()
	if len(pts) == 0 {
		t.Fatalf("no %s points at the Agent", what)
	}
	var n float64
	for _, p := range pts {
		if p.Service != pts[0].Service || p.Hash != pts[0].Hash || p.ParentHash != pts[0].ParentHash {
			for _, q := range pts {
				t.Logf("%s point: service %s hash %x parent %x bucket %s count %v", what, q.Service, q.Hash, q.ParentHash, q.Start.Format(time.TimeOnly), q.Count())
			}
			t.Fatalf("%d %s points of more than one pathway node", len(pts), what)
		}
		n += p.Count()
	}
	if len(pts) > 2 {
		t.Errorf("%s points in %d buckets, want at most 2", what, len(pts))
	}
	return pts[0], n
}

// CheckHop waits until the Agent holds current points of both edges of one produce -> consume
// hop, then checks the hop: the produce side one root node (OneNode, no parent) of outService,
// the consume side one node of inService whose parent is the produce node, count checkpoints each.
func (a *Agent) CheckHop(t testing.TB, timeout time.Duration, outService, inService string, count float64, outTags, inTags []string) {
	t.Helper()
	a.WaitFor(t, timeout, "produce and consume points", func(a *Agent) bool {
		pts := a.Points()
		return len(PointsWith(pts, "current", outTags...)) > 0 && len(PointsWith(pts, "current", inTags...)) > 0
	})
	pts := a.Points()
	out, outCount := OneNode(t, "produce", PointsWith(pts, "current", outTags...))
	in, inCount := OneNode(t, "consume", PointsWith(pts, "current", inTags...))
	if out.Service != outService || in.Service != inService {
		t.Errorf("services %q -> %q, want %q -> %q", out.Service, in.Service, outService, inService)
	}
	if in.ParentHash != out.Hash || out.ParentHash != 0 {
		t.Errorf("consume parent %x, produce hash %x (parent %x)", in.ParentHash, out.Hash, out.ParentHash)
	}
	if outCount != count || inCount != count {
		t.Errorf("counts %v / %v, want %v / %v", outCount, inCount, count, count)
	}
}
