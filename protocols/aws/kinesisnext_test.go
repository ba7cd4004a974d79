package aws

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// kinesisNextWire is one way a consumer speaks Kinesis through the proxy, for
// TestKinesisNextShardIteratorKeepsTheStream.
type kinesisNextWire struct {
	put  func(data []byte, pk string)
	iter func(shard string) string                               // a TRIM_HORIZON iterator
	get  func(it string, limit int) (recs [][]byte, next string) // limit 0: none
}

// kinesisJSONWire is aws-sdk-go-v2's kinesis client (JSON 1.1), as the other tests build it.
func kinesisJSONWire(t *testing.T, ctx context.Context, kc *kinesis.Client, _ *testProxy, stream string) kinesisNextWire {
	return kinesisNextWire{
		put: func(data []byte, pk string) {
			t.Helper()
			if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: &stream, Data: data, PartitionKey: &pk}); err != nil {
				t.Fatalf("PutRecord: %v", err)
			}
		},
		iter: func(shard string) string {
			t.Helper()
			out, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: &stream, ShardId: &shard,
				ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon})
			if err != nil {
				t.Fatalf("GetShardIterator: %v", err)
			}
			return awssdk.ToString(out.ShardIterator)
		},
		get: func(it string, limit int) ([][]byte, string) {
			t.Helper()
			in := &kinesis.GetRecordsInput{ShardIterator: &it}
			if limit > 0 {
				in.Limit = awssdk.Int32(int32(limit))
			}
			out, err := kc.GetRecords(ctx, in)
			if err != nil {
				t.Fatalf("GetRecords: %v", err)
			}
			var recs [][]byte
			for _, r := range out.Records {
				recs = append(recs, r.Data)
			}
			return recs, awssdk.ToString(out.NextShardIterator)
		},
	}
}

// kinesisCBORWire is Java SDKs' default CBOR protocol, sent as TestKinesisCBOR sends it.
func kinesisCBORWire(t *testing.T, _ context.Context, _ *kinesis.Client, tp *testProxy, stream string) kinesisNextWire {
	return kinesisNextWire{
		put: func(data []byte, pk string) {
			t.Helper()
			cborCall(t, tp.url, "PutRecord", map[string]any{"StreamName": stream, "Data": data, "PartitionKey": pk}, false)
		},
		iter: func(shard string) string {
			t.Helper()
			it, _ := cborCall(t, tp.url, "GetShardIterator", map[string]any{"StreamName": stream,
				"ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}, false)["ShardIterator"].(string)
			return it
		},
		get: func(it string, limit int) ([][]byte, string) {
			t.Helper()
			req := map[string]any{"ShardIterator": it}
			if limit > 0 {
				req["Limit"] = limit
			}
			gr := cborCall(t, tp.url, "GetRecords", req, true)
			rs, _ := gr["Records"].([]any)
			var recs [][]byte
			for _, r := range rs {
				m, _ := r.(map[string]any)
				recs = append(recs, cborBytes(m["Data"]))
			}
			next, _ := gr["NextShardIterator"].(string)
			return recs, next
		},
	}
}

// TestKinesisNextShardIteratorKeepsTheStream: a GetRecords names no stream, only a shard
// iterator; the proxy knows the stream of the iterators it handed out in GetShardIterator answers
// and, for every later poll, of the NextShardIterator of each GetRecords answer. A consumer that
// reads a record, then polls again with the NextShardIterator it was given and reads more (one
// record put in between, or records read one at a time with Limit 1), gets a consume checkpoint on
// the stream for each record, and the proxy reports none of them as of an unknown stream.
func TestKinesisNextShardIteratorKeepsTheStream(t *testing.T) {
	wires := []struct {
		name string
		open func(*testing.T, context.Context, *kinesis.Client, *testProxy, string) kinesisNextWire
	}{
		{"json", kinesisJSONWire},
		{"cbor", kinesisCBORWire},
	}
	scenarios := []struct {
		name   string
		before int // records put before GetShardIterator, read first
		after  int // records put once those were read, read from the NextShardIterator
		limit  int // GetRecords Limit (0: none)
	}{
		{name: "record-put-after-the-first-answer", before: 1, after: 1},
		{name: "limit-1", before: 3, limit: 1},
	}
	for _, w := range wires {
		for _, sc := range scenarios {
			t.Run(w.name+"/"+sc.name, func(t *testing.T) {
				stream := "next-" + w.name + "-" + sc.name
				tp, up, kc, ctx := kinesisSetup(t, stream, nil)
				wire := w.open(t, ctx, kc, tp, stream)
				desc, err := kc.DescribeStream(ctx, &kinesis.DescribeStreamInput{StreamName: &stream})
				if err != nil {
					t.Fatal(err)
				}
				// Records of different sizes, so each consume point's payload size names its record.
				var want [][]byte
				put := func(n int) {
					for range n {
						i := len(want) + 1
						data := fmt.Appendf(nil, `{"n":%d,"pad":%q}`, i, strings.Repeat("x", i))
						wire.put(data, "k")
						want = append(want, data)
					}
				}
				put(sc.before)
				first := wire.iter(*desc.StreamDescription.Shards[0].ShardId)
				if first == "" {
					t.Fatal("GetShardIterator gave no iterator")
				}
				var got [][]byte
				fromNext := 0 // records answered to an iterator that came from a NextShardIterator
				polls := 0
				next := first
				// read polls, each with the NextShardIterator of the answer before, until n more
				// records came back; the deadline only ends a broken test.
				read := func(n int) {
					t.Helper()
					for goal := len(got) + n; len(got) < goal; {
						if ctx.Err() != nil {
							t.Fatalf("read %d of %d records before the deadline", len(got), goal)
						}
						recs, nx := wire.get(next, sc.limit)
						polls++
						if next != first {
							fromNext += len(recs)
						}
						got = append(got, recs...)
						if nx == "" {
							t.Fatalf("GetRecords answer (%d records) without a NextShardIterator", len(recs))
						}
						next = nx
						if len(recs) == 0 {
							time.Sleep(50 * time.Millisecond)
						}
					}
				}
				read(sc.before)
				put(sc.after)
				read(sc.after)
				if len(got) != len(want) {
					t.Fatalf("read %d records, want %d", len(got), len(want))
				}
				for i := range want {
					if !bytes.Equal(got[i], want[i]) {
						t.Errorf("record %d: %s, want %s", i, got[i], want[i])
					}
				}
				t.Logf("%d GetRecords, %d of the %d records answered to a NextShardIterator", polls, fromNext, len(got))
				if fromNext == 0 {
					t.Fatal("no record came back to a NextShardIterator: the test did not exercise what it is for")
				}
				cons := tp.rec.withTags("direction:in", "topic:"+stream, "type:kinesis")
				if len(cons) != len(got) {
					t.Errorf("%d consume points on %s for %d records read (%d of them through a NextShardIterator): "+
						"the proxy lost the stream of a GetRecords made with a NextShardIterator", len(cons), stream, len(got), fromNext)
				}
				for i, c := range cons[:min(len(cons), len(want))] {
					if wantSize := int64(len(want[i]) + len("k")); c.PayloadSize != wantSize {
						t.Errorf("consume point %d: payload size %d, want %d (record %s)", i, c.PayloadSize, wantSize, want[i])
					}
				}
				if in := tp.rec.withTags("direction:in"); len(in) != len(cons) {
					t.Errorf("%d consume points in all, %d of them on %s", len(in), len(cons), stream)
				}
				if evs := tp.ev.named("unknown_stream"); len(evs) > 0 {
					msgs := make([]string, len(evs))
					for i, e := range evs {
						msgs[i] = fmt.Sprintf("%s, %d record(s): %s", e.Operation, e.Messages, e.Message)
					}
					t.Errorf("the proxy reported unknown_stream for a NextShardIterator it handed out:\n%s", strings.Join(msgs, "\n"))
				}
				if st := tp.Stats(); st.Skipped != 0 || st.Consumed != uint64(len(got)) {
					t.Errorf("stats: %d skipped, %d consumed; want 0 and %d", st.Skipped, st.Consumed, len(got))
				}
				if bad := up.failures(); len(bad) > 0 {
					t.Fatalf("upstream signature failures: %v", bad)
				}
			})
		}
	}
}
