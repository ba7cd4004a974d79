package pathway

import (
	"sync"
	"sync/atomic"
	"time"
)

// Point is one checkpoint's statistics, as the aggregator buckets them.
type Point struct {
	Service    string
	EdgeTags   []string // sorted; shared and read-only
	Hash       uint64
	ParentHash uint64
	Time       int64 // unix ns of the checkpoint
	// PathwayLatency is ns since the pathway started: negative when the clock that started it
	// runs ahead of this one. Sketches take it as 0, but OriginTime stays the pathway start,
	// where the tracers bucket it (dd-trace-go's Processor.add).
	PathwayLatency int64
	EdgeLatency    int64 // ns since the previous checkpoint, >= 0
	PayloadSize    int64 // bytes
	// Count is how many identical checkpoints the point stands for (0 and 1 both mean one): a
	// run of Kafka records with one context, one size and one time (a produced or fetched
	// batch's) is one point.
	Count int64
}

// Checkpoints is how many checkpoints p stands for, at least one.
func (p Point) Checkpoints() int64 { return max(p.Count, 1) }

// CountCheckpoints is how many checkpoints the points of ps stand for.
func CountCheckpoints(ps []Point) int64 {
	var n int64
	for i := range ps {
		n += ps[i].Checkpoints()
	}
	return n
}

// OriginTime is when the pathway started, the time `origin` buckets are keyed by.
func (p Point) OriginTime() int64 { return p.Time - p.PathwayLatency }

// DefaultMaxNodes bounds the node cache of a Checkpointer.
const DefaultMaxNodes = 1 << 16

// Checkpointer computes checkpoints for one env. Node hashes and tag slices are cached per
// (service, edge), so a checkpoint on an edge seen before does not allocate. Safe for concurrent use.
type Checkpointer struct {
	env      string
	maxNodes int

	mu    sync.RWMutex
	nodes map[nodeKey]*Node

	resets atomic.Uint64
}

type nodeKey struct {
	service string
	edge    Edge
}

// Node is a service's node on an edge: its hash and edge tags. It does not change, so a caller
// that checkpoints many messages of one service on one edge (an AMQP channel publishing to one
// queue) may keep it and call CheckpointNode, which skips the cache lookup (hashing the edge's
// strings) and the copy of the edge that Checkpoint makes.
type Node struct {
	hash uint64
	tags []string
}

// NewCheckpointer returns a Checkpointer for env whose node cache holds at most maxNodes entries
// (DefaultMaxNodes when maxNodes <= 0); a full cache is emptied and refilled, never grown.
func NewCheckpointer(env string, maxNodes int) *Checkpointer {
	if maxNodes <= 0 {
		maxNodes = DefaultMaxNodes
	}
	return &Checkpointer{env: env, maxNodes: maxNodes, nodes: make(map[nodeKey]*Node)}
}

// Env is the env hashed into every node.
func (c *Checkpointer) Env() string { return c.env }

// CacheResets counts how often the node cache was emptied because it was full.
func (c *Checkpointer) CacheResets() uint64 { return c.resets.Load() }

// Node returns the node of service on edge e, from the cache.
func (c *Checkpointer) Node(service string, e Edge) *Node {
	k := nodeKey{service, e}
	c.mu.RLock()
	n := c.nodes[k]
	c.mu.RUnlock()
	if n != nil {
		return n
	}
	tags := e.Tags()
	n = &Node{hash: HashNode(service, c.env, tags), tags: tags}
	c.mu.Lock()
	if len(c.nodes) >= c.maxNodes {
		clear(c.nodes)
		c.resets.Add(1)
	}
	c.nodes[k] = n
	c.mu.Unlock()
	return n
}

// NodeHash returns the node hash of service on edge e.
func (c *Checkpointer) NodeHash(service string, e Edge) uint64 { return c.Node(service, e).hash }

// Checkpoint records a message of payloadSize bytes passing edge e of service at now, with parent
// the context it carried (the zero Context when it carried none or it did not decode). It returns
// the stats point and the context to write into the message: same pathway start, edge start = now.
func (c *Checkpointer) Checkpoint(parent Context, service string, e Edge, payloadSize int64, now time.Time) (Point, Context) {
	return CheckpointNode(c.Node(service, e), parent, service, payloadSize, now)
}

// CheckpointNode is Checkpoint on node n, which Checkpointer.Node returned for service and the
// edge.
func CheckpointNode(n *Node, parent Context, service string, payloadSize int64, now time.Time) (Point, Context) {
	pathwayStart, edgeStart := now, now
	if !parent.IsZero() {
		pathwayStart, edgeStart = parent.PathwayStart, parent.EdgeStart
	}
	// Times before 1970 come only from a corrupt or forged context: the hash is kept, the timing
	// is unknown (an origin bucket would otherwise start before the epoch, which the payload's
	// unsigned Start wraps into the year 2262). UnixMilli, not UnixNano, which wraps before 1677.
	if pathwayStart.UnixMilli() <= 0 {
		pathwayStart = now
	}
	if edgeStart.UnixMilli() <= 0 {
		edgeStart = now
	}
	hash := HashPathway(n.hash, parent.Hash)
	p := Point{
		Service:        service,
		EdgeTags:       n.tags,
		Hash:           hash,
		ParentHash:     parent.Hash,
		Time:           now.UnixNano(),
		PathwayLatency: int64(now.Sub(pathwayStart)),
		EdgeLatency:    max(0, int64(now.Sub(edgeStart))),
		PayloadSize:    payloadSize,
	}
	return p, Context{Hash: hash, PathwayStart: pathwayStart, EdgeStart: now}
}
