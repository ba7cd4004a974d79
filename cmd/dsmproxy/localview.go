package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// localView shows people who run no Agent what DSM sees: GET /dsm prints, as the demo prints
// them, the pathways of the last minute (each from its latest bucket), consumer lag from the last
// known Kafka offsets, and the tracked errors. It is a sink of the same buckets the Agent gets.
type localView struct {
	errs  func() *errtrack.Snapshot
	agent *aggregator.AgentSink // nil: agent.disabled
	log   zerolog.Logger

	// sendMu makes Send the one writer of what mu guards, so Send reads pts, bl and width
	// without mu: it works out a flush's changes (keys, tag and sketch copies, deletions) first
	// and holds mu only to apply them. /dsm and /metrics (contents) wait for that alone, not for
	// the copying of tens of thousands of pathways' sketches.
	sendMu sync.Mutex
	// gone are the deletions Kafka fronts saw lately (offsetsGone), by goneKey: offsets of
	// their scope seen before them still come in buckets flushed after, for up to a bucket and
	// a flush. Kept for the pathways' window. Only Send uses it, under sendMu.
	gone map[string][]pathway.OffsetsGone

	mu  sync.RWMutex                         // written under sendMu too; contents only reads
	pts map[string]viewPathway               // current-time points and totals, by pathwayKey
	bl  map[string]agentpayload.BacklogEntry // by service and tags
	at  time.Time                            // the latest flush that brought any
	// width is the widest bucket's: a bucket is flushed once it is over, so entries are kept for
	// three of them at least (with 60 s buckets, a minute would drop each as it came).
	width time.Duration

	goneMu      sync.Mutex
	goneNew     []pathway.OffsetsGone // told since the last Send; applied there
	goneDropped int                   // told since the last Send past maxGoneWaiting: not applied

	// pathwayCopied, set by tests only, is called for each pathway whose point Send copies.
	pathwayCopied func()
	// contentsCopying, set by tests only, is called by contents while it holds mu.
	contentsCopying func()
}

// maxGoneWaiting bounds the deletions told between two flushes; past it (some thousands of
// topics deleted within a flush interval) the rest are not applied, and the flush says how many.
const maxGoneWaiting = 10_000

// offsetsGone is kafka.Config.OffsetsGone: what a Kafka front saw the cluster delete (a topic,
// also one created again, a group, a group's offsets) leaves the view at the next flush. It
// does not wait for a flush in progress.
func (v *localView) offsetsGone(g pathway.OffsetsGone) {
	v.goneMu.Lock()
	defer v.goneMu.Unlock()
	if len(v.goneNew) < maxGoneWaiting {
		v.goneNew = append(v.goneNew, g)
	} else {
		v.goneDropped++
	}
}

// goneKey indexes a deletion by its topic, or by its group when it covers every topic.
func goneKey(topic, group string) string {
	if topic != "" {
		return "t|" + topic
	}
	return "g|" + group
}

// goneBefore reports whether a deletion the view knows of covers the backlog with tags, seen
// at seen; and, if the latest such deletion came after seen, whether it came after start
// (afterStart: the bucket began before it, so its highest offset may be from before it).
func (v *localView) goneBefore(tags []string, seen, start time.Time) (gone, afterStart bool) {
	if len(v.gone) == 0 {
		return false, false
	}
	o := offsetOfTags(tags)
	for _, k := range []string{goneKey(o.Topic, ""), goneKey("", o.Group)} {
		for _, g := range v.gone[k] {
			if !g.Covers(o.Kind, o.ClusterID, o.Group, o.Topic, o.Partition) {
				continue
			}
			at := time.Unix(0, g.Time)
			if !seen.After(at) {
				return true, false
			}
			afterStart = afterStart || at.After(start)
		}
	}
	return false, afterStart
}

// offsetOfTags reads a backlog's tags back into what they say.
func offsetOfTags(tags []string) pathway.Offset {
	o := pathway.Offset{Partition: -1}
	for _, t := range tags {
		k, val, _ := strings.Cut(t, ":")
		switch k {
		case "type":
			for _, kind := range []pathway.OffsetKind{pathway.KafkaProduce, pathway.KafkaCommit, pathway.KafkaHighWatermark} {
				if kind.String() == val {
					o.Kind = kind
				}
			}
		case "topic":
			o.Topic = val
		case "partition":
			if p, err := strconv.ParseInt(val, 10, 32); err == nil {
				o.Partition = int32(p)
			}
		case "consumer_group":
			o.Group = val
		case "kafka_cluster_id":
			o.ClusterID = val
		}
	}
	return o
}

// takeGone takes in the deletions told since the last flush and returns the keys of the
// offsets kept that they cover (seen before them), which leave the view. Under sendMu.
func (v *localView) takeGone(now time.Time) map[string]bool {
	v.goneMu.Lock()
	fresh, dropped := v.goneNew, v.goneDropped
	v.goneNew, v.goneDropped = nil, 0
	v.goneMu.Unlock()
	if dropped > 0 {
		v.log.Warn().Int("deletions_not_applied", dropped).Int("max_deletions", maxGoneWaiting).
			Msg("the cluster confirmed more deletions (DeleteGroups, DeleteTopics, OffsetDelete) within a flush interval than the view of offsets takes: the offsets of the rest stay in /dsm and /metrics (a deleted group's lag keeps growing there) for the week offsets are kept")
	}
	keep := viewWindow(v.width)
	for k, gs := range v.gone {
		gs = slices.DeleteFunc(gs, func(g pathway.OffsetsGone) bool { return now.Sub(time.Unix(0, g.Time)) > keep })
		if len(gs) == 0 {
			delete(v.gone, k)
		} else {
			v.gone[k] = gs
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	if v.gone == nil {
		v.gone = map[string][]pathway.OffsetsGone{}
	}
	for _, g := range fresh {
		k := goneKey(g.Topic, g.Group)
		v.gone[k] = append(v.gone[k], g)
	}
	covered := map[string]bool{}
	for k, e := range v.bl {
		if gone, _ := v.goneBefore(e.Tags, e.Seen(), e.Start); gone {
			covered[k] = true
		}
	}
	return covered
}

// localViewWindow: pathways from buckets older than this (or three buckets, if longer) go.
const localViewWindow = time.Minute

// viewPathway is one pathway of the view: its latest bucket's point, and its totals.
type viewPathway struct {
	pt    agentpayload.Point
	total pathwayTotal
	bytes uint64 // pt's bucket's exact payload bytes: its average size (the sketch's sum is within 1%)
}

// pathwayTotal counts a pathway's checkpoints and payload bytes over every current-time bucket
// flushed since it came into the view. A bucket is flushed once its window is over, with every
// point the aggregator folded into it, so the totals are exact up to the latest flushed bucket:
// they lag traffic by up to a bucket and a flush (two agent.flush_interval), and leave out only
// what the aggregator itself dropped (dsmproxy_aggregator_points_dropped_total,
// _groups_refused_total). Each checkpoint is in one current-time and one origin-time bucket;
// only the first counts.
//
// The totals live in the pathway's entry, so they are bounded as the pathways are: a pathway with
// no checkpoint for localViewWindow (or three buckets) goes with its totals, and if it comes back
// they start again from 0. On /metrics that is a series that stops and, later, a counter that
// restarts, which Prometheus's rate() and increase() take as a reset.
type pathwayTotal struct {
	Messages, Bytes uint64
}

// pathwayKey identifies a pathway in the view: service, edge tags and hashes.
func pathwayKey(service string, edgeTags []string, hash, parentHash uint64) string {
	return string(appendPathwayKey(nil, service, edgeTags, hash, parentHash))
}

// appendPathwayKey appends pathwayKey's key: service|tag,tag|hash|parent, hashes in hex.
func appendPathwayKey(b []byte, service string, edgeTags []string, hash, parentHash uint64) []byte {
	b = append(append(b, service...), '|')
	for i, t := range edgeTags {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, t...)
	}
	b = strconv.AppendUint(append(b, '|'), hash, 16)
	return strconv.AppendUint(append(b, '|'), parentHash, 16)
}

// viewContents is a copy of what the view holds.
type viewContents struct {
	pts    []agentpayload.Point
	keys   []string                // pathwayKey of each of pts
	totals map[string]pathwayTotal // by pathwayKey of pts
	sizes  map[string]float64      // by pathwayKey of pts: the exact average payload size of its bucket
	bl     []agentpayload.BacklogEntry
	at     time.Time     // the latest flush that brought any
	window time.Duration // how long a pathway stays after its latest checkpoint
}

// Kafka offsets are kept far longer than pathways: a client commits or produces only what moved,
// so a stuck partition's commit, or a stopped consumer's, is exactly the one not seen again, and
// its lag must grow on show rather than vanish. A week of no update is Kafka's own
// offsets.retention.minutes default; past maxViewBacklogs, the least recently updated go first
// (evictOffsets).
const (
	offsetRetention = 7 * 24 * time.Hour
	maxViewBacklogs = 100_000
)

// Send keeps buckets' contents, newest per key. It works out every change under sendMu alone
// and holds mu only to apply them.
func (v *localView) Send(_ context.Context, buckets []aggregator.Bucket) error {
	v.sendMu.Lock()
	defer v.sendMu.Unlock()
	now := time.Now()
	covered := v.takeGone(now)
	width, brought := v.width, false
	for _, b := range buckets {
		width = max(width, b.Duration)
		brought = brought || len(b.Groups) > 0 || len(b.Backlogs) > 0
	}
	pts, ptsGone := v.pathwayChanges(buckets, now, viewWindow(width))
	bl, blGone := v.backlogChanges(buckets, now, covered)

	v.mu.Lock()
	defer v.mu.Unlock()
	if v.pts == nil {
		v.pts, v.bl = map[string]viewPathway{}, map[string]agentpayload.BacklogEntry{}
	}
	if brought {
		v.at = now
	}
	v.width = width
	// Deletions first: an offset a deletion covered may be set again by this flush.
	for _, k := range ptsGone {
		delete(v.pts, k)
	}
	for _, kp := range pts {
		v.pts[kp.key] = kp.p
	}
	for k := range blGone {
		delete(v.bl, k)
	}
	maps.Copy(v.bl, bl)
	return nil
}

// pathwayChanges works out what the current-time groups of buckets make of the view's
// pathways: the pathways to set (totals counted from every bucket, a late one too; the point
// from the latest, unless the view's is later) and the pathways to delete, whose latest bucket
// is older than keep. Under sendMu: it reads pts without mu.
func (v *localView) pathwayChanges(buckets []aggregator.Bucket, now time.Time, keep time.Duration) (set []keyedPathway, del []string) {
	type latest struct {
		key   string
		b     *aggregator.Bucket
		g     *aggregator.Group
		total pathwayTotal
	}
	groups := 0
	for _, b := range buckets {
		if b.TimestampType == aggregator.Current {
			groups += len(b.Groups)
		}
	}
	ls := make([]latest, 0, groups)
	index := make(map[string]int, groups) // into ls, by pathwayKey
	for i := range buckets {
		b := &buckets[i]
		if b.TimestampType != aggregator.Current {
			continue
		}
		for j := range b.Groups {
			g := &b.Groups[j]
			k := pathwayKey(g.Service, g.EdgeTags, g.Hash, g.ParentHash)
			n, ok := index[k]
			if !ok {
				n = len(ls)
				index[k] = n
				ls = append(ls, latest{key: k})
			}
			l := &ls[n]
			l.total.Messages += uint64(g.EdgeLatency.GetCount())
			l.total.Bytes += g.PayloadBytes
			if l.b == nil || !l.b.Start.After(b.Start) { // the last of the latest, as one at a time would keep
				l.b, l.g = b, g
			}
		}
	}
	set = make([]keyedPathway, 0, len(ls))
	for _, l := range ls {
		p, ok := v.pts[l.key]
		p.total.Messages += l.total.Messages
		p.total.Bytes += l.total.Bytes
		if !ok || !p.pt.Start.After(l.b.Start) {
			b, g := l.b, l.g
			// Copies: the sink must not keep what the flusher hands it.
			p.pt = agentpayload.Point{Service: g.Service, Start: b.Start, Duration: b.Duration,
				TimestampType: string(b.TimestampType), EdgeTags: slices.Clone(g.EdgeTags), Hash: g.Hash, ParentHash: g.ParentHash,
				PathwayLatency: g.PathwayLatency.Copy(), EdgeLatency: g.EdgeLatency.Copy(), PayloadSize: g.PayloadSize.Copy()}
			p.bytes = g.PayloadBytes
			if v.pathwayCopied != nil {
				v.pathwayCopied()
			}
		}
		if now.Sub(p.pt.Start) > keep { // and its totals with it
			del = append(del, l.key)
			continue
		}
		set = append(set, keyedPathway{l.key, p})
	}
	for k, p := range v.pts {
		if _, ok := index[k]; !ok && now.Sub(p.pt.Start) > keep {
			del = append(del, k)
		}
	}
	return set, del
}

// keyedPathway is a pathway of the view with its pathwayKey.
type keyedPathway struct {
	key string
	p   viewPathway
}

// backlogChanges works out what buckets' backlogs make of the offsets kept: the entries to set
// (newest seen per key) and the keys to delete: covered (by deletions), past offsetRetention,
// and past maxViewBacklogs. Under sendMu: it reads bl without mu.
func (v *localView) backlogChanges(buckets []aggregator.Bucket, now time.Time, covered map[string]bool) (set map[string]agentpayload.BacklogEntry, del map[string]bool) {
	set, del = map[string]agentpayload.BacklogEntry{}, covered
	if del == nil {
		del = map[string]bool{}
	}
	for _, b := range buckets {
		for _, x := range b.Backlogs {
			e := agentpayload.BacklogEntry{Service: x.Service, Start: b.Start, Tags: x.Tags, Value: x.Value, At: x.LastAt}
			gone, afterStart := v.goneBefore(x.Tags, e.Seen(), b.Start)
			if gone {
				continue
			}
			if !x.LastAt.IsZero() && (afterStart || slices.Contains(x.Tags, "type:kafka_commit")) {
				// A commit can go back (a reset, a seek): the group's position is the last one,
				// not the bucket's highest. Log ends only grow, so their highest is the latest,
				// but for a topic deleted within the bucket: its highest may be the old topic's.
				e.Value = x.Last
			}
			k := x.Service + "|" + strings.Join(x.Tags, ",")
			old, ok := set[k]
			if !ok && !del[k] {
				old, ok = v.bl[k]
			}
			if ok && old.Seen().After(e.Seen()) {
				continue
			}
			e.Tags = slices.Clone(x.Tags) // the sink must not keep what the flusher hands it
			set[k] = e
		}
	}
	kept := 0
	for k, e := range set {
		if now.Sub(e.Start) > offsetRetention {
			delete(set, k)
			del[k] = true
		} else {
			kept++
		}
	}
	for k, e := range v.bl {
		if _, ok := set[k]; ok || del[k] {
			continue
		}
		if now.Sub(e.Start) > offsetRetention {
			del[k] = true
		} else {
			kept++
		}
	}
	if kept > maxViewBacklogs {
		for _, k := range v.evictOffsets(set, del, kept) {
			delete(set, k)
			del[k] = true
		}
	}
	return set, del
}

// evictOffsets returns which of the kept offsets to evict, least recently updated first, to cut
// them to nine tenths of maxViewBacklogs: a tenth of room, so that a view at its bound does not
// sort them all at every flush. The kept ones are set and those of bl neither set nor in del.
// Under sendMu: it reads bl without mu.
func (v *localView) evictOffsets(set map[string]agentpayload.BacklogEntry, del map[string]bool, kept int) []string {
	type aged struct {
		key   string
		start time.Time
	}
	all := make([]aged, 0, kept)
	for k, b := range set {
		all = append(all, aged{k, b.Start})
	}
	for k, b := range v.bl {
		if _, ok := set[k]; !ok && !del[k] {
			all = append(all, aged{k, b.Start})
		}
	}
	slices.SortFunc(all, func(a, b aged) int { return a.start.Compare(b.start) })
	evict := make([]string, 0, len(all)-maxViewBacklogs*9/10)
	for _, a := range all[:len(all)-maxViewBacklogs*9/10] {
		evict = append(evict, a.key)
	}
	return evict
}

// viewWindow is how long the view keeps a pathway after its latest checkpoint, with buckets as
// wide as width: localViewWindow, or three buckets when they are longer (agent.flush_interval
// over 20 s).
func viewWindow(width time.Duration) time.Duration { return max(localViewWindow, 3*width) }

// contents returns what the view holds and when the latest flush that brought any came.
func (v *localView) contents() viewContents {
	v.mu.RLock() // scrapes at once each copy the view, and none waits for another's copy
	defer v.mu.RUnlock()
	c := viewContents{pts: make([]agentpayload.Point, 0, len(v.pts)), keys: make([]string, 0, len(v.pts)), totals: make(map[string]pathwayTotal, len(v.pts)),
		sizes: make(map[string]float64, len(v.pts)), bl: slices.AppendSeq(make([]agentpayload.BacklogEntry, 0, len(v.bl)), maps.Values(v.bl)),
		at: v.at, window: viewWindow(v.width)}
	if v.contentsCopying != nil {
		v.contentsCopying()
	}
	for k, p := range v.pts {
		c.pts = append(c.pts, p.pt)
		c.keys = append(c.keys, k)
		c.totals[k] = p.total
		if n := p.pt.PayloadSize.GetCount(); n > 0 {
			c.sizes[k] = float64(p.bytes) / n
		}
	}
	return c
}

func (v *localView) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	c := v.contents()
	pts, bl, at := c.pts, c.bl, c.at
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch {
	case at.IsZero():
		fmt.Fprintln(w, "No DSM checkpoints flushed yet: nothing has gone through the proxy since it started, or the first buckets are not finished (they flush every agent.flush_interval, 10s by default).")
	case len(pts) == 0 && len(bl) == 0:
		fmt.Fprintf(w, "No DSM checkpoints in the last %s (the latest came at %s).\n\n", c.window, at.Format(time.TimeOnly))
	default:
		printTable(w, fmt.Sprintf("== DSM pathways of the last %s, each from its latest bucket (the latest bucket with traffic was flushed at %s, %s ago; buckets flush every agent.flush_interval) ==",
			c.window, at.Format(time.TimeOnly), time.Since(at).Round(time.Second)), pts, bl, c.totals, c.sizes)
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
	if a.EndpointMissing() {
		fmt.Fprintln(w, "The Agent's /info does not list /v0.1/pipeline_stats: payloads wait until it does (Data Streams Monitoring needs Agent 7.34 or later).")
	}
}
