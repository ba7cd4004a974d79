package kafka

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestDrainUnderClients: a kgo producer and a kgo group consumer run through a proxy that drains
// (Shutdown) and is started again on the same addresses. Every record the producer had
// acknowledged is in the topic once, the consumer reads each of them and commits its end.
func TestDrainUnderClients(t *testing.T) {
	c, guard := startCluster(t)
	// The second proxy must listen where the first did, so the addresses are fixed for the test.
	free := freeAddrs(t, 4)
	addrs := func(cfg *Config) {
		cfg.Listen = free[0]
		cfg.NodeAddrs = map[int32]string{0: free[1], 1: free[2], 2: free[3]}
	}
	p1 := startProxy(t, c, addrs)
	ctx := testCtx(t)
	topic, group := uniqueTopic(t, "drain-clients"), uniqueTopic(t, "drain-clients-g")
	adm := kadm.NewClient(kgoClient(t, p1))
	if _, err := adm.CreateTopic(ctx, 3, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	pcl, err := kgo.NewClient(kgo.SeedBrokers(free[0]), kgo.ClientID("drain-producer"))
	if err != nil {
		t.Fatal(err)
	}
	defer pcl.Close()
	ccl, err := kgo.NewClient(kgo.SeedBrokers(free[0]), kgo.ClientID("drain-consumer"), kgo.ConsumeTopics(topic),
		kgo.ConsumerGroup(group), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer ccl.Close()
	var mu sync.Mutex
	acked, seen := map[string]int{}, map[string]int{}
	pctx, stop := context.WithCancel(ctx)
	prctx, prstop := context.WithCancel(pctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; prctx.Err() == nil; i++ {
			v := []byte(time.Now().Format("150405.000000") + "-" + string(rune('a'+i%26)))
			if err := pcl.ProduceSync(prctx, &kgo.Record{Topic: topic, Value: v}).FirstErr(); err == nil {
				mu.Lock()
				acked[string(v)]++
				mu.Unlock()
			}
		}
	}()
	go func() {
		defer wg.Done()
		for pctx.Err() == nil {
			fs := ccl.PollFetches(pctx)
			mu.Lock()
			for _, r := range fs.Records() {
				seen[string(r.Value)]++
			}
			mu.Unlock()
		}
	}()
	count := func(m map[string]int) int { mu.Lock(); defer mu.Unlock(); return len(m) }
	waitFor(t, "records flowing", func() bool { return count(seen) >= 50 })
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	if err := p1.Shutdown(sctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	scancel()
	before := count(acked)
	p2 := startProxy(t, c, addrs)
	waitFor(t, "records flowing again", func() bool { return count(acked) >= before+50 })
	prstop()
	mu.Lock()
	want := len(acked)
	mu.Unlock()
	waitFor(t, "the group consumer to read every acknowledged record", func() bool { return count(seen) >= want })
	stop()
	wg.Wait()
	// Every acknowledged record is read (by this consumer, or a fresh one from the commits).
	rest := kgoClient(t, p2, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	all := map[string]int{}
	for n := 0; n < want; {
		fs := rest.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d", n, want)
		}
		for _, r := range fs.Records() {
			all[string(r.Value)]++
			n++
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for v := range acked {
		if all[v] != 1 {
			t.Errorf("acknowledged record %s is in the topic %d times", v, all[v])
		}
	}
	t.Logf("%d acknowledged, %d in the topic, %d read by the group consumer (%d before the drain)", want, len(all), len(seen), before)
	guard.check(t)
}

// freeAddrs returns n loopback addresses whose ports were free a moment ago.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close() // all held until every port is chosen, so none repeats
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}
