package kafka

import (
	"net/netip"
	"sync"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// Consume-to-produce linking (Config.LinkConsumeProduce, off by default).
//
// A proxy cannot see inside an application, so it cannot know which consumed record caused a
// produced one. With linking on, the context of the last record a client consumed becomes the
// parent of what the same client produces within LinkWindow. "Same client" is the same service
// name (after rules and client.id normalization) from the same source address.
//
// "Last" is the last record of the last fetch answer: clients fetch ahead of the record the
// application handles. It is right for a consume-transform-produce loop whose input is one
// pathway (one upstream producer's), each output caused by an input. It is wrong, and must stay
// off, when the input carries several pathways (several producers into the topic, several
// topics), when a process produces on its own schedule (timers, HTTP requests), or batches many
// inputs into one output: the parent would be whichever record happened to be fetched last, and
// the pathway graph would show edges that do not exist.

type linkKey struct {
	addr    netip.Addr
	service string
}

type linkEntry struct {
	ctx pathway.Context
	at  time.Time
}

// linkTable is bounded like the group tracker, to the clients seen most recently.
type linkTable struct {
	mu   sync.Mutex
	last *proxy.RecentMap[linkKey, linkEntry]
}

func newLinkTable(limit int) *linkTable {
	return &linkTable{last: proxy.NewRecentMap[linkKey, linkEntry](limit)}
}

func (l *linkTable) put(k linkKey, ctx pathway.Context, at time.Time) {
	l.mu.Lock()
	l.last.Put(k, linkEntry{ctx, at})
	l.mu.Unlock()
}

// get returns the context client k consumed last if it was within window of now.
func (l *linkTable) get(k linkKey, now time.Time, window time.Duration) pathway.Context {
	l.mu.Lock()
	e, ok := l.last.Get(k)
	l.mu.Unlock()
	if !ok || now.Sub(e.at) > window || e.at.After(now) {
		return pathway.Context{}
	}
	return e.ctx
}
