package kafka

// Transactional produce injection and FindCoordinator v4+ (KIP-699) address rewriting.

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestTransactionalProduceGetsTheHeader: a transactional kgo producer sends fresh records (no
// headers) through the proxy and commits; a read_committed consumer reads them through the
// proxy. Every record is transactional and carries exactly one decodable pathway header whose
// hash is the produce checkpoint's; there is one produce checkpoint per record, and the proxy
// counts every record as injected, none skipped. (Aborted transactions producing no consume
// checkpoints is TestAbortedThenCommitted's.)
func TestTransactionalProduceGetsTheHeader(t *testing.T) {
	c, guard := startCluster(t)
	for _, codec := range []struct {
		name string
		c    kgo.CompressionCodec
		attr uint8 // the batches' codec attribute
	}{{"none", kgo.NoCompression(), 0}, {"lz4", kgo.Lz4Compression(), 3}} {
		t.Run(codec.name, func(t *testing.T) {
			p := startProxy(t, c, nil) // its own proxy: its stats count only this producer
			ctx := testCtx(t)
			topic := uniqueTopic(t, "txinject-"+codec.name)
			const n = 12
			cl := kgoClient(t, p, kgo.ClientID("txn-writer-1"), kgo.TransactionalID("txinject-"+topic),
				kgo.ProducerBatchCompression(codec.c), kgo.DefaultProduceTopic(topic))
			if err := cl.BeginTransaction(); err != nil {
				t.Fatal(err)
			}
			recs := make([]*kgo.Record, n)
			for i := range recs {
				// Values that compress well, so kgo keeps the lz4 batch it makes.
				value := fmt.Sprintf("transactional-value-%d-%s", i, strings.Repeat("abcd", 64))
				recs[i] = &kgo.Record{Key: []byte(fmt.Sprintf("tk%d", i)), Value: []byte(value)}
			}
			if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
				t.Fatalf("transactional produce: %v", err)
			}
			if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
				t.Fatalf("commit: %v", err)
			}

			reader := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
				kgo.FetchIsolationLevel(kgo.ReadCommitted()))
			var got []*kgo.Record
			for len(got) < n {
				fs := reader.PollFetches(ctx)
				if err := ctx.Err(); err != nil {
					t.Fatalf("read %d of %d committed records from %s: %v", len(got), n, topic, err)
				}
				fs.EachError(func(tp string, part int32, err error) { t.Logf("fetch error %s/%d: %v", tp, part, err) })
				got = append(got, fs.Records()...)
			}
			if len(got) != n {
				t.Fatalf("read %d records, produced %d", len(got), n)
			}

			// The proxy hands a produce checkpoint over before it forwards the broker's answer.
			prod := pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
			if len(prod) != n {
				t.Errorf("%d produce points, want %d (one per record)", len(prod), n)
			}
			hashes := map[uint64]bool{}
			for _, pt := range prod {
				hashes[pt.Hash] = true
			}
			seen := map[string]bool{}
			for _, r := range got {
				seen[string(r.Key)] = true
				if !r.Attrs.IsTransactional() {
					t.Errorf("record %s (partition %d offset %d) is not in a transactional batch", r.Key, r.Partition, r.Offset)
				}
				if ct := r.Attrs.CompressionType(); ct != codec.attr {
					t.Errorf("record %s: batch codec %d, want %d", r.Key, ct, codec.attr)
				}
				var ctxs []pathway.Context
				for _, h := range r.Headers {
					if h.Key != pathway.HeaderKey {
						t.Errorf("record %s: unexpected header %q", r.Key, h.Key)
						continue
					}
					pc, err := pathway.DecodeBase64(h.Value)
					if err != nil {
						t.Errorf("record %s: pathway header %q does not decode: %v", r.Key, h.Value, err)
						continue
					}
					ctxs = append(ctxs, pc)
				}
				if len(r.Headers) != 1 || len(ctxs) != 1 {
					t.Errorf("record %s: %d headers, %d decodable pathway contexts; want exactly 1", r.Key, len(r.Headers), len(ctxs))
					continue
				}
				if !hashes[ctxs[0].Hash] {
					t.Errorf("record %s: header hash %d is no produce point's (%v)", r.Key, ctxs[0].Hash, hashes)
				}
			}
			for _, r := range recs {
				if !seen[string(r.Key)] {
					t.Errorf("record %s not read", r.Key)
				}
			}
			if st := p.Stats(); st.InjectedRecords != n || st.ExistingContext != 0 || st.SkippedBatches != 0 {
				t.Errorf("stats: injected %d, existing %d, skipped batches %d; want %d, 0, 0",
					st.InjectedRecords, st.ExistingContext, st.SkippedBatches, n)
			}
		})
	}
	guard.check(t)
}

// TestFindCoordinatorV4RewritesEveryCoordinator: from v4 (KIP-699) FindCoordinator answers a
// Coordinators list, one per key, instead of the top-level host/port. kgo only uses NodeID from
// it, so this test sends raw requests at every version from 4 to the highest the proxy offers,
// for group and transaction coordinators, with two keys whose coordinators are different nodes:
// each coordinator's address must be the proxy's listener for that node, never a broker's.
func TestFindCoordinatorV4RewritesEveryCoordinator(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	brokers := c.ListenAddrs()

	// The highest version the proxy lets a client use (it caps brokers' ApiVersions).
	av, err := kmsg.NewPtrApiVersionsRequest().RequestWith(ctx, kgoClient(t, p))
	if err != nil || av.ErrorCode != 0 {
		t.Fatalf("ApiVersions: %v %+v", err, av)
	}
	maxV := int16(-1)
	for _, k := range av.ApiKeys {
		if k.ApiKey == keyFindCoordinator {
			maxV = k.MaxVersion
		}
	}
	if maxV < 4 {
		t.Fatalf("FindCoordinator up to v%d offered: the test needs v4+", maxV)
	}

	conn := rawClient(t, p) // no Metadata first: FindCoordinator alone must open the node listeners
	corr := int32(0)
	find := func(version int16, typ int8, keys ...string) *kmsg.FindCoordinatorResponse {
		t.Helper()
		req := kmsg.NewPtrFindCoordinatorRequest()
		req.Version, req.CoordinatorType, req.CoordinatorKeys = version, typ, keys
		corr++
		if _, err := conn.Write(requestFrame(req, corr)); err != nil {
			t.Fatal(err)
		}
		resp := req.ResponseKind().(*kmsg.FindCoordinatorResponse)
		resp.Version = version
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		readResponse(t, conn, resp)
		conn.SetReadDeadline(time.Time{})
		return resp
	}
	check := func(what string, resp *kmsg.FindCoordinatorResponse, keys []string) {
		t.Helper()
		if len(resp.Coordinators) != len(keys) {
			t.Fatalf("%s: %d coordinators for %d keys", what, len(resp.Coordinators), len(keys))
		}
		for i, co := range resp.Coordinators {
			addr := net.JoinHostPort(co.Host, strconv.Itoa(int(co.Port)))
			if co.ErrorCode != 0 || co.Key != keys[i] {
				t.Errorf("%s: coordinator %d: key %q error %d, want key %q error 0", what, i, co.Key, co.ErrorCode, keys[i])
				continue
			}
			if slices.Contains(brokers, addr) {
				t.Errorf("%s: key %q: coordinator node %d advertised at the real broker %s", what, co.Key, co.NodeID, addr)
			}
			want, ok := txncoordNodeAddr(p, co.NodeID)
			if !ok {
				t.Errorf("%s: key %q: coordinator node %d at %s, and the proxy has no listener for that node", what, co.Key, co.NodeID, addr)
				continue
			}
			if addr != want || !p.isProxyAddr(addr) {
				t.Errorf("%s: key %q: coordinator node %d at %s, want the proxy's node listener %s", what, co.Key, co.NodeID, addr, want)
			}
		}
	}

	// Pick two keys whose coordinators are different nodes (kfake hashes the key), checking the
	// probe's answer too.
	var probe []string
	for i := range 8 {
		probe = append(probe, fmt.Sprintf("fc-v4-key-%d", i))
	}
	presp := find(4, 0, probe...)
	check("probe v4", presp, probe)
	var keys []string
	var nodes []int32
	for _, co := range presp.Coordinators {
		if co.ErrorCode == 0 && !slices.Contains(nodes, co.NodeID) && len(keys) < 2 {
			keys, nodes = append(keys, co.Key), append(nodes, co.NodeID)
		}
	}
	if len(keys) != 2 {
		t.Fatalf("the %d probe keys all have coordinator node(s) %v: need two nodes", len(probe), nodes)
	}
	t.Logf("FindCoordinator v4..v%d, keys %v on nodes %v", maxV, keys, nodes)

	for v := int16(4); v <= maxV; v++ {
		for _, typ := range []struct {
			name string
			t    int8
		}{{"group", 0}, {"transaction", 1}} {
			what := fmt.Sprintf("FindCoordinator v%d %s", v, typ.name)
			resp := find(v, typ.t, keys...)
			check(what, resp, keys)
			if len(resp.Coordinators) == 2 && resp.Coordinators[0].NodeID == resp.Coordinators[1].NodeID {
				t.Errorf("%s: both keys on node %d; the probe put them on %v", what, resp.Coordinators[0].NodeID, nodes)
			}
		}
	}
	guard.check(t)
}

// txncoordNodeAddr is the address p advertises for broker node id, if it has a listener for it.
func txncoordNodeAddr(p *testProxy, id int32) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.nodes[id]
	if n == nil {
		return "", false
	}
	return net.JoinHostPort(n.advHost, strconv.Itoa(int(n.advPort))), true
}
