package errtrack

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/dsmproxy/dsmproxy/internal/redact"
)

// TracesPath is the Agent's msgpack trace intake the error spans go to.
const TracesPath = "/v0.4/traces"

// AgentConfig configures the Agent reporter.
type AgentConfig struct {
	// Enabled turns the reporter on (see AgentEnabledFromEnv).
	Enabled bool
	// URL is the Agent's base URL: http://host:8126, https://..., or unix:///path/to/apm.socket.
	// cmd/dsmproxy resolves it from DD_TRACE_AGENT_URL, DD_AGENT_HOST and DD_TRACE_AGENT_PORT.
	URL string
	// Env and Version become the spans' env and version tags when set.
	Env, Version string
	// NativeSpanEvents writes the exception event in the top-level span_events field. Off by
	// default, as in dd-trace-py (DD_TRACE_NATIVE_SPAN_EVENTS): the meta "events" JSON string is
	// understood by every Agent version, the native field only by recent ones.
	NativeSpanEvents bool
	// Client sends the requests (default: 10 s timeout, a unix socket dialer for unix:// URLs).
	Client *http.Client
}

// AgentEnabledFromEnv reports whether the environment turns the Agent reporter on, as dd-trace-py
// reads its variables: DD_ERROR_TRACKING_HANDLED_ERRORS set to user, third_party or all, or
// DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE naming at least one module (a comma-separated list).
// Any other value, empty or "false" included, leaves reporting off in the tracer, and here. The
// proxy has no user/third-party or module split, so which value it was does not matter.
func AgentEnabledFromEnv(getenv func(string) string) bool {
	switch getenv(HandledErrorsVars[0]) {
	case "user", "third_party", "all":
		return true
	}
	for _, m := range strings.Split(getenv(HandledErrorsVars[1]), ",") {
		if strings.TrimSpace(m) != "" {
			return true
		}
	}
	return false
}

// HandledErrorsVars are the tracers' variables that turn handled-error reporting on: the mode,
// and the modules to report.
var HandledErrorsVars = []string{"DD_ERROR_TRACKING_HANDLED_ERRORS", "DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE"}

// AgentReporter sends every group of an interval as a one-span error trace to the Agent, tagged the
// way dd-trace-py tags handled exceptions so Datadog's Error Tracking groups them.
type AgentReporter struct {
	cfg      AgentConfig
	endpoint string // request URL
	badURL   error
	client   *http.Client

	mu      sync.Mutex
	pending [][]span // traces of intervals the Agent could not take yet (down, or 5xx)
	dropped atomic.Int64
}

// Dropped is how many error traces were dropped since the start because more than
// maxPendingTraces waited for the Agent.
func (a *AgentReporter) Dropped() int64 { return a.dropped.Load() }

// maxPendingTraces bounds the traces kept for an Agent that is down; the oldest go first.
const maxPendingTraces = 2000

// NewAgentReporter returns the reporter for cfg. A URL it cannot use makes every Send fail with the
// reason rather than New failing: the proxy keeps running without error spans.
func NewAgentReporter(cfg AgentConfig) *AgentReporter {
	a := &AgentReporter{cfg: cfg, client: cfg.Client}
	u, err := url.Parse(cfg.URL)
	switch {
	case err != nil:
		a.badURL = fmt.Errorf("%q: %w", redact.URL(cfg.URL), redact.ParseError(cfg.URL, err))
	case u.Scheme == "http" || u.Scheme == "https":
		if u.Host == "" {
			a.badURL = fmt.Errorf("%q has no host", redact.URL(cfg.URL))
		}
		a.endpoint = strings.TrimSuffix(u.String(), "/") + TracesPath
	case u.Scheme == "unix":
		sock := u.Path
		if sock == "" {
			a.badURL = fmt.Errorf("%q has no socket path", redact.URL(cfg.URL))
		}
		a.endpoint = "http://localhost" + TracesPath
		if a.client == nil {
			var d net.Dialer
			tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", sock)
			}}
			a.client = &http.Client{Timeout: 10 * time.Second, Transport: tr}
		}
	default:
		a.badURL = fmt.Errorf("%q: scheme must be http, https or unix", redact.URL(cfg.URL))
	}
	if a.client == nil {
		a.client = &http.Client{Timeout: 10 * time.Second}
	}
	return a
}

// span is one span as the Agent's v0.4 decoder reads it.
type span struct {
	Service    string             `msgpack:"service"`
	Name       string             `msgpack:"name"`
	Resource   string             `msgpack:"resource"`
	TraceID    uint64             `msgpack:"trace_id"`
	SpanID     uint64             `msgpack:"span_id"`
	ParentID   uint64             `msgpack:"parent_id"`
	Start      int64              `msgpack:"start"`
	Duration   int64              `msgpack:"duration"`
	Error      int32              `msgpack:"error"`
	Meta       map[string]string  `msgpack:"meta"`
	Metrics    map[string]float64 `msgpack:"metrics"`
	Type       string             `msgpack:"type"`
	SpanEvents []nativeEvent      `msgpack:"span_events,omitempty"`
}

// jsonEvent is a span event in the meta "events" JSON form dd-trace-py writes by default.
type jsonEvent struct {
	Name         string            `json:"name"`
	TimeUnixNano int64             `json:"time_unix_nano"`
	Attributes   map[string]string `json:"attributes"`
}

// nativeEvent is a span event in the top-level span_events form: attributes carry their type
// (0 = string) next to the value.
type nativeEvent struct {
	Name         string                   `msgpack:"name"`
	TimeUnixNano int64                    `msgpack:"time_unix_nano"`
	Attributes   map[string]nativeStrAttr `msgpack:"attributes"`
}

type nativeStrAttr struct {
	Type        int    `msgpack:"type"`
	StringValue string `msgpack:"string_value"`
}

// Send posts iv's groups, one trace each, in a single request, after the traces of earlier
// intervals the Agent could not take (it was unreachable or answered 5xx; at most
// maxPendingTraces are kept). An empty interval with nothing pending sends nothing.
func (a *AgentReporter) Send(ctx context.Context, iv Interval) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(iv.Groups) == 0 && len(a.pending) == 0 {
		return nil
	}
	if a.badURL != nil {
		return fmt.Errorf("errtrack: agent URL: %w", a.badURL)
	}
	// What an unreachable or failing Agent did not take goes out first, with this interval.
	traces := append(a.pending, make([][]span, 0, len(iv.Groups))...)
	a.pending = nil
	for i := range iv.Groups {
		traces = append(traces, []span{a.span(&iv.Groups[i], iv)})
	}
	if len(traces) > maxPendingTraces {
		a.dropped.Add(int64(len(traces) - maxPendingTraces))
		traces = traces[len(traces)-maxPendingTraces:]
	}
	retry := func() { a.pending = traces }
	body, err := msgpack.Marshal(traces)
	if err != nil {
		return fmt.Errorf("errtrack: encode %d error traces for %s: %w", len(traces), TracesPath, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.endpoint, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("errtrack: agent %s: %w", redact.URL(a.cfg.URL), err)
	}
	req.Header.Set("Content-Type", "application/msgpack")
	req.Header.Set("Datadog-Meta-Lang", "go")
	req.Header.Set("Datadog-Meta-Lang-Version", strings.TrimPrefix(runtime.Version(), "go"))
	req.Header.Set("Datadog-Meta-Lang-Interpreter", runtime.Compiler+"-"+runtime.GOARCH+"-"+runtime.GOOS)
	req.Header.Set("Datadog-Meta-Tracer-Version", "dsmproxy")
	req.Header.Set("X-Datadog-Trace-Count", strconv.Itoa(len(traces)))
	// The error is what the log says of the flush: it tells whether the traces are kept.
	kept := fmt.Sprintf("%d error traces wait for the next flush", len(traces))
	resp, err := a.client.Do(req)
	if err != nil {
		retry()
		return fmt.Errorf("errtrack: agent %s: POST %s: %w; %s", redact.URL(a.cfg.URL), TracesPath, err, kept)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 400 {
		return nil
	}
	// 5xx, and the Agent's own "busy" answers (429: its decoders stayed full; 408: decoding
	// timed out), refuse for now: the traces go again with the next flush. Other 4xx would
	// refuse them again: those are dropped.
	fate := fmt.Sprintf("%d error traces dropped", len(traces))
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
		retry()
		fate = kept
	}
	return fmt.Errorf("errtrack: agent %s: POST %s: status %d: %s; %s", redact.URL(a.cfg.URL), TracesPath,
		resp.StatusCode, bytes.TrimSpace(msg), fate)
}

// ErrorType is the error.type / exception.type of a group: protocol, category and name, the
// analogue of dd-trace-py's module.ClassName, stable so Error Tracking keeps one issue per kind.
func ErrorType(fp Fingerprint) string {
	name := fp.Name
	if name == "" {
		name = strconv.Itoa(int(fp.Code))
	}
	proto := fp.Protocol
	if proto == "" {
		proto = "dsmproxy"
	}
	return proto + "." + fp.Category.String() + "." + name
}

// ErrorMessage is the error.message of a group: what failed where, plus the latest sample text.
func ErrorMessage(g *Group) string {
	var b strings.Builder
	b.WriteString(g.Operation)
	if where := edgeLabel(g); where != "" {
		b.WriteString(" " + where)
	}
	b.WriteString(": " + g.Name)
	if g.Code != 0 {
		b.WriteString(" (code " + strconv.Itoa(int(g.Code)) + ")")
	}
	if g.Sample != "" {
		b.WriteString(": " + g.Sample)
	}
	return b.String()
}

// edgeLabel names the destination compactly: exchange/topic.
func edgeLabel(g *Group) string {
	e := g.Edge
	switch {
	case e.Exchange != "" && e.Topic != "":
		return e.Exchange + "/" + e.Topic
	case e.Exchange != "":
		return e.Exchange
	}
	return e.Topic
}

func (a *AgentReporter) span(g *Group, iv Interval) span {
	start := g.IntervalFirst
	if start.IsZero() {
		start = iv.Start
	}
	end := g.IntervalLast
	if end.Before(start) {
		end = start
	}
	etype, emsg := ErrorType(g.Fingerprint), ErrorMessage(g)
	stack := "dsmproxy saw " + g.Protocol + " " + g.Operation + " fail with " + g.Name + " on " + g.Edge.String()
	s := span{
		Service:  cmp.Or(g.Service, "dsmproxy"),
		Name:     "dsmproxy." + g.Category.String(),
		Resource: cmp.Or(g.Edge.String(), g.Operation),
		TraceID:  nonZeroRand(),
		SpanID:   nonZeroRand(),
		Start:    start.UnixNano(),
		Duration: end.Sub(start).Nanoseconds(),
		Error:    1,
		Type:     "queue",
		Meta: map[string]string{
			"error.type":                    etype,
			"error.message":                 emsg,
			"error.stack":                   stack,
			"component":                     "dsmproxy",
			"messaging.system":              g.Protocol,
			"messaging.operation":           g.Operation,
			"dsmproxy.category":             g.Category.String(),
			"dsmproxy.error.name":           g.Name,
			"dsmproxy.error.code":           strconv.Itoa(int(g.Code)),
			"dsmproxy.error.retriable":      strconv.FormatBool(g.Retriable),
			"dsmproxy.edge":                 g.Edge.String(),
			"_dd.span_events.has_exception": "true",
		},
		Metrics: map[string]float64{
			"_sampling_priority_v1": 2, // keep: there is at most one span per group per interval
			"dsmproxy.errors.count": float64(g.Count),
			"dsmproxy.messages":     float64(g.Messages),
		},
	}
	if g.Category == LostMessage {
		s.Metrics["dsmproxy.lost_messages"] = float64(g.Messages)
	}
	if g.Throttle > 0 {
		s.Metrics["dsmproxy.throttled_ms"] = float64(g.Throttle.Milliseconds())
	}
	if g.Edge.Topic != "" {
		s.Meta["messaging.destination.name"] = g.Edge.Topic
	}
	if len(g.Partitions) > 0 {
		ps := make([]string, len(g.Partitions))
		for i, p := range g.Partitions {
			ps[i] = strconv.Itoa(int(p))
		}
		s.Meta["dsmproxy.partitions"] = strings.Join(ps, ",")
	}
	if a.cfg.Env != "" {
		s.Meta["env"] = a.cfg.Env
	}
	if a.cfg.Version != "" {
		s.Meta["version"] = a.cfg.Version
	}
	at := end.UnixNano()
	attrs := map[string]string{"exception.type": etype, "exception.message": emsg, "exception.stacktrace": stack}
	if a.cfg.NativeSpanEvents {
		na := make(map[string]nativeStrAttr, len(attrs))
		for k, v := range attrs {
			na[k] = nativeStrAttr{Type: 0, StringValue: v}
		}
		s.SpanEvents = []nativeEvent{{Name: "exception", TimeUnixNano: at, Attributes: na}}
	} else {
		ev, _ := json.Marshal([]jsonEvent{{Name: "exception", TimeUnixNano: at, Attributes: attrs}}) // cannot fail: strings only
		s.Meta["events"] = string(ev)
	}
	return s
}

// nonZeroRand is a random id; 0 means "none" to the Agent.
func nonZeroRand() uint64 {
	for {
		if v := rand.Uint64() >> 1; v != 0 { // 63 bits, like the tracers, so signed decoders agree
			return v
		}
	}
}
