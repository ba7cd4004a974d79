package kafka

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os/exec"
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
	"github.com/dsmproxy/dsmproxy/pathway"
)

// metadataEvents are the broker error events of Metadata answers on edge.
func metadataEvents(p *testProxy, code int16, edge pathway.Edge) []errtrack.Event {
	return p.errs.where(func(e errtrack.Event) bool {
		return e.Category == errtrack.BrokerError && e.Operation == "Metadata" && int16(e.Code) == code && e.Edge == edge
	})
}

// TestMetadataTopicErrors asks for topics the broker answers with a per-topic error, at every
// Metadata version the proxy offers: the codes that say a topic cannot be used become one
// broker error event per answer on the topic's edge (no direction: Metadata does not say
// whether the client produces or consumes), LEADER_NOT_AVAILABLE (a topic being created) none.
// An answer to a request by topic id names no topic: the event takes the name an earlier
// answer gave that id, or carries the id in its message.
func TestMetadataTopicErrors(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.ClientID("admin"))

	// A topic whose id the proxy saw, then deleted: clients holding the id ask for it by id.
	deleted := uniqueTopic(t, "md-deleted")
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, deleted); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	deletedID := topicID(t, ctx, cl, deleted)
	if _, err := adm.DeleteTopic(ctx, deleted); err != nil {
		t.Fatalf("delete topic: %v", err)
	}
	neverSeen := [16]byte{0xfe, 0xed, 15: 7}

	for _, tc := range []struct {
		name       string
		fault      *kerr.Error // answer for the topic, by kfake's fault injection
		byID       [16]byte    // ask by this id instead of by name (Metadata v12+)
		code       int16
		topic      string // the event's topic; "" with the id in its message
		tracked    bool
		minVersion int16
	}{
		{name: "unknown topic", fault: kerr.UnknownTopicOrPartition, code: kerr.UnknownTopicOrPartition.Code, tracked: true},
		{name: "not authorized", fault: kerr.TopicAuthorizationFailed, code: kerr.TopicAuthorizationFailed.Code, tracked: true},
		{name: "invalid name", fault: kerr.InvalidTopicException, code: kerr.InvalidTopicException.Code, tracked: true},
		{name: "failed auto-creation", fault: kerr.InvalidReplicationFactor, code: kerr.InvalidReplicationFactor.Code, tracked: true},
		{name: "being created", fault: kerr.LeaderNotAvailable, code: kerr.LeaderNotAvailable.Code},
		{name: "deleted topic's id", byID: deletedID, code: kerr.UnknownTopicID.Code, topic: deleted, tracked: true, minVersion: 12},
		{name: "id never seen", byID: neverSeen, code: kerr.UnknownTopicID.Code, tracked: true, minVersion: 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := tc.topic
			if tc.fault != nil {
				topic = uniqueTopic(t, "md-"+strings.ReplaceAll(tc.name, " ", "-"))
				h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Metadata}, Topic: topic, Err: tc.fault, Count: -1})
				t.Cleanup(h.Remove)
			}
			edge := pathway.Edge{Type: pathway.TypeKafka, Topic: topic, ClusterID: kfakeCluster}
			conn := rawClient(t, p)
			_, maxV := trapOffered(t, conn, keyMetadata)
			for v := tc.minVersion; v <= maxV; v++ {
				req := kmsg.NewPtrMetadataRequest()
				req.Version = v
				rt := kmsg.NewMetadataRequestTopic()
				if tc.byID != ([16]byte{}) {
					rt.TopicID = tc.byID
				} else {
					rt.Topic = kmsg.StringPtr(topic)
				}
				req.Topics = append(req.Topics, rt)
				before := len(metadataEvents(p, tc.code, edge))
				resp := kmsg.NewPtrMetadataResponse()
				resp.Version = v
				trapDecode(t, trapExchange(t, conn, req, int32(100+v)), resp)
				if len(resp.Topics) != 1 || resp.Topics[0].ErrorCode != tc.code {
					t.Fatalf("v%d: answer %+v, want one topic with code %d", v, resp.Topics, tc.code)
				}
				// Reported before the answer is forwarded: no wait needed.
				evs := metadataEvents(p, tc.code, edge)
				want := before
				if tc.tracked {
					want++
				}
				if len(evs) != want {
					t.Fatalf("v%d: %d events on %s, want %d; all: %+v", v, len(evs)-before, edge, want-before, p.errs.byCategory(errtrack.BrokerError))
				}
				if !tc.tracked {
					continue
				}
				e := evs[len(evs)-1]
				if e.Service != "raw" || e.Partition != -1 || e.Name != kerr.ErrorForCode(tc.code).(*kerr.Error).Message {
					t.Errorf("v%d: event %+v", v, e)
				}
				if id := base64.RawURLEncoding.EncodeToString(tc.byID[:]); topic == "" && !strings.Contains(e.Message, id) {
					t.Errorf("v%d: message %q does not name topic id %s", v, e.Message, id)
				}
			}
		})
	}
}

// TestMetadataUnknownTopicClients: real clients pointed at a topic that does not exist (no
// auto-creation) retry Metadata until they give up, and never send a Produce or a Fetch; the
// proxy's only sign of it is Metadata's UNKNOWN_TOPIC_OR_PARTITION, tracked on the topic's
// edge under the client's service.
func TestMetadataUnknownTopicClients(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	for _, tc := range []struct {
		name    string
		service string
		run     func(ctx context.Context, topic string) string // what the client reported
	}{
		{"kcat producer", "missing-producer", func(ctx context.Context, topic string) string {
			return kcatFails(t, ctx, "hi\n", "-P", "-b", p.Addr().String(), "-t", topic,
				"-X", "client.id=missing-producer", "-X", "allow.auto.create.topics=false", "-X", "message.timeout.ms=3000")
		}},
		{"kcat consumer", "missing-consumer", func(ctx context.Context, topic string) string {
			return kcatFails(t, ctx, "", "-C", "-b", p.Addr().String(), "-t", topic, "-p", "0", "-e",
				"-X", "client.id=missing-consumer")
		}},
		{"kgo producer", "missing-kgo", func(ctx context.Context, topic string) string {
			// Not kgoClient, which asks for auto-creation.
			cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.ClientID("missing-kgo"), kgo.UnknownTopicRetries(2))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			err = cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("hi")}).FirstErr()
			if !errors.Is(err, kerr.UnknownTopicOrPartition) {
				t.Errorf("kgo produced to a missing topic: %v", err)
			}
			return err.Error()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			topic := uniqueTopic(t, "missing")
			t.Logf("client: %s", tc.run(ctx, topic))
			edge := pathway.Edge{Type: pathway.TypeKafka, Topic: topic, ClusterID: kfakeCluster}
			waitFor(t, "the Metadata error event", func() bool {
				for _, e := range metadataEvents(p, kerr.UnknownTopicOrPartition.Code, edge) {
					if e.Service == tc.service {
						return true
					}
				}
				return false
			})
		})
	}
}

// kcatFails runs kcat, which is expected to fail, and returns what it wrote to stderr.
func kcatFails(t *testing.T, ctx context.Context, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, kcatPath(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	_ = cmd.Run() // kcat's exit status on a failed delivery differs between its versions
	return strings.TrimSpace(errb.String())
}

// TestMetadataErrorRepeatsOneLogLine: a client asking every few ms for a missing topic makes one
// group in the error collector, logged once per interval with its count, not a line per answer.
func TestMetadataErrorRepeatsOneLogLine(t *testing.T) {
	c, _ := startCluster(t)
	var logged bytes.Buffer
	col := errtrack.New(errtrack.Config{Interval: time.Hour, Log: zerolog.New(&logged)})
	p := startProxy(t, c, func(cfg *Config) { cfg.Errors = col })
	conn := rawClient(t, p)
	topic := uniqueTopic(t, "md-repeat")
	const asks = 50
	for i := range asks {
		req := kmsg.NewPtrMetadataRequest()
		req.Version, req.AllowAutoTopicCreation = 12, false
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(topic)
		req.Topics = append(req.Topics, rt)
		trapExchange(t, conn, req, int32(i))
	}
	if err := col.FlushNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.SplitSeq(strings.TrimSpace(logged.String()), "\n") {
		if strings.Contains(l, `"operation":"Metadata"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], `"count":50`) || !strings.Contains(lines[0], "topic:"+topic) {
		t.Errorf("log lines for %d Metadata errors: %q, want one with count 50", asks, lines)
	}
}
