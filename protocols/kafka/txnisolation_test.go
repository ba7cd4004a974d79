package kafka

// What consumers of each isolation level get of committed and aborted transactions through the
// proxy, and what is checkpointed of them.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// txnRounds are the transactions the tests below produce, in order: aborted ones are odd keys'
// rounds.
var txnRounds = []kgo.TransactionEndTry{kgo.TryAbort, kgo.TryCommit, kgo.TryAbort, kgo.TryCommit}

const txnRecords = 3 // records a transaction produces

// produceTxnRounds produces txnRounds through cl (transactional), txnRecords records each, key
// "<round>-<i>", to partition 0 of cl's default topic.
func produceTxnRounds(t *testing.T, ctx context.Context, cl *kgo.Client) {
	t.Helper()
	for i, end := range txnRounds {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for j := range txnRecords {
			r := &kgo.Record{Key: fmt.Appendf(nil, "%d-%d", i, j), Value: []byte("value-" + strconv.Itoa(j)), Partition: 0}
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.EndTransaction(ctx, end); err != nil {
			t.Fatalf("ending transaction %d: %v", i, err)
		}
	}
}

// abortedKey: the record of key k was produced in an aborted transaction of txnRounds.
func abortedKey(k []byte) bool {
	round, _ := strconv.Atoi(string(k[:bytes.IndexByte(k, '-')]))
	return txnRounds[round] == kgo.TryAbort
}

// TestTxnIsolationCheckpoints: a kgo transactional producer aborts and commits transactions
// through the proxy. Every record produced gets a produce checkpoint, the aborted ones included
// (a tracer checkpoints at send, before the outcome, as the README says). A read_committed
// consumer gets the committed records only and a read_uncommitted one every record; each gets
// exactly one consume checkpoint per record it gets, with the produce checkpoint as parent, and
// none for the commit and abort markers.
// Fetch answers are observed whole, or while they pass (streamed, from 64 bytes here), or
// without their requests' facts (the bounds on them full): the isolation level is then the
// answer's, as a broker sends aborted transactions to read_committed fetches only.
func TestTxnIsolationCheckpoints(t *testing.T) {
	for _, tc := range []struct {
		name         string
		mod          func(*Config)
		streamed     bool
		withoutFacts bool
	}{
		{"buffered", nil, false, false},
		{"streamed", func(cfg *Config) { cfg.streamFetchMin = 64 }, true, false},
		{"without facts", nil, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.withoutFacts {
				defer func(conn, all int64) { maxConnFacts, maxFacts = conn, all }(maxConnFacts, maxFacts)
				maxConnFacts, maxFacts = 0, 0
			}
			txnIsolationCheckpoints(t, tc.mod, tc.streamed, tc.withoutFacts)
		})
	}
}

func txnIsolationCheckpoints(t *testing.T, mod func(*Config), streamed, withoutFacts bool) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, mod)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "txiso")
	cl := kgoClient(t, p, kgo.ClientID("txn-writer"), kgo.TransactionalID("txiso-"+topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(topic))
	produceTxnRounds(t, ctx, cl)
	total := len(txnRounds) * txnRecords

	prod := pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
	if len(prod) != total {
		t.Errorf("%d produce checkpoints, want %d (aborted transactions' records included)", len(prod), total)
	}
	for _, pt := range prod {
		if pt.Service != "txn-writer" || pt.ParentHash != 0 || pt.Hash != prod[0].Hash {
			t.Errorf("produce checkpoint %+v", pt)
		}
	}

	for _, tc := range []struct {
		name      string
		isolation kgo.IsolationLevel
		want      int
	}{{"read_committed", kgo.ReadCommitted(), total / 2}, {"read_uncommitted", kgo.ReadUncommitted(), total}} {
		t.Run(tc.name, func(t *testing.T) {
			group := "g-" + tc.name
			opts := []kgo.Opt{kgo.FetchIsolationLevel(tc.isolation), kgo.ClientID("reader-" + tc.name)}
			if withoutFacts {
				opts = append(opts, kgo.DisableFetchSessions()) // a session's offsets are kept anyway
			}
			got := consumeKgo(t, ctx, p, topic, group, tc.want, opts...)
			aborted := 0
			for _, r := range got {
				if abortedKey(r.Key) {
					aborted++
				}
				if _, n := pathwayHeaders(t, r); n != 1 {
					t.Errorf("record %s: %d pathway headers", r.Key, n)
				}
			}
			if len(got) != tc.want || (tc.want == total) != (aborted == total/2) || (tc.want < total && aborted != 0) {
				t.Errorf("consumer got %d records, %d of them aborted; want %d", len(got), aborted, tc.want)
			}
			tags := []string{"direction:in", "group:" + group, "topic:" + topic, "type:kafka"}
			waitFor(t, "a consume checkpoint per record", func() bool { return len(pointsOn(p, tags...)) >= tc.want })
			cons := pointsOn(p, tags...)
			if len(cons) != len(got) {
				t.Errorf("%d consume checkpoints for %d records", len(cons), len(got))
			}
			for _, pt := range cons {
				if pt.ParentHash != prod[0].Hash || pt.Service != "reader-"+tc.name {
					t.Errorf("consume checkpoint %+v: want parent %d, service reader-%s", pt, prod[0].Hash, tc.name)
				}
			}
		})
	}
	waitFor(t, "the consumed records counted", func() bool { return p.Stats().ConsumedRecords >= uint64(total/2+total) })
	if n := p.Stats().ConsumedRecords; n != uint64(total/2+total) {
		t.Errorf("Stats.ConsumedRecords = %d, want %d", n, total/2+total)
	}
	if got := p.Stats().StreamedFetches > 0; got != streamed {
		t.Errorf("fetch answers streamed: %v, want %v", got, streamed)
	}
	if got := p.Stats().UnkeptFacts > 0; got != withoutFacts {
		t.Errorf("requests without their facts: %v, want %v", got, withoutFacts)
	}
	guard.check(t)
}

// TestTxnFetchBytesIntact: the answers to raw Fetch requests of both isolation levels through
// the proxy carry the same record batches (commit and abort markers included) and the same
// aborted transactions list as the broker's own answers to the same requests.
func TestTxnFetchBytesIntact(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "txbytes")
	produceTxnRounds(t, ctx, kgoClient(t, p, kgo.TransactionalID("txbytes-"+topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(topic)))

	through := kgoClient(t, p)
	ref := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySourceIP)}} // the guard allows the proxy's address
	direct, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()[0]), kgo.Dialer(ref.DialContext))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	id := topicID(t, ctx, through, topic)
	for _, isolation := range []int8{0, 1} {
		req := kmsg.NewPtrFetchRequest()
		req.ReplicaID, req.MaxWaitMillis, req.MaxBytes, req.IsolationLevel, req.SessionEpoch = -1, 0, 1<<20, isolation, -1
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic, rt.TopicID = topic, id
		rp := kmsg.NewFetchRequestTopicPartition()
		rp.PartitionMaxBytes = 1 << 20
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		fetch := func(cl *kgo.Client) kmsg.FetchResponseTopicPartition {
			t.Helper()
			resp, err := req.RequestWith(ctx, cl)
			if err != nil || resp.ErrorCode != 0 || len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
				t.Fatalf("isolation %d: fetch: %v %+v", isolation, err, resp)
			}
			return resp.Topics[0].Partitions[0]
		}
		want, got := fetch(direct), fetch(through)
		if !bytes.Equal(got.RecordBatches, want.RecordBatches) || len(want.RecordBatches) == 0 {
			t.Errorf("isolation %d: %d bytes of batches through the proxy differ from the broker's %d", isolation, len(got.RecordBatches), len(want.RecordBatches))
		}
		if fmt.Sprint(got.AbortedTransactions) != fmt.Sprint(want.AbortedTransactions) || got.LastStableOffset != want.LastStableOffset || got.HighWatermark != want.HighWatermark {
			t.Errorf("isolation %d: aborted %+v LSO %d HW %d through the proxy, broker's %+v %d %d", isolation,
				got.AbortedTransactions, got.LastStableOffset, got.HighWatermark, want.AbortedTransactions, want.LastStableOffset, want.HighWatermark)
		}
		// The markers are in what the client got, and kgo reads them as such.
		var markers []string
		fp, _ := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{KeepControlRecords: true, Topic: topic, IsolationLevel: isolationLevel(isolation)}, &got, kgo.DefaultDecompressor(), nil)
		for _, r := range fp.Records {
			if r.Attrs.IsControl() {
				markers = append(markers, fmt.Sprintf("%x", r.Key))
			}
		}
		// Control record keys: version 0, then type 0 for an abort, 1 for a commit.
		if want := []string{"00000000", "00000001", "00000000", "00000001"}; !slices.Equal(markers, want) {
			t.Errorf("isolation %d: markers %v, want %v", isolation, markers, want)
		}
	}
	// read_uncommitted: every record; read_committed: the committed half.
	want := len(txnRounds)*txnRecords + len(txnRounds)*txnRecords/2
	cons := func() int { return len(pointsOn(p, "direction:in", "topic:"+topic, "type:kafka")) }
	waitFor(t, "the fetches' consume checkpoints", func() bool { return cons() >= want })
	if n := cons(); n != want {
		t.Errorf("%d consume checkpoints for the fetches, want %d", n, want)
	}
	guard.check(t)
}

func isolationLevel(l int8) kgo.IsolationLevel {
	if l == 1 {
		return kgo.ReadCommitted()
	}
	return kgo.ReadUncommitted()
}

// TestSaramaTxnIsolation: sarama's transactional producer commits, aborts and commits through
// the proxy; sarama consumers of each isolation level get what they should, and the proxy
// counts a consume checkpoint per message each gets and a produce checkpoint per message sent.
func TestSaramaTxnIsolation(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "sarama-txn")
	cfg := saramaConfig("sarama-txn-writer")
	cfg.Producer.Idempotent = true
	cfg.Producer.Transaction.ID = "sarama-txn-" + topic
	cfg.Net.MaxOpenRequests = 1
	prod, err := sarama.NewSyncProducer([]string{p.Addr().String()}, cfg)
	if err != nil {
		t.Fatalf("sarama transactional producer: %v", err)
	}
	defer prod.Close()
	for i, end := range txnRounds {
		if err := prod.BeginTxn(); err != nil {
			t.Fatal(err)
		}
		for j := range txnRecords {
			m := &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprintf("%d-%d", i, j)), Value: sarama.StringEncoder("v")}
			if _, _, err := prod.SendMessage(m); err != nil {
				t.Fatalf("transaction %d: %v", i, err)
			}
		}
		if end == kgo.TryCommit {
			err = prod.CommitTxn()
		} else {
			err = prod.AbortTxn()
		}
		if err != nil {
			t.Fatalf("ending transaction %d: %v", i, err)
		}
	}
	total := len(txnRounds) * txnRecords
	if n := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")); n != total {
		t.Errorf("%d produce checkpoints, want %d", n, total)
	}
	for _, tc := range []struct {
		name      string
		isolation sarama.IsolationLevel
		want      int
	}{{"read_committed", sarama.ReadCommitted, total / 2}, {"read_uncommitted", sarama.ReadUncommitted, total}} {
		t.Run(tc.name, func(t *testing.T) {
			service := "sarama-reader-" + tc.name
			ccfg := saramaConfig(service)
			ccfg.Consumer.IsolationLevel = tc.isolation
			cons, err := sarama.NewConsumer([]string{p.Addr().String()}, ccfg)
			if err != nil {
				t.Fatal(err)
			}
			defer cons.Close()
			pc, err := cons.ConsumePartition(topic, 0, sarama.OffsetOldest)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			var keys []string
			aborted := 0
			for len(keys) < tc.want {
				select {
				case m := <-pc.Messages():
					keys = append(keys, string(m.Key))
					if abortedKey(m.Key) {
						aborted++
					}
				case <-ctx.Done():
					t.Fatalf("got %d of %d messages: %v", len(keys), tc.want, keys)
				}
			}
			if (tc.want == total) != (aborted == total/2) || (tc.want < total && aborted != 0) {
				t.Errorf("got %v: %d aborted", keys, aborted)
			}
			var cons2 []pathway.Point
			count := func() int {
				cons2 = nil
				for _, pt := range pointsOn(p, "direction:in", "topic:"+topic, "type:kafka") {
					if pt.Service == service {
						cons2 = append(cons2, pt)
					}
				}
				return len(cons2)
			}
			waitFor(t, "a consume checkpoint per message", func() bool { return count() >= tc.want })
			if n := count(); n != tc.want {
				t.Errorf("%d consume checkpoints for %d messages", n, tc.want)
			}
		})
	}
	guard.check(t)
}

// TestKcatTxnIsolation: kcat (librdkafka 2.0.2) produces in transactions through the proxy,
// committed when its input ends, between transactions of a kgo producer that aborts them (kcat
// aborts only when interrupted, and then drops what it has not sent); kcat consumers of each
// isolation level get the committed records, or all of them, and a consume checkpoint each.
func TestKcatTxnIsolation(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "kcat-txn")
	produced := func() int { return len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")) }
	args := []string{"-P", "-b", p.Addr().String(), "-t", topic, "-K:", "-X", "client.id=kcat-txn-writer",
		"-X", "transactional.id=kcat-" + topic, "-X", "allow.auto.create.topics=true"}
	lines := func(round int) string {
		var b strings.Builder
		for j := range txnRecords {
			fmt.Fprintf(&b, "%d-%d:v\n", round, j)
		}
		return b.String()
	}
	aborter := kgoClient(t, p, kgo.ClientID("kgo-txn-aborter"), kgo.TransactionalID("kgo-"+topic), kgo.DefaultProduceTopic(topic))
	for i, end := range txnRounds {
		if end == kgo.TryCommit {
			runKcat(t, ctx, lines(i), args...)
			continue
		}
		if err := aborter.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for j := range txnRecords {
			if err := aborter.ProduceSync(ctx, &kgo.Record{Key: fmt.Appendf(nil, "%d-%d", i, j), Value: []byte("v")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := aborter.EndTransaction(ctx, kgo.TryAbort); err != nil {
			t.Fatal(err)
		}
	}
	total := len(txnRounds) * txnRecords
	if n := produced(); n != total {
		t.Errorf("%d produce checkpoints, want %d", n, total)
	}
	for _, tc := range []struct{ isolation string }{{"read_committed"}, {"read_uncommitted"}} {
		t.Run(tc.isolation, func(t *testing.T) {
			service := "kcat-reader-" + strings.ReplaceAll(tc.isolation, "_", "-")
			out := runKcat(t, ctx, "", "-C", "-b", p.Addr().String(), "-t", topic, "-e", "-o", "beginning", "-f", "%k\n",
				"-X", "client.id="+service, "-X", "isolation.level="+tc.isolation)
			keys := strings.Fields(out)
			aborted := 0
			for _, k := range keys {
				if abortedKey([]byte(k)) {
					aborted++
				}
			}
			want, wantAborted := total/2, 0
			if tc.isolation == "read_uncommitted" {
				want, wantAborted = total, total/2
			}
			if len(keys) != want || aborted != wantAborted {
				t.Errorf("kcat got %d records (%v), %d aborted; want %d, %d aborted", len(keys), keys, aborted, want, wantAborted)
			}
			count := func() int {
				n := 0
				for _, pt := range pointsOn(p, "direction:in", "topic:"+topic, "type:kafka") {
					if pt.Service == service {
						n++
					}
				}
				return n
			}
			waitFor(t, "a consume checkpoint per record", func() bool { return count() >= len(keys) })
			if n := count(); n != len(keys) {
				t.Errorf("%d consume checkpoints for %d records", n, len(keys))
			}
		})
	}
	guard.check(t)
}

// TestGroupTransactSessionAbort: kgo's consume-transform-produce session aborts its first
// transaction, then reads the same input again and commits. The input offsets give a
// kafka_commit only for the committed transaction; the session's consumer gets every input
// record twice and so has two consume checkpoints each; the output holds the aborted copies
// (produce checkpoints, as at a tracer's send) and a read_committed reader gets only the
// committed ones.
func TestGroupTransactSessionAbort(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	in, out := uniqueTopic(t, "etlin"), uniqueTopic(t, "etlout")
	const n = 8
	produceKgo(t, ctx, kgoClient(t, p), in, testRecords(n, time.UnixMilli(1700000730000)))
	sess, err := kgo.NewGroupTransactSession(kgo.SeedBrokers(p.Addr().String()), kgo.AllowAutoTopicCreation(),
		kgo.TransactionalID("etl-"+in), kgo.ConsumerGroup("etl-group"), kgo.ConsumeTopics(in), kgo.ClientID("etl-app"),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	transform := func(end kgo.TransactionEndTry) {
		t.Helper()
		var recs []*kgo.Record
		for len(recs) < n {
			fs := sess.PollFetches(ctx)
			if ctx.Err() != nil {
				t.Fatalf("session got %d of %d records", len(recs), n)
			}
			recs = append(recs, fs.Records()...)
		}
		if err := sess.Begin(); err != nil {
			t.Fatal(err)
		}
		outs := make([]*kgo.Record, len(recs))
		for i, r := range recs {
			outs[i] = &kgo.Record{Topic: out, Key: r.Key, Value: r.Value}
		}
		// Stored before the end: an abort drops records kgo still buffers.
		if err := sess.ProduceSync(ctx, outs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		committed, err := sess.End(ctx, end)
		if err != nil || committed != (end == kgo.TryCommit) {
			t.Fatalf("End(%v): committed=%v %v", end, committed, err)
		}
	}
	transform(kgo.TryAbort)
	if got := groupCommits(p, "etl-group"); len(got) != 0 {
		t.Errorf("kafka_commit after an aborted transaction: %+v", got)
	}
	transform(kgo.TryCommit)
	if got := groupCommits(p, "etl-group"); len(got) != 1 || got[0].Topic != in || got[0].Value != n {
		t.Errorf("kafka_commit after the committed transaction: %+v, want offset %d of %s", got, n, in)
	}
	consumed := func() int { return len(pointsOn(p, "direction:in", "group:etl-group", "topic:"+in, "type:kafka")) }
	waitFor(t, "the session's consume checkpoints", func() bool { return consumed() >= 2*n })
	if got := consumed(); got != 2*n {
		t.Errorf("%d consume checkpoints for the session's 2x%d records", got, n)
	}
	if got := len(pointsOn(p, "direction:out", "topic:"+out, "type:kafka")); got != 2*n {
		t.Errorf("%d produce checkpoints on the output, want %d (aborted copies included)", got, 2*n)
	}
	got := consumeKgo(t, ctx, p, out, "etl-reader", n, kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ClientID("etl-reader"))
	if len(got) != n || got[0].Offset < n {
		t.Errorf("read_committed reader got %d records from offset %d, want the %d committed ones after the aborted %d", len(got), got[0].Offset, n, n)
	}
	guard.check(t)
}

// TestInterleavedTxnsReadCommitted: two transactional producers write to one partition with
// their transactions interleaved, each aborting one and committing the other. A read_committed
// consumer gets the committed records only, and the proxy, which follows each producer's
// aborted range as the consumer does, checkpoints exactly those.
func TestInterleavedTxnsReadCommitted(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "txmix")
	a := kgoClient(t, p, kgo.TransactionalID("a-"+topic), kgo.DefaultProduceTopic(topic))
	b := kgoClient(t, p, kgo.TransactionalID("b-"+topic), kgo.DefaultProduceTopic(topic))
	begin := func(cl *kgo.Client) {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
	}
	send := func(cl *kgo.Client, key string) {
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(key), Value: []byte("v")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	end := func(cl *kgo.Client, e kgo.TransactionEndTry) {
		if err := cl.EndTransaction(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	begin(a)
	begin(b)
	send(a, "a0-aborted")
	send(b, "b0")
	send(a, "a1-aborted")
	send(b, "b1")
	end(a, kgo.TryAbort)
	send(b, "b2")
	begin(a)
	send(a, "a2")
	end(b, kgo.TryCommit)
	begin(b)
	send(b, "b3-aborted")
	send(a, "a3")
	send(b, "b4-aborted")
	end(a, kgo.TryCommit)
	end(b, kgo.TryAbort)
	// Something after the last abort, so the reader knows it has read everything.
	begin(a)
	send(a, "a4")
	end(a, kgo.TryCommit)

	got := consumeKgo(t, ctx, p, topic, "g-txmix", 6, kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ClientID("mix-reader"))
	var keys []string
	for _, r := range got {
		keys = append(keys, string(r.Key))
	}
	if want := []string{"b0", "b1", "b2", "a2", "a3", "a4"}; !slices.Equal(keys, want) {
		t.Errorf("read_committed consumer got %v, want %v", keys, want)
	}
	tags := []string{"direction:in", "group:g-txmix", "topic:" + topic, "type:kafka"}
	waitFor(t, "a consume checkpoint per record", func() bool { return len(pointsOn(p, tags...)) >= len(got) })
	if n := len(pointsOn(p, tags...)); n != len(got) {
		t.Errorf("%d consume checkpoints for %d records", n, len(got))
	}
	guard.check(t)
}
