package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
)

// localView shows people who run no Agent what DSM sees: GET /dsm prints the pathways, consumer
// lag and tracked errors of the latest flush that had any, as the demo prints them. It is a sink
// of the same buckets the Agent gets.
type localView struct {
	errs func() *errtrack.Snapshot

	mu  sync.Mutex
	pts []agentpayload.Point
	bl  []agentpayload.BacklogEntry
	at  time.Time // when pts and bl were flushed
}

// Send keeps buckets' contents; an empty flush leaves the last traffic on show.
func (v *localView) Send(_ context.Context, buckets []aggregator.Bucket) error {
	var pts []agentpayload.Point
	var bl []agentpayload.BacklogEntry
	for _, b := range buckets {
		for _, g := range b.Groups {
			// Copies: the sink must not keep what the flusher hands it.
			pts = append(pts, agentpayload.Point{Service: g.Service, Start: b.Start, Duration: b.Duration,
				TimestampType: string(b.TimestampType), EdgeTags: slices.Clone(g.EdgeTags), Hash: g.Hash, ParentHash: g.ParentHash,
				PathwayLatency: g.PathwayLatency.Copy(), EdgeLatency: g.EdgeLatency.Copy(), PayloadSize: g.PayloadSize.Copy()})
		}
		for _, x := range b.Backlogs {
			bl = append(bl, agentpayload.BacklogEntry{Service: x.Service, Start: b.Start, Tags: slices.Clone(x.Tags), Value: x.Value})
		}
	}
	if len(pts) == 0 && len(bl) == 0 {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pts, v.bl, v.at = pts, bl, time.Now()
	return nil
}

func (v *localView) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	v.mu.Lock()
	pts, bl, at := v.pts, v.bl, v.at
	v.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if at.IsZero() {
		fmt.Fprintln(w, "No DSM checkpoints flushed yet: nothing has gone through the proxy since it started, or the first buckets are not finished (they flush every agent.flush_interval, 10s by default).")
	} else {
		printTable(w, fmt.Sprintf("== DSM buckets flushed at %s (%s ago) ==", at.Format(time.TimeOnly), time.Since(at).Round(time.Second)), pts, bl)
	}
	if v.errs != nil {
		if s := v.errs(); s != nil {
			printErrors(w, s)
		}
	}
}
