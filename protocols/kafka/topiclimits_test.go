package kafka

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func TestTopicLimitsCheck(t *testing.T) {
	for _, tc := range []struct {
		name        string
		vouched     bool
		read        int    // limit read from the cluster (0: none)
		compression string // the topic's compression.type, with read
		age         time.Duration
		refused     int // grown size a broker refused (0: none)
		b           grownBatch
		acks0       bool
		want        string
	}{
		{name: "unknown, acks=all", b: grownBatch{size: 5000}, want: ""},
		{name: "unknown, acks=0", b: grownBatch{size: 10}, acks0: true, want: skipTopicLimitUnknown},
		{name: "unknown, acks=0, vouched", vouched: true, b: grownBatch{size: 10}, acks0: true, want: ""},
		{name: "read, within", read: 2000, b: grownBatch{size: 2000}, acks0: true, want: ""},
		{name: "read, past", read: 2000, b: grownBatch{size: 2001}, want: skipTopicSizeLimit},
		{name: "read, past, vouched", vouched: true, read: 2000, b: grownBatch{size: 2001}, acks0: true, want: skipTopicSizeLimit},
		{name: "refused at this size", refused: 2020, b: grownBatch{size: 2020}, want: skipTopicSizeLimit},
		{name: "below a refusal", refused: 2020, b: grownBatch{size: 2019}, want: ""},
		{name: "refusal below the read limit", read: 5000, refused: 3000, b: grownBatch{size: 4000}, want: skipTopicSizeLimit},
		{name: "broker recompresses: plain size counts", read: 2000, compression: "uncompressed", b: grownBatch{size: 900, plain: 2500, codec: 3}, acks0: true, want: skipTopicSizeLimit},
		{name: "broker recompresses, plain fits", read: 2000, compression: "zstd", b: grownBatch{size: 900, plain: 1900, codec: 3}, acks0: true, want: ""},
		{name: "same codec: sent size counts", read: 2000, compression: "lz4", b: grownBatch{size: 900, plain: 2500, codec: 3}, acks0: true, want: ""},
		{name: "producer's codec: sent size counts", read: 2000, compression: "producer", b: grownBatch{size: 900, plain: 2500, codec: 3}, acks0: true, want: ""},
		{name: "stale limit, acks=0", read: 2000, age: topicLimitStale + time.Second, b: grownBatch{size: 10}, acks0: true, want: skipTopicLimitUnknown},
		{name: "stale limit, acks=all", read: 2000, age: topicLimitStale + time.Second, b: grownBatch{size: 2001}, want: skipTopicSizeLimit},
		{name: "stale limit still bounds vouched acks=0", vouched: true, read: 2000, age: topicLimitStale + time.Second, b: grownBatch{size: 5000}, acks0: true, want: skipTopicSizeLimit},
		{name: "stale limit, vouched acks=0 within it", vouched: true, read: 2000, age: topicLimitStale + time.Second, b: grownBatch{size: 100}, acks0: true, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newTopicLimits(10, tc.vouched)
			if tc.read > 0 {
				l.learned("t", tc.read, tc.compression)
				l.mu.Lock()
				e, _ := l.m.Get("t")
				e.readAt = e.readAt.Add(-tc.age)
				l.m.Put("t", e)
				l.mu.Unlock()
			}
			if tc.refused > 0 {
				l.refused("t", tc.refused)
			}
			if got := l.check("t", tc.b, tc.acks0, time.Time{}); got != tc.want {
				t.Errorf("check = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestTopicLimitsAsk: a topic is asked for when its limit is missing, at most once per
// topicAskEvery, and again when what was read is older than topicLimitTTL.
func TestTopicLimitsAsk(t *testing.T) {
	l := newTopicLimits(10, false)
	asked := func() int {
		n := 0
		for {
			select {
			case <-l.ask:
				n++
			default:
				return n
			}
		}
	}
	l.check("t", grownBatch{size: 1}, false, time.Time{})
	l.check("t", grownBatch{size: 1}, true, time.Time{})
	if n := asked(); n != 1 {
		t.Fatalf("asked %d times for a missing limit, want 1", n)
	}
	l.mu.Lock()
	e, _ := l.m.Get("t")
	e.askedAt = e.askedAt.Add(-topicAskEvery - time.Second) // the lookup failed long enough ago
	l.m.Put("t", e)
	l.mu.Unlock()
	l.check("t", grownBatch{size: 1}, false, time.Time{})
	if n := asked(); n != 1 {
		t.Fatalf("asked %d times after topicAskEvery, want 1", n)
	}
	l.learned("t", 2000, "producer")
	l.check("t", grownBatch{size: 1}, false, time.Time{})
	if n := asked(); n != 0 {
		t.Fatalf("asked %d times for a fresh limit, want 0", n)
	}
	l.mu.Lock()
	e, _ = l.m.Get("t")
	e.readAt = e.readAt.Add(-topicLimitTTL - time.Second)
	e.askedAt = e.askedAt.Add(-topicAskEvery - time.Second)
	l.m.Put("t", e)
	l.mu.Unlock()
	if got := l.check("t", grownBatch{size: 2001}, false, time.Time{}); got != skipTopicSizeLimit {
		t.Errorf("stale limit not used meanwhile: check = %q", got)
	}
	if n := asked(); n != 1 {
		t.Fatalf("asked %d times for a stale limit, want 1", n)
	}
	// A full queue drops the ask and does not mark the topic as asked.
	for range topicAskQueued {
		l.ask <- "other"
	}
	l.check("u", grownBatch{size: 1}, false, time.Time{})
	l.mu.Lock()
	e, _ = l.m.Get("u")
	l.mu.Unlock()
	if !e.askedAt.IsZero() {
		t.Errorf("a dropped ask was recorded as asked")
	}
}

// TestTopicLimitsAwait: a batch to a topic never read waits for its lookup while one is under
// way and the reader can answer it: until the lookup settles (learned or failed), or the
// deadline. It does not wait without a reader (none runs, or it stopped: SASL), for one backing
// off, or for a topic whose lookup failed, nor past its deadline.
func TestTopicLimitsAwait(t *testing.T) {
	far := time.Now().Add(time.Hour) // the tests end by settling, never by the deadline
	for _, tc := range []struct {
		name    string
		prepare func(l *topicLimits)
		settle  func(l *topicLimits) // from another goroutine, while the batch waits
		want    string
		waited  bool
	}{
		{name: "learned", settle: func(l *topicLimits) { l.learned("t", 1000, "producer"); l.settle(nil) }, want: skipTopicSizeLimit, waited: true},
		{name: "lookup failed", settle: func(l *topicLimits) { l.settle([]string{"t"}) }, want: "", waited: true},
		{name: "no reader", prepare: func(l *topicLimits) { l.noReader.Store(true) }, want: ""},
		{name: "reader backing off", prepare: func(l *topicLimits) { l.downUntil.Store(time.Now().Add(time.Minute).UnixNano()) }, want: ""},
	} {
		l := newTopicLimits(10, false)
		l.noReader.Store(false) // as a running configReader does
		if tc.prepare != nil {
			tc.prepare(l)
		}
		if tc.settle != nil {
			go func() {
				for l.waits.Load() == 0 { // the batch waits (it asked first)
					time.Sleep(time.Millisecond)
				}
				<-l.ask
				tc.settle(l)
			}()
		}
		if got := l.check("t", grownBatch{size: 2000}, false, far); got != tc.want {
			t.Errorf("%s: check = %q, want %q", tc.name, got, tc.want)
		}
		if waited := l.waits.Load() > 0; waited != tc.waited {
			t.Errorf("%s: waited %v, want %v", tc.name, waited, tc.waited)
		}
	}
	// A wait that reaches its deadline: the lookup is still under way, so the next batches do not
	// wait for it (the reader is stuck) until a lookup settles.
	l0 := newTopicLimits(10, false)
	l0.noReader.Store(false)
	if got := l0.check("t", grownBatch{size: 2000}, false, time.Now().Add(20*time.Millisecond)); got != "" || l0.waits.Load() != 1 {
		t.Errorf("a wait to its deadline: check = %q, %d waits; want \"\", 1", got, l0.waits.Load())
	}
	soon := time.Now().Add(2 * time.Second) // not far: were they to wait, the test would still end
	l0.check("t", grownBatch{size: 2000}, false, soon)
	l0.check("u", grownBatch{size: 2000}, false, soon)
	if n := l0.waits.Load(); n != 1 {
		t.Errorf("%d waits after one reached its deadline, want still 1", n)
	}
	// A deadline already past: no wait.
	l1 := newTopicLimits(10, false)
	l1.noReader.Store(false)
	l1.check("t", grownBatch{size: 2000}, false, time.Now().Add(-time.Second))
	if n := l1.waits.Load(); n != 0 {
		t.Errorf("%d waits with the deadline past, want 0", n)
	}

	// After a failed lookup, the topic's batches go at once until it is asked again.
	l := newTopicLimits(10, false)
	l.noReader.Store(false)
	l.check("t", grownBatch{size: 1}, false, time.Time{}) // asks, no time to wait
	<-l.ask
	l.settle([]string{"t"})
	if got := l.check("t", grownBatch{size: 2000}, false, far); got != "" || l.waits.Load() != 0 {
		t.Errorf("after a failed lookup: check = %q, %d waits; want no wait", got, l.waits.Load())
	}
}

// TestTopicLimitWaitOff: with TopicLimitWait 0 the data path never waits for a topic's first
// limit: a batch goes while its lookup is under way (held at the broker here), gets the header
// and, grown past the topic's limit, is refused, as the README says that setting costs.
func TestTopicLimitWaitOff(t *testing.T) {
	c, guard := startCluster(t)
	none := time.Duration(0)
	p := startProxy(t, c, func(cfg *Config) { cfg.TopicLimitWait = &none })
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))
	limit := "2000"
	topic := uniqueTopic(t, "no-wait")
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
		t.Fatal(err)
	}
	release := holdNext(c, kmsg.DescribeConfigs.Int16())
	err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: bytes.Repeat([]byte("n"), 1900)}).FirstErr()
	release()
	if !errors.Is(err, kerr.MessageTooLarge) {
		t.Fatalf("a near-limit first batch with no wait: %v, want MESSAGE_TOO_LARGE", err)
	}
	if n := p.Stats().TopicLimitWaits; n != 0 {
		t.Errorf("%d batches waited with TopicLimitWait 0", n)
	}
	guard.check(t)
}

// TestTopicLimitWaitBounds: New refuses a wait below 0 or above MaxTopicLimitWait.
func TestTopicLimitWaitBounds(t *testing.T) {
	for _, w := range []time.Duration{-time.Millisecond, MaxTopicLimitWait + time.Millisecond} {
		_, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, TopicLimitWait: &w})
		if err == nil || !strings.Contains(err.Error(), "TopicLimitWait") {
			t.Errorf("TopicLimitWait %v: %v, want an error naming it", w, err)
		}
	}
	for _, w := range []time.Duration{0, MaxTopicLimitWait} {
		if _, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, TopicLimitWait: &w}); err != nil {
			t.Errorf("TopicLimitWait %v: %v", w, err)
		}
	}
}

// TestTopicLimitsKeepTheBound: the limits of as many topics as the bound (MaxTopicIDs) that a
// client produces to in turn stay known. The map kept half of them: a topic whose limit it
// forgot is looked up again, and its produce requests wait for that lookup (topic_limit_wait).
func TestTopicLimitsKeepTheBound(t *testing.T) {
	for _, bound := range []int{2, 10, 101} {
		l := newTopicLimits(bound, false)
		for i := range bound {
			l.learned(fmt.Sprintf("topic-%d", i), 1000+i, "producer")
		}
		for round := range 3 {
			for i := range bound {
				if got := l.known(fmt.Sprintf("topic-%d", i)); got != 1000+i {
					t.Fatalf("bound %d, round %d: topic-%d's limit %d, want %d", bound, round, i, got, 1000+i)
				}
			}
		}
	}
}
