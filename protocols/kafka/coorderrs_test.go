package kafka

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestCoordinatorErrorEvents has kfake answer the coordinator and transaction APIs with an error
// code (its fault injection, which answers as the broker does for a refused group, transactional
// id or partition) and checks each becomes one broker error event: under the API, with the code,
// kerr's retriable flag (or clientsRecover's), on the edge the answer is about: a group's, a
// group's and topic's, a produced topic's, or the cluster's with the transactional id in the
// message. The routine coordinator codes are retriable (so logged at Info). The requests are
// sent by kgo, at its highest version or, where older versions answer in another shape, pinned
// to one of those.
func TestCoordinatorErrorEvents(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.ClientID("coordinated"))
	topic := uniqueTopic(t, "coord")
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 3, 1, nil, topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	id := topicID(t, ctx, cl, topic) // OffsetFetch v10 names topics by id
	group := func(name string) pathway.Edge {
		return pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: name, ClusterID: kfakeCluster}
	}
	groupTopic := func(name string) pathway.Edge {
		e := group(name)
		e.Topic = topic
		return e
	}
	cluster := pathway.Edge{Type: pathway.TypeKafka, ClusterID: kfakeCluster}
	produced := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: topic, ClusterID: kfakeCluster}

	findCoordinator := func(key string, typ int8) func(context.Context, *kgo.Client) error {
		return func(ctx context.Context, cl *kgo.Client) error {
			req := kmsg.NewPtrFindCoordinatorRequest()
			req.CoordinatorKey, req.CoordinatorKeys, req.CoordinatorType = key, []string{key}, typ
			_, err := req.RequestWith(ctx, cl.Broker(0)) // to a broker: kgo's client would retry and cache
			return err
		}
	}
	offsetFetch := func(g string) func(context.Context, *kgo.Client) error {
		return func(ctx context.Context, cl *kgo.Client) error {
			req := kmsg.NewPtrOffsetFetchRequest()
			rt := kmsg.NewOffsetFetchRequestTopic()
			rt.Topic, rt.Partitions = topic, []int32{0, 1}
			req.Group, req.Topics = g, []kmsg.OffsetFetchRequestTopic{rt}
			rg := kmsg.NewOffsetFetchRequestGroup()
			gt := kmsg.NewOffsetFetchRequestGroupTopic()
			gt.Topic, gt.TopicID, gt.Partitions = topic, id, []int32{0, 1}
			rg.Group, rg.Topics = g, []kmsg.OffsetFetchRequestGroupTopic{gt}
			req.Groups = []kmsg.OffsetFetchRequestGroup{rg}
			_, err := req.RequestWith(ctx, cl)
			return err
		}
	}
	initProducerID := func(txn string) func(context.Context, *kgo.Client) error {
		return func(ctx context.Context, cl *kgo.Client) error {
			req := kmsg.NewPtrInitProducerIDRequest()
			req.TransactionalID, req.TransactionTimeoutMillis = kmsg.StringPtr(txn), 10000
			_, err := req.RequestWith(ctx, cl)
			return err
		}
	}
	addPartitions := func(txn string) func(context.Context, *kgo.Client) error {
		return func(ctx context.Context, cl *kgo.Client) error {
			req := kmsg.NewPtrAddPartitionsToTxnRequest()
			req.TransactionalID, req.ProducerID, req.ProducerEpoch = txn, 1, 0
			rt := kmsg.NewAddPartitionsToTxnRequestTopic()
			rt.Topic, rt.Partitions = topic, []int32{0, 2}
			req.Topics = []kmsg.AddPartitionsToTxnRequestTopic{rt}
			_, err := req.RequestWith(ctx, cl)
			return err
		}
	}
	addOffsets := func(txn, g string) func(context.Context, *kgo.Client) error {
		return func(ctx context.Context, cl *kgo.Client) error {
			req := kmsg.NewPtrAddOffsetsToTxnRequest()
			req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Group = txn, 1, 0, g
			_, err := req.RequestWith(ctx, cl)
			return err
		}
	}
	endTxn := func(txn string) func(context.Context, *kgo.Client) error {
		return func(ctx context.Context, cl *kgo.Client) error {
			req := kmsg.NewPtrEndTxnRequest()
			req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Commit = txn, 1, 0, true
			_, err := req.RequestWith(ctx, cl)
			return err
		}
	}

	for _, tc := range []struct {
		name      string
		fault     kfake.Fault
		pin       int16 // the API's highest version kgo may use; 0: kgo's own
		send      func(context.Context, *kgo.Client) error
		op        string
		code      int16
		retriable bool
		edge      pathway.Edge
		partition int32
		message   string // in the event's message
		notCode   int16  // a code the answer also carries that must not be tracked
	}{
		{name: "FindCoordinator group, coordinator starting", op: "FindCoordinator",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.FindCoordinator}, Group: "g-fc", Err: kerr.CoordinatorNotAvailable},
			send:  findCoordinator("g-fc", 0), code: kerr.CoordinatorNotAvailable.Code, retriable: true, edge: group("g-fc"), partition: -1},
		{name: "FindCoordinator v3 group, loading", op: "FindCoordinator", pin: 3,
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.FindCoordinator}, Group: "g-fc3", Err: kerr.CoordinatorLoadInProgress},
			send:  findCoordinator("g-fc3", 0), code: kerr.CoordinatorLoadInProgress.Code, retriable: true, edge: group("g-fc3"), partition: -1},
		{name: "FindCoordinator transaction refused", op: "FindCoordinator",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.FindCoordinator}, TxnID: "tx-fc", Err: kerr.TransactionalIDAuthorizationFailed},
			send:  findCoordinator("tx-fc", 1), code: kerr.TransactionalIDAuthorizationFailed.Code, edge: cluster, partition: -1, message: "transactional id tx-fc"},
		{name: "FindCoordinator v2 transaction, not coordinator", op: "FindCoordinator", pin: 2,
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.FindCoordinator}, TxnID: "tx-fc2", Err: kerr.NotCoordinator},
			send:  findCoordinator("tx-fc2", 1), code: kerr.NotCoordinator.Code, retriable: true, edge: cluster, partition: -1, message: "transactional id tx-fc2"},
		{name: "OffsetFetch group refused", op: "OffsetFetch",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetFetch}, Group: "g-of", Err: kerr.GroupAuthorizationFailed},
			send:  offsetFetch("g-of"), code: kerr.GroupAuthorizationFailed.Code, edge: group("g-of"), partition: -1},
		{name: "OffsetFetch v7 group refused", op: "OffsetFetch", pin: 7,
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetFetch}, Group: "g-of7", Err: kerr.GroupAuthorizationFailed},
			send:  offsetFetch("g-of7"), code: kerr.GroupAuthorizationFailed.Code, edge: group("g-of7"), partition: -1},
		{name: "OffsetFetch partition refused", op: "OffsetFetch",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetFetch}, Group: "g-ofp", Topic: topic, Partitions: []int32{1}, Err: kerr.TopicAuthorizationFailed},
			send:  offsetFetch("g-ofp"), code: kerr.TopicAuthorizationFailed.Code, edge: groupTopic("g-ofp"), partition: 1},
		{name: "OffsetFetch v5 partition unstable", op: "OffsetFetch", pin: 5,
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetFetch}, Group: "g-ofp5", Topic: topic, Partitions: []int32{1}, Err: kerr.UnstableOffsetCommit},
			send:  offsetFetch("g-ofp5"), code: kerr.UnstableOffsetCommit.Code, retriable: true, edge: groupTopic("g-ofp5"), partition: 1},
		{name: "InitProducerID concurrent transactions", op: "InitProducerID",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID}, TxnID: "tx-ip", Err: kerr.ConcurrentTransactions},
			send:  initProducerID("tx-ip"), code: kerr.ConcurrentTransactions.Code, retriable: true, edge: cluster, partition: -1, message: "transactional id tx-ip"},
		{name: "InitProducerID fenced", op: "InitProducerID",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID}, TxnID: "tx-ipf", Err: kerr.ProducerFenced},
			send:  initProducerID("tx-ipf"), code: kerr.ProducerFenced.Code, edge: cluster, partition: -1, message: "transactional id tx-ipf"},
		{name: "AddPartitionsToTxn partition refused", op: "AddPartitionsToTxn", pin: 3,
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.AddPartitionsToTxn}, TxnID: "tx-ap", Topic: topic, Partitions: []int32{2}, Err: kerr.InvalidTxnState},
			send:  addPartitions("tx-ap"), code: kerr.InvalidTxnState.Code, edge: produced, partition: 2, message: "transactional id tx-ap",
			notCode: kerr.OperationNotAttempted.Code},
		{name: "AddPartitionsToTxn v1 transaction refused", op: "AddPartitionsToTxn", pin: 1,
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.AddPartitionsToTxn}, TxnID: "tx-ap0", Err: kerr.TransactionalIDAuthorizationFailed},
			send:  addPartitions("tx-ap0"), code: kerr.TransactionalIDAuthorizationFailed.Code, edge: produced, partition: 0, message: "transactional id tx-ap0"},
		{name: "AddOffsetsToTxn group refused", op: "AddOffsetsToTxn",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.AddOffsetsToTxn}, Group: "g-ao", Err: kerr.GroupAuthorizationFailed},
			send:  addOffsets("tx-ao", "g-ao"), code: kerr.GroupAuthorizationFailed.Code, edge: cluster, partition: -1, message: "transactional id tx-ao, group g-ao"},
		{name: "EndTxn fenced", op: "EndTxn",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, TxnID: "tx-et", Err: kerr.ProducerFenced},
			send:  endTxn("tx-et"), code: kerr.ProducerFenced.Code, edge: cluster, partition: -1, message: "transactional id tx-et, commit"},
		{name: "EndTxn not coordinator", op: "EndTxn",
			fault: kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, TxnID: "tx-etn", Err: kerr.NotCoordinator},
			send:  endTxn("tx-etn"), code: kerr.NotCoordinator.Code, retriable: true, edge: cluster, partition: -1, message: "transactional id tx-etn, commit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			if tc.fault.Group != "" && tc.fault.Topic != "" { // a group with a commit: kfake answers GROUP_ID_NOT_FOUND for others
				commitOne(t, ctx, cl, tc.fault.Group, topic)
			}
			h := c.Fault(tc.fault)
			t.Cleanup(h.Remove)
			use := cl
			if tc.pin != 0 {
				v := kversion.Stable()
				v.SetMaxKeyVersion(int16(tc.fault.Keys[0]), tc.pin)
				use = kgoClient(t, p, kgo.ClientID("coordinated"), kgo.MaxVersions(v))
			}
			if err := tc.send(ctx, use); err != nil {
				t.Fatalf("%s: %v", tc.op, err)
			}
			if err := h.Wait(ctx, 1); err != nil {
				t.Fatalf("kfake did not answer with the fault: %v", err)
			}
			var got []errtrack.Event
			waitFor(t, fmt.Sprintf("%s %s event on %s", tc.op, kerr.ErrorForCode(tc.code), tc.edge), func() bool {
				got = p.errs.where(func(e errtrack.Event) bool {
					return e.Operation == tc.op && int16(e.Code) == tc.code && e.Edge == tc.edge
				})
				return len(got) > 0
			})
			e := got[0]
			if e.Category != errtrack.BrokerError || e.Retriable != tc.retriable || e.Partition != tc.partition ||
				e.Messages != 0 || e.Service != "coordinated" || !strings.Contains(e.Message, tc.message) || e.Name != kerr.ErrorForCode(tc.code).(*kerr.Error).Message {
				t.Errorf("event %+v; want broker_error, retriable %v, partition %d, no messages, message with %q",
					e, tc.retriable, tc.partition, tc.message)
			}
			if n := len(p.errs.where(func(e errtrack.Event) bool {
				return e.Operation == tc.op && int16(e.Code) == tc.code && e.Edge == tc.edge && e.Partition == tc.partition
			})); n != 1 {
				t.Errorf("%d %s events for one answer", n, kerr.ErrorForCode(tc.code))
			}
			if tc.notCode != 0 {
				if n := len(p.errs.where(func(e errtrack.Event) bool { return int16(e.Code) == tc.notCode })); n != 0 {
					t.Errorf("%d events of %s", n, kerr.ErrorForCode(tc.notCode))
				}
			}
		})
	}
}

// commitOne commits offset 1 of topic's partition 1 for group, which kfake then knows.
func commitOne(t *testing.T, ctx context.Context, cl *kgo.Client, group, topic string) {
	t.Helper()
	req := kmsg.NewPtrOffsetCommitRequest()
	req.Group, req.Generation = group, -1
	rt := kmsg.NewOffsetCommitRequestTopic()
	rt.Topic, rt.TopicID = topic, topicID(t, ctx, cl, topic)
	rp := kmsg.NewOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset = 1, 1
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil || resp.Topics[0].Partitions[0].ErrorCode != 0 {
		t.Fatalf("commit for %s: %v %+v", group, err, resp)
	}
}

// TestTxnProducerRetriesTracked: a kgo transactional producer whose coordinator is still loading,
// and whose transaction is still ending, once each (kfake's faults), retries past them and commits
// without its application seeing anything; the proxy tracks each answer, retriable, and no message
// as lost. (kgo adds partitions to kfake's transactions with Produce, KIP-890: no
// AddPartitionsToTxn here; TestCoordinatorErrorEvents sends one.)
func TestTxnProducerRetriesTracked(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "txn-retries")
	const txn = "tx-retries"
	faults := map[kmsg.Key]*kerr.Error{
		kmsg.FindCoordinator: kerr.CoordinatorLoadInProgress,
		kmsg.InitProducerID:  kerr.ConcurrentTransactions,
		kmsg.EndTxn:          kerr.ConcurrentTransactions,
	}
	for key, err := range faults {
		t.Cleanup(c.Fault(kfake.Fault{Keys: []kmsg.Key{key}, TxnID: txn, Err: err}).Remove)
	}
	cl := kgoClient(t, p, kgo.ClientID("txn-retrier"), kgo.TransactionalID(txn), kgo.DefaultProduceTopic(topic))
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatalf("commit: %v", err)
	}
	waitFor(t, "an event for each retried answer", func() bool {
		seen := 0
		for key, err := range faults {
			for _, e := range p.errs.byCategory(errtrack.BrokerError) {
				if e.Operation == kmsg.NameForKey(int16(key)) && int16(e.Code) == err.Code && e.Retriable && e.Service == "txn-retrier" &&
					strings.Contains(e.Message, txn) {
					seen++
					break
				}
			}
		}
		return seen == len(faults)
	})
	if lost := p.errs.byCategory(errtrack.LostMessage); len(lost) != 0 {
		t.Errorf("lost messages %+v", lost)
	}
}
