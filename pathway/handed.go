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
	per    int // contexts a shard keeps
}

const (
	handedShards = 16
	// handedServices is how many consuming services a context keeps (a fan-out's); a further
	// one replaces the oldest, whose relay then gets the carried context as its parent.
	handedServices = 4
)

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

// handedEntry is one carried context and the services that consumed it, each with its consume
// checkpoint. Entries live in a ring, so the map's key and value stay small and fixed-size.
type handedEntry struct {
	carried  handedCtx
	services [handedServices]string
	consumed [handedServices]handedCtx
	n, next  uint8 // services kept; the slot the next new one takes once all are used
}

type handedShard struct {
	mu   sync.Mutex
	m    map[handedCtx]int32 // carried context -> its entry in ring
	ring []handedEntry       // insertion order, the oldest overwritten first
	next int
}

// The contexts a front's consumers add to a Handed it shares with the process's other fronts
// (or keeps alone): what it is sized by, front by front.
const (
	HandedPerKafkaFront = 1 << 15
	HandedPerAMQPFront  = 1 << 15
	HandedPerAWSFront   = 1 << 14
)

// NewHanded remembers the latest contexts handed to consumers, about n of them.
func NewHanded(n int) *Handed {
	return &Handed{per: max(n/handedShards, 1)}
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
	e := sh.entry(h.per, k)
	c := toHanded(consumed)
	for i := range e.n {
		if e.services[i] == service {
			e.consumed[i] = c // a redelivery's: the latest
			return
		}
	}
	i := e.n
	if e.n < handedServices {
		e.n++
	} else {
		i = e.next
		e.next = (e.next + 1) % handedServices
	}
	e.services[i], e.consumed[i] = service, c
}

// entry is k's entry, made in the oldest's place when k is new.
func (sh *handedShard) entry(per int, k handedCtx) *handedEntry {
	if i, ok := sh.m[k]; ok {
		return &sh.ring[i]
	}
	if sh.m == nil {
		sh.m = make(map[handedCtx]int32)
	}
	i := len(sh.ring)
	if i < per {
		sh.ring = append(sh.ring, handedEntry{})
	} else {
		i = sh.next
		sh.next = (sh.next + 1) % len(sh.ring)
		delete(sh.m, sh.ring[i].carried)
	}
	sh.ring[i] = handedEntry{carried: k}
	sh.m[k] = int32(i)
	return &sh.ring[i]
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
	i, ok := sh.m[k]
	if !ok {
		return Context{}, false
	}
	e := &sh.ring[i]
	for j := range e.n {
		if e.services[j] == service && service != "" {
			return e.consumed[j].context(), true
		}
	}
	return carried, true
}
