package pathway

import (
	"sync"
	"time"
)

// Handed remembers the contexts consumers were handed lately, with the consume checkpoint each
// consuming service made of them. A tracer writes a new context at every produce, so a produce
// that carries one of these was sent on by a client without a tracer (a relay that copies
// headers, a retry, a move to an error queue): it is that client's next hop, not a tracer's
// checkpoint to leave alone. Safe for concurrent use; bounded, the oldest forgotten first.
type Handed struct {
	shards [handedShards]handedShard
	per    int // entries a shard keeps
}

const handedShards = 16

// handedCtx is a context with its times in milliseconds, as encoded.
type handedCtx struct {
	hash                    uint64
	pathwayStart, edgeStart int64
}

func toHanded(c Context) handedCtx {
	return handedCtx{c.Hash, c.PathwayStart.UnixMilli(), c.EdgeStart.UnixMilli()}
}

func (c handedCtx) context() Context {
	return Context{Hash: c.hash, PathwayStart: time.UnixMilli(c.pathwayStart), EdgeStart: time.UnixMilli(c.edgeStart)}
}

// handedKey is a carried context and a consuming service; the empty service marks that any
// service consumed it.
type handedKey struct {
	carried handedCtx
	service string
}

type handedShard struct {
	mu   sync.Mutex
	m    map[handedKey]handedCtx // the service's consume checkpoint
	ring []handedKey             // insertion order, the oldest overwritten first
	next int
}

// NewHanded remembers about capacity entries, two per consume: one for the service, one for any.
func NewHanded(capacity int) *Handed {
	return &Handed{per: max(capacity/handedShards, 2)}
}

// shard spreads contexts by their hash and times: the contexts of one pathway (one producer on
// one queue) all share a hash, and by the hash alone would fill one shard, a sixteenth of the
// bound, behind one lock.
func (h *Handed) shard(c handedCtx) *handedShard {
	x := c.hash ^ uint64(c.pathwayStart)*0x9e3779b97f4a7c15 ^ uint64(c.edgeStart)*0xc2b2ae3d27d4eb4f
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return &h.shards[x%handedShards]
}

// Put records that a consumer of service was handed carried and checkpointed it as consumed.
func (h *Handed) Put(carried Context, service string, consumed Context) {
	if carried.IsZero() {
		return
	}
	k := toHanded(carried)
	sh := h.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[handedKey]handedCtx)
	}
	sh.put(h.per, handedKey{k, service}, toHanded(consumed))
	sh.put(h.per, handedKey{k, ""}, handedCtx{})
}

func (sh *handedShard) put(per int, k handedKey, v handedCtx) {
	if _, ok := sh.m[k]; !ok {
		if len(sh.ring) < per {
			sh.ring = append(sh.ring, k)
		} else {
			delete(sh.m, sh.ring[sh.next])
			sh.ring[sh.next] = k
			sh.next = (sh.next + 1) % len(sh.ring)
		}
	}
	sh.m[k] = v // a redelivery's: the latest
}

// Parent is the parent of a produce by service that carries carried, when carried was handed to
// a consumer lately: service's own consume of it, or carried itself when only other services
// consumed it (a client that consumes and produces under two names, as over two connections).
// ok is false for any other context.
func (h *Handed) Parent(carried Context, service string) (parent Context, ok bool) {
	if carried.IsZero() {
		return Context{}, false
	}
	k := toHanded(carried)
	sh := h.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if c, ok := sh.m[handedKey{k, service}]; ok && service != "" {
		return c.context(), true
	}
	if _, ok := sh.m[handedKey{k, ""}]; ok {
		return carried, true
	}
	return Context{}, false
}
