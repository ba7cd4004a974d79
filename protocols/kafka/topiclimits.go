package kafka

import (
	"sync"
	"time"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// A topic's max.message.bytes (or a broker's lower message.max.bytes) may be below the proxy's
// MaxBatchBytes, and then a batch the header grows past it is refused. With acks=1/all the client
// sees the refusal; with acks=0 nothing answers and the records are lost. So topicLimits keeps,
// per topic, the limit the cluster reports (read by configReader on the proxy's own connection)
// and the smallest grown batch a broker refused, and check decides before a batch is rewritten.
type topicLimits struct {
	mu sync.Mutex
	m  *proxy.RecentMap[string, topicLimit] // for the topics produced to most recently
	// ask hands topics to look up to the configReader; when it is full the topic is asked for again
	// by a later batch.
	ask chan string
	// vouched: the operator set MaxBatchBytes, which says no topic limit is below it, so acks=0
	// batches need no known limit.
	vouched bool
}

type topicLimit struct {
	read    int       // max.message.bytes as the cluster reports it; 0: not read
	readAt  time.Time // when read: after topicLimitTTL it is asked again (and used meanwhile)
	askedAt time.Time // last lookup asked for: at most one per topicAskEvery
	refused int       // smallest grown batch a broker refused as too large; 0: none
}

const (
	topicLimitTTL  = 5 * time.Minute  // topic configs change rarely (AlterConfigs)
	topicAskEvery  = 10 * time.Second // a lookup that failed, or is under way, is not asked again sooner
	topicAskQueued = 1024
)

func newTopicLimits(max int, vouched bool) *topicLimits {
	return &topicLimits{m: proxy.NewRecentMap[string, topicLimit](max), ask: make(chan string, topicAskQueued), vouched: vouched}
}

// check reports why records grown to size must not go to topic ("" when they may). acks0: no
// answer will come, so a refusal could not be seen; the batch is grown only when the topic's
// limit is known (or vouched for). A topic whose limit is missing or stale is asked for.
func (t *topicLimits) check(topic string, size int, acks0 bool) string {
	now := time.Now()
	t.mu.Lock()
	e, _ := t.m.Get(topic)
	if (e.read == 0 || now.Sub(e.readAt) > topicLimitTTL) && (e.askedAt.IsZero() || now.Sub(e.askedAt) > topicAskEvery) {
		select {
		case t.ask <- topic:
			e.askedAt = now
			t.m.Put(topic, e)
		default:
		}
	}
	t.mu.Unlock()
	switch {
	case e.refused > 0 && size >= e.refused:
		return skipTopicSizeLimit
	case e.read > 0 && size > e.read:
		return skipTopicSizeLimit
	case e.read == 0 && acks0 && !t.vouched:
		return skipTopicLimitUnknown
	}
	return ""
}

// refused records that a batch grown to size was too large for topic.
func (t *topicLimits) refused(topic string, size int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, _ := t.m.Get(topic)
	if e.refused > 0 && e.refused <= size {
		return
	}
	e.refused = size
	t.m.Put(topic, e)
}

// learned records topic's limit as the cluster reported it. A refusal learned before stays: the
// broker that refused may have a lower message.max.bytes than the topic's setting.
func (t *topicLimits) learned(topic string, limit int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, _ := t.m.Get(topic)
	e.read, e.readAt = limit, time.Now()
	t.m.Put(topic, e)
}

// known reports topic's limit as read from the cluster (0: not read).
func (t *topicLimits) known(topic string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, _ := t.m.Get(topic)
	return e.read
}
