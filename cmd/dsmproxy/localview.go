package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
)

// localView shows people who run no Agent what DSM sees: GET /dsm prints, as the demo prints
// them, the pathways of the last minute (each from its latest bucket), consumer lag from the last
// known Kafka offsets, and the tracked errors. It is a sink of the same buckets the Agent gets.
type localView struct {
	errs  func() *errtrack.Snapshot
	agent *aggregator.AgentSink // nil: agent.disabled

	mu  sync.Mutex
	pts map[string]agentpayload.Point        // current-time points by service, edge and hashes
	bl  map[string]agentpayload.BacklogEntry // by service and tags
	at  time.Time                            // the latest flush that brought any
	// width is the latest bucket's: a bucket is flushed once it is over, so entries are kept for
	// three of them at least (with 60 s buckets, a minute would drop each as it came).
	width time.Duration
}

// localViewWindow: pathways from buckets older than this (or three buckets, if longer) go.
const localViewWindow = time.Minute

// Kafka offsets are kept far longer than pathways: a client commits or produces only what moved,
// so a stuck partition's commit, or a stopped consumer's, is exactly the one not seen again, and
// its lag must grow on show rather than vanish. A week of no update is Kafka's own
// offsets.retention.minutes default; past maxViewBacklogs, the least recently updated go first
// (evictOffsets).
const (
	offsetRetention = 7 * 24 * time.Hour
	maxViewBacklogs = 100_000
)

// Send keeps buckets' contents, newest per key.
func (v *localView) Send(_ context.Context, buckets []aggregator.Bucket) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.pts == nil {
		v.pts, v.bl = map[string]agentpayload.Point{}, map[string]agentpayload.BacklogEntry{}
	}
	now := time.Now()
	for _, b := range buckets {
		if len(b.Groups) > 0 || len(b.Backlogs) > 0 {
			v.at = now
		}
		v.width = max(v.width, b.Duration)
		for _, g := range b.Groups {
			if b.TimestampType != aggregator.Current {
				continue
			}
			k := fmt.Sprintf("%s|%s|%x|%x", g.Service, strings.Join(g.EdgeTags, ","), g.Hash, g.ParentHash)
			if old, ok := v.pts[k]; ok && old.Start.After(b.Start) {
				continue
			}
			// Copies: the sink must not keep what the flusher hands it.
			v.pts[k] = agentpayload.Point{Service: g.Service, Start: b.Start, Duration: b.Duration,
				TimestampType: string(b.TimestampType), EdgeTags: slices.Clone(g.EdgeTags), Hash: g.Hash, ParentHash: g.ParentHash,
				PathwayLatency: g.PathwayLatency.Copy(), EdgeLatency: g.EdgeLatency.Copy(), PayloadSize: g.PayloadSize.Copy()}
		}
		for _, x := range b.Backlogs {
			k := x.Service + "|" + strings.Join(x.Tags, ",")
			if old, ok := v.bl[k]; ok && old.Start.After(b.Start) {
				continue
			}
			v.bl[k] = agentpayload.BacklogEntry{Service: x.Service, Start: b.Start, Tags: slices.Clone(x.Tags), Value: x.Value}
		}
	}
	keep := max(localViewWindow, 3*v.width)
	for k, p := range v.pts {
		if now.Sub(p.Start) > keep {
			delete(v.pts, k)
		}
	}
	for k, b := range v.bl {
		if now.Sub(b.Start) > offsetRetention {
			delete(v.bl, k)
		}
	}
	if len(v.bl) > maxViewBacklogs {
		v.evictOffsets()
	}
	return nil
}

// evictOffsets cuts the offsets kept to nine tenths of maxViewBacklogs, least recently updated
// first: a tenth of room, so that a view at its bound does not sort them all at every flush.
func (v *localView) evictOffsets() {
	type aged struct {
		key   string
		start time.Time
	}
	all := make([]aged, 0, len(v.bl))
	for k, b := range v.bl {
		all = append(all, aged{k, b.Start})
	}
	slices.SortFunc(all, func(a, b aged) int { return a.start.Compare(b.start) })
	for _, a := range all[:len(all)-maxViewBacklogs*9/10] {
		delete(v.bl, a.key)
	}
}

// contents returns what the view holds and when the latest flush that brought any came.
func (v *localView) contents() ([]agentpayload.Point, []agentpayload.BacklogEntry, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Collect(maps.Values(v.pts)), slices.Collect(maps.Values(v.bl)), v.at
}

func (v *localView) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	pts, bl, at := v.contents()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch {
	case at.IsZero():
		fmt.Fprintln(w, "No DSM checkpoints flushed yet: nothing has gone through the proxy since it started, or the first buckets are not finished (they flush every agent.flush_interval, 10s by default).")
	case len(pts) == 0 && len(bl) == 0:
		fmt.Fprintf(w, "No DSM checkpoints in the last %s (the latest came at %s).\n\n", localViewWindow, at.Format(time.TimeOnly))
	default:
		printTable(w, fmt.Sprintf("== DSM pathways of the last %s, each from its latest bucket (the latest bucket with traffic was flushed at %s, %s ago; buckets flush every agent.flush_interval) ==",
			localViewWindow, at.Format(time.TimeOnly), time.Since(at).Round(time.Second)), pts, bl)
	}
	if v.errs != nil {
		if s := v.errs(); s != nil {
			printErrors(w, s)
		}
	}
	printAgent(w, v.agent)
}

// printAgent says where the buckets go and how delivery to the Agent has gone since the start.
func printAgent(w io.Writer, a *aggregator.AgentSink) {
	if a == nil {
		fmt.Fprintln(w, "== Datadog Agent: none (agent.disabled); this page is where the buckets go ==")
		return
	}
	st := a.Stats()
	fmt.Fprintf(w, "== Datadog Agent %s ==\n", a.URL())
	fmt.Fprintf(w, "payloads accepted %d (%d bytes); waiting %d (%d bytes); dropped over agent.max_pending_bytes %d; rejected (4xx) %d; taken but not answered in time %d; failed attempts %d\n",
		st.Payloads, st.Bytes, st.Pending, st.PendingBytes, st.Dropped, st.Rejected, st.Unconfirmed, st.Failed)
	if !st.EndpointListed {
		fmt.Fprintln(w, "The Agent's /info does not list /v0.1/pipeline_stats: payloads wait until it does (Data Streams Monitoring needs Agent 7.34 or later).")
	}
}
