package kafka

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkagoscram "github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// groupOf returns the group the proxy learned for clientID consuming topic/partition.
func (p *Proxy) groupOf(clientID, topic string, partition int32) string {
	p.groups.mu.Lock()
	var keys []clientKey
	for k := range p.groups.clients.All() {
		if k.clientID == clientID {
			keys = append(keys, k)
		}
	}
	p.groups.mu.Unlock()
	for _, k := range keys {
		if g := p.groups.lookup(k, topic, partition); g != "" {
			return g
		}
	}
	return ""
}

func TestGroupLearning(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		opts []kgo.Opt
	}{{"classic", nil}, {"kip848", []kgo.Opt{kgo.ServerSideBalancer()}}} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "grp-"+tc.name)
			cl := kgoClient(t, p)
			sent := testRecords(9, time.UnixMilli(1700000500000))
			produceKgo(t, ctx, cl, topic, sent)
			group := "grp-" + tc.name
			got := consumeKgo(t, ctx, p, topic, group, len(sent), tc.opts...)
			for _, r := range got {
				if g := p.groupOf("billing-consumer-1", topic, r.Partition); g != group {
					t.Errorf("partition %d: learned group %q, want %q", r.Partition, g, group)
				}
			}
			checkBacklogs(t, p, topic, group, got)
		})
	}
	guard.check(t)
}

// TestShareGroup consumes through a KIP-932 share group: ShareFetch/ShareAcknowledge responses
// carry node endpoints the proxy rewrites, and each delivered record gets a consume checkpoint
// tagged with the share group, whose parent is its produce checkpoint.
func TestShareGroup(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "share")
	cl := kgoClient(t, p)
	produceKgo(t, ctx, cl, topic, testRecords(1, time.UnixMilli(1700000550000))) // creates the topic
	sc := kgoClient(t, p, kgo.ShareGroup("share-g"), kgo.ConsumeTopics(topic))
	// A share group starts at the latest offset, so records are produced while it polls.
	done := make(chan struct{})
	prodDone := make(chan struct{})
	go func() {
		defer close(prodDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-tick.C:
				cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte("share"), Value: []byte("v")}, nil)
			}
		}
	}()
	var got []*kgo.Record
	for len(got) < 3 {
		fs := sc.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("share consumed %d records", len(got))
		}
		got = append(got, fs.Records()...)
	}
	close(done)
	<-prodDone
	for _, r := range got {
		if string(r.Key) != "share" || string(r.Value) != "v" {
			t.Errorf("share record %q=%q", r.Key, r.Value)
		}
	}
	var cons []pathway.Point
	waitFor(t, fmt.Sprintf("%d consume checkpoints of share-g", len(got)), func() bool {
		cons = pointsOn(p, "direction:in", "group:share-g", "topic:"+topic, "type:kafka")
		return len(cons) >= len(got)
	})
	prod := pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
	if len(prod) == 0 {
		t.Fatal("no produce checkpoints")
	}
	for _, pt := range cons {
		if pt.ParentHash != prod[0].Hash {
			t.Errorf("share consume checkpoint's parent %x, want the produce checkpoint %x", pt.ParentHash, prod[0].Hash)
		}
	}
	guard.check(t)
}

// saslUsers are the kfake options for a cluster that requires SASL, with one user per mechanism;
// saslLogins are the kgo logins of those users.
var saslUsers = []kfake.Opt{kfake.EnableSASL(), kfake.Superuser("PLAIN", "plainuser", "plainpw"),
	kfake.Superuser("SCRAM-SHA-256", "scram256", "pw256"), kfake.Superuser("SCRAM-SHA-512", "scram512", "pw512")}

var saslLogins = []struct {
	name string
	opt  kgo.Opt
}{
	{"plain", kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism())},
	{"scram256", kgo.SASL(scram.Auth{User: "scram256", Pass: "pw256"}.AsSha256Mechanism())},
	{"scram512", kgo.SASL(scram.Auth{User: "scram512", Pass: "pw512"}.AsSha512Mechanism())},
}

func TestSASLPassthrough(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range saslLogins {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "sasl-"+tc.name)
			cl := kgoClient(t, p, tc.opt)
			sent := testRecords(4, time.UnixMilli(1700000600000))
			produceKgo(t, ctx, cl, topic, sent)
			got := consumeKgo(t, ctx, p, topic, "sasl-"+tc.name, len(sent), tc.opt)
			checkRecords(t, sent, got, wantInjected)
		})
	}
	t.Run("sarama-plain", func(t *testing.T) {
		topic := uniqueTopic(t, "sasl-sarama")
		cfg := saramaConfig("sarama-sasl")
		cfg.Net.SASL.Enable = true
		cfg.Net.SASL.Mechanism = "PLAIN"
		cfg.Net.SASL.User, cfg.Net.SASL.Password = "plainuser", "plainpw"
		sent := testRecords(4, time.UnixMilli(1700000650000))
		produceSarama(t, p, cfg, topic, sent)
		cl := kgoClient(t, p, kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism()))
		_ = cl
		got := consumeKgo(t, ctx, p, topic, "sasl-sarama", len(sent), kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism()))
		checkRecords(t, sent, got, wantInjected)
	})
	t.Run("kafka-go-scram512", func(t *testing.T) {
		// kafka-go's own SASL client (SaslHandshake v1, SaslAuthenticate), producer and group reader.
		mech, err := kafkagoscram.Mechanism(kafkagoscram.SHA512, "scram512", "pw512")
		if err != nil {
			t.Fatal(err)
		}
		topic := uniqueTopic(t, "sasl-kafkago")
		sent := testRecords(4, time.UnixMilli(1700000660000))
		produceKafkaGo(t, ctx, p, "kafkago-sasl", topic, 0, sent, mech)
		got := consumeKafkaGo(t, ctx, p, "kafkago-sasl", topic, "sasl-kafkago", len(sent), mech)
		checkRecords(t, sent, got, wantInjected)
		checkConsumeGroup(t, p, topic, "sasl-kafkago", len(sent))
	})
	t.Run("bad-password", func(t *testing.T) {
		cl := kgoClient(t, p, kgo.SASL(plain.Auth{User: "plainuser", Pass: "wrong"}.AsMechanism()))
		// One deadline per ping: a slow first one must not leave the reference ping none.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := cl.Ping(cctx)
		// The reference connection dials from the proxy's source address so the guard allows it.
		ref := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySourceIP)}}
		direct, derr := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()[0]), kgo.Dialer(ref.DialContext), kgo.SASL(plain.Auth{User: "plainuser", Pass: "wrong"}.AsMechanism()))
		if derr != nil {
			t.Fatal(derr)
		}
		defer direct.Close()
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		want := direct.Ping(dctx)
		if err == nil || want == nil || err.Error() != want.Error() {
			t.Errorf("wrong password through the proxy: %v; directly: %v", err, want)
		}
	})
	guard.check(t)
}

// TestAbortedThenCommitted: a read_committed consumer never sees a producer's aborted transaction
// but does see its committed one after it, so only the committed records get consume checkpoints
// (the abort marker ends the producer's aborted range, as in the Java consumer).
func TestAbortedThenCommitted(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "txabort")
	cl := kgoClient(t, p, kgo.TransactionalID("tx-abort"), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(topic))
	for i, end := range []kgo.TransactionEndTry{kgo.TryAbort, kgo.TryCommit, kgo.TryAbort, kgo.TryCommit} {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 3; j++ {
			r := &kgo.Record{Key: []byte(strconv.Itoa(10*i + j)), Value: []byte("v"), Partition: 0}
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.EndTransaction(ctx, end); err != nil {
			t.Fatalf("ending transaction %d: %v", i, err)
		}
	}
	got := consumeKgo(t, ctx, p, topic, "g-txabort", 6, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	for _, r := range got {
		if k, _ := strconv.Atoi(string(r.Key)); (k/10)%2 == 0 {
			t.Errorf("read_committed consumer got aborted record %s", r.Key)
		}
	}
	tags := []string{"direction:in", "group:g-txabort", "topic:" + topic, "type:kafka"}
	waitFor(t, "a consume checkpoint per committed record", func() bool { return len(pointsOn(p, tags...)) >= 6 })
	if n := len(pointsOn(p, tags...)); n != 6 {
		t.Errorf("%d consume checkpoints, want 6 (the committed records)", n)
	}
	guard.check(t)
}

// TestTransactions: a transactional consume-produce session commits its input offsets with
// TxnOffsetCommit; a read_committed consumer sees the output; kafka_commit comes from the txn.
func TestTransactions(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	in, out := uniqueTopic(t, "txin"), uniqueTopic(t, "txout")
	cl := kgoClient(t, p)
	sent := testRecords(8, time.UnixMilli(1700000700000))
	produceKgo(t, ctx, cl, in, sent)

	dr := &dialRecorder{}
	sess, err := kgo.NewGroupTransactSession(kgo.SeedBrokers(p.Addr().String()), kgo.Dialer(dr.dial), kgo.AllowAutoTopicCreation(),
		kgo.TransactionalID("tx-1"), kgo.ConsumerGroup("tx-group"), kgo.ConsumeTopics(in),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ClientID("tx-app"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var consumed []*kgo.Record
	for len(consumed) < len(sent) {
		fs := sess.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("transactional consumer got %d of %d", len(consumed), len(sent))
		}
		recs := fs.Records()
		if len(recs) == 0 {
			continue
		}
		if err := sess.Begin(); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			sess.Produce(ctx, &kgo.Record{Topic: out, Key: r.Key, Value: r.Value, Timestamp: r.Timestamp, Headers: r.Headers}, nil)
		}
		committed, err := sess.End(ctx, kgo.TryCommit)
		if err != nil || !committed {
			t.Fatalf("End: committed=%v %v", committed, err)
		}
		consumed = append(consumed, recs...)
	}
	for _, a := range dr.addrs {
		if !p.isProxyAddr(a) {
			t.Errorf("transactional client dialed %s", a)
		}
	}
	got := consumeKgo(t, ctx, p, out, "tx-reader", len(sent), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	checkRecords(t, sent, got, wantInjected)
	// The transactional commit of the input shows as kafka_commit for tx-group.
	next := map[int32]int64{}
	for _, r := range consumed {
		next[r.Partition] = max(next[r.Partition], r.Offset+1)
	}
	waitFor(t, "txn commit offsets", func() bool {
		_, offs := p.rec.snapshot()
		ok := 0
		for part, n := range next {
			for _, o := range offs {
				if o.Kind == pathway.KafkaCommit && o.Group == "tx-group" && o.Topic == in && o.Partition == part && o.Value == n {
					ok++
					break
				}
			}
		}
		return ok == len(next)
	})
	guard.check(t)
}

// TestDescribeClusterAddresses: DescribeCluster (an admin client's view of the brokers), sent by
// kgo to kfake, names the proxy's node listeners, not the brokers.
func TestDescribeClusterAddresses(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p)
	req := kmsg.NewPtrDescribeClusterRequest()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ErrorCode != 0 || len(resp.Brokers) != 3 {
		t.Fatalf("DescribeCluster: error %d, %d brokers", resp.ErrorCode, len(resp.Brokers))
	}
	for _, b := range resp.Brokers {
		a := net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))
		if !p.isProxyAddr(a) {
			t.Errorf("broker %d advertised as %s, not a proxy listener", b.NodeID, a)
		}
	}
	guard.check(t)
}

// TestTxnOffsetsCountAtEndTxn: offsets a transaction sends with TxnOffsetCommit become a
// kafka_commit only when its EndTxn commits: not before, and never for an abort. The requests are
// kgo's, one by one, as a transactional client sends them.
func TestTxnOffsetsCountAtEndTxn(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "txoff")
	produceKgo(t, ctx, kgoClient(t, p), topic, testRecords(4, time.UnixMilli(1700000710000)))
	cl := kgoClient(t, p)
	id := topicID(t, ctx, cl, topic) // TxnOffsetCommit v6 names topics by id
	commits := func(group string) []pathway.Offset { return groupCommits(p, group) }
	for _, commit := range []bool{false, true} {
		txn, group := fmt.Sprintf("raw-tx-%v", commit), fmt.Sprintf("raw-group-%v", commit)
		init := kmsg.NewPtrInitProducerIDRequest()
		init.TransactionalID, init.TransactionTimeoutMillis = &txn, 60000
		ir, err := init.RequestWith(ctx, cl)
		if err != nil || ir.ErrorCode != 0 {
			t.Fatalf("InitProducerID: %v %v", err, ir)
		}
		add := kmsg.NewPtrAddOffsetsToTxnRequest()
		add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = txn, ir.ProducerID, ir.ProducerEpoch, group
		if ar, err := add.RequestWith(ctx, cl); err != nil || ar.ErrorCode != 0 {
			t.Fatalf("AddOffsetsToTxn: %v %v", err, ar)
		}
		toc := kmsg.NewPtrTxnOffsetCommitRequest()
		toc.TransactionalID, toc.Group, toc.ProducerID, toc.ProducerEpoch = txn, group, ir.ProducerID, ir.ProducerEpoch
		tt := kmsg.NewTxnOffsetCommitRequestTopic()
		tt.Topic, tt.TopicID = topic, id
		tp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		tp.Partition, tp.Offset = 0, 2
		tt.Partitions = append(tt.Partitions, tp)
		toc.Topics = append(toc.Topics, tt)
		tr, err := toc.RequestWith(ctx, cl)
		if err != nil || len(tr.Topics) != 1 || tr.Topics[0].Partitions[0].ErrorCode != 0 {
			t.Fatalf("TxnOffsetCommit: %v %+v", err, tr)
		}
		if got := commits(group); len(got) != 0 {
			t.Errorf("kafka_commit before the transaction ended: %+v", got)
		}
		end := kmsg.NewPtrEndTxnRequest()
		end.TransactionalID, end.ProducerID, end.ProducerEpoch, end.Commit = txn, ir.ProducerID, ir.ProducerEpoch, commit
		if er, err := end.RequestWith(ctx, cl); err != nil || er.ErrorCode != 0 {
			t.Fatalf("EndTxn: %v %v", err, er)
		}
		// The EndTxn answer passed the proxy before the client got it.
		got := commits(group)
		switch {
		case !commit && len(got) != 0:
			t.Errorf("kafka_commit from an aborted transaction: %+v", got)
		case commit && (len(got) != 1 || got[0].Topic != topic || got[0].Value != 2):
			t.Errorf("committed transaction's kafka_commit: %+v, want offset 2 on %s", got, topic)
		}
	}
	guard.check(t)
}

// saslCounter counts a kgo client's connections and SASL handshakes: more handshakes than
// connections means some connection re-authenticated.
type saslCounter struct{ connects, handshakes atomic.Int64 }

func (c *saslCounter) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil {
		c.connects.Add(1)
	}
}

func (c *saslCounter) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == keySaslHandshake && err == nil {
		c.handshakes.Add(1)
	}
}

// TestSASLReauthentication: the brokers give SASL sessions a 1.5 s lifetime (KIP-368), so kgo
// re-authenticates its connections while it produces and consumes through the proxy. Records
// keep arriving intact with their header, and the re-authentications succeed on the same
// connections.
func TestSASLReauthentication(t *testing.T) {
	c, guard := startCluster(t, append(saslUsers, kfake.BrokerConfigs(map[string]string{"connections.max.reauth.ms": "1500"}))...)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range saslLogins[:2] { // PLAIN and SCRAM-SHA-256
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "reauth-"+tc.name)
			var count saslCounter
			cl := kgoClient(t, p, tc.opt, kgo.WithHooks(&count))
			var sent []sentRecord
			base := time.UnixMilli(1700000660000)
			// Until every connection has had its session renewed at least once (~1 s each).
			for i := 0; count.handshakes.Load() <= count.connects.Load() || i < 3; i++ {
				if ctx.Err() != nil {
					t.Fatalf("no re-authentication seen: %d handshakes on %d connections", count.handshakes.Load(), count.connects.Load())
				}
				recs := testRecords(2, base.Add(time.Duration(i)*time.Second))
				produceKgo(t, ctx, cl, topic, recs)
				sent = append(sent, recs...)
				time.Sleep(300 * time.Millisecond)
			}
			after := testRecords(2, base.Add(time.Minute)) // on a re-authenticated session
			produceKgo(t, ctx, cl, topic, after)
			sent = append(sent, after...)
			got := consumeKgo(t, ctx, p, topic, "reauth-"+tc.name, len(sent), tc.opt)
			checkRecords(t, sent, got, wantInjected)
			t.Logf("%d records, %d handshakes on %d connections", len(sent), count.handshakes.Load(), count.connects.Load())
		})
	}
	guard.check(t)
}

// TestLeftGroupIsForgotten: a consumer leaves group A (kgo's Close: LeaveGroup, or a KIP-848
// heartbeat with member epoch -1), and a consumer on the same host with the same client.id then
// reads the same partitions in group B. Its fetches belong to B: A, which it left, must not
// still claim the partitions (two holders leave the group tag empty).
func TestLeftGroupIsForgotten(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		opts []kgo.Opt
	}{{"classic", nil}, {"kip848", []kgo.Opt{kgo.ServerSideBalancer()}}} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "leave-"+tc.name)
			sent := testRecords(6, time.UnixMilli(1700000520000))
			produceKgo(t, ctx, kgoClient(t, p), topic, sent)
			first := kgoClient(t, p, append([]kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumerGroup("left-" + tc.name),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ClientID("billing-consumer-1")}, tc.opts...)...)
			for n := 0; n < len(sent); {
				fs := first.PollFetches(ctx)
				if err := ctx.Err(); err != nil {
					t.Fatalf("group %s read %d of %d records: %v", "left-"+tc.name, n, len(sent), err)
				}
				n += len(fs.Records())
			}
			first.Close() // leaves the group
			group := "stays-" + tc.name
			for _, r := range consumeKgo(t, ctx, p, topic, group, len(sent), tc.opts...) {
				if g := p.groupOf("billing-consumer-1", topic, r.Partition); g != group {
					t.Errorf("partition %d: group %q, want %q (the other group was left)", r.Partition, g, group)
				}
			}
		})
	}
	guard.check(t)
}

// TestGroupsAtFetchTime: a fetch answered while the client was in a group is observed later,
// after the client left it (the observation worker runs behind the data path, and a consumer
// such as kcat -c N leaves as soon as it has its records): its checkpoints still carry the group.
func TestGroupsAtFetchTime(t *testing.T) {
	g := newGroupTracker(10)
	k := clientKey{clientID: "kcat-consumer"}
	g.assign(k, "a", []topicPartition{{"t", 0}})
	g.learn(k, "b")
	atFetch := g.current(k)
	g.forget(k, "a", []string{""})
	if got := g.lookupIn(atFetch, k, "t", 0); got != "a" {
		t.Errorf("group of a fetch answered before the leave: %q, want a", got)
	}
	if got := g.lookup(k, "t", 0); got != "b" {
		t.Errorf("group after the leave: %q, want b (the only one left)", got)
	}
	if got := g.lookupIn(nil, k, "t", 0); got != "b" {
		t.Errorf("group with no groups known at fetch time: %q, want today's b", got)
	}
}
