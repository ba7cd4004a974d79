// Package aggregator buckets DSM checkpoints and Kafka offsets into 10-second windows (by
// checkpoint time and by pathway start), keeps three DDSketches per pathway group, and flushes
// finished buckets to sinks such as the Datadog Agent.
package aggregator

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// The sketch mapping the DSM backend uses (dsm-protocol.md 4.3).
const (
	sketchGamma       = 1.015625
	sketchIndexOffset = 1.8761281912861705
)

// Defaults.
const (
	DefaultBucketDuration = 10 * time.Second
	DefaultQueueSize      = 1 << 16
	// DefaultMaxGroups bounds the groups of every open bucket together. Each holds three sketches
	// (a few KB); a pathway node makes one per bucket and parent, and parents come from contexts
	// clients send, so without a bound a client could grow the aggregator at will.
	DefaultMaxGroups = 50000
	// DefaultMaxBacklogs bounds the offsets (one per kind, service, group, topic and partition)
	// of every open bucket together: Kafka takes commits for any group name, so clients name them.
	DefaultMaxBacklogs = 200000
)

// Config configures an Aggregator.
type Config struct {
	Env            string
	Version        string
	TracerVersion  string
	BucketDuration time.Duration // default DefaultBucketDuration
	QueueSize      int           // bound on points (and, separately, offsets) waiting; default DefaultQueueSize
	MaxGroups      int           // bound on the groups of all open buckets; default DefaultMaxGroups
	MaxBacklogs    int           // bound on the backlogs of all open buckets; default DefaultMaxBacklogs
	// DefaultService owns backlogs whose Offset.Service is empty.
	DefaultService string
	Clock          func() time.Time
	Log            zerolog.Logger
}

// TimestampType says how a bucket was keyed.
type TimestampType string

// The two bucket sets the Go tracer sends.
const (
	Current TimestampType = "current" // by checkpoint time
	Origin  TimestampType = "origin"  // by pathway start
)

// Bucket is one finished window of one timestamp type.
type Bucket struct {
	Start         time.Time
	Duration      time.Duration
	TimestampType TimestampType
	Groups        []Group
	Backlogs      []Backlog // current buckets only
}

// Group is the aggregate of every point of one pathway node in a bucket.
type Group struct {
	Service          string
	EdgeTags         []string
	Hash, ParentHash uint64
	// Latencies in seconds, size in bytes.
	PathwayLatency, EdgeLatency, PayloadSize *ddsketch.DDSketch
	// PayloadBytes is the exact sum of the points' payload sizes: the sketch's sum is only as
	// accurate as its bins (under 1%). It is for the local view's byte counter; the Agent gets
	// the sketch alone.
	PayloadBytes uint64
}

// Backlog is the highest offset seen for one key in a bucket (Value, what dd-trace-py and
// dd-trace-java send; dd-trace-go sends the last one written), and
// the one seen last (Last, at LastAt). A commit can go back (offsets reset by an admin tool, a
// consumer that seeks back): the highest then hides the group's position, the last does not.
type Backlog struct {
	Service string
	Tags    []string
	Value   int64
	Last    int64
	LastAt  time.Time
}

// Stats are the aggregator's counters.
// Point counters count checkpoints: a point stands for Point.Checkpoints() of them.
type Stats struct {
	Points         uint64 // accepted by Add
	PointsDropped  uint64 // refused by Add because the queue was full, or counted by Dropped
	Offsets        uint64 // accepted by Offset
	OffsetsDropped uint64
	Aggregated     uint64 // points folded into buckets
	GroupsRefused  uint64 // checkpoints a bucket refused because MaxGroups groups were open, once per bucket (current, origin)
	OriginsClamped uint64 // points whose pathway start lay over maxOriginAhead past their checkpoint
	OffsetsRefused uint64 // offsets not kept because MaxBacklogs backlogs were open
	Buckets        uint64 // buckets handed out by Flush
	OpenBuckets    int
}

// groupKey indexes groups by hashes only, so a point costs no string hashing. The pathway hash
// covers service, env and the hashable edge tags; points that share it but differ in service or
// in tags outside the hash (has_routing_key, partition...) are chained behind it (groupState.next),
// which makes the group identity (service, hash, parent hash, edge tags).
type groupKey struct {
	hash, parentHash uint64
}

type offsetKey struct {
	kind      pathway.OffsetKind
	service   string
	group     string
	topic     string
	partition int32
	cluster   string
}

// backlogValue is a backlog's highest offset in a bucket and its latest one, seen at lastAt (unix ns).
type backlogValue struct {
	max, last, lastAt int64
}

type bucketKey struct {
	start  int64
	origin bool
}

// groupState is a Group plus direct handles on its sketches' positive stores, so a point's three
// bin indexes are computed once and added to both of its buckets.
type groupState struct {
	Group
	pos  [3]store.Store
	next *groupState // same hashes, other service or edge tags
}

// matches keys groups as the Java and Python tracers do, by edge tags as well as hashes: a tag
// left out of the hash (AMQP's has_routing_key) makes a group of its own (dsm-protocol.md 4.2;
// Go keys by hash alone, first point's tags winning, and has no RabbitMQ integration).
func (g *groupState) matches(p *pathway.Point) bool {
	return g.Hash == p.Hash && g.ParentHash == p.ParentHash && g.Service == p.Service && equalTags(g.EdgeTags, p.EdgeTags)
}

// equalTags compares tag slices; the checkpointer hands out one shared slice per edge, so the
// common case is the same backing array.
func equalTags(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type bucket struct {
	key      bucketKey
	groups   map[groupKey]*groupState
	last     *groupState // the last group hit: points of one edge tend to come in runs
	n        int         // groups, chained ones included
	backlogs map[offsetKey]backlogValue
}

// Aggregator accepts points and offsets without blocking and folds them into buckets on its own
// goroutine.
type Aggregator struct {
	cfg     Config
	width   int64
	points  *queue[pathway.Point]  // drained under mu
	offsets *queue[pathway.Offset] // drained under mu
	flushQ  chan flushReq
	stop    chan struct{}
	done    chan struct{}
	started atomic.Bool
	closed  atomic.Bool

	nPoints, nPointsDropped, nOffsets, nOffsetsDropped, nAggregated, nBuckets, nGroupsRefused, nOffsetsRefused, nOriginsClamped atomic.Uint64
	groups, backlogs                                                                                                            int // in open buckets; guarded by mu
	// openBuckets mirrors len(buckets), so Stats never waits for a flush, which holds mu while it
	// exports its buckets (seconds with tens of thousands of groups).
	openBuckets atomic.Int64

	mu      sync.Mutex // guards buckets and last
	buckets map[bucketKey]*bucket
	last    [2]lastBucket // the last bucket used per timestamp type: most points hit it again
	mapping mapping.IndexMapping
	// The last value and bin index per sketch (pathway latency, edge latency, size): sizes and
	// zero latencies repeat, and a logarithm is the largest cost of a point.
	lastVal [3]float64
	lastIdx [3]int
}

// New returns an Aggregator; Start begins aggregating.
func New(cfg Config) *Aggregator {
	if cfg.BucketDuration <= 0 {
		cfg.BucketDuration = DefaultBucketDuration
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.MaxGroups <= 0 {
		cfg.MaxGroups = DefaultMaxGroups
	}
	if cfg.MaxBacklogs <= 0 {
		cfg.MaxBacklogs = DefaultMaxBacklogs
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	m, err := mapping.NewLogarithmicMappingWithGamma(sketchGamma, sketchIndexOffset)
	if err != nil {
		panic("aggregator: sketch mapping: " + err.Error()) // constants: cannot happen
	}
	return &Aggregator{
		cfg:     cfg,
		width:   int64(cfg.BucketDuration),
		points:  newQueue[pathway.Point](cfg.QueueSize),
		offsets: newQueue[pathway.Offset](cfg.QueueSize),
		flushQ:  make(chan flushReq),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		buckets: make(map[bucketKey]*bucket),
		mapping: m,
		lastVal: [3]float64{-1, -1, -1},
	}
}

// Add queues a point. It never blocks: when the queue is full the point is dropped, counted, and
// Add returns false.
func (a *Aggregator) Add(p pathway.Point) bool {
	if a.points.push(&p) {
		a.nPoints.Add(uint64(p.Checkpoints()))
		return true
	}
	a.nPointsDropped.Add(uint64(p.Checkpoints()))
	return false
}

// AddAll queues the points of ps in order, as Add does one, with one lock per run of points:
// the data path hands over a record batch's points at once. Points that find no room are dropped
// and counted; it returns how many were queued.
func (a *Aggregator) AddAll(ps []pathway.Point) int {
	n := a.points.pushAll(ps)
	a.nPoints.Add(uint64(pathway.CountCheckpoints(ps[:n])))
	if n < len(ps) {
		a.nPointsDropped.Add(uint64(pathway.CountCheckpoints(ps[n:])))
	}
	return n
}

// Dropped counts n points a caller could not hand over (a bound of its own): they show in
// Stats().PointsDropped and the flush log with the points the queue refused.
func (a *Aggregator) Dropped(n int) {
	if n > 0 {
		a.nPointsDropped.Add(uint64(n))
	}
}

// Offset queues a Kafka offset (produce, commit or high watermark); the bucket keeps the highest
// value per key. Non-blocking like Add.
func (a *Aggregator) Offset(o pathway.Offset) bool {
	if a.offsets.push(&o) {
		a.nOffsets.Add(1)
		return true
	}
	a.nOffsetsDropped.Add(1)
	return false
}

// Start launches the goroutine that drains the queues. Calling it twice does nothing.
func (a *Aggregator) Start() {
	if a.started.Swap(true) {
		return
	}
	go a.loop()
}

// Close stops the draining goroutine after it has folded in everything already queued.
func (a *Aggregator) Close() {
	if a.closed.Swap(true) {
		return
	}
	if !a.started.Swap(true) {
		close(a.done)
		a.drain()
		return
	}
	close(a.stop)
	<-a.done
}

// sweepInterval is how often the aggregating goroutine folds in points that have not reached a
// shard's wake mark: the longest a point waits in the queue while traffic is light.
const sweepInterval = 20 * time.Millisecond

func (a *Aggregator) loop() {
	defer close(a.done)
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	for {
		select {
		case <-a.points.notify:
			a.drain()
		case <-a.offsets.notify:
			a.drain()
		case <-sweep.C:
			if a.points.queued() || a.offsets.queued() {
				a.drain()
			}
		case r := <-a.flushQ:
			// Served here, in order, so a point this goroutine already took off the queue is
			// folded in before the flush, never after it.
			r.reply <- a.flushInline(r.now, r.final)
		case <-a.stop:
			a.drain()
			return
		}
	}
}

type flushReq struct {
	now   time.Time
	final bool
	reply chan []Bucket
}

// drain folds in everything queued.
func (a *Aggregator) drain() {
	a.mu.Lock()
	a.drainLocked()
	a.mu.Unlock()
}

func (a *Aggregator) drainLocked() {
	a.points.drain(a.addPoint)
	a.offsets.drain(a.addOffset)
}

func (a *Aggregator) bucketFor(t int64, origin bool) *bucket {
	k := bucketKey{start: t - mod(t, a.width), origin: origin}
	i := 0
	if origin {
		i = 1
	}
	if l := &a.last[i]; l.b != nil && l.key == k {
		return l.b
	}
	b := a.buckets[k]
	if b == nil {
		b = &bucket{key: k, groups: make(map[groupKey]*groupState)}
		a.buckets[k] = b
		a.openBuckets.Store(int64(len(a.buckets)))
	}
	a.last[i].key, a.last[i].b = k, b
	return b
}

type lastBucket struct {
	key bucketKey
	b   *bucket
}

// dropIfEmpty forgets b when it holds nothing: a point or offset refused for lack of room must
// not leave a bucket behind (clients choose the origin windows of their points).
func (a *Aggregator) dropIfEmpty(b *bucket) {
	if b.n > 0 || len(b.backlogs) > 0 {
		return
	}
	delete(a.buckets, b.key)
	a.openBuckets.Store(int64(len(a.buckets)))
	for i := range a.last {
		if a.last[i].b == b {
			a.last[i] = lastBucket{}
		}
	}
}

// mod is a non-negative remainder, so times before 1970 still land in the right window.
func mod(t, w int64) int64 {
	m := t % w
	if m < 0 {
		m += w
	}
	return m
}

func (a *Aggregator) newSketch() (*ddsketch.DDSketch, store.Store) {
	pos := store.NewDenseStore()
	return ddsketch.NewDDSketch(a.mapping, pos, store.NewDenseStore()), pos
}

// noIndex marks a value the sketch's own Add must handle (zero, or outside the indexable range).
const noIndex = -1 << 31

func (a *Aggregator) addPoint(p *pathway.Point) {
	a.nAggregated.Add(uint64(p.Checkpoints()))
	vals := [3]float64{float64(max(p.PathwayLatency, 0)) / 1e9, float64(max(p.EdgeLatency, 0)) / 1e9, float64(max(p.PayloadSize, 0))}
	var idx [3]int
	for i, v := range vals {
		if v == a.lastVal[i] {
			idx[i] = a.lastIdx[i]
			continue
		}
		idx[i] = noIndex
		if v > a.mapping.MinIndexableValue() && v <= a.mapping.MaxIndexableValue() {
			idx[i] = a.mapping.Index(v)
		}
		a.lastVal[i], a.lastIdx[i] = v, idx[i]
	}
	a.addToBucket(a.bucketFor(p.Time, false), p, &vals, &idx)
	origin := max(0, p.OriginTime()) // no bucket before 1970: Start is unsigned
	if origin > p.Time+maxOriginAhead {
		origin = p.Time
		a.nOriginsClamped.Add(uint64(p.Checkpoints()))
	}
	a.addToBucket(a.bucketFor(origin, true), p, &vals, &idx)
}

// maxOriginAhead bounds how far past its checkpoint a pathway start may file a point's origin
// stats. A bucket is flushed once its window is over, so a start far ahead (a producer's clock
// hours fast, or a forged context) would hold its group, and room under MaxGroups, until then.
// Skew within it keeps dd-trace-go's unclamped origin; beyond it the checkpoint time stands in.
const maxOriginAhead = int64(time.Minute)

func (a *Aggregator) addToBucket(b *bucket, p *pathway.Point, vals *[3]float64, idx *[3]int) {
	g := b.last
	if g == nil || !g.matches(p) {
		if g = a.group(b, p); g == nil {
			a.nGroupsRefused.Add(uint64(p.Checkpoints()))
			a.dropIfEmpty(b)
			return
		}
		b.last = g
	}
	n := p.Checkpoints()
	g.PayloadBytes += uint64(max(p.PayloadSize, 0)) * uint64(n)
	for i := range idx {
		if idx[i] != noIndex {
			g.pos[i].AddWithCount(idx[i], float64(n))
			continue
		}
		sk := g.PathwayLatency
		switch i {
		case 1:
			sk = g.EdgeLatency
		case 2:
			sk = g.PayloadSize
		}
		_ = sk.AddWithCount(vals[i], float64(n)) // non-negative and finite: zero count or an error we cannot get
	}
}

// group finds or creates p's group in b, or returns nil when MaxGroups groups are open.
func (a *Aggregator) group(b *bucket, p *pathway.Point) *groupState {
	k := groupKey{hash: p.Hash, parentHash: p.ParentHash}
	head := b.groups[k]
	for g := head; g != nil; g = g.next {
		if g.matches(p) {
			return g
		}
	}
	if a.groups >= a.cfg.MaxGroups {
		return nil
	}
	a.groups++
	g := &groupState{Group: Group{Service: p.Service, EdgeTags: p.EdgeTags, Hash: p.Hash, ParentHash: p.ParentHash}, next: head}
	g.PathwayLatency, g.pos[0] = a.newSketch()
	g.EdgeLatency, g.pos[1] = a.newSketch()
	g.PayloadSize, g.pos[2] = a.newSketch()
	b.groups[k] = g
	b.n++
	return g
}

func (a *Aggregator) addOffset(o *pathway.Offset) {
	t := o.Time
	if t == 0 {
		t = a.cfg.Clock().UnixNano()
	}
	b := a.bucketFor(t, false)
	if b.backlogs == nil {
		b.backlogs = make(map[offsetKey]backlogValue)
	}
	svc := o.Service
	if svc == "" {
		svc = a.cfg.DefaultService
	}
	k := offsetKey{kind: o.Kind, service: svc, group: o.Group, topic: o.Topic, partition: o.Partition, cluster: o.ClusterID}
	v, ok := b.backlogs[k]
	if !ok {
		if a.backlogs >= a.cfg.MaxBacklogs {
			a.nOffsetsRefused.Add(1)
			a.dropIfEmpty(b)
			return
		}
		a.backlogs++
	}
	if !ok {
		v = backlogValue{max: o.Value, last: o.Value, lastAt: t}
	}
	v.max = max(v.max, o.Value)
	if t >= v.lastAt {
		v.last, v.lastAt = o.Value, t
	}
	b.backlogs[k] = v
}

// Flush removes and returns the buckets whose window ended at or before now; with final, every
// bucket (shutdown). Points still queued are folded in first.
func (a *Aggregator) Flush(now time.Time, final bool) []Bucket {
	if a.started.Load() {
		r := flushReq{now: now, final: final, reply: make(chan []Bucket, 1)}
		select {
		case a.flushQ <- r:
			return <-r.reply
		case <-a.done: // stopped: nothing is in flight any more
		}
	}
	return a.flushInline(now, final)
}

func (a *Aggregator) flushInline(now time.Time, final bool) []Bucket {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.drainLocked()
	n := now.UnixNano()
	var out []Bucket
	for k, b := range a.buckets {
		if !final && k.start+a.width > n {
			continue
		}
		delete(a.buckets, k)
		a.openBuckets.Store(int64(len(a.buckets)))
		a.groups -= b.n
		a.backlogs -= len(b.backlogs)
		out = append(out, b.export(k, a.width))
	}
	a.last = [2]lastBucket{}
	a.nBuckets.Add(uint64(len(out)))
	sortBuckets(out)
	return out
}

func (b *bucket) export(k bucketKey, width int64) Bucket {
	typ := Current
	if k.origin {
		typ = Origin
	}
	out := Bucket{Start: time.Unix(0, k.start), Duration: time.Duration(width), TimestampType: typ,
		Groups: make([]Group, 0, b.n)}
	for _, head := range b.groups {
		for g := head; g != nil; g = g.next {
			out.Groups = append(out.Groups, g.Group)
		}
	}
	for k, v := range b.backlogs {
		o := pathway.Offset{Kind: k.kind, Group: k.group, Topic: k.topic, Partition: k.partition, ClusterID: k.cluster}
		out.Backlogs = append(out.Backlogs, Backlog{Service: k.service, Tags: o.Tags(), Value: v.max, Last: v.last, LastAt: time.Unix(0, v.lastAt)})
	}
	sortGroups(out.Groups)
	sortBacklogs(out.Backlogs)
	return out
}

// Stats returns the counters. It takes no lock: GET /stats must answer while a flush runs.
func (a *Aggregator) Stats() Stats {
	open := int(a.openBuckets.Load())
	return Stats{
		Points: a.nPoints.Load(), PointsDropped: a.nPointsDropped.Load(),
		Offsets: a.nOffsets.Load(), OffsetsDropped: a.nOffsetsDropped.Load(),
		Aggregated: a.nAggregated.Load(), Buckets: a.nBuckets.Load(), OpenBuckets: open,
		GroupsRefused: a.nGroupsRefused.Load(), OffsetsRefused: a.nOffsetsRefused.Load(),
		OriginsClamped: a.nOriginsClamped.Load(),
	}
}
