package kafka

import (
	"sync"
	"sync/atomic"
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
	// m holds the topics produced to most recently, the last max (MaxTopicIDs) at least: it is a
	// RecentMap of 2*max, as one of max keeps generations of max/2, and a client producing to
	// more topics in turn had each looked up again, its batches waiting for that.
	m *proxy.RecentMap[string, topicLimit]
	// ask hands topics to look up to the configReader; when it is full the topic is asked for again
	// by a later batch.
	ask chan string
	// vouched: the operator says no topic's limit is below MaxBatchBytes, so acks=0 batches need
	// no known limit (Config.InjectAcks0UnknownLimit).
	vouched bool
	// settled is closed, and replaced, each time the configReader finishes a lookup, answered or
	// not: batches waiting for a topic's first limit (await) look again.
	settled chan struct{}
	// downUntil (unix ns): the reader backs off and looks nothing up before then; noReader: none
	// runs (not yet, or it stopped: SASL). Batches do not wait for lookups that will not come.
	downUntil atomic.Int64
	noReader  atomic.Bool
	waits     atomic.Uint64 // batches that waited for a lookup (Stats.TopicLimitWaits)
	// lookups the cluster answered, and those that failed (Stats.TopicConfigLookups, ...Failures)
	lookups, lookupFailures atomic.Uint64
	wait                    atomic.Int64 // Config.TopicLimitWait, in ns (tests wait longer)
	// timedOut: a batch waited until its deadline and the lookup under way did not settle; the
	// reader does one lookup at a time, so later batches do not wait until one settles (a reader
	// stuck dialing would otherwise cost every produce request the whole wait). Guarded by mu.
	timedOut bool
}

type topicLimit struct {
	read    int       // max.message.bytes as the cluster reports it; 0: not read
	readAt  time.Time // when read: after topicLimitTTL it is asked again (and used meanwhile)
	askedAt time.Time // last lookup asked for: at most one per topicAskEvery
	refused int       // smallest grown batch a broker refused as too large; 0: none
	// failedAt: a lookup of the topic came back without its limit (an error, the topic not
	// created yet, no connection); batches stop waiting for it until it is asked again.
	failedAt time.Time
	// compression is the topic's compression.type as a batch codec (0 none ... 4 zstd), or -1 for
	// "producer" (or not read). A batch in another codec is recompressed by the broker, which
	// checks the size again after that: the proxy cannot know that size, so it counts the batch
	// uncompressed.
	compression int16
}

const (
	// topicLimitTTL: a limit read this long ago is asked for again, and used meanwhile.
	topicLimitTTL = time.Minute
	// topicLimitStale: a limit not read again for this long is no longer trusted for acks=0
	// batches (a topic's limit was lowered, or it was recreated, while lookups failed).
	topicLimitStale = 3 * time.Minute
	topicAskEvery   = 10 * time.Second // a lookup that failed, or is under way, is not asked again sooner
	topicAskQueued  = 1024
)

// DefaultTopicLimitWait bounds how long a produce request waits for its topics' first lookups: a
// DescribeConfigs round trip on the proxy's own connection, which a broker answers in a few
// milliseconds (its first use also dials, sends ApiVersions and logs in). Past it the batches go
// as if no lookup were under way. Config.TopicLimitWait sets another bound, up to
// MaxTopicLimitWait.
const (
	DefaultTopicLimitWait = 500 * time.Millisecond
	MaxTopicLimitWait     = 5 * time.Second
)

func newTopicLimits(max int, vouched bool) *topicLimits {
	t := &topicLimits{m: proxy.NewRecentMap[string, topicLimit](2 * max), ask: make(chan string, topicAskQueued), vouched: vouched,
		settled: make(chan struct{})}
	t.noReader.Store(true) // until a configReader runs
	t.wait.Store(int64(DefaultTopicLimitWait))
	return t
}

// grownBatch is a partition's records as the proxy would send them: size bytes in codec, plain
// bytes uncompressed (batch header included).
type grownBatch struct {
	size, plain int
	codec       int16
	orig        int // the batch's size as the client sent it
}

// check reports why records grown to b must not go to topic ("" when they may). acks0: no answer
// will come, so a refusal could not be seen; the batch is grown only when the topic's limit is
// known and fresh (or vouched for). A topic whose limit is missing or due is asked for. A
// topic never read waits for its lookup until wait: the first batches to a topic whose limit is
// below MaxBatchBytes would otherwise be grown past it and refused, a refusal the client would
// not have had without the proxy (kgo fails such records; the Java producer splits the batch,
// and fails a batch of one).
func (t *topicLimits) check(topic string, b grownBatch, acks0 bool, wait time.Time) string {
	now := time.Now()
	t.mu.Lock()
	e := t.askLocked(topic, now)
	t.mu.Unlock()
	if e.read == 0 && !t.noReader.Load() { // (read again under mu in await) SASL: no locking per batch
		t.await(topic, wait)
		t.mu.Lock()
		e = t.entryLocked(topic) // learned meanwhile, maybe before the wait began
		t.mu.Unlock()
		now = time.Now()
	}
	size := b.size
	if e.compression >= 0 && e.compression != b.codec {
		size = b.plain
	}
	// A stale limit still bounds a batch; for acks=0 it no longer vouches that one fits.
	fresh := e.read > 0 && now.Sub(e.readAt) <= topicLimitStale
	// A batch the broker refuses as it came (the limit applies to its own codec's size) is no
	// skip of the proxy's: its MESSAGE_TOO_LARGE is what the client gets either way.
	tooBig := b.orig > 0 && (e.compression < 0 || e.compression == b.codec) &&
		(e.refused > 0 && b.orig >= e.refused || e.read > 0 && b.orig > e.read)
	switch {
	case tooBig:
		return skipOverLimitAsSent
	case e.refused > 0 && b.size >= e.refused:
		return skipTopicSizeLimit
	case e.read > 0 && size > e.read:
		return skipTopicSizeLimit
	case acks0 && !fresh && !t.vouched:
		return skipTopicLimitUnknown
	}
	return ""
}

// askLocked asks for topic's limit when it is missing or due and not asked for lately, and
// returns topic's entry.
func (t *topicLimits) askLocked(topic string, now time.Time) topicLimit {
	e := t.entryLocked(topic)
	if (e.read == 0 || now.Sub(e.readAt) > topicLimitTTL) && (e.askedAt.IsZero() || now.Sub(e.askedAt) > topicAskEvery) {
		select {
		case t.ask <- topic:
			e.askedAt = now
			t.m.Put(topic, e)
		default:
		}
	}
	return e
}

// askFor asks for topic's limit as check would, without checking anything: a produce request
// asks for all its topics before its first batch waits, so that one lookup answers them all.
func (t *topicLimits) askFor(topic string) {
	t.mu.Lock()
	t.askLocked(topic, time.Now())
	t.mu.Unlock()
}

// await waits until deadline while a lookup of topic's limit is under way and the reader can
// answer it.
func (t *topicLimits) await(topic string, deadline time.Time) {
	waited := false
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return
		}
		t.mu.Lock()
		ch := t.settled
		// Read with ch, under mu: a reader stops or backs off before the settle that follows, so
		// a waiter sees that or gets the channel the settle closes.
		if t.timedOut || t.noReader.Load() || now.UnixNano() < t.downUntil.Load() {
			t.mu.Unlock()
			return
		}
		e, ok := t.m.Get(topic)
		pending := ok && e.read == 0 && !e.askedAt.IsZero() && now.Sub(e.askedAt) <= topicAskEvery && e.failedAt.Before(e.askedAt)
		t.mu.Unlock()
		if !pending {
			return
		}
		if !waited {
			waited = true
			t.waits.Add(1)
		}
		timer := time.NewTimer(deadline.Sub(now))
		select {
		case <-ch:
			timer.Stop()
		case <-timer.C:
			t.mu.Lock()
			if t.settled == ch {
				t.timedOut = true
			}
			t.mu.Unlock()
			return
		}
	}
}

// settle ends a lookup: the topics it did not learn are marked failed, and waiting batches look
// again.
func (t *topicLimits) settle(unread []string) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, topic := range unread {
		if e, ok := t.m.Get(topic); ok {
			e.failedAt = now
			t.m.Put(topic, e)
		}
	}
	t.timedOut = false
	close(t.settled)
	t.settled = make(chan struct{})
}

// entryLocked is topic's entry, or a new one that knows nothing (compression not read: -1).
func (t *topicLimits) entryLocked(topic string) topicLimit {
	e, ok := t.m.Get(topic)
	if !ok {
		e.compression = -1
	}
	return e
}

// refused records that a batch grown to size was too large for topic.
func (t *topicLimits) refused(topic string, size int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(topic)
	if e.refused > 0 && e.refused <= size {
		return
	}
	e.refused = size
	t.m.Put(topic, e)
}

// learned records topic's limit and compression.type as the cluster reported them. A refusal
// learned before stays: the broker that refused may have a lower message.max.bytes than the
// topic's setting.
func (t *topicLimits) learned(topic string, limit int, compression string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, _ := t.m.Get(topic)
	e.read, e.readAt, e.compression = limit, time.Now(), codecOf(compression)
	t.m.Put(topic, e)
}

// codecOf is a topic's compression.type as a batch codec, -1 for "producer" (keep the batch's).
func codecOf(compression string) int16 {
	switch compression {
	case "uncompressed":
		return 0
	case "gzip":
		return 1
	case "snappy":
		return 2
	case "lz4":
		return 3
	case "zstd":
		return 4
	}
	return -1
}

// known reports topic's limit as read from the cluster (0: not read).
func (t *topicLimits) known(topic string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, _ := t.m.Get(topic)
	return e.read
}
