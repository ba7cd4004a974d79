package aggregator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/redact"
)

// PipelineStatsPath is the Agent endpoint DSM payloads go to.
const PipelineStatsPath = "/v0.1/pipeline_stats"

// Agent sink defaults.
const (
	DefaultAgentURL        = "http://localhost:8126"
	DefaultMaxPendingBytes = 8 << 20
	DefaultInfoInterval    = 5 * time.Minute
	defaultRetries         = 3
	defaultBackoff         = 100 * time.Millisecond
	maxBackoff             = 2 * time.Second
	// maxPostsInFlight bounds the payloads a flush posts at once. The Agent answers each only
	// after forwarding it to the intake, and a flush posts one per service: one at a time, a
	// few hundred services and a slow intake would fill the interval with waiting.
	maxPostsInFlight = 16
)

// DefaultAgentSocket is the Agent's unix socket the tracers use when nothing is configured and
// the socket exists (dsm-protocol.md 6).
const DefaultAgentSocket = "/var/run/datadog/apm.socket"

// parseAgentURL returns the base URL requests go to and, for unix sockets, the socket path.
func parseAgentURL(s string) (base, socket string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("agent URL %q: %w", redact.URL(s), redact.ParseError(s, err))
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return "", "", fmt.Errorf("agent URL %q has no host", redact.URL(s))
		}
		return strings.TrimSuffix(u.String(), "/"), "", nil
	case "unix":
		p := u.Path
		if p == "" {
			p = u.Opaque
		}
		if p == "" {
			return "", "", fmt.Errorf("agent URL %q has no socket path", redact.URL(s))
		}
		return "http://agent", p, nil
	}
	return "", "", fmt.Errorf("agent URL %q: scheme must be http, https or unix", redact.URL(s))
}

// AgentConfig configures the Agent sink.
type AgentConfig struct {
	URL                         string // empty: DefaultAgentURL
	Env, Version, TracerVersion string
	MaxPendingBytes             int           // payloads waiting for a down Agent; oldest dropped (default DefaultMaxPendingBytes)
	InfoInterval                time.Duration // /info re-check (default DefaultInfoInterval)
	Retries                     int           // connection-error retries per payload within one Send (default 3; <0 none)
	Backoff                     time.Duration // first retry wait, doubled up to 2 s (default 100ms)
	HTTPClient                  *http.Client
	Clock                       func() time.Time
	Log                         zerolog.Logger
}

// AgentStats are the Agent sink's counters.
type AgentStats struct {
	Payloads       uint64 // accepted by the Agent
	Bytes          uint64 // gzip bytes accepted
	Rejected       uint64 // answered 4xx: dropped, not retried
	Failed         uint64 // send attempts that failed (connection error or 5xx)
	Dropped        uint64 // payloads dropped to keep pending bytes bounded
	Unconfirmed    uint64 // payloads the Agent took but did not answer in time: dropped, not sent again
	Pending        int    // payloads waiting
	PendingBytes   int
	EndpointListed bool // the last /info answer read listed /v0.1/pipeline_stats (false before one was)
}

// AgentSink sends one msgpack+gzip payload per service to the Agent's /v0.1/pipeline_stats.
type AgentSink struct {
	cfg    AgentConfig
	shown  string // cfg.URL as logs and pages show it (redact.URL)
	base   string
	client *http.Client
	sleep  func(ctx context.Context, d time.Duration) error

	mu           sync.Mutex // one Send at a time; guards pending and info state
	pending      [][]byte
	pendingBytes int
	infoChecked  time.Time
	infoOK       bool // Agent known to list the endpoint (or /info unknown): payloads may go
	infoListed   bool // the last /info answer read listed the endpoint
	enc          payloadEncoder

	warnMu sync.Mutex // the posts of a flush run at once and warn
	warned string
	// warnedAt is when each condition was last a Warn line; quiet says the current one came back
	// within rewarnAfter of it, so it and its end are Debug lines.
	warnedAt map[string]time.Time
	quiet    bool

	// Mirrors of len(pending), pendingBytes, infoListed and !infoOK, so Stats never waits for a
	// slow Send.
	statPending, statPendingBytes atomic.Int64
	statListed, statMissing       atomic.Bool

	payloads, bytes, rejected, failed, dropped, unconfirmed atomic.Uint64
}

// NewAgentSink validates cfg and returns the sink.
func NewAgentSink(cfg AgentConfig) (*AgentSink, error) {
	if cfg.URL == "" {
		cfg.URL = DefaultAgentURL
	}
	base, socket, err := parseAgentURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.MaxPendingBytes <= 0 {
		cfg.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if cfg.InfoInterval <= 0 {
		cfg.InfoInterval = DefaultInfoInterval
	}
	if cfg.Retries == 0 {
		cfg.Retries = defaultRetries
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = defaultBackoff
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	client := cfg.HTTPClient
	if client == nil {
		// A connection per post in flight stays open for the next flush.
		tr := &http.Transport{MaxIdleConns: maxPostsInFlight, MaxIdleConnsPerHost: maxPostsInFlight, IdleConnTimeout: 90 * time.Second}
		if socket != "" {
			tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			}
		}
		client = &http.Client{Timeout: 10 * time.Second, Transport: tr}
	}
	s := &AgentSink{cfg: cfg, shown: redact.URL(cfg.URL), base: base, client: client, sleep: sleepCtx, infoOK: true}
	s.mirror()
	return s, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Send encodes the buckets into one payload per service, queues them behind any that are still
// pending, and sends what it can. Connection errors keep payloads pending (bounded by bytes).
func (s *AgentSink) Send(ctx context.Context, buckets []Bucket) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range buildPayloads(payloadMeta{Env: s.cfg.Env, Version: s.cfg.Version, TracerVersion: s.cfg.TracerVersion}, buckets) {
		body, err := s.enc.encode(&p)
		if err != nil {
			s.cfg.Log.Error().Err(err).Str("service", p.Service).Msg("DSM payload could not be encoded; dropped")
			continue
		}
		s.enqueue(body)
	}
	s.enc.release()
	if len(s.pending) == 0 {
		return nil
	}
	s.checkInfo(ctx)
	if !s.infoOK {
		// Warned once; payloads wait, bounded. The error tells a flush at exit that they are lost.
		return fmt.Errorf("agent %s: %d payload(s) waiting: its /info said it cannot take DSM", s.shown, len(s.pending))
	}
	return s.postPending(ctx)
}

// postPending posts the pending payloads, oldest first: one, and once the Agent has answered one,
// up to maxPostsInFlight at once. It starts no more once the flush's time is out or a post failed
// (the Agent cannot be reached, or answers 5xx): those and the ones not started wait for the next
// flush, in their order.
func (s *AgentSink) postPending(ctx context.Context) error {
	type posted struct {
		i   int
		err error
	}
	results := make(chan posted)
	gone := make([]bool, len(s.pending)) // sent, or dropped for good
	next, inFlight, window := 0, 0, 1
	var stop error // why no more are started
	for {
		for stop == nil && inFlight < window && next < len(s.pending) {
			if err := ctx.Err(); err != nil {
				// The flush's time ran out on an earlier payload (one the Agent did not answer): the
				// rest wait for the next flush, without counting as failures of an Agent that answers.
				stop = err
				break
			}
			i, body := next, s.pending[next]
			next++
			inFlight++
			go func() { results <- posted{i, s.post(ctx, body)} }()
		}
		if inFlight == 0 {
			break
		}
		r := <-results
		inFlight--
		var rej *rejectedError
		switch {
		case r.err == nil:
			window = maxPostsInFlight
		case errors.As(r.err, &rej):
			s.rejected.Add(1)
			s.warnOnce("rejected:"+rej.status, func(e *zerolog.Event) *zerolog.Event {
				return e.Str("status", rej.status).Str("body", rej.body)
			}, "the Agent rejected a DSM payload; dropping it (not retried)")
		case errors.Is(r.err, errUnconfirmed):
			s.unconfirmed.Add(1)
			s.warnOnce("unconfirmed", func(e *zerolog.Event) *zerolog.Event { return e.Err(r.err) },
				"the Agent took a DSM payload and did not answer in time; dropping it rather than sending it again, which could count its buckets twice (dd-trace-go and dd-trace-java drop it too)")
		default:
			if stop == nil {
				stop = r.err
			}
			continue
		}
		gone[r.i] = true
		s.pendingBytes -= len(s.pending[r.i])
		s.statPending.Add(-1)
		s.statPendingBytes.Store(int64(s.pendingBytes))
	}
	kept := s.pending[:0]
	for i, body := range s.pending {
		if !gone[i] {
			kept = append(kept, body)
		}
	}
	clear(s.pending[len(kept):])
	s.pending = kept
	if len(s.pending) == 0 {
		s.pending = nil
	}
	s.mirror()
	if len(s.pending) > 0 {
		return fmt.Errorf("agent %s: %d payload(s) not sent: %w", s.shown, len(s.pending), stop)
	}
	return nil
}

// popPending forgets the oldest pending payload.
func (s *AgentSink) popPending() {
	s.pendingBytes -= len(s.pending[0])
	s.pending[0] = nil
	s.pending = s.pending[1:]
	s.mirror()
}

func (s *AgentSink) mirror() {
	s.statPending.Store(int64(len(s.pending)))
	s.statPendingBytes.Store(int64(s.pendingBytes))
	s.statListed.Store(s.infoListed)
	s.statMissing.Store(!s.infoOK)
}

func (s *AgentSink) enqueue(body []byte) {
	if len(body) > s.cfg.MaxPendingBytes { // could never wait: drop it, not the others
		s.dropped.Add(1)
		return
	}
	s.pending = append(s.pending, body)
	s.pendingBytes += len(body)
	for s.pendingBytes > s.cfg.MaxPendingBytes {
		s.popPending()
		s.dropped.Add(1)
	}
	s.mirror()
}

// errUnconfirmed marks a send whose request was written (to the socket: perhaps not yet read)
// and whose answer did not come in time: the Agent may have taken the payload, and sending it
// again could count its buckets twice (the Agent does not deduplicate). Connection errors and 5xx
// answers are retried: the Agent's pipeline_stats handler is a reverse proxy to the intake, so a
// 5xx is the intake's refusal or the Agent's 502 for an intake it could not reach. (The tracers
// drop such a payload instead; an Agent that also copied it to other endpoints would count a
// retried one twice there.)
var errUnconfirmed = errors.New("the Agent did not answer a payload it received")

type rejectedError struct{ status, body string }

func (e *rejectedError) Error() string { return "rejected: " + e.status }

// post sends one payload, retrying connection errors and 5xx with capped backoff.
func (s *AgentSink) post(ctx context.Context, body []byte) error {
	wait := s.cfg.Backoff
	var err error
	for attempt := 0; ; attempt++ {
		err = s.postOnce(ctx, body)
		var rej *rejectedError
		if err == nil || errors.As(err, &rej) || errors.Is(err, errUnconfirmed) {
			if err == nil {
				first := s.payloads.Add(1) == 1
				s.bytes.Add(uint64(len(body)))
				s.warnMu.Lock()
				switch {
				case s.warned != "":
					s.recovered("the Agent accepts DSM payloads again")
				case first:
					s.cfg.Log.Info().Str("agent", s.shown).Msg("the Agent accepted the first DSM payload")
				}
				s.warnMu.Unlock()
			}
			return err
		}
		s.failed.Add(1)
		// Retries stay inside the flush's deadline (the interval): the next flush retries anyway.
		if dl, ok := ctx.Deadline(); attempt >= s.cfg.Retries || ctx.Err() != nil || ok && time.Until(dl) < wait {
			key, msg := "down", "the Agent cannot be reached; DSM payloads wait (bounded) and are sent again at every flush, with a few tries within each (no Agent here? agent.disabled stops sending; GET /dsm on the admin listener shows the stats)"
			if errors.As(err, new(*serverError)) { // reached: the intake's refusal, or its forwarder is off
				key, msg = "server_error", "the Agent answered a DSM payload with a server error; DSM payloads wait (bounded) and are sent again at every flush, with a few tries within each (the Agent's own log says why)"
			}
			s.warnOnce(key, func(e *zerolog.Event) *zerolog.Event { return e.Err(err) }, msg)
			return err
		}
		if s.sleep(ctx, wait) != nil {
			return err
		}
		wait = min(2*wait, maxBackoff)
	}
}

func (s *AgentSink) postOnce(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+PipelineStatsPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	h := req.Header
	h.Set("Content-Type", "application/msgpack")
	h.Set("Content-Encoding", "gzip")
	h.Set("Datadog-Meta-Lang", "go")
	h.Set("Datadog-Meta-Lang-Version", strings.TrimPrefix(runtime.Version(), "go"))
	h.Set("Datadog-Meta-Lang-Interpreter", runtime.Compiler+"-"+runtime.GOARCH+"-"+runtime.GOOS)
	h.Set("Datadog-Meta-Tracer-Version", s.cfg.TracerVersion)
	var wrote atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) { wrote.Store(i.Err == nil) },
	}))
	resp, err := s.client.Do(req)
	if err != nil {
		// Written and then given up on (the deadline, or a shutdown cancelling the flush): the
		// Agent may have it. A reset or EOF instead means it closed without taking it.
		if wrote.Load() && (isTimeout(err) || ctx.Err() != nil) {
			return fmt.Errorf("%w: %w", errUnconfirmed, err)
		}
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode < 300:
		return nil
	case resp.StatusCode < 500:
		return &rejectedError{status: resp.Status, body: strings.TrimSpace(string(msg))}
	default:
		return &serverError{status: resp.Status, body: strings.TrimSpace(string(msg))}
	}
}

// serverError is a 5xx answer: kept and sent again, as a connection error is.
type serverError struct{ status, body string }

func (e *serverError) Error() string {
	if e.body == "" {
		return "agent answered " + e.status
	}
	return "agent answered " + e.status + ": " + e.body
}

// checkInfo asks /info (at the first send and every InfoInterval) whether the Agent lists the DSM
// endpoint. An Agent that does not gets one warning, not one per flush.
func (s *AgentSink) checkInfo(ctx context.Context) {
	defer s.mirror()
	now := s.cfg.Clock()
	if !s.infoChecked.IsZero() && now.Sub(s.infoChecked) < s.cfg.InfoInterval {
		return
	}
	s.infoChecked = now
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/info", nil)
	if err != nil {
		return
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.infoOK = true // unknown: sending will tell
		return
	}
	defer resp.Body.Close()
	var info struct {
		Version   string   `json:"version"`
		Endpoints []string `json:"endpoints"`
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		s.infoOK, s.infoListed = false, false
		s.warnOnce("info404", nil, "the Agent has no /info endpoint (older than 7.28): it cannot receive DSM; upgrade it. Stats keep aggregating; the oldest are dropped while it cannot")
	case resp.StatusCode >= 300:
		s.infoOK = true
	case json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&info) != nil:
		s.infoOK = true
	default:
		listed := false
		for _, e := range info.Endpoints {
			if strings.TrimSuffix(e, "/") == PipelineStatsPath {
				listed = true
			}
		}
		s.infoOK, s.infoListed = listed, listed
		if !listed {
			s.warnOnce("unlisted", func(e *zerolog.Event) *zerolog.Event { return e.Str("agent_version", info.Version) },
				"the Agent does not list /v0.1/pipeline_stats in /info (DSM needs Agent 7.34+): stats keep aggregating; the oldest are dropped while it cannot receive them")
		} else {
			s.warnMu.Lock()
			if s.warned == "info404" || s.warned == "unlisted" {
				s.recovered("the Agent now lists /v0.1/pipeline_stats")
			}
			s.warnMu.Unlock()
		}
	}
}

// rewarnAfter is how long after its Warn line a condition that comes back is a Debug line, and so
// is its end: an Agent that flaps (down at one flush and up at the next, or answering just past
// the flush's deadline) would write two lines a flush. The counters count every time.
const rewarnAfter = 10 * time.Minute

// warnOnce logs a warning the first time a condition appears; it logs again only after the
// condition changed (another one, or a payload accepted), and then at Warn only if its last Warn
// line is rewarnAfter old. The caller holds no lock.
func (s *AgentSink) warnOnce(key string, fields func(*zerolog.Event) *zerolog.Event, msg string) {
	s.warnMu.Lock()
	defer s.warnMu.Unlock()
	if s.warned == key {
		return
	}
	s.warned = key
	now := s.cfg.Clock()
	e := s.cfg.Log.Warn()
	if last, ok := s.warnedAt[key]; ok && now.Sub(last) < rewarnAfter && !now.Before(last) {
		s.quiet = true
		e = s.cfg.Log.Debug()
	} else {
		if s.warnedAt == nil {
			s.warnedAt = map[string]time.Time{}
		}
		s.warnedAt[key], s.quiet = now, false
	}
	e = e.Str("agent", s.shown)
	if fields != nil {
		e = fields(e)
	}
	e.Msg(msg)
}

// recovered logs the end of the warned condition, at Debug if it was a Debug line itself. The
// caller holds warnMu.
func (s *AgentSink) recovered(msg string) {
	e := s.cfg.Log.Info()
	if s.quiet {
		e = s.cfg.Log.Debug()
	}
	e.Str("agent", s.shown).Msg(msg)
	s.warned, s.quiet = "", false
}

// EndpointMissing reports whether the Agent's last /info answer said it cannot take DSM (404, or
// endpoints without /v0.1/pipeline_stats): payloads wait. False while /info is not known.
func (s *AgentSink) EndpointMissing() bool { return s.statMissing.Load() }

// URL is the Agent the sink sends to.
func (s *AgentSink) URL() string { return s.shown }

// Stats returns the sink's counters.
func (s *AgentSink) Stats() AgentStats {
	return AgentStats{
		Payloads: s.payloads.Load(), Bytes: s.bytes.Load(), Rejected: s.rejected.Load(), Failed: s.failed.Load(),
		Dropped: s.dropped.Load(), Unconfirmed: s.unconfirmed.Load(), Pending: int(s.statPending.Load()), PendingBytes: int(s.statPendingBytes.Load()),
		EndpointListed: s.statListed.Load(),
	}
}

// isTimeout reports whether err is a deadline: the client's timeout or its context's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
