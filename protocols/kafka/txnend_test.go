package kafka

// Transactions whose offsets must not be lost, nor counted when they did not commit.

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// txnDriver drives a transaction by hand through the proxy: InitProducerID, AddOffsetsToTxn and
// TxnOffsetCommit of offset on partition 0 of topic for group.
type txnDriver struct {
	t     *testing.T
	ctx   context.Context
	cl    *kgo.Client
	txn   string
	group string
	topic string
	id    [16]byte
	pid   int64
	epoch int16
}

func (x *txnDriver) init() {
	x.t.Helper()
	init := kmsg.NewPtrInitProducerIDRequest()
	init.TransactionalID, init.TransactionTimeoutMillis = &x.txn, 60000
	ir, err := init.RequestWith(x.ctx, x.cl)
	if err != nil || ir.ErrorCode != 0 {
		x.t.Fatalf("InitProducerID: %v %+v", err, ir)
	}
	x.pid, x.epoch = ir.ProducerID, ir.ProducerEpoch
}

func (x *txnDriver) commitOffset(offset int64) {
	x.t.Helper()
	add := kmsg.NewPtrAddOffsetsToTxnRequest()
	add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = x.txn, x.pid, x.epoch, x.group
	if ar, err := add.RequestWith(x.ctx, x.cl); err != nil || ar.ErrorCode != 0 {
		x.t.Fatalf("AddOffsetsToTxn: %v %+v", err, ar)
	}
	toc := kmsg.NewPtrTxnOffsetCommitRequest()
	toc.TransactionalID, toc.Group, toc.ProducerID, toc.ProducerEpoch = x.txn, x.group, x.pid, x.epoch
	tt := kmsg.NewTxnOffsetCommitRequestTopic()
	tt.Topic, tt.TopicID = x.topic, x.id
	tp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
	tp.Partition, tp.Offset = 0, offset
	tt.Partitions = append(tt.Partitions, tp)
	toc.Topics = append(toc.Topics, tt)
	tr, err := toc.RequestWith(x.ctx, x.cl)
	if err != nil || len(tr.Topics) != 1 || tr.Topics[0].Partitions[0].ErrorCode != 0 {
		x.t.Fatalf("TxnOffsetCommit: %v %+v", err, tr)
	}
}

func (x *txnDriver) end(commit bool) int16 {
	x.t.Helper()
	end := kmsg.NewPtrEndTxnRequest()
	end.TransactionalID, end.ProducerID, end.ProducerEpoch, end.Commit = x.txn, x.pid, x.epoch, commit
	er, err := end.RequestWith(x.ctx, x.cl)
	if err != nil {
		x.t.Fatalf("EndTxn: %v", err)
	}
	return er.ErrorCode
}

// committedOffset is what the broker holds as group's committed offset for partition 0 of topic.
func (x *txnDriver) committedOffset() int64 {
	x.t.Helper()
	req := kmsg.NewPtrOffsetFetchRequest()
	req.Group = x.group
	rt := kmsg.NewOffsetFetchRequestTopic()
	rt.Topic = x.topic
	rt.Partitions = []int32{0}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(x.ctx, x.cl)
	if err != nil {
		x.t.Fatalf("OffsetFetch: %v", err)
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if p.Partition == 0 {
				return p.Offset
			}
		}
	}
	for _, g := range resp.Groups {
		for _, t := range g.Topics {
			for _, p := range t.Partitions {
				if p.Partition == 0 {
					return p.Offset
				}
			}
		}
	}
	return -1
}

// groupCommits are the kafka_commit offsets the proxy recorded for group.
func groupCommits(p *testProxy, group string) []pathway.Offset {
	_, offs := p.rec.snapshot()
	var out []pathway.Offset
	for _, o := range offs {
		if o.Kind == pathway.KafkaCommit && o.Group == group {
			out = append(out, o)
		}
	}
	return out
}

func newTxnDriver(t *testing.T, p *testProxy, name string) *txnDriver {
	ctx := testCtx(t)
	topic := uniqueTopic(t, name)
	produceKgo(t, ctx, kgoClient(t, p), topic, testRecords(8, time.UnixMilli(1700000710000)))
	cl := kgoClient(t, p)
	return &txnDriver{t: t, ctx: ctx, cl: cl, txn: "tx-" + topic, group: "g-" + topic, topic: topic, id: topicID(t, ctx, cl, topic)}
}

// TestEndTxnRetried: the transaction coordinator answers a committing EndTxn with a retriable
// error (here COORDINATOR_LOAD_IN_PROGRESS, as during a coordinator move); the client sends
// EndTxn again and the transaction commits, with the group's offset, which the proxy reports.
func TestEndTxnRetried(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	x := newTxnDriver(t, p, "txretry")
	x.init()
	x.commitOffset(5)

	// The first EndTxn is answered with a retriable error; the retry reaches the coordinator.
	c.ControlKey(int16(kmsg.EndTxn), func(req kmsg.Request) (kmsg.Response, error, bool) {
		resp := req.(*kmsg.EndTxnRequest).ResponseKind().(*kmsg.EndTxnResponse)
		resp.ErrorCode = kerr.CoordinatorLoadInProgress.Code
		return resp, nil, true
	})
	code := x.end(true)
	for i := 0; code != 0 && i < 5; i++ { // kgo may hand the retriable code back: retry as clients do
		if code != kerr.CoordinatorLoadInProgress.Code {
			t.Fatalf("EndTxn: %v", kerr.ErrorForCode(code))
		}
		code = x.end(true)
	}
	if code != 0 {
		t.Fatalf("EndTxn never succeeded: %v", kerr.ErrorForCode(code))
	}
	if got := x.committedOffset(); got != 5 {
		t.Fatalf("broker's committed offset %d, want 5", got)
	}
	if got := groupCommits(p, x.group); len(got) != 1 || got[0].Value != 5 {
		t.Errorf("kafka_commit for the committed transaction: %+v, want one with offset 5", got)
	}
	guard.check(t)
}

// TestTxnAbortedByNewEpoch: a transactional producer commits offset 6 with TxnOffsetCommit and
// dies before EndTxn. Its replacement (same transactional.id) calls InitProducerID, which makes
// the coordinator abort the open transaction, then commits offset 2 in a transaction of its own.
// The broker's committed offset is 2; the proxy must not report the aborted 6 (the aggregator
// keeps the highest value per bucket, so 6 is what the backlog would show).
func TestTxnAbortedByNewEpoch(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	x := newTxnDriver(t, p, "txfenced")
	x.init()
	x.commitOffset(6)
	// The producer dies here. Its replacement starts:
	x.init()
	x.commitOffset(2)
	if code := x.end(true); code != 0 {
		t.Fatalf("EndTxn: %v", kerr.ErrorForCode(code))
	}
	if got := x.committedOffset(); got != 2 {
		t.Fatalf("broker's committed offset %d, want 2", got)
	}
	got := groupCommits(p, x.group)
	for _, o := range got {
		if o.Value != 2 {
			t.Errorf("kafka_commit offset %d reported; the broker aborted that transaction (committed offset is 2)", o.Value)
		}
	}
	if len(got) == 0 {
		t.Errorf("no kafka_commit for the committed transaction")
	}
	guard.check(t)
}
