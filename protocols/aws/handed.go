package aws

import (
	"sync"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// A consumer that asks for `_datadog` (MessageAttributeNames All, .* or the name) gets the
// context the message carried, and one that sends the message on with the attributes it got (a
// relay, a router, a hand-made dead-letter copy) sends that context again. Without a tracer in
// it, that is not a tracer's checkpoint: the send is the consumer's next hop, as a tracer in it
// would record it, with the consumer's own consume as its parent. The proxy remembers, per
// service, the contexts it handed to consumers with the consume checkpoint each got, to tell
// such a copy from a tracer's context (which a tracer makes new at each send).

// handedKey is a context handed to a consumer of a service (millisecond times, as encoded).
type handedKey struct {
	svc                     string
	hash                    uint64
	pathwayStart, edgeStart int64
}

// maxHanded bounds the contexts remembered; a relay sends on what it just received.
const maxHanded = 16384

type handedContexts struct {
	mu sync.Mutex
	m  *proxy.RecentMap[handedKey, pathway.Context]
}

func newHandedContexts() *handedContexts {
	return &handedContexts{m: proxy.NewRecentMap[handedKey, pathway.Context](maxHanded)}
}

func handedKeyOf(svc string, ctx pathway.Context) handedKey {
	return handedKey{svc, ctx.Hash, ctx.PathwayStart.UnixMilli(), ctx.EdgeStart.UnixMilli()}
}

// put records that a consumer of svc was handed carried, and the context of its consume.
func (h *handedContexts) put(svc string, carried, consumed pathway.Context) {
	h.mu.Lock()
	h.m.Put(handedKeyOf(svc, carried), consumed)
	h.mu.Unlock()
}

// consumed returns the consume context of svc's consumer that was handed carried.
func (h *handedContexts) consumed(svc string, carried pathway.Context) (pathway.Context, bool) {
	if carried.IsZero() {
		return pathway.Context{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m.Get(handedKeyOf(svc, carried))
}
