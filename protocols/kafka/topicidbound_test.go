package kafka

// The topic id map of a cluster with more topics than MaxTopicIDs: the ids clients use must stay
// known while full Metadata answers go through it.

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// boundTopic is the id and name of the i-th topic of a test cluster.
func boundTopic(i int) ([16]byte, string) {
	var id [16]byte
	id[0], id[1], id[2], id[15] = byte(i>>16), byte(i>>8), byte(i), 1 // never the zero id
	return id, fmt.Sprintf("topic-%d", i)
}

// span is the indexes from..to-1, step apart.
func span(from, to, step int) []int {
	var out []int
	for i := from; i < to; i += step {
		out = append(out, i)
	}
	return out
}

// TestTopicIDsLargerCluster: Metadata answers naming every topic of a cluster larger than the
// bound (a regex consumer's, an admin tool's, the proxy's own after a miss) go through the map
// between a client's requests, which name its topics by id (Produce v13, Fetch v13+). Every id
// the client names must resolve, after each full answer: emptying the map when full left only
// the last topics of each answer, so a client's produces went without the header and each miss
// asked the cluster for every topic again, emptying it again.
func TestTopicIDsLargerCluster(t *testing.T) {
	for _, tc := range []struct {
		name        string
		max, topics int
		used        []int // the topics the client names by id
		// own: the client's own Metadata names its topics before it names them by id (as
		// clients do), after the first full answer; else only the full answers name them.
		own bool
	}{
		{name: "at the bound", max: 100, topics: 100, used: span(0, 100, 1)},
		{name: "one over the bound", max: 100, topics: 101, used: span(0, 101, 10)},
		{name: "half again the bound, first topics", max: 100, topics: 150, used: span(0, 10, 1)},
		{name: "half again the bound, spread", max: 100, topics: 150, used: span(0, 150, 3)},
		{name: "twice the bound", max: 100, topics: 200, used: span(0, 200, 4)},
		{name: "ten times the bound, own metadata", max: 100, topics: 1000, used: span(0, 40, 1), own: true},
		{name: "ten times the bound, spread, own metadata", max: 100, topics: 1000, used: span(3, 1000, 20), own: true},
		{name: "a hundred times the bound, own metadata", max: 10, topics: 1000, used: span(500, 505, 1), own: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids := newTopicIDs(tc.max)
			refresh := func() {
				for i := range tc.topics {
					if ids.put(boundTopic(i)) {
						t.Fatalf("topic %d taken for one created again", i)
					}
				}
			}
			refresh()
			if tc.own {
				for _, i := range tc.used {
					ids.put(boundTopic(i))
				}
			}
			for round := range 3 {
				var missed []int
				for _, i := range tc.used {
					id, want := boundTopic(i)
					if name, ok := ids.get(id); !ok || name != want {
						missed = append(missed, i)
					}
				}
				if len(missed) > 0 {
					t.Fatalf("after %d full answers of %d topics (bound %d), %d of the %d topics the client uses are not known: %v",
						round+1, tc.topics, tc.max, len(missed), len(tc.used), missed)
				}
				refresh()
			}
		})
	}
}

// TestTopicIDsLargerClusterProduceV13: a proxy whose topic id bound is below the cluster's topic
// count, and a kgo producer (Produce v13: topics by id only) to a few topics. Between its
// produces a Metadata answer naming many other topics (an admin tool listing them) goes through
// the proxy; the producer asks for no Metadata again and names its topics by id. Every record
// it produces must get the pathway header, and the proxy warns that its bound is too low.
func TestTopicIDsLargerClusterProduceV13(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	const bound, others, used, perRound = 10, 40, 5, 4
	prefix := uniqueTopic(t, "idbound")
	var otherTopics, usedTopics []string
	for i := range others {
		otherTopics = append(otherTopics, fmt.Sprintf("%s-other-%d", prefix, i))
	}
	for i := range used {
		usedTopics = append(usedTopics, fmt.Sprintf("%s-used-%d", prefix, i))
	}
	for _, topic := range slices.Concat(otherTopics, usedTopics) {
		if err := c.CreateTopic(topic, 1, nil); err != nil {
			t.Fatalf("create %s: %v", topic, err)
		}
	}
	var mu sync.Mutex
	versions := map[int16]int{}
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		versions[req.GetVersion()]++
		mu.Unlock()
		return nil, nil, false
	})

	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.MaxTopicIDs, cfg.Log = bound, zerolog.New(&logs) })
	answeredLimits(p)
	ctx := testCtx(t)
	prod := kgoClient(t, p, kgo.ProducerLinger(0))
	admin := kgoClient(t, p)
	listOthers := func() {
		req := kmsg.NewPtrMetadataRequest()
		for _, topic := range otherTopics {
			rt := kmsg.NewMetadataRequestTopic()
			rt.Topic = kmsg.StringPtr(topic)
			req.Topics = append(req.Topics, rt)
		}
		if _, err := req.RequestWith(ctx, admin); err != nil {
			t.Fatalf("metadata of the other topics: %v", err)
		}
	}
	const rounds = 3
	for range rounds {
		for _, topic := range usedTopics {
			produceKgo(t, ctx, prod, topic, testRecords(perRound, time.UnixMilli(1700003000000)))
		}
		listOthers()
	}
	mu.Lock()
	v13 := versions[13]
	mu.Unlock()
	if v13 == 0 {
		t.Fatalf("the producer sent no Produce v13 (versions %v): topics named by id are not tested", versions)
	}
	st := p.Stats()
	if want := uint64(rounds * used * perRound); st.InjectedRecords != want || st.TopicIDMisses != 0 || st.SkippedBatches != 0 {
		t.Errorf("injected %d of %d records (topic id misses %d, skipped batches %d)", st.InjectedRecords, want, st.TopicIDMisses, st.SkippedBatches)
	}
	warned := false
	for _, l := range strings.Split(logs.String(), "\n") {
		warned = warned || strings.Contains(l, `"level":"warn"`) && strings.Contains(l, `"max_topic_ids":10,`) && strings.Contains(l, "raise max_topic_ids")
	}
	if !warned {
		t.Errorf("no warning to raise max_topic_ids in the proxy's log:\n%s", logs.String())
	}
	guard.check(t)
}

// TestTopicIDsRecreatedLargerCluster: a topic a client uses, deleted and created again, is told
// as created again (its offsets start over) however many topics the full answers between name,
// and the old id a lagging broker still answers is not another recreation. Emptying the map when
// full forgot the name's id with the others.
func TestTopicIDsRecreatedLargerCluster(t *testing.T) {
	const max, topics = 100, 1000
	ids := newTopicIDs(max)
	refresh := func() {
		for i := range topics {
			ids.put(boundTopic(i))
		}
	}
	a, b := [16]byte{0xa}, [16]byte{0xb}
	ids.put(a, "orders")
	for i, step := range []struct {
		id   [16]byte
		want bool
	}{{b, true}, {a, false}, {b, false}, {a, false}} {
		ids.get(a) // a client still names the old id (its next Metadata is due)
		refresh()
		if got := ids.put(step.id, "orders"); got != step.want {
			t.Errorf("step %d, id %x after a full answer of %d topics: recreated %v, want %v", i, step.id[0], topics, got, step.want)
		}
	}
}

// TestTopicIDsBounded: however many ids answers name and requests use, the map holds at most
// twice its bound, and the ids kept as used at most half of it: the ids used past that, or not
// used for topicIDKeepUsed, are forgotten like the others.
func TestTopicIDsBounded(t *testing.T) {
	const max, topics = 100, 10000
	clock := time.Unix(1700000000, 0)
	ids := newTopicIDs(max)
	ids.now = func() time.Time { return clock }
	for i := range topics {
		id, name := boundTopic(i)
		ids.put(id, name)
		ids.get(id) // every id is used
		ids.put(id, "renamed-"+name)
		if i%10 == 0 {
			ids.put([16]byte{0xff, byte(i >> 8), byte(i)}, name) // the name created again
		}
		ids.mu.RLock()
		held, latest, retired := len(ids.cur)+len(ids.prev), len(ids.latest), len(ids.retired)
		ids.mu.RUnlock()
		if held > 2*max || latest > 2*max || retired > max {
			t.Fatalf("after %d ids: %d held, %d names, %d retired ids; bound %d", i+1, held, latest, retired, max)
		}
	}

	// The ids used in the last interval outlive a full answer; max/2 of them at most.
	fresh := newTopicIDs(max)
	fresh.now = func() time.Time { return clock }
	for i := range 2 * max {
		id, name := boundTopic(i)
		fresh.put(id, name)
		fresh.get(id)
	}
	for i := 2 * max; i < 4*max; i++ {
		fresh.put(boundTopic(i))
	}
	used := 0
	for i := range 2 * max {
		id, _ := boundTopic(i)
		if _, ok := fresh.get(id); ok {
			used++
		}
	}
	if used != max/2 {
		t.Errorf("%d of %d used ids kept through a full answer, want %d", used, 2*max, max/2)
	}

	// An id no request named for topicIDKeepUsed goes as the unused ones do.
	old := newTopicIDs(max)
	old.now = func() time.Time { return clock }
	stale, name := boundTopic(0)
	old.put(stale, name)
	old.get(stale)
	later := clock.Add(topicIDKeepUsed + time.Second)
	old.now = func() time.Time { return later }
	for i := 1; i <= 3*max; i++ {
		old.put(boundTopic(i))
	}
	if _, ok := old.get(stale); ok {
		t.Errorf("an id last used %v before two turnovers is still held", topicIDKeepUsed+time.Second)
	}
}

// TestTopicIDsMissedLearned: an id a request named before the map held it (a client whose
// Metadata went through another proxy instance) is kept once an answer names it, however many
// topics that answer names (the cluster's, which the miss asks for).
func TestTopicIDsMissedLearned(t *testing.T) {
	p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, MaxTopicIDs: 100})
	if err != nil {
		t.Fatal(err)
	}
	missed, _ := boundTopic(5)
	if _, ok := p.topicName("", missed); ok {
		t.Fatal("a fresh proxy names a topic id")
	}
	select {
	case <-p.topics.want:
	default:
		t.Error("the miss did not ask for the cluster's topics")
	}
	for i := range 1000 {
		p.topics.put(boundTopic(i))
	}
	if name, ok := p.topicName("", missed); !ok || name != "topic-5" {
		t.Errorf("the missed id after an answer of 1000 topics names %q (%v), want topic-5", name, ok)
	}
}

// TestTopicIDsChurnWarned: turnovers closer than topicIDChurn are reported (and logged, naming
// max_topic_ids) once per topicIDChurn; one turnover alone is not.
func TestTopicIDsChurnWarned(t *testing.T) {
	clock := time.Unix(1700000000, 0)
	ids := newTopicIDs(10)
	ids.now = func() time.Time { return clock }
	next := 0
	learn := func(n int) {
		for range n {
			ids.put(boundTopic(next))
			next++
		}
	}
	for i, step := range []struct {
		wait time.Duration
		ids  int
		want bool
	}{
		{0, 11, false},                            // one turnover
		{topicIDChurn, 10, false},                 // another, an interval later
		{time.Second, 10, true},                   // and one a second later
		{time.Second, 30, false},                  // still churning, already told
		{topicIDChurn - 2*time.Second, 10, false}, // within the interval of the last telling
		{2 * time.Second, 10, true},               // an interval after it
		{2 * topicIDChurn, 10, false},             // one turnover after a quiet interval
		{topicIDChurn / 2, 1000, true},            // a full answer of a cluster of 100 times the bound
	} {
		clock = clock.Add(step.wait)
		learn(step.ids)
		if _, got := ids.churned(); got != step.want {
			t.Errorf("step %d: churn reported %v, want %v", i, got, step.want)
		}
	}
}

// TestTopicIDsRecreatedManyTimes: a topic deleted and created again under its name over and over
// (a test suite's topic on a development cluster) is told each time, also when its retired ids
// fill the bound and are forgotten, and the id it had just before is still no new topic.
func TestTopicIDsRecreatedManyTimes(t *testing.T) {
	const max = 10
	ids := newTopicIDs(max)
	id := func(i int) [16]byte { return [16]byte{0xc, byte(i >> 8), byte(i), 1} }
	ids.put(id(0), "orders")
	for i := 1; i <= 3*max; i++ {
		if !ids.put(id(i), "orders") {
			t.Errorf("creation %d of orders (a new id, %d ids retired before it) not told", i, i-1)
		}
		if ids.put(id(i-1), "orders") {
			t.Errorf("creation %d: the id orders had before it (a lagging broker's answer) taken for a new topic", i)
		}
	}
}

// TestTopicIDsConcurrent: requests resolve ids (get, and missed for the unknown) on every
// connection while Metadata answers of a cluster larger than the bound turn the map over: -race
// checks the locking and the usedAt stamps, and the map stays within its bound.
func TestTopicIDsConcurrent(t *testing.T) {
	const max, topics = 50, 400
	ids := newTopicIDs(max)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() { // full answers
			for range 20 {
				for i := range topics {
					ids.put(boundTopic((i + w*7) % topics))
				}
				ids.churned()
			}
		})
	}
	for w := range 3 {
		wg.Go(func() { // requests naming a few topics by id, and ids no answer names
			for n := range 20000 {
				id, name := boundTopic((n + w) % 10)
				if got, ok := ids.get(id); ok && got != name {
					t.Errorf("id of %s names %s", name, got)
					return
				}
				unknown, _ := boundTopic(topics + n%100)
				if _, ok := ids.get(unknown); !ok {
					ids.missed(unknown, time.Now())
				}
			}
		})
	}
	wg.Wait()
	if held := ids.held(); held > 2*max {
		t.Errorf("%d ids held, bound %d", held, max)
	}
}
