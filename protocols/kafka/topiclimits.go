package kafka

import (
	"sync"
	"sync/atomic"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// topicLimits remembers, per topic, the smallest batch the broker refused as too large after the
// proxy had grown it: the topic's max.message.bytes (or a broker's lower message.max.bytes) is
// below it. The proxy cannot read topic configs without the clients' credentials, so it learns
// them from the one refusal each and keeps later batches of the topic from growing that far.
type topicLimits struct {
	mu      sync.Mutex
	m       *proxy.RecentMap[string, int] // topic -> smallest refused size, for the topics used most recently
	learned atomic.Bool                   // any topic at all: until then fits takes no lock (every produce batch asks)
}

func newTopicLimits(max int) *topicLimits {
	return &topicLimits{m: proxy.NewRecentMap[string, int](max)}
}

// refused records that a batch grown to size was too large for topic.
func (t *topicLimits) refused(topic string, size int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.m.Get(topic); ok && cur <= size {
		return
	}
	t.m.Put(topic, size)
	t.learned.Store(true)
}

// fits reports whether records grown to size may go to topic.
func (t *topicLimits) fits(topic string, size int) bool {
	if !t.learned.Load() {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	limit, ok := t.m.Get(topic)
	return !ok || size < limit
}
