package errtrack_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestKafkaBrokerErrorsReachView provokes real broker errors through the real Kafka proxy in front
// of kfake (a record over the broker's message.max.bytes, a produce to a partition whose leader
// moved, a commit with a stale generation) and checks they arrive grouped in GET /errors, with the
// refused record counted as lost on its edge, and as error spans at a fake Agent.
func TestKafkaBrokerErrorsReachView(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(2, "orders"),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()

	var logs bytes.Buffer
	agent := &errtrack.FakeAgent{}
	agentSrv := httptest.NewServer(agent)
	defer agentSrv.Close()
	col := errtrack.New(errtrack.Config{Log: zerolog.New(&logs), Agent: errtrack.AgentConfig{Enabled: true, URL: agentSrv.URL}})
	p, err := kafka.New(kafka.Config{Listen: "127.0.0.1:0", Bootstrap: cluster.ListenAddrs(), Env: "test",
		Errors: col, Services: &proxy.Services{Default: "default-svc"}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	startFront(t, pctx, p)

	cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.ClientID("checkout-api"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerBatchMaxBytes(1<<20), kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	// 1. A record the broker refuses as too large: non-retriable, so the client gives up.
	big := &kgo.Record{Topic: "orders", Partition: 1, Value: bytes.Repeat([]byte("x"), 10000)}
	if err := cl.ProduceSync(ctx, big).FirstErr(); !errors.Is(err, kerr.MessageTooLarge) {
		t.Fatalf("produce of an oversized record: %v, want MESSAGE_TOO_LARGE", err)
	}
	// A small record still goes through the same edge.
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Partition: 0, Value: []byte("ok")}).FirstErr(); err != nil {
		t.Fatalf("small produce: %v", err)
	}

	// 2. The leader of partition 0 moves: the next produce hits the old leader, which answers
	// NOT_LEADER_OR_FOLLOWER; the client refreshes metadata and retries, so nothing is lost.
	next := (cluster.LeaderFor("orders", 0) + 1) % 3
	if err := cluster.MoveTopicPartition("orders", 0, next); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Partition: 0, Value: []byte("after move")}).FirstErr(); err != nil {
		t.Fatalf("produce after the leader moved: %v", err)
	}

	// 3. A commit carrying a generation the group never had.
	commit := kmsg.NewPtrOffsetCommitRequest()
	commit.Group, commit.Generation, commit.MemberID = "billing", 7, "stale-member"
	ct := kmsg.NewOffsetCommitRequestTopic()
	ct.Topic = "orders"
	// Commit v10+ names topics by id; the proxy resolves it from the Metadata it relayed.
	topics, err := kadm.NewClient(cl).ListTopics(ctx, "orders")
	if err != nil || topics["orders"].Err != nil {
		t.Fatalf("metadata: %v %v", err, topics["orders"].Err)
	}
	ct.TopicID = topics["orders"].ID
	cp := kmsg.NewOffsetCommitRequestTopicPartition()
	cp.Partition, cp.Offset = 0, 1
	ct.Partitions = append(ct.Partitions, cp)
	commit.Topics = append(commit.Topics, ct)
	resp, err := commit.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	if code := resp.Topics[0].Partitions[0].ErrorCode; code != kerr.IllegalGeneration.Code {
		t.Fatalf("stale commit answered %d, want ILLEGAL_GENERATION", code)
	}

	view := httptest.NewServer(col.View())
	defer view.Close()
	var doc errtrack.ViewJSON
	find := func(cat, op, name string) *errtrack.GroupJSON {
		for i := range doc.Groups {
			g := &doc.Groups[i]
			if g.Category == cat && g.Operation == op && g.Name == name {
				return g
			}
		}
		return nil
	}
	// The commit response is observed right after it is forwarded; wait for it with a generous bound.
	deadline := time.Now().Add(20 * time.Second)
	for {
		doc = getView(t, view.URL)
		if find("broker_error", "OffsetCommit", "ILLEGAL_GENERATION") != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	tooLarge := find("broker_error", "Produce", "MESSAGE_TOO_LARGE")
	if tooLarge == nil {
		t.Fatalf("no MESSAGE_TOO_LARGE group in /errors: %+v", doc.Groups)
	}
	if tooLarge.Code != 10 || tooLarge.Retriable || tooLarge.Service != "checkout-api" ||
		tooLarge.Edge != "direction:out,kafka_cluster_id:kfake,topic:orders,type:kafka" || len(tooLarge.Partitions) != 1 || tooLarge.Partitions[0] != 1 ||
		tooLarge.Count != 1 || tooLarge.Messages != 1 {
		t.Errorf("MESSAGE_TOO_LARGE group: %+v", *tooLarge)
	}
	lost := find("lost_message", "Produce", "MESSAGE_TOO_LARGE")
	if lost == nil || lost.Messages != 1 {
		t.Errorf("lost group: %+v", lost)
	}
	if len(doc.Lost) != 1 || doc.Lost[0].Service != "checkout-api" || doc.Lost[0].Edge != "direction:out,kafka_cluster_id:kfake,topic:orders,type:kafka" || doc.Lost[0].Messages != 1 {
		t.Errorf("lost per edge: %+v", doc.Lost)
	}
	stale := find("broker_error", "OffsetCommit", "ILLEGAL_GENERATION")
	if stale == nil {
		t.Fatalf("no ILLEGAL_GENERATION group in /errors: %+v", doc.Groups)
	}
	if stale.Code != int32(kerr.IllegalGeneration.Code) || !strings.Contains(stale.Edge, "group:billing") || stale.Service != "checkout-api" {
		t.Errorf("ILLEGAL_GENERATION group: %+v", *stale)
	}

	moved := find("broker_error", "Produce", "NOT_LEADER_FOR_PARTITION")
	if moved == nil || !moved.Retriable || len(moved.Partitions) != 1 || moved.Partitions[0] != 0 {
		t.Errorf("NOT_LEADER_FOR_PARTITION group: %+v", moved)
	}
	if find("lost_message", "Produce", "NOT_LEADER_FOR_PARTITION") != nil {
		t.Error("a retried produce was counted as lost")
	}

	// One flush: one log line per group, one error span per group at the Agent.
	if err := col.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "MESSAGE_TOO_LARGE"); n != 2 {
		t.Errorf("log lines naming MESSAGE_TOO_LARGE = %d, want 2 (broker error and lost):\n%s", n, logs.String())
	}
	spans := map[string]map[string]any{}
	for _, sp := range agent.Spans() {
		meta := sp["meta"].(map[string]any)
		spans[meta["error.type"].(string)] = sp
	}
	if len(spans) != len(doc.Groups) {
		t.Errorf("spans %d for %d groups", len(spans), len(doc.Groups))
	}
	lostSpan := spans["kafka.lost_message.MESSAGE_TOO_LARGE"]
	if lostSpan == nil {
		t.Fatalf("no lost-message span; error types: %v", keys(spans))
	}
	meta := lostSpan["meta"].(map[string]any)
	if lostSpan["service"] != "checkout-api" || lostSpan["resource"] != "direction:out,kafka_cluster_id:kfake,topic:orders,type:kafka" ||
		!strings.Contains(meta["error.message"].(string), "MESSAGE_TOO_LARGE") ||
		!strings.Contains(meta["events"].(string), `"exception.type":"kafka.lost_message.MESSAGE_TOO_LARGE"`) {
		t.Errorf("lost span: %v", lostSpan)
	}
	if sp := spans["kafka.broker_error.MESSAGE_TOO_LARGE"]; sp == nil ||
		!strings.Contains(sp["meta"].(map[string]any)["error.message"].(string), "larger than the max message size") {
		t.Errorf("too-large span (its message should carry the broker's description): %v", sp)
	}
	if sp := spans["kafka.broker_error.ILLEGAL_GENERATION"]; sp == nil || sp["resource"] != "direction:in,group:billing,kafka_cluster_id:kfake,topic:orders,type:kafka" {
		t.Errorf("stale commit span: %v", sp)
	}
}

func getView(t *testing.T, url string) errtrack.ViewJSON {
	t.Helper()
	resp, err := http.Get(url + "/errors")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc errtrack.ViewJSON
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func keys(m map[string]map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// front is what the three protocol fronts share for a test's lifetime.
type front interface {
	Start(context.Context) error
	Shutdown(context.Context) error
}

// startFront starts f and shuts it down (5 s grace) when the test ends.
func startFront(t *testing.T, ctx context.Context, f front) {
	t.Helper()
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = f.Shutdown(sctx)
	})
}
