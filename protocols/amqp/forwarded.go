package amqp

import (
	"sync"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// A worker that consumes a message and publishes it again with the headers it was delivered (a
// retry, a forward to another exchange, a move to an error queue) sends on a context no tracer
// put there at this hop: a tracer writes a new one at every produce. So a publish carrying a
// context the proxy delivered lately is checkpointed as the worker's produce, its parent the
// worker's consume of it (as a tracer links them), not left alone as an instrumented client's.
// A returned message's context is remembered the same way, its own context the parent of a
// retry however many publishes later.

// maxDelivered bounds the delivered contexts remembered (about 160 bytes each: 10 MiB), in
// deliveredShards shards so that connections delivering at once seldom wait on each other.
const (
	maxDelivered    = 1 << 16
	deliveredShards = 16
)

// deliveredCtx is a delivered context's consume checkpoint: its service and outgoing context.
type deliveredCtx struct {
	service string
	ctx     pathway.Context
}

type deliveredShard struct {
	mu   sync.Mutex
	m    map[[pathway.Base64Len]byte]deliveredCtx
	ring [][pathway.Base64Len]byte // insertion order, the oldest overwritten first
	next int
}

// deliveredCtxs remembers the latest delivered contexts, oldest forgotten first.
type deliveredCtxs struct {
	shards [deliveredShards]deliveredShard
}

func (d *deliveredCtxs) shard(v []byte) *deliveredShard {
	return &d.shards[(uint(v[0])+uint(v[1])<<4+uint(v[2]))%deliveredShards]
}

// add records that value, a delivered message's context, was consumed by service, whose consume
// checkpoint continued it as ctx.
func (d *deliveredCtxs) add(value []byte, service string, ctx pathway.Context) {
	if len(value) != pathway.Base64Len {
		return
	}
	k := [pathway.Base64Len]byte(value)
	sh := d.shard(value)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = map[[pathway.Base64Len]byte]deliveredCtx{}
	}
	if _, ok := sh.m[k]; !ok {
		if len(sh.ring) < maxDelivered/deliveredShards {
			sh.ring = append(sh.ring, k)
		} else {
			delete(sh.m, sh.ring[sh.next])
			sh.ring[sh.next] = k
			sh.next = (sh.next + 1) % len(sh.ring)
		}
	}
	sh.m[k] = deliveredCtx{service, ctx} // a redelivery or another consumer's: the latest
}

// parent is the parent a publish by service carrying value takes when value was delivered
// lately: the consume checkpoint's context when service consumed it, else value's own context
// (a worker whose consumer and publisher are named apart). ok is false for any other value.
func (d *deliveredCtxs) parent(value []byte, service string) (pathway.Context, bool) {
	if len(value) != pathway.Base64Len {
		return pathway.Context{}, false
	}
	sh := d.shard(value)
	sh.mu.Lock()
	dc, ok := sh.m[[pathway.Base64Len]byte(value)]
	sh.mu.Unlock()
	if !ok {
		return pathway.Context{}, false
	}
	if dc.service == service {
		return dc.ctx, true
	}
	c, err := pathway.DecodeBase64(value)
	return c, err == nil
}
