package kafka

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kgo"
)

// untaggedIn is the consume checkpoints on topic that do not carry group.
func untaggedIn(p *testProxy, topic, group string) []string {
	pts, _ := p.rec.snapshot()
	var out []string
	for _, pt := range pts {
		tags := strings.Join(pt.EdgeTags, ",")
		if strings.Contains(tags, "topic:"+topic+",") || strings.HasSuffix(tags, "topic:"+topic) {
			if strings.Contains(tags, "direction:in") && !strings.Contains(tags, "group:"+group) {
				out = append(out, tags)
			}
		}
	}
	return out
}

// TestRemainingMemberAfterLeaveKgo: two members of a group on one host with one client.id; one
// leaves (LeaveGroup or a KIP-848 leave), the other takes all partitions and reads what is
// produced next: each of its consume checkpoints carries the group.
func TestRemainingMemberAfterLeaveKgo(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	for _, tc := range []struct {
		name string
		opts []kgo.Opt
	}{{"classic", nil}, {"kip848", []kgo.Opt{kgo.ServerSideBalancer()}}, {"range", []kgo.Opt{kgo.Balancers(kgo.RangeBalancer())}}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			topic, group := uniqueTopic(t, "rest-"+tc.name), uniqueTopic(t, "rest-g-"+tc.name)
			prod := kgoClient(t, p, kgo.ClientID("rest-producer"))
			produceKgo(t, ctx, prod, topic, testRecords(1, time.UnixMilli(1700000800000)))
			var mu sync.Mutex
			assigned := map[int]int{}
			member := func(i int) *kgo.Client {
				return kgoClient(t, p, append([]kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group), kgo.ClientID("rest-member"),
					kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
					kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
						mu.Lock()
						assigned[i] += len(m[topic])
						mu.Unlock()
					}),
					kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
						mu.Lock()
						assigned[i] -= len(m[topic])
						mu.Unlock()
					}),
					kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
						mu.Lock()
						assigned[i] -= len(m[topic])
						mu.Unlock()
					})}, tc.opts...)...)
			}
			a, b := member(0), member(1)
			var total atomic.Int64
			pctx, stop := context.WithCancel(ctx)
			defer stop()
			var wg sync.WaitGroup
			poll := func(m *kgo.Client, pc context.Context) {
				defer wg.Done()
				for pc.Err() == nil {
					fs := m.PollFetches(pc)
					total.Add(int64(len(fs.Records())))
				}
			}
			actx, astop := context.WithCancel(pctx)
			wg.Add(2)
			go poll(a, actx)
			go poll(b, pctx)
			waitFor(t, "both members assigned", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return assigned[0] > 0 && assigned[1] > 0 && assigned[0]+assigned[1] == 3
			})
			produceKgo(t, ctx, prod, topic, testRecords(30, time.UnixMilli(1700000801000)))
			waitFor(t, "members read the first records", func() bool { return total.Load() >= 31 })
			astop()
			a.Close() // leaves
			waitFor(t, "the remaining member assigned every partition", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return assigned[1] == 3
			})
			produceKgo(t, ctx, prod, topic, testRecords(30, time.UnixMilli(1700000802000)))
			waitFor(t, "the remaining member read the rest", func() bool { return total.Load() >= 61 })
			stop()
			wg.Wait()
			waitFor(t, "61 consume points", func() bool {
				return len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka"))+len(untaggedIn(p, topic, group)) >= 61
			})
			if u := untaggedIn(p, topic, group); len(u) > 0 {
				t.Errorf("%d consume checkpoints without group:%s, e.g. %s", len(u), group, u[0])
			}
			t.Logf("%d consume points tagged", len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka")))
		})
	}
	guard.check(t)
}

// lineCounter holds what a process writes, for counting.
type lineCounter struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lineCounter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *lineCounter) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *lineCounter) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), sub)
}

// TestRemainingMemberAfterLeaveKcat: TestRemainingMemberAfterLeaveKgo with two kcat (librdkafka)
// processes of librdkafka's default client.id; one is interrupted and leaves.
func TestRemainingMemberAfterLeaveKcat(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic, group := uniqueTopic(t, "rest-kcat"), uniqueTopic(t, "rest-kcat-g")
	prod := kgoClient(t, p, kgo.ClientID("rest-producer"))
	produceKgo(t, ctx, prod, topic, testRecords(1, time.UnixMilli(1700000800000)))
	start := func() (*exec.Cmd, *lineCounter, *lineCounter) {
		cmd := exec.CommandContext(ctx, kcatPath(t), "-C", "-b", p.Addr().String(), "-G", group, "-X", "auto.offset.reset=earliest", "-v", "-u",
			"-f", "%p|%o|%s\n", topic)
		out, errb := &lineCounter{}, &lineCounter{}
		cmd.Stdout, cmd.Stderr = out, errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd, out, errb
	}
	a, aout, aerr := start()
	_, bout, berr := start()
	defer func() { t.Logf("a: %s\nb: %s", aerr.text(), berr.text()) }()
	waitFor(t, "both kcat members assigned", func() bool {
		return strings.Contains(aerr.text(), "assigned:") && strings.Contains(berr.text(), "assigned:") && aout.count("\n")+bout.count("\n") >= 1
	})
	produceKgo(t, ctx, prod, topic, testRecords(30, time.UnixMilli(1700000801000)))
	waitFor(t, "kcat members read the first records", func() bool { return aout.count("\n")+bout.count("\n") >= 31 })
	a.Process.Signal(os.Interrupt)
	a.Wait()
	t.Logf("leaving member: %s", aerr.text())
	recs := testRecords(30, time.UnixMilli(1700000802000))
	for i := range recs {
		recs[i].value = []byte(fmt.Sprintf("second-%d", i))
	}
	produceKgo(t, ctx, prod, topic, recs)
	waitFor(t, "the remaining member read the rest", func() bool { return bout.count("|second-") >= 30 })
	total := aout.count("\n") + bout.count("\n")
	waitFor(t, "consume points", func() bool {
		return len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka"))+len(untaggedIn(p, topic, group)) >= total
	})
	if u := untaggedIn(p, topic, group); len(u) > 0 {
		t.Errorf("%d consume checkpoints without group:%s, e.g. %s", len(u), group, u[0])
	}
	t.Logf("%d records read, %d consume points tagged; remaining member: %s", total, len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka")), berr.text())
	guard.check(t)
}

// TestRemainingMemberAfterLeaveSarama: the same with two sarama consumer groups of one client.id;
// one closes (LeaveGroup).
func TestRemainingMemberAfterLeaveSarama(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic, group := uniqueTopic(t, "rest-sarama"), uniqueTopic(t, "rest-sarama-g")
	prod := kgoClient(t, p, kgo.ClientID("rest-producer"))
	produceKgo(t, ctx, prod, topic, testRecords(1, time.UnixMilli(1700000800000)))
	var total atomic.Int64
	var second atomic.Int64
	var claims [2]atomic.Int64
	member := func(i int) (sarama.ConsumerGroup, <-chan error, context.CancelFunc) {
		cfg := saramaConfig("sarama-rest")
		cfg.Consumer.Offsets.AutoCommit.Enable = true
		cg, err := sarama.NewConsumerGroup([]string{p.Addr().String()}, group, cfg)
		if err != nil {
			t.Fatal(err)
		}
		h := &countHandler{total: &total, second: &second, claims: &claims[i]}
		cctx, cancel := context.WithCancel(ctx)
		return cg, consumeUntilDone(cctx, cg, topic, h), cancel
	}
	a, aerrc, acancel := member(0)
	b, berrc, bcancel := member(1)
	defer func() { bcancel(); b.Close(); <-berrc }()
	waitFor(t, "both sarama members assigned", func() bool { return claims[0].Load() > 0 && claims[1].Load() > 0 })
	produceKgo(t, ctx, prod, topic, testRecords(30, time.UnixMilli(1700000801000)))
	waitFor(t, "members read the first records", func() bool { return total.Load() >= 31 })
	acancel()
	a.Close()
	<-aerrc
	recs := testRecords(30, time.UnixMilli(1700000802000))
	for i := range recs {
		recs[i].value = []byte(fmt.Sprintf("second-%d", i))
	}
	produceKgo(t, ctx, prod, topic, recs)
	waitFor(t, "the remaining member read the rest", func() bool { return second.Load() >= 30 })
	n := int(total.Load())
	waitFor(t, "consume points", func() bool {
		return len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka"))+len(untaggedIn(p, topic, group)) >= n
	})
	if u := untaggedIn(p, topic, group); len(u) > 0 {
		t.Errorf("%d consume checkpoints without group:%s, e.g. %s", len(u), group, u[0])
	}
	t.Logf("%d records read, %d consume points tagged", n, len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka")))
	guard.check(t)
}

type countHandler struct {
	total, second, claims *atomic.Int64
}

func (h *countHandler) Setup(s sarama.ConsumerGroupSession) error {
	n := 0
	for _, ps := range s.Claims() {
		n += len(ps)
	}
	h.claims.Store(int64(n))
	return nil
}
func (h *countHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *countHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		h.total.Add(1)
		if strings.HasPrefix(string(m.Value), "second-") {
			h.second.Add(1)
		}
		sess.MarkMessage(m, "")
	}
	return nil
}
