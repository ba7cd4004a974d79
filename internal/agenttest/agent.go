// Package agenttest is a fake Datadog Agent for tests: an HTTP server that serves /info, decodes
// every DSM payload (gzip, msgpack, protobuf sketches) strictly, and lets tests wait for and assert
// on the points and backlogs it received. It is written independently of the aggregator's encoder,
// so a wrong field name or type there fails here.
package agenttest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/pb/sketchpb"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/protobuf/proto"
)

// Payload is one decoded POST to /v0.1/pipeline_stats.
type Payload struct {
	Env           string      `msgpack:"Env"`
	Service       string      `msgpack:"Service"`
	Stats         []Bucket    `msgpack:"Stats"`
	TracerVersion string      `msgpack:"TracerVersion"`
	Lang          string      `msgpack:"Lang"`
	Version       string      `msgpack:"Version"`
	ProcessTags   []string    `msgpack:"ProcessTags"`
	ProductMask   uint64      `msgpack:"ProductMask"`
	Header        http.Header `msgpack:"-"`
}

// Bucket is one StatsBucket.
type Bucket struct {
	Start                    uint64     `msgpack:"Start"`
	Duration                 uint64     `msgpack:"Duration"`
	Stats                    []RawPoint `msgpack:"Stats"`
	Backlogs                 []Backlog  `msgpack:"Backlogs"`
	Transactions             []byte     `msgpack:"Transactions"`
	TransactionCheckpointIDs []byte     `msgpack:"TransactionCheckpointIds"`
}

// RawPoint is a StatsPoint as sent, sketches still encoded.
type RawPoint struct {
	EdgeTags       []string `msgpack:"EdgeTags"`
	Hash           uint64   `msgpack:"Hash"`
	ParentHash     uint64   `msgpack:"ParentHash"`
	PathwayLatency []byte   `msgpack:"PathwayLatency"`
	EdgeLatency    []byte   `msgpack:"EdgeLatency"`
	PayloadSize    []byte   `msgpack:"PayloadSize"`
	TimestampType  string   `msgpack:"TimestampType"`
}

// Backlog is one Backlog entry.
type Backlog struct {
	Tags  []string `msgpack:"Tags"`
	Value int64    `msgpack:"Value"`
}

// Point is a StatsPoint flattened with its payload and bucket, sketches decoded.
type Point struct {
	Service, Env     string
	Start            time.Time
	Duration         time.Duration
	TimestampType    string
	EdgeTags         []string
	Hash, ParentHash uint64
	PathwayLatency   *ddsketch.DDSketch // seconds
	EdgeLatency      *ddsketch.DDSketch // seconds
	PayloadSize      *ddsketch.DDSketch // bytes
}

// Count is how many checkpoints the point aggregates.
func (p Point) Count() float64 { return p.EdgeLatency.GetCount() }

// BacklogEntry is a Backlog with the service and bucket that carried it.
type BacklogEntry struct {
	Service string
	Start   time.Time
	Tags    []string
	Value   int64
}

// Required keys per map, checked on the raw msgpack before typed decoding.
var (
	payloadKeys = []string{"Env", "Service", "Stats", "TracerVersion", "Lang", "Version"}
	bucketKeys  = []string{"Start", "Duration", "Stats", "Backlogs"}
	pointKeys   = []string{"EdgeTags", "Hash", "ParentHash", "PathwayLatency", "EdgeLatency", "PayloadSize", "TimestampType"}
	binKeys     = []string{"PathwayLatency", "EdgeLatency", "PayloadSize"}
)

// maxPayload bounds what DecodePayload inflates, so a hostile body cannot exhaust memory.
const maxPayload = 64 << 20

// DecodePayload gunzips and strictly decodes one /v0.1/pipeline_stats body: every required key
// present, no unknown key, byte fields as msgpack bin, sketches valid protobuf DDSketches.
func DecodePayload(body []byte) (*Payload, []Point, error) {
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("gzip: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, maxPayload+1))
	if err != nil {
		return nil, nil, fmt.Errorf("gzip: %w", err)
	}
	if len(raw) > maxPayload {
		return nil, nil, fmt.Errorf("payload over %d bytes inflated", maxPayload)
	}
	var generic map[string]any
	if err := msgpack.Unmarshal(raw, &generic); err != nil {
		return nil, nil, fmt.Errorf("msgpack: %w", err)
	}
	if err := checkShape(generic); err != nil {
		return nil, nil, err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields(true)
	var p Payload
	if err := dec.Decode(&p); err != nil {
		return nil, nil, fmt.Errorf("msgpack: %w", err)
	}
	var pts []Point
	for _, b := range p.Stats {
		for _, rp := range b.Stats {
			pt := Point{Service: p.Service, Env: p.Env, Start: time.Unix(0, int64(b.Start)), Duration: time.Duration(b.Duration),
				TimestampType: rp.TimestampType, EdgeTags: rp.EdgeTags, Hash: rp.Hash, ParentHash: rp.ParentHash}
			for _, s := range []struct {
				name string
				in   []byte
				out  **ddsketch.DDSketch
			}{{"PathwayLatency", rp.PathwayLatency, &pt.PathwayLatency}, {"EdgeLatency", rp.EdgeLatency, &pt.EdgeLatency}, {"PayloadSize", rp.PayloadSize, &pt.PayloadSize}} {
				sk, err := DecodeSketch(s.in)
				if err != nil {
					return nil, nil, fmt.Errorf("point %x %s: %w", rp.Hash, s.name, err)
				}
				*s.out = sk
			}
			pts = append(pts, pt)
		}
	}
	return &p, pts, nil
}

// DecodeSketch decodes a protobuf DDSketch.
func DecodeSketch(b []byte) (*ddsketch.DDSketch, error) {
	var pb sketchpb.DDSketch
	if err := proto.Unmarshal(b, &pb); err != nil {
		return nil, fmt.Errorf("sketch protobuf: %w", err)
	}
	if pb.Mapping == nil {
		return nil, fmt.Errorf("sketch has no index mapping")
	}
	return ddsketch.FromProto(&pb)
}

func checkShape(p map[string]any) error {
	if err := hasKeys("payload", p, payloadKeys); err != nil {
		return err
	}
	buckets, ok := p["Stats"].([]any)
	if !ok && p["Stats"] != nil {
		return fmt.Errorf("payload Stats is %T, want an array", p["Stats"])
	}
	for i, b := range buckets {
		bm, ok := b.(map[string]any)
		if !ok {
			return fmt.Errorf("payload Stats[%d] is %T, want a map", i, b)
		}
		if err := hasKeys(fmt.Sprintf("Stats[%d]", i), bm, bucketKeys); err != nil {
			return err
		}
		pts, _ := bm["Stats"].([]any)
		for j, pt := range pts {
			pm, ok := pt.(map[string]any)
			if !ok {
				return fmt.Errorf("Stats[%d].Stats[%d] is %T, want a map", i, j, pt)
			}
			where := fmt.Sprintf("Stats[%d].Stats[%d]", i, j)
			if err := hasKeys(where, pm, pointKeys); err != nil {
				return err
			}
			for _, k := range binKeys {
				if _, ok := pm[k].([]byte); !ok {
					return fmt.Errorf("%s.%s is %T, want msgpack bin", where, k, pm[k])
				}
			}
		}
	}
	return nil
}

func hasKeys(where string, m map[string]any, keys []string) error {
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			return fmt.Errorf("%s: key %q missing", where, k)
		}
	}
	return nil
}

// Option configures the fake Agent.
type Option func(*Agent)

// Info404 makes /info answer 404, like an Agent too old for DSM.
func Info404() Option { return func(a *Agent) { a.info = http.StatusNotFound } }

// WithoutDSMEndpoint makes /info list endpoints but not /v0.1/pipeline_stats.
func WithoutDSMEndpoint() Option { return func(a *Agent) { a.listDSM = false } }

// Agent is the fake Datadog Agent.
type Agent struct {
	srv     *httptest.Server
	info    int
	listDSM bool

	mu        sync.Mutex
	status    int // answer for pipeline_stats
	payloads  []*Payload
	points    []Point
	backlogs  []BacklogEntry
	infoHits  int
	posts     int
	decodeErr []error
	changed   chan struct{}
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
	a.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
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
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPayload))
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
