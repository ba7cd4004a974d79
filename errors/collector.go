package errtrack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// Defaults for Config fields left zero.
const (
	DefaultInterval        = 10 * time.Second
	DefaultMaxFingerprints = 1000
	DefaultRetain          = time.Hour
)

// cacheSlots is the size of the direct-mapped group cache in front of the map. Hashing the whole
// Fingerprint (ten strings) for the map costs several times a hash of three of them.
const cacheSlots = 64

// maxPartitions bounds the partitions listed per group; more are flagged, not stored, so a group
// never grows with the number of partitions it hits.
const maxPartitions = 16

// Config configures a Collector. The zero value works: every category, logs and /errors on, the
// Agent reporter off.
type Config struct {
	// Interval is how often groups are flushed to the reporters (default DefaultInterval).
	Interval time.Duration
	// Categories lists the categories that are collected; nil or empty means all of them.
	Categories []Category
	// Agent configures the Datadog Agent reporter; it is used only when Agent.Enabled.
	Agent AgentConfig
	// MaxFingerprints bounds the groups kept at once (default DefaultMaxFingerprints). When it is
	// reached, a new fingerprint takes the place of the least recently seen group that had no
	// event in the open interval (its counts went out with the last flush); only when every group
	// had one are its events counted as overflow and otherwise dropped.
	MaxFingerprints int
	// Retain is how long a group stays after its last event (default DefaultRetain, at least one
	// Interval), so /errors shows recent trouble and the fingerprint bound frees up over time.
	Retain time.Duration
	// Clock gives the time of events reported without one and of flushes (default time.Now).
	Clock func() time.Time
	// Log receives the log reporter's lines and the collector's own failures (zero value: silent).
	Log zerolog.Logger
	// Sinks are extra reporters called on every flush after the log and Agent reporters.
	Sinks []Sink
}

// Sink receives each closed interval. Send runs on the collector's flushing goroutine, never on the
// data path, so it may do I/O.
type Sink interface {
	Send(ctx context.Context, iv Interval) error
}

// Fingerprint is what groups events. The partition is deliberately not part of it: a leader move or
// an oversized producer hits many partitions of one topic at once, and one group per partition would
// multiply log lines, spans and Error Tracking issues by the partition count for what is one problem.
// The partitions a group hit are listed in the group instead. Category is part of it because one
// broker answer can be both a broker error and lost messages, and Name because codes alone do not
// separate proxy skip reasons (code 0) or AWS errors sharing an HTTP status.
type Fingerprint struct {
	Category  Category
	Protocol  string
	Operation string
	Code      int32
	Name      string
	Service   string
	Edge      pathway.Edge
}

// Group is one fingerprint's state as of a flush or a snapshot.
type Group struct {
	Fingerprint
	Retriable      bool
	Partitions     []int32 // distinct partitions seen, in order of first appearance, at most 16
	MorePartitions bool    // partitions beyond those listed were hit too
	Sample         string  // message of the latest event

	FirstSeen, LastSeen time.Time // over the group's whole life
	TotalCount          int64     // events over the group's whole life
	TotalMessages       int64     // messages those events concerned

	// Count and Messages cover the interval: the closed one in an Interval, the one still open in
	// a Snapshot. IntervalFirst and IntervalLast bound the events in it.
	Count, Messages             int64
	IntervalFirst, IntervalLast time.Time

	// LastIntervalCount is the count of the previous closed interval (Snapshot only).
	LastIntervalCount int64

	// Throttle sums the events' Throttle over the interval, TotalThrottle over the group's life.
	Throttle, TotalThrottle time.Duration
}

// EdgeLoss is how many messages did not enter the broker on one service's edge.
type EdgeLoss struct {
	Service  string
	Edge     pathway.Edge
	Messages int64
}

// Interval is what a flush hands to the sinks: the groups that had events between Start and End.
type Interval struct {
	Start, End time.Time
	Groups     []Group
	// Overflow counts events dropped because MaxFingerprints groups already existed, each with an
	// event in the interval; OverflowLost the lost messages among them, so the lost figure stays
	// a lower bound rather than vanishing.
	Overflow, OverflowLost int64
	// Evicted counts groups dropped before Retain to make room for new fingerprints.
	Evicted int64
	// MaxFingerprints is the bound Overflow and Evicted concern.
	MaxFingerprints int
}

// Lost sums the LostMessage groups of the interval per service and edge.
func (iv Interval) Lost() []EdgeLoss { return lostPerEdge(iv.Groups, false) }

// Snapshot is the live state for /errors: every retained group, with the open interval's counts.
type Snapshot struct {
	Time            time.Time
	IntervalStart   time.Time
	Interval        time.Duration
	MaxFingerprints int
	Groups          []Group
	Overflow        int64 // since start
	OverflowLost    int64 // since start
	Evicted         int64 // groups dropped before Retain to make room for new ones, since start
	TracesDropped   int64 // error traces the Agent reporter dropped since start (over its pending limit)
	retired         []EdgeLoss
}

// Lost sums the lost messages per service and edge since start: those of the LostMessage groups
// over their whole life, and those of groups dropped after Retain.
func (s Snapshot) Lost() []EdgeLoss {
	out := lostPerEdge(s.Groups, true)
	if len(s.retired) == 0 {
		return out
	}
	idx := make(map[lossKey]int, len(out))
	for i, l := range out {
		idx[lossKey{l.Service, l.Edge}] = i
	}
	for _, r := range s.retired {
		k := lossKey{r.Service, r.Edge}
		if i, ok := idx[k]; ok {
			out[i].Messages += r.Messages
			continue
		}
		idx[k] = len(out) // retired may hold an edge twice: from Close and from evictions since
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b EdgeLoss) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Edge.String(), b.Edge.String()))
	})
	return out
}

func lostPerEdge(groups []Group, total bool) []EdgeLoss {
	idx := map[lossKey]int{}
	var out []EdgeLoss
	for _, g := range groups {
		if g.Category != LostMessage {
			continue
		}
		k := lossKey{g.Service, g.Edge}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, EdgeLoss{Service: g.Service, Edge: g.Edge})
		}
		if total {
			out[i].Messages += g.TotalMessages
		} else {
			out[i].Messages += g.Messages
		}
	}
	return out
}

// group is a Fingerprint's mutable state, guarded by Collector.mu.
type group struct {
	fp             Fingerprint
	retriable      bool
	parts          [maxPartitions]int32
	nparts         uint8
	moreParts      bool
	sample         string
	first, last    int64 // unix ns: integer compares keep the storm path cheap
	total, totMsgs int64
	count, msgs    int64
	ivFirst, ivLst int64
	lastCount      int64
	throttle       time.Duration
	totThrottle    time.Duration
}

// Collector groups events by Fingerprint and hands each interval's groups to the sinks. Report is
// safe for concurrent use and never waits on I/O: it takes a mutex held only for a map lookup and a
// few increments.
type Collector struct {
	cfg   Config
	cats  uint64 // bit per collected Category
	now   func() time.Time
	sinks []Sink
	agent *AgentReporter // nil without one

	seed maphash.Seed

	mu           sync.Mutex
	groups       map[Fingerprint]*group
	last         *group             // the group of the previous event: a storm of one error skips the map
	cache        [cacheSlots]*group // by a hash of a few fields: interleaved errors mostly skip the map too
	ivStart      time.Time
	overflow     int64 // open interval
	overflowLost int64
	totOverflow  int64
	totOverLost  int64
	// idle is a min-heap by last event of the groups kept at the last flush; those still without
	// an event in the open interval make room for new fingerprints when the bound is reached.
	// Built at flush, popped at most once per entry: Report never scans the groups.
	idle       []idleGroup
	evicted    int64 // open interval
	totEvicted int64
	// Lost messages of LostMessage groups evicted in the open interval: Report holds only mu, so
	// they wait here for Close to retire them. At most one entry per group kept at the last flush.
	evictedLost []EdgeLoss
	// Lost messages of LostMessage groups dropped after Retain, per service and edge: what
	// /errors shows is since start. At most maxRetiredEdges; past that they count as overflow.
	// Guarded by retMu and mu both: Close changes it holding both, Snapshot walks it holding only
	// retMu, which Report never takes, so a scrape does not hold up the data path for the walk.
	retired map[lossKey]int64
	retMu   sync.Mutex // taken before mu
}

// lossKey is what lost messages are summed by: service and edge.
type lossKey struct {
	service string
	edge    pathway.Edge
}

// maxRetiredEdges bounds the edges whose lost messages outlive their groups.
const maxRetiredEdges = 10000

// New returns a Collector for cfg. The log reporter is always a sink (a zero Log makes it silent);
// the Agent reporter is one when cfg.Agent.Enabled.
func New(cfg Config) *Collector {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxFingerprints <= 0 {
		cfg.MaxFingerprints = DefaultMaxFingerprints
	}
	if cfg.Retain <= 0 {
		cfg.Retain = DefaultRetain
	}
	cfg.Retain = max(cfg.Retain, cfg.Interval)
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if len(cfg.Categories) == 0 {
		cfg.Categories = []Category{BrokerError, LostMessage, ProxySkip, DecodeError}
	}
	c := &Collector{cfg: cfg, now: cfg.Clock, groups: make(map[Fingerprint]*group), seed: maphash.MakeSeed()}
	for _, cat := range cfg.Categories {
		if cat < 64 {
			c.cats |= 1 << cat
		}
	}
	c.sinks = append(c.sinks, LogReporter{Log: cfg.Log})
	if cfg.Agent.Enabled {
		c.agent = NewAgentReporter(cfg.Agent)
		c.sinks = append(c.sinks, c.agent)
	}
	c.sinks = append(c.sinks, cfg.Sinks...)
	c.ivStart = c.now()
	return c
}

// Report counts e. It allocates only for a fingerprint it has not seen before.
func (c *Collector) Report(e Event) {
	if e.Category >= 64 || c.cats&(1<<e.Category) == 0 {
		return
	}
	if e.Time.IsZero() {
		e.Time = c.now() // outside the lock: a clock may be slow
	}
	fp := Fingerprint{Category: e.Category, Protocol: e.Protocol, Operation: e.Operation, Code: e.Code,
		Name: e.Name, Service: e.Service, Edge: e.Edge}
	fp.clip()
	c.mu.Lock()
	g := c.last
	if g == nil || g.fp != fp {
		slot := c.slot(&fp)
		g = c.cache[slot]
		if g == nil || g.fp != fp {
			g = c.groups[fp]
			if g == nil {
				if len(c.groups) >= c.cfg.MaxFingerprints && !c.evictIdle() {
					c.overflow++
					if e.Category == LostMessage {
						c.overflowLost += int64(e.Messages)
					}
					c.mu.Unlock()
					return
				}
				fp.own()
				g = &group{fp: fp}
				c.groups[fp] = g
			}
			c.cache[slot] = g
		}
		c.last = g
	}
	g.add(&e)
	c.mu.Unlock()
}

// idleGroup is an entry of Collector.idle: the group and its last event as of the flush, a key
// that stays put even if the group has events since.
type idleGroup struct {
	last int64
	g    *group
}

// evictIdle drops the least recently seen group without an event since the last flush, so a new
// fingerprint can take its place; false when every group had one. Called with mu held.
func (c *Collector) evictIdle() bool {
	for len(c.idle) > 0 {
		g := c.popIdle()
		if g.count > 0 { // active again since the flush: not a candidate until the next one
			continue
		}
		delete(c.groups, g.fp)
		if c.last == g {
			c.last = nil
		}
		// A group is cached in its own slot only; left there, its fingerprint's next event
		// would be counted in a group no longer kept.
		if slot := c.slot(&g.fp); c.cache[slot] == g {
			c.cache[slot] = nil
		}
		if g.fp.Category == LostMessage && g.totMsgs > 0 {
			c.evictedLost = append(c.evictedLost, EdgeLoss{Service: g.fp.Service, Edge: g.fp.Edge, Messages: g.totMsgs})
		}
		c.evicted++
		return true
	}
	return false
}

// popIdle removes and returns the group of c.idle's root, the least recently seen.
func (c *Collector) popIdle() *group {
	h := c.idle
	g := h[0].g
	n := len(h) - 1
	h[0] = h[n]
	h[n] = idleGroup{}
	h = h[:n]
	siftDown(h, 0)
	c.idle = h
	return g
}

// siftDown moves h[i] down until neither child has an earlier last event.
func siftDown(h []idleGroup, i int) {
	for {
		least, l := i, 2*i+1
		if l < len(h) && h[l].last < h[least].last {
			least = l
		}
		if r := l + 1; r < len(h) && h[r].last < h[least].last {
			least = r
		}
		if least == i {
			return
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
}

// maxField bounds each name in a fingerprint: they come from clients and brokers (a queue URL
// in a request body, a 32 KiB Kafka topic), and each is copied several times into every span.
const maxField = 256

// clip cuts every name of fp to maxField (in a new string only when one is longer).
func (fp *Fingerprint) clip() {
	for _, f := range fp.fields() {
		*f = clip(*f, maxField)
	}
}

// own copies every name of fp, which a new group keeps for its life: a name may be a slice of
// a frame or body the caller reuses or drops.
func (fp *Fingerprint) own() {
	for _, f := range fp.fields() {
		*f = strings.Clone(*f)
	}
}

func (fp *Fingerprint) fields() [8]*string {
	return [8]*string{&fp.Protocol, &fp.Operation, &fp.Name, &fp.Service, &fp.Edge.Topic, &fp.Edge.Group,
		&fp.Edge.Exchange, &fp.Edge.ClusterID}
}

// slot picks fp's cache slot from the fields that usually tell errors apart; a collision only
// costs a map lookup, since the slot's group is compared in full.
func (c *Collector) slot(fp *Fingerprint) int {
	h := maphash.String(c.seed, fp.Service) ^ maphash.String(c.seed, fp.Edge.Topic)*31 ^ maphash.String(c.seed, fp.Name)*37
	h ^= uint64(fp.Code)<<8 ^ uint64(fp.Category)
	return int(h^h>>32) & (cacheSlots - 1)
}

func (g *group) add(e *Event) {
	ns := e.Time.UnixNano()
	if g.total == 0 || ns < g.first {
		g.first = ns
	}
	if g.total == 0 || ns > g.last {
		g.last = ns
	}
	if g.count == 0 || ns < g.ivFirst {
		g.ivFirst = ns
	}
	if g.count == 0 || ns > g.ivLst {
		g.ivLst = ns
	}
	g.total++
	g.count++
	g.totMsgs += int64(e.Messages)
	g.msgs += int64(e.Messages)
	g.throttle += e.Throttle
	g.totThrottle += e.Throttle
	g.retriable = e.Retriable
	if e.Message != "" {
		g.sample = clip(e.Message, maxSample)
	}
	// Only Kafka has numeric partitions; other protocols leave the field at its zero value.
	if e.Partition >= 0 && (e.Edge.Type == pathway.TypeKafka || e.Protocol == "kafka") {
		g.addPartition(e.Partition)
	}
}

func (g *group) addPartition(p int32) {
	for _, q := range g.parts[:g.nparts] {
		if q == p {
			return
		}
	}
	if int(g.nparts) == len(g.parts) {
		g.moreParts = true
		return
	}
	g.parts[g.nparts] = p
	g.nparts++
}

func (g *group) snapshot() Group {
	out := Group{Fingerprint: g.fp, Retriable: g.retriable, MorePartitions: g.moreParts, Sample: g.sample,
		FirstSeen: time.Unix(0, g.first).UTC(), LastSeen: time.Unix(0, g.last).UTC(), TotalCount: g.total, TotalMessages: g.totMsgs,
		Count: g.count, Messages: g.msgs,
		LastIntervalCount: g.lastCount, Throttle: g.throttle, TotalThrottle: g.totThrottle}
	if g.count > 0 {
		out.IntervalFirst, out.IntervalLast = time.Unix(0, g.ivFirst).UTC(), time.Unix(0, g.ivLst).UTC()
	}
	if g.nparts > 0 {
		out.Partitions = slices.Clone(g.parts[:g.nparts])
	}
	return out
}

// Close ends the open interval at now and returns it; groups idle longer than Retain are dropped.
// It does no I/O; Flush calls it and then the sinks.
func (c *Collector) Close(now time.Time) Interval {
	c.retMu.Lock()
	defer c.retMu.Unlock()
	c.mu.Lock()
	iv := Interval{Start: c.ivStart, End: now, Overflow: c.overflow, OverflowLost: c.overflowLost,
		Evicted: c.evicted, MaxFingerprints: c.cfg.MaxFingerprints}
	c.totOverflow += c.overflow
	c.totOverLost += c.overflowLost
	c.totEvicted += c.evicted
	c.overflow, c.overflowLost, c.evicted = 0, 0, 0
	for _, l := range c.evictedLost {
		c.retire(lossKey{l.Service, l.Edge}, l.Messages)
	}
	clear(c.evictedLost)
	c.evictedLost = c.evictedLost[:0]
	c.ivStart = now
	// Every group kept is idle in the interval now opening until its next event.
	clear(c.idle)
	c.idle = c.idle[:0]
	active := make([]group, 0, len(c.groups)) // copied as they are; made Groups after the lock
	for fp, g := range c.groups {
		if g.count > 0 {
			active = append(active, *g)
		}
		g.lastCount = g.count
		g.count, g.msgs, g.throttle = 0, 0, 0
		g.ivFirst, g.ivLst = 0, 0
		if now.UnixNano()-g.last > int64(c.cfg.Retain) {
			if fp.Category == LostMessage && g.totMsgs > 0 {
				c.retire(lossKey{fp.Service, fp.Edge}, g.totMsgs)
			}
			delete(c.groups, fp)
			c.last = nil
			clear(c.cache[:]) // rare: refilled from the map by the next events
			continue
		}
		c.idle = append(c.idle, idleGroup{g.last, g})
	}
	for i := len(c.idle)/2 - 1; i >= 0; i-- {
		siftDown(c.idle, i)
	}
	c.mu.Unlock()
	if len(active) > 0 {
		iv.Groups = make([]Group, len(active))
		for i := range active {
			iv.Groups[i] = active[i].snapshot()
		}
	}
	sortGroups(iv.Groups)
	return iv
}

// retire keeps n lost messages of a group Close drops, so the totals stay since start.
func (c *Collector) retire(k lossKey, n int64) {
	if _, ok := c.retired[k]; !ok && len(c.retired) >= maxRetiredEdges {
		c.totOverLost += n
		return
	}
	if c.retired == nil {
		c.retired = map[lossKey]int64{}
	}
	c.retired[k] += n
}

// Flush closes the interval at now and hands it to every sink, returning their errors joined.
func (c *Collector) Flush(ctx context.Context, now time.Time) error {
	iv := c.Close(now)
	var errs []error
	for _, s := range c.sinks {
		if err := s.Send(ctx, iv); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// FlushNow is Flush at the collector's clock.
func (c *Collector) FlushNow(ctx context.Context) error { return c.Flush(ctx, c.now()) }

// Run flushes every Interval until ctx ends, then flushes once more so the last events are not
// lost. Sink failures are logged, not returned: the next interval tries again.
func (c *Collector) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := c.FlushNow(ctx); err != nil {
				c.cfg.Log.Warn().Err(err).Msg("error tracking: flush failed")
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := c.FlushNow(fctx)
			cancel()
			if err != nil {
				return fmt.Errorf("errtrack: final flush: %w", err)
			}
			return nil
		}
	}
}

// Snapshot returns every retained group with the open interval's counts, sorted. Report waits
// only while the groups are copied as they are; the rest is done after.
func (c *Collector) Snapshot() Snapshot {
	c.mu.Lock()
	n := len(c.groups)
	c.mu.Unlock()
	raw := make([]group, 0, n) // allocated outside the lock; append grows it if groups came since
	c.retMu.Lock()
	c.mu.Lock()
	s := Snapshot{Time: c.now(), IntervalStart: c.ivStart, Interval: c.cfg.Interval, MaxFingerprints: c.cfg.MaxFingerprints,
		Overflow: c.totOverflow + c.overflow, OverflowLost: c.totOverLost + c.overflowLost,
		Evicted: c.totEvicted + c.evicted}
	for _, g := range c.groups {
		raw = append(raw, *g)
	}
	s.retired = slices.Clone(c.evictedLost) // evicted since the last flush, not yet retired
	c.mu.Unlock()
	s.retired = slices.Grow(s.retired, len(c.retired))
	for k, n := range c.retired {
		s.retired = append(s.retired, EdgeLoss{Service: k.service, Edge: k.edge, Messages: n})
	}
	c.retMu.Unlock()
	s.Groups = make([]Group, len(raw))
	for i := range raw {
		s.Groups[i] = raw[i].snapshot()
	}
	if c.agent != nil {
		s.TracesDropped = c.agent.Dropped()
	}
	sortGroups(s.Groups)
	return s
}

// sortGroups orders groups the same way on every call so logs, spans and /errors are stable.
func sortGroups(gs []Group) {
	// Each edge's text once, not twice per comparison: a full /errors page sorts a thousand groups.
	type keyed struct {
		edge string
		g    *Group
	}
	ks := make([]keyed, len(gs))
	for i := range gs {
		ks[i] = keyed{gs[i].Edge.String(), &gs[i]}
	}
	slices.SortFunc(ks, func(x, y keyed) int {
		a, b := x.g, y.g
		return cmp.Or(
			cmp.Compare(a.Category, b.Category),
			cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Service, b.Service),
			cmp.Compare(x.edge, y.edge),
			cmp.Compare(a.Operation, b.Operation),
			cmp.Compare(a.Code, b.Code),
			cmp.Compare(a.Name, b.Name),
		)
	})
	sorted := make([]Group, len(gs))
	for i, k := range ks {
		sorted[i] = *k.g
	}
	copy(gs, sorted)
}

// maxSample bounds the message kept per group: messages come from brokers and services (an AWS
// error body's Message), and a thousand groups must not hold a megabyte each.
const maxSample = 512

// clip cuts s to at most n bytes on a UTF-8 boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
