package kafka

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
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
