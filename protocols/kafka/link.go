package kafka

import (
	"net/netip"
	"sync"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// Consume-to-produce linking (Config.LinkConsumeProduce, off by default).
//
// A proxy cannot see inside an application, so it cannot know which consumed record caused a
// produced one. With linking on, the context of the last record a client consumed becomes the
// parent of what the same client produces within LinkWindow. "Same client" is the same service
// name (after rules and client.id normalization) from the same source address.
//
// It is right for a single-threaded consume-transform-produce loop (one input stream per process,
// each output caused by the last input: stream processors, enrichers, routers). It is wrong, and
// must stay off, when a process consumes several unrelated topics, produces on its own schedule
// (timers, HTTP requests), or batches many inputs into one output: the parent would be whichever
// record happened to be consumed last, and the pathway graph would show edges that do not exist.

type linkKey struct {
	addr    netip.Addr
	service string
}

type linkEntry struct {
	ctx pathway.Context
	at  time.Time
}

// linkTable is bounded like the group tracker: emptied when full.
type linkTable struct {
	mu   sync.Mutex
	max  int
	last map[linkKey]linkEntry
}

func newLinkTable(max int) *linkTable { return &linkTable{max: max, last: make(map[linkKey]linkEntry)} }

func (l *linkTable) put(k linkKey, ctx pathway.Context, at time.Time) {
	l.mu.Lock()
	if _, ok := l.last[k]; !ok && len(l.last) >= l.max {
		clear(l.last)
	}
	l.last[k] = linkEntry{ctx, at}
	l.mu.Unlock()
}

// get returns the context client k consumed last if it was within window of now.
func (l *linkTable) get(k linkKey, now time.Time, window time.Duration) pathway.Context {
	l.mu.Lock()
	e, ok := l.last[k]
	l.mu.Unlock()
	if !ok || now.Sub(e.at) > window || e.at.After(now) {
		return pathway.Context{}
	}
	return e.ctx
}
