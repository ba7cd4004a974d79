package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dsmproxy/dsmproxy/internal/redact"
)

// admin serves /healthz, /readyz and /debug/pprof/, plus whatever pages other parts register.
type admin struct {
	fronts  []namedFront
	ready   atomic.Bool // set once every front listens, cleared when draining
	dialTO  time.Duration
	mux     *http.ServeMux
	started time.Time
	pages   []string // the paths served, for the index at /
}

func newAdmin(fronts []namedFront) *admin {
	a := &admin{fronts: fronts, dialTO: 2 * time.Second, mux: http.NewServeMux(), started: time.Now()}
	a.mux.HandleFunc("GET /{$}", a.index)
	a.pages = append(a.pages, "/healthz", "/readyz", "/debug/pprof/")
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "version": version, "uptime_s": int(time.Since(a.started).Seconds())})
	})
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.HandleFunc("/debug/pprof/", pprof.Index)
	a.mux.HandleFunc("/debug/pprof/cmdline", cmdline)
	a.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	a.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	a.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return a
}

// cmdline is pprof's /cmdline (the arguments, NUL-separated) with the secret of every URL's user
// info masked: --agent-url may carry one, and the admin page may be reachable from other hosts.
func cmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	args := make([]string, len(os.Args))
	for i, arg := range os.Args {
		args[i] = redact.URL(arg)
	}
	fmt.Fprint(w, strings.Join(args, "\x00"))
}

type frontStatus struct {
	Front     string            `json:"front"` // the config entry, as log lines name it: amqp[1]
	Protocol  string            `json:"protocol"`
	Listen    string            `json:"listen"`
	Upstreams map[string]string `json:"upstreams"` // address -> "ok" or the dial error
	Problem   string            `json:"problem,omitempty"`
	Ready     bool              `json:"ready"`
}

// problemReporter is a front that can know clients cannot use it although it listens (a Kafka
// broker node whose listener could not open).
type problemReporter interface{ Problem() error }

// upstreamProblemReporter is a front that can know an upstream that answers a TCP dial is not its
// kind of server (it answered the front with another protocol).
type upstreamProblemReporter interface {
	UpstreamProblem(ctx context.Context, addr string) error
}

// readyz: listeners up and, for every front, at least one upstream answering a TCP dial, not
// known to speak another protocol, and no problem the front knows of. It answers once that is decided: a front with one upstream that
// answered does not wait for another that hangs (a broker whose host is down), as a probe's
// timeout (Kubernetes: 1 s) would otherwise take a proxy that works for one that is not ready.
func (a *admin) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.dialTO)
	defer cancel() // ends the dials still waiting
	type dialResult struct {
		front int
		up    string
		err   error
	}
	out := make([]frontStatus, len(a.fronts))
	okFronts, pending := 0, 0
	for _, f := range a.fronts {
		pending += len(f.upstreams)
	}
	// Room for every result: a dial sends its own without waiting, and none is dropped, as
	// the loop below counts them all until it has its answer.
	results := make(chan dialResult, pending)
	for i, f := range a.fronts {
		out[i] = frontStatus{Front: f.key, Protocol: f.protocol, Listen: f.bound(), Upstreams: map[string]string{}}
		for _, up := range f.upstreams {
			out[i].Upstreams[up] = "no answer yet (another upstream of the front answered first)"
			go func() { results <- dialResult{i, up, f.checkUpstream(ctx, up)} }()
		}
	}
	for ; pending > 0 && okFronts < len(a.fronts); pending-- {
		res := <-results // every dial ends by ctx's deadline
		st := "ok"
		if res.err != nil {
			st = res.err.Error()
		}
		out[res.front].Upstreams[res.up] = st
		if res.err == nil && !out[res.front].Ready {
			out[res.front].Ready = true
			okFronts++
		}
	}
	ready := a.ready.Load()
	for i, f := range a.fronts {
		if pr, ok := f.front.(problemReporter); ok {
			if err := pr.Problem(); err != nil {
				out[i].Problem, out[i].Ready = err.Error(), false
			}
		}
		ready = ready && out[i].Ready
	}
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{"ready": ready, "listening": a.ready.Load(), "fronts": out})
}

// tlsAlertWait is how long /readyz listens after a TLS 1.3 handshake for the server's refusal.
const tlsAlertWait = 100 * time.Millisecond

// checkUpstream is dialUpstream, then what the front knows of the upstream: one that answers a
// dial but answered the front with another protocol (a Kafka front pointed at RabbitMQ) is no
// more ready than one that is down.
func (f namedFront) checkUpstream(ctx context.Context, up string) error {
	if err := f.dialUpstream(ctx, up); err != nil {
		return err
	}
	if r, ok := f.front.(upstreamProblemReporter); ok {
		return r.UpstreamProblem(ctx, up)
	}
	return nil
}

// dialUpstream dials one of the front's upstreams as its connections do (TLS included) and
// hangs up: nil when it answered.
func (f namedFront) dialUpstream(ctx context.Context, up string) error {
	dial := f.readyDials[up]
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	c, err := dial(ctx, "tcp", up)
	if err == nil {
		err = tlsRefusal(c)
		c.Close()
	}
	return err
}

// tlsRefusal reports a TLS 1.3 server's refusal of the client that comes after the client's side
// of the handshake is done: a server that requires a client certificate, given none (upstream_tls
// without cert_file), sends its alert with its first flight after the handshake, and every real
// connection then fails. A server that sends nothing, or closes, within tlsAlertWait is taken as
// ready (brokers speak only when spoken to).
func tlsRefusal(c net.Conn) error {
	tc, ok := c.(*tls.Conn)
	if !ok || tc.ConnectionState().Version < tls.VersionTLS13 {
		return nil
	}
	tc.SetReadDeadline(time.Now().Add(tlsAlertWait))
	_, err := tc.Read(make([]byte, 1))
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return fmt.Errorf("TLS handshake with upstream %s: the server refused the client after it: %w", c.RemoteAddr(), err)
	}
	return nil
}

// Handle registers an extra page (errors, pathways).
func (a *admin) Handle(pattern string, h http.Handler) {
	a.mux.Handle(pattern, h)
	path := pattern
	if _, p, ok := strings.Cut(pattern, " "); ok {
		path = p // without the method
	}
	a.pages = append(a.pages, path)
}

// index lists the admin's pages, for someone who opens the admin address itself.
func (a *admin) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "dsmproxy %s admin\n\n", version)
	pages := slices.Clone(a.pages)
	slices.Sort(pages)
	for _, p := range pages {
		fmt.Fprintln(w, p)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
