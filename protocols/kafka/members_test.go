package kafka

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestGroupMembersOnOneHost: two processes of group g1 run on one host with the client.id
// everyone keeps (kgo's "kgo"), beside a process of group g2 reading another topic. Each g1
// member gets part of the topic (cooperative-sticky); every record either fetches is g1's. The
// last SyncGroup's assignment used to replace the other member's, leaving its partitions to no
// group of the two.
func TestGroupMembersOnOneHost(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	for _, tc := range []struct {
		name string
		opts []kgo.Opt
	}{{"classic", nil}, {"kip848", []kgo.Opt{kgo.ServerSideBalancer()}}} {
		t.Run(tc.name, func(t *testing.T) { membersOnOneHost(t, p, tc.name, tc.opts) })
	}
	guard.check(t)
}

func membersOnOneHost(t *testing.T, p *testProxy, name string, opts []kgo.Opt) {
	ctx := testCtx(t)
	t1, t2 := uniqueTopic(t, "members-a-"+name), uniqueTopic(t, "members-b-"+name)
	g1, g2 := "members-g1-"+name, "members-g2-"+name
	prod := kgoClient(t, p)
	produceKgo(t, ctx, prod, t2, testRecords(6, time.UnixMilli(1700000600000)))
	// g2's process: reads t2 and stays in its group.
	other := kgoClient(t, p, append([]kgo.Opt{kgo.ConsumeTopics(t2), kgo.ConsumerGroup(g2), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)...)
	for n := 0; n < 6; {
		fs := other.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("g2 read %d of 6: %v", n, err)
		}
		n += len(fs.Records())
	}
	produceKgo(t, ctx, prod, t1, testRecords(1, time.UnixMilli(1700000600000))) // creates t1

	var mu sync.Mutex
	assigned := map[int]int{}
	member := func(i int) *kgo.Client {
		return kgoClient(t, p, append([]kgo.Opt{kgo.ConsumeTopics(t1), kgo.ConsumerGroup(g1), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
				mu.Lock()
				assigned[i] += len(m[t1])
				mu.Unlock()
			}),
			kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
				mu.Lock()
				assigned[i] -= len(m[t1])
				mu.Unlock()
			})}, opts...)...)
	}
	members := []*kgo.Client{member(0), member(1)}
	var wg sync.WaitGroup
	var total atomic.Int64
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	for _, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pctx.Err() == nil {
				fs := m.PollFetches(pctx)
				total.Add(int64(len(fs.Records())))
			}
		}()
	}
	waitFor(t, "both g1 members assigned part of "+t1, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return assigned[0] > 0 && assigned[1] > 0 && assigned[0]+assigned[1] == 3
	})
	sent := testRecords(30, time.UnixMilli(1700000601000))
	produceKgo(t, ctx, prod, t1, sent)
	waitFor(t, "g1 members read every record", func() bool {
		return total.Load() >= int64(len(sent)+1)
	})
	stop()
	wg.Wait()
	waitFor(t, "consume points of "+t1, func() bool {
		pts, _ := p.rec.snapshot()
		n := 0
		for _, pt := range pts {
			if strings.Contains(strings.Join(pt.EdgeTags, ","), "topic:"+t1) && strings.Contains(strings.Join(pt.EdgeTags, ","), "direction:in") {
				n++
			}
		}
		return n >= len(sent)+1
	})
	if got := len(pointsOn(p, "direction:in", "group:"+g1, "topic:"+t1, "type:kafka")); got < len(sent)+1 {
		pts, _ := p.rec.snapshot()
		for _, pt := range pts {
			if strings.Contains(strings.Join(pt.EdgeTags, ","), "topic:"+t1) && !strings.Contains(strings.Join(pt.EdgeTags, ","), "group:"+g1) &&
				strings.Contains(strings.Join(pt.EdgeTags, ","), "direction:in") {
				t.Logf("untagged: %v", pt.EdgeTags)
				break
			}
		}
		t.Errorf("%d consume checkpoints of %s tagged group:%s, want %d", got, t1, g1, len(sent)+1)
	}
}

// TestAssignedReaderBesideGroup: a process reads one topic in a group and another by partition
// (no group), with kgo's default client.id for both. The group's assignment is known and does
// not hold the other topic: its records are no group's, as a tracer reports them.
func TestAssignedReaderBesideGroup(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		opts []kgo.Opt
	}{{"classic", nil}, {"kip848", []kgo.Opt{kgo.ServerSideBalancer()}}} {
		t.Run(tc.name, func(t *testing.T) {
			inGroup, direct := uniqueTopic(t, "beside-group-"+tc.name), uniqueTopic(t, "beside-direct-"+tc.name)
			group := "beside-" + tc.name
			prod := kgoClient(t, p)
			produceKgo(t, ctx, prod, inGroup, testRecords(6, time.UnixMilli(1700000700000)))
			produceKgo(t, ctx, prod, direct, testRecords(6, time.UnixMilli(1700000700000)))
			member := kgoClient(t, p, append([]kgo.Opt{kgo.ConsumeTopics(inGroup), kgo.ConsumerGroup(group),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, tc.opts...)...)
			for n := 0; n < 6; {
				fs := member.PollFetches(ctx)
				if err := ctx.Err(); err != nil {
					t.Fatalf("group read %d of 6: %v", n, err)
				}
				n += len(fs.Records())
			}
			checkConsumeGroup(t, p, inGroup, group, 6)
			readTopic(t, ctx, p, direct, 6)
			in := func(pt pathway.Point) bool {
				return slices.Contains(pt.EdgeTags, "topic:"+direct) && slices.Contains(pt.EdgeTags, "direction:in")
			}
			waitFor(t, "consume points of "+direct, func() bool {
				pts, _ := p.rec.snapshot()
				n := 0
				for _, pt := range pts {
					if in(pt) {
						n++
					}
				}
				return n >= 6
			})
			if got := len(pointsOn(p, "direction:in", "topic:"+direct, "type:kafka")); got != 6 {
				pts, _ := p.rec.snapshot()
				if i := slices.IndexFunc(pts, in); i >= 0 {
					t.Logf("consume point: %v", pts[i].EdgeTags)
				}
				t.Errorf("%d consume checkpoints of %s without a group, want 6", got, direct)
			}
		})
	}
	guard.check(t)
}

// TestGroupFallbackOnlyWhenPartsUnknown: a client's only group names a partition none of its
// members holds only while some member's partitions are unknown (a member heard heartbeating
// whose assignment was not seen, as after a proxy restart).
func TestGroupFallbackOnlyWhenPartsUnknown(t *testing.T) {
	g := newGroupTracker(10)
	k := clientKey{clientID: "kgo"}
	g.learn(k, "g")
	if got := g.lookup(k, "t", 1); got != "g" {
		t.Errorf("assignment unknown: %q, want g", got)
	}
	g.assignMember(k, groupMember{"g", "m1", 2}, []topicPartition{{"t", 0}, {"t", 3}}, nil)
	g.assignMember(k, groupMember{"g", "m1", 3}, []topicPartition{{"t", 0}}, nil)
	if got := g.lookup(k, "t", 1); got != "" {
		t.Errorf("t/1, held by no member: %q, want none", got)
	}
	if got := g.lookup(k, "t", 3); got != "g" {
		t.Errorf("t/3, m1's before the rebalance (a fetch sent then answers after): %q, want g", got)
	}
	g.heard(k, groupMember{"g", "m2", 3})
	if got := g.lookup(k, "t", 1); got != "g" {
		t.Errorf("t/1 with m2's partitions unknown: %q, want g", got)
	}
	g.assignMember(k, groupMember{"g", "m2", 4}, []topicPartition{{"t", 2}}, nil)
	g.assignMember(k, groupMember{"g", "m1", 5}, []topicPartition{{"t", 0}}, nil)
	if got := g.lookup(k, "t", 2); got != "g" {
		t.Errorf("t/2, m2's at the generation before: %q, want g", got)
	}
	g.assignMember(k, groupMember{"g", "m1", 6}, []topicPartition{{"t", 0}}, nil)
	if got := g.lookup(k, "t", 2); got != "" {
		t.Errorf("t/2, m2's two generations ago: %q, want none", got)
	}
	// Members heard before any assignment is seen (after a proxy restart): one assigned does not
	// make the others' partitions none of the group's.
	k2 := clientKey{clientID: "restarted"}
	g.learn(k2, "g")
	g.heard(k2, groupMember{"g", "a", 0})
	g.heard(k2, groupMember{"g", "b", 0})
	g.assignMember(k2, groupMember{"g", "a", 0}, []topicPartition{{"t", 0}}, nil)
	if got := g.lookup(k2, "t", 1); got != "g" {
		t.Errorf("t/1 after a restart, b's partitions unknown: %q, want g", got)
	}
	// The group deleted and created again: its generations start over.
	g.assignMember(k, groupMember{"g", "m3", 1}, []topicPartition{{"u", 0}}, nil)
	if got := g.lookup(k, "t", 0); got != "" {
		t.Errorf("t/0, m1's before the group was created again: %q, want none", got)
	}
	if got := g.lookup(k, "u", 0); got != "g" {
		t.Errorf("u/0, m3's in the group created again: %q, want g", got)
	}
	// Past maxMembersPerGroup members behind one key, some members' partitions are dropped.
	for i := range maxMembersPerGroup + 1 {
		g.assignMember(k, groupMember{"g", fmt.Sprint("many-", i), 1}, []topicPartition{{"t", int32(100 + i)}}, nil)
	}
	if got := g.lookup(k, "t", 100); got != "g" {
		t.Errorf("t/100, a member dropped at the bound: %q, want g", got)
	}
}

// TestSilentKip848MembersExpire: a KIP-848 member that stops heartbeating without a leave (a
// process killed, restarted under a new member id) is dropped after memberSilence, so its old
// partitions stop counting as the group's; and a group that passed maxMembersPerGroup, whose
// members' partitions were unknown, is known again once that long has passed.
func TestSilentKip848MembersExpire(t *testing.T) {
	g := newGroupTracker(10)
	now := time.Unix(1700000000, 0)
	g.now = func() time.Time { return now }
	k := clientKey{clientID: "kgo"}
	g.learn(k, "g")
	g.assignMember(k, groupMember{"g", "killed", 0}, []topicPartition{{"t", 0}}, nil)
	g.assignMember(k, groupMember{"g", "alive", 0}, []topicPartition{{"t", 1}}, nil)
	if got := g.lookup(k, "t", 0); got != "g" {
		t.Fatalf("t/0, the first member's: %q, want g", got)
	}
	for range 3 { // only "alive" heartbeats from here on
		now = now.Add(memberSilence / 2)
		g.heard(k, groupMember{"g", "alive", 0})
	}
	if got := g.lookup(k, "t", 0); got != "" {
		t.Errorf("t/0 of a member silent for %v: %q, want none", 3*memberSilence/2, got)
	}
	if got := g.lookup(k, "t", 1); got != "g" {
		t.Errorf("t/1 of the member that heartbeats: %q, want g", got)
	}

	k2 := clientKey{clientID: "crowded"}
	g.learn(k2, "g")
	for i := range maxMembersPerGroup + 1 {
		g.assignMember(k2, groupMember{"g", fmt.Sprint("m", i), 0}, []topicPartition{{"t", int32(i)}}, nil)
	}
	if got := g.lookup(k2, "t", 1000); got != "g" {
		t.Fatalf("past the member bound, partitions are unknown: %q, want g", got)
	}
	now = now.Add(2 * memberSilence)
	g.assignMember(k2, groupMember{"g", "survivor", 0}, []topicPartition{{"t", 7}}, nil)
	if got := g.lookup(k2, "t", 1000); got != "" {
		t.Errorf("t/1000 once the silent members expired: %q, want none", got)
	}
	if got := g.lookup(k2, "t", 7); got != "g" {
		t.Errorf("t/7 of the member assigned since: %q, want g", got)
	}
}

// TestFullGroupKeepsMembersHeardMeanwhile: a KIP-848 member that only heartbeats while its group
// is past maxMembersPerGroup is one of the members heard since: when the bound's memberSilence
// is over its partitions are still not known, and a partition it reads stays the group's.
func TestFullGroupKeepsMembersHeardMeanwhile(t *testing.T) {
	g := newGroupTracker(10)
	now := time.Unix(1700000000, 0)
	g.now = func() time.Time { return now }
	k := clientKey{clientID: "crowded"}
	g.learn(k, "g")
	for i := range maxMembersPerGroup + 1 {
		g.assignMember(k, groupMember{"g", fmt.Sprint("m", i), 0}, []topicPartition{{"t", int32(i)}}, nil)
	}
	for range 2 { // "steady" heartbeats with an unchanged assignment (it holds t/500)
		now = now.Add(memberSilence / 2)
		g.heard(k, groupMember{"g", "steady", 0})
	}
	now = now.Add(memberSilence / 4)
	g.assignMember(k, groupMember{"g", "survivor", 0}, []topicPartition{{"t", 7}}, nil)
	if got := g.lookup(k, "t", 500); got != "g" {
		t.Errorf("t/500 of a member heard %v ago: %q, want g", memberSilence/4, got)
	}
}
