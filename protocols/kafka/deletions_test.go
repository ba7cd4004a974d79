package kafka

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// goneRecorder records what the proxy says is gone (Config.OffsetsGone).
type goneRecorder struct {
	mu   sync.Mutex
	told []pathway.OffsetsGone
}

func (r *goneRecorder) tell(g pathway.OffsetsGone) {
	r.mu.Lock()
	r.told = append(r.told, g)
	r.mu.Unlock()
}

// take returns what was told since the last take, without times.
func (r *goneRecorder) take() []pathway.OffsetsGone {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.told
	r.told = nil
	for i := range out {
		out[i].Time = 0
	}
	return out
}

// TestOffsetsGone: what kadm deletes through the proxy (a group, a group's offsets of a
// partition, a topic), and a topic created again past it, whose new id a kgo client's Metadata
// then shows, is told as gone, with the cluster's id; a deletion the cluster refuses (a group
// with a member) is not.
func TestOffsetsGone(t *testing.T) {
	c, _ := startCluster(t)
	rec := &goneRecorder{}
	p := startProxy(t, c, func(cfg *Config) { cfg.OffsetsGone = rec.tell })
	ctx := testCtx(t)
	adm := kadm.NewClient(kgoClient(t, p, kgo.ClientID("ops")))
	direct, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if _, err := adm.ListTopics(ctx); err != nil { // a Metadata answer names the cluster
		t.Fatal(err)
	}
	cluster := p.cluster()
	if cluster == "" {
		t.Fatal("no Metadata answer named the cluster")
	}

	// committed makes group commit 1 on partition 0 of topic, through the proxy.
	committed := func(t *testing.T, topic, group string) {
		t.Helper()
		if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
			t.Fatal(err)
		}
		var os kadm.Offsets
		os.AddOffset(topic, 0, 1, -1)
		if r, err := adm.CommitOffsets(ctx, group, os); err != nil || r.Error() != nil {
			t.Fatalf("commit: %v %v", err, r.Error())
		}
	}
	for _, tc := range []struct {
		name string
		do   func(t *testing.T, topic, group string) error
		want func(topic, group string) []pathway.OffsetsGone
	}{
		{"group deleted", func(t *testing.T, _, group string) error {
			r, err := adm.DeleteGroups(ctx, group)
			if err != nil {
				return err
			}
			return r.Error()
		}, func(_, group string) []pathway.OffsetsGone {
			return []pathway.OffsetsGone{{ClusterID: cluster, Group: group, Partition: -1}}
		}},
		{"group's offsets of a partition deleted", func(t *testing.T, topic, group string) error {
			r, err := adm.DeleteOffsets(ctx, group, kadm.TopicsSet{topic: {0: {}}})
			if err != nil {
				return err
			}
			return r.Error()
		}, func(topic, group string) []pathway.OffsetsGone {
			return []pathway.OffsetsGone{{ClusterID: cluster, Topic: topic, Group: group, Partition: 0}}
		}},
		{"topic deleted", func(t *testing.T, topic, _ string) error {
			r, err := adm.DeleteTopics(ctx, topic)
			if err != nil {
				return err
			}
			return r.Error()
		}, func(topic, _ string) []pathway.OffsetsGone {
			return []pathway.OffsetsGone{{ClusterID: cluster, Topic: topic, Partition: -1}}
		}},
		{"topic created again past the proxy", func(t *testing.T, topic, _ string) error {
			if _, err := adm.ListTopics(ctx, topic); err != nil { // the proxy sees its first id
				t.Fatal(err)
			}
			da := kadm.NewClient(direct)
			if r, err := da.DeleteTopics(ctx, topic); err != nil || r.Error() != nil {
				t.Fatalf("delete: %v %v", err, r.Error())
			}
			if _, err := da.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
				t.Fatal(err)
			}
			// A client's Metadata through the proxy names the topic with its new id (a new
			// client: kgo answers adm's from a cache for a few seconds).
			_, err := kadm.NewClient(kgoClient(t, p)).ListTopics(ctx, topic)
			return err
		}, func(topic, _ string) []pathway.OffsetsGone {
			return []pathway.OffsetsGone{{ClusterID: cluster, Topic: topic, Partition: -1}}
		}},
		{"group with a member: refused", func(t *testing.T, topic, group string) error {
			cl := kgoClient(t, p, kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic))
			waitFor(t, "the member to join", func() bool {
				gs, err := adm.DescribeGroups(ctx, group)
				return err == nil && len(gs[group].Members) == 1
			})
			if r, err := adm.DeleteGroups(ctx, group); err != nil || r.Error() == nil {
				t.Fatalf("deleting a group with a member: %v %v, want NON_EMPTY_GROUP", err, r.Error())
			}
			cl.Close()
			return nil
		}, func(string, string) []pathway.OffsetsGone { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := time.Now().UnixNano()
			topic, group := fmt.Sprintf("gone-%d", id), fmt.Sprintf("group-%d", id)
			committed(t, topic, group)
			rec.take()
			if err := tc.do(t, topic, group); err != nil {
				t.Fatal(err)
			}
			want := tc.want(topic, group)
			got := slices.DeleteFunc(rec.take(), func(g pathway.OffsetsGone) bool { return g.Topic != topic && g.Group != group })
			if !slices.Equal(got, want) {
				t.Errorf("told gone %+v, want %+v", got, want)
			}
		})
	}
}

// TestTopicIDsRecreated: a name answered with a new id is a topic created again, once; an id it
// had before (a broker whose metadata lags the deletion) is not, nor is the new one seen again.
func TestTopicIDsRecreated(t *testing.T) {
	ids := newTopicIDs(100)
	a, b, c := [16]byte{1}, [16]byte{2}, [16]byte{3}
	for i, step := range []struct {
		id   [16]byte
		want bool
	}{{a, false}, {a, false}, {b, true}, {a, false}, {b, false}, {c, true}, {b, false}} {
		if got := ids.put(step.id, "orders"); got != step.want {
			t.Errorf("step %d, id %x: recreated %v, want %v", i, step.id[0], got, step.want)
		}
	}
	for _, id := range [][16]byte{a, b, c} {
		if name, ok := ids.get(id); !ok || name != "orders" {
			t.Errorf("id %x names %q (%v), want orders: requests naming an old id still resolve", id[0], name, ok)
		}
	}
}

// TestOffsetsGoneNotForLongNames: a group id or topic name over 255 bytes has no offsets in the
// view (such a group's commits give no backlog, and Kafka's topic names stop at 249), so its
// deletion, or an answer that it is not there, is not told: the view keeps what it is told for a
// minute, and a client deleting thousands of 32 KiB names that do not exist made it hold
// gigabytes.
func TestOffsetsGoneNotForLongNames(t *testing.T) {
	c, _ := startCluster(t)
	rec := &goneRecorder{}
	p := startProxy(t, c, func(cfg *Config) { cfg.OffsetsGone = rec.tell })
	ctx := testCtx(t)
	adm := kadm.NewClient(kgoClient(t, p, kgo.ClientID("ops")))
	long := strings.Repeat("x", 32<<10)
	if _, err := adm.DeleteGroups(ctx, "g"+long); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.DeleteTopics(ctx, "t"+long); err != nil {
		t.Fatal(err)
	}
	// A short name not there is told (its offsets are no more the cluster's): the answers came.
	if _, err := adm.DeleteGroups(ctx, "short-group"); err != nil {
		t.Fatal(err)
	}
	short := false
	for _, g := range rec.take() {
		switch {
		case len(g.Group) > 255 || len(g.Topic) > 255:
			t.Errorf("told gone a name of %d bytes (group) or %d (topic)", len(g.Group), len(g.Topic))
		case g.Group == "short-group":
			short = true
		default:
			t.Errorf("told gone %+v", g)
		}
	}
	if !short {
		t.Error("a short group not there was not told gone")
	}
}
