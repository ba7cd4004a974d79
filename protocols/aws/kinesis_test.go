package aws

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
	"github.com/fxamacker/cbor/v2"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// freePorts returns n distinct loopback ports that were free a moment ago: each is held until all
// are chosen, so that two calls in a row cannot return one port twice (kinesis-local, given the
// same port for plain and TLS, failed with EADDRINUSE).
func freePorts(t testing.TB, n int) []int {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// kinesisPeer starts kinesis-local (kinesis-mock compiled to JS) on loopback behind a verifier.
func kinesisPeer(t testing.TB) *verifier {
	dir := ensureNode(t)
	ports := freePorts(t, 2)
	plain, tlsPort := ports[0], ports[1]
	env := []string{
		"KINESIS_MOCK_CERT_PATH=" + filepath.Join(dir, "node_modules", "kinesis-local", "server.json"),
		fmt.Sprintf("KINESIS_MOCK_PLAIN_PORT=%d", plain), fmt.Sprintf("KINESIS_MOCK_TLS_PORT=%d", tlsPort),
		"LOG_LEVEL=WARN", "CREATE_STREAM_DURATION=10ms",
	}
	startNodeWait(t, env, plain, "-r", "./loopback-only.js", "node_modules/kinesis-local/main.js")
	return startVerifier(t, fmt.Sprintf("http://127.0.0.1:%d", plain))
}

// kinesisSetup starts kinesis-local behind the verifier and the proxy in front, and creates an
// active one-shard stream through the proxy.
func kinesisSetup(t *testing.T, stream string, mod func(*Config)) (*testProxy, *verifier, *kinesis.Client, context.Context) {
	t.Helper()
	up := kinesisPeer(t)
	tp := startProxy(t, func(c *Config) {
		c.Upstream = up.URL()
		if mod != nil {
			mod(c)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	kc := kinesisClient(tp.url)
	if _, err := kc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: &stream, ShardCount: awssdk.Int32(1)}); err != nil {
		t.Fatalf("CreateStream through proxy: %v", err)
	}
	w := kinesis.NewStreamExistsWaiter(kc, func(o *kinesis.StreamExistsWaiterOptions) {
		o.MinDelay = 100 * time.Millisecond
		o.MaxDelay = time.Second
	})
	if err := w.Wait(ctx, &kinesis.DescribeStreamInput{StreamName: &stream}, time.Minute); err != nil {
		t.Fatalf("stream never became active: %v", err)
	}
	return tp, up, kc, ctx
}

func kinesisClient(endpoint string) *kinesis.Client {
	return kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: "clicks"})
}

func TestKinesisThroughProxy(t *testing.T) {
	for _, inject := range []bool{false, true} {
		t.Run(fmt.Sprintf("inject=%v", inject), func(t *testing.T) { testKinesis(t, inject) })
	}
}

func testKinesis(t *testing.T, inject bool) {
	tp, up, kc, ctx := kinesisSetup(t, "clickstream", func(c *Config) { c.KinesisInjectData = inject })
	stream := awssdk.String("clickstream")
	putAt := time.Now()
	jsonData := []byte(`{"user":"u1","n":1} ` + "\n")
	binData := []byte{0xf3, 0x89, 0x9a, 0xc2, 0x00}
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: jsonData, PartitionKey: awssdk.String("u1")}); err != nil {
		t.Fatalf("PutRecord: %v", err)
	}
	pr, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: stream, Records: []ktypes.PutRecordsRequestEntry{
		{Data: []byte(`{}`), PartitionKey: awssdk.String("u2")},
		{Data: binData, PartitionKey: awssdk.String("u3")},
	}})
	if err != nil || awssdk.ToInt32(pr.FailedRecordCount) != 0 {
		t.Fatalf("PutRecords: %v %+v", err, pr)
	}
	// The records wait in the stream a while, so their time there is not lost in rounding.
	const wait = 300 * time.Millisecond
	time.Sleep(wait)
	recs := readShard(t, ctx, kc, stream, 3)
	inStream := time.Since(putAt) // at most
	// proxied consumers see exactly the producer's bytes
	want := [][]byte{jsonData, []byte(`{}`), binData}
	for i, r := range recs {
		if !bytes.Equal(r.Data, want[i]) {
			t.Errorf("record %d data %q, want %q", i, r.Data, want[i])
		}
	}
	prod := tp.rec.withTags("direction:out", "topic:clickstream", "type:kinesis")
	cons := tp.rec.withTags("direction:in", "topic:clickstream", "type:kinesis")
	if len(prod) != 3 || len(cons) != 3 {
		t.Fatalf("%d produce and %d consume points, want 3 and 3 (GetRecords must know the stream from its shard iterator)", len(prod), len(cons))
	}
	chained := 0
	for i, c := range cons {
		if c.ParentHash == prod[i].Hash {
			chained++
		}
	}
	if inject && chained != 2 {
		t.Errorf("with injection %d consume points chained, want 2 (the two JSON objects)", chained)
	}
	if !inject && chained != 0 {
		t.Errorf("without injection %d consume points chained, want 0", chained)
	}
	if !inject {
		// no context: time in the stream (from ApproximateArrivalTimestamp) stands in for both latencies
		for _, c := range cons {
			if c.PathwayLatency != c.EdgeLatency {
				t.Errorf("consume without context: pathway latency %d != edge latency %d", c.PathwayLatency, c.EdgeLatency)
			}
			// Arrival timestamps have millisecond resolution.
			if l := time.Duration(c.EdgeLatency); l < wait-10*time.Millisecond || l > inStream+10*time.Millisecond {
				t.Errorf("consume latency %v from ApproximateArrivalTimestamp, want between %v and %v", l, wait, inStream)
			}
		}
	}
	// the two JSON-object records carry _datadog upstream only when injection is on
	if n, wantN := tp.Stats().Injected, map[bool]uint64{false: 0, true: 2}[inject]; n != wantN {
		t.Errorf("injected %d records, want %d", n, wantN)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// cborEnc is a small CBOR encoder for the test's requests (the proxy itself only decodes).
func cborEnc(dst []byte, v any, indefinite bool) []byte {
	head := func(major byte, n uint64) {
		switch {
		case n < 24:
			dst = append(dst, major<<5|byte(n))
		case n < 1<<8:
			dst = append(dst, major<<5|24, byte(n))
		case n < 1<<16:
			dst = append(dst, major<<5|25, byte(n>>8), byte(n))
		default:
			dst = append(dst, major<<5|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		}
	}
	switch x := v.(type) {
	case string:
		head(3, uint64(len(x)))
		dst = append(dst, x...)
	case []byte:
		head(2, uint64(len(x)))
		dst = append(dst, x...)
	case int:
		head(0, uint64(x))
	case []any:
		if indefinite {
			dst = append(dst, 0x9f)
		} else {
			head(4, uint64(len(x)))
		}
		for _, e := range x {
			dst = cborEnc(dst, e, indefinite)
		}
		if indefinite {
			dst = append(dst, 0xff)
		}
	case map[string]any:
		if indefinite {
			dst = append(dst, 0xbf)
		} else {
			head(5, uint64(len(x)))
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sortStrings(keys)
		for _, k := range keys {
			dst = cborEnc(dst, k, indefinite)
			dst = cborEnc(dst, x[k], indefinite)
		}
		if indefinite {
			dst = append(dst, 0xff)
		}
	}
	return dst
}

// cborCall sends a signed Kinesis CBOR request through the proxy, as Java SDKs do by default.
// cborRequest is a Kinesis CBOR request as a Java SDK sends it, signed with testKey and secret.
func cborRequest(t *testing.T, url, op string, body []byte, secret string) *http.Request {
	t.Helper()
	r, _ := http.NewRequest(http.MethodPost, url+"/", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/x-amz-cbor-1.1")
	r.Header.Set("X-Amz-Target", "Kinesis_20131202."+op)
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, r, sha256Hex(body), "kinesis", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	return r
}

func cborCall(t *testing.T, url, op string, req map[string]any, indefinite bool) map[string]any {
	t.Helper()
	st, _, resp := do(t, cborRequest(t, url, op, cborEnc(nil, req, indefinite), testSecret))
	if st != 200 {
		t.Fatalf("CBOR %s: %d %q", op, st, resp)
	}
	v, err := cborDecode([]byte(resp))
	if err != nil {
		t.Fatalf("CBOR %s response: %v", op, err)
	}
	m, _ := v.(map[string]any)
	return m
}

// TestKinesisCBOR: Java SDKs' default CBOR protocol passes through unchanged and still yields
// produce and consume checkpoints, the stream followed through CBOR shard iterators.
func TestKinesisCBOR(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "javastream", nil)
	stream := awssdk.String("javastream")
	cborCall(t, tp.url, "PutRecord", map[string]any{"StreamName": "javastream", "Data": []byte(`{"n":1}`), "PartitionKey": "p1"}, false)
	pr := cborCall(t, tp.url, "PutRecords", map[string]any{"StreamName": "javastream", "Records": []any{
		map[string]any{"Data": []byte{1, 2, 3}, "PartitionKey": "p2"}, map[string]any{"Data": []byte("x"), "PartitionKey": "p3"},
	}}, true)
	if n, _ := cborNumber(pr["FailedRecordCount"]); n != 0 {
		t.Fatalf("PutRecords: %v", pr)
	}
	desc, err := kc.DescribeStream(ctx, &kinesis.DescribeStreamInput{StreamName: stream})
	if err != nil {
		t.Fatal(err)
	}
	it := cborCall(t, tp.url, "GetShardIterator", map[string]any{"StreamName": "javastream",
		"ShardId": *desc.StreamDescription.Shards[0].ShardId, "ShardIteratorType": "TRIM_HORIZON"}, false)
	var recs []any
	next, _ := it["ShardIterator"].(string)
	for len(recs) < 3 && ctx.Err() == nil {
		gr := cborCall(t, tp.url, "GetRecords", map[string]any{"ShardIterator": next}, true)
		rs, _ := gr["Records"].([]any)
		recs = append(recs, rs...)
		next, _ = gr["NextShardIterator"].(string)
	}
	if len(recs) != 3 {
		t.Fatalf("got %d records, want 3", len(recs))
	}
	if d := cborBytes(recs[0].(map[string]any)["Data"]); string(d) != `{"n":1}` {
		t.Errorf("first record data %q (record %#v)", d, recs[0])
	}
	prod := tp.rec.withTags("direction:out", "topic:javastream", "type:kinesis")
	cons := tp.rec.withTags("direction:in", "topic:javastream", "type:kinesis")
	if len(prod) != 3 || len(cons) != 3 {
		t.Fatalf("%d produce and %d consume points over CBOR, want 3 and 3", len(prod), len(cons))
	}
	for _, c := range cons {
		// the arrival time (epoch milliseconds here) stands in for both latencies; a unit mix-up
		// would make them years long or zero
		if c.PathwayLatency != c.EdgeLatency || c.PathwayLatency > int64(time.Hour) {
			t.Errorf("CBOR consume latencies %d / %d", c.PathwayLatency, c.EdgeLatency)
		}
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestKinesisPutRecordsRequestLimit: injection stops where a PutRecords request would pass
// Kinesis's 5 MiB for data and partition keys; the records past it go without `_datadog`, and
// the request as sent upstream stays within the limit.
func TestKinesisPutRecordsRequestLimit(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "bulk", func(c *Config) { c.KinesisInjectData = true })
	const n = 10
	per := (MaxKinesisRequestBytes - 100) / n // 100 bytes to spare: about one record's _datadog
	var entries []ktypes.PutRecordsRequestEntry
	for i := 0; i < n; i++ {
		pk := fmt.Sprintf("k%d", i)
		data := []byte(`{"p":"` + strings.Repeat("x", per-len(pk)-len(`{"p":""}`)) + `"}`)
		entries = append(entries, ktypes.PutRecordsRequestEntry{Data: data, PartitionKey: awssdk.String(pk)})
	}
	pr, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: awssdk.String("bulk"), Records: entries})
	if err != nil || awssdk.ToInt32(pr.FailedRecordCount) != 0 {
		t.Fatalf("PutRecords: %v", err)
	}
	up.mu.Lock()
	bodies := slices.Clone(up.bodies)
	up.mu.Unlock()
	found := false
	for _, b := range bodies {
		var req struct {
			Records []struct {
				Data         []byte
				PartitionKey string
			}
		}
		if json.Unmarshal([]byte(b), &req) != nil || len(req.Records) != n {
			continue
		}
		found = true
		total := 0
		for _, r := range req.Records {
			total += len(r.Data) + len(r.PartitionKey)
		}
		if total > MaxKinesisRequestBytes {
			t.Errorf("PutRecords sent upstream with %d bytes of data and keys, over %d", total, MaxKinesisRequestBytes)
		}
	}
	if !found {
		t.Fatal("no PutRecords request reached upstream")
	}
	if st := tp.Stats(); st.Injected >= n {
		t.Errorf("injected %d of %d records", st.Injected, n)
	}
}

// TestKinesisKeepsTheProducersDatadog: GetRecords through an injecting proxy removes only a
// `_datadog` of the shape the proxy adds; one a traced producer wrote, with its trace ids, reaches
// the consumer as it was written.
func TestKinesisKeepsTheProducersDatadog(t *testing.T) {
	_, up, kc, ctx := kinesisSetup(t, "traced", func(c *Config) { c.KinesisInjectData = true })
	stream := awssdk.String("traced")
	traced := []byte(`{"a":1,"_datadog":{"x-datadog-trace-id":"1","dd-pathway-ctx-base64":"AAAAAAAAAAA="}}`)
	direct := kinesisClient(up.URL())
	if _, err := direct.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: traced, PartitionKey: awssdk.String("t")}); err != nil {
		t.Fatalf("PutRecord upstream: %v", err)
	}
	plain := []byte(`{"b":2}`)
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: plain, PartitionKey: awssdk.String("p")}); err != nil {
		t.Fatalf("PutRecord through the proxy: %v", err)
	}
	recs := readShard(t, ctx, kc, stream, 2)
	for i, want := range [][]byte{traced, plain} {
		if !bytes.Equal(recs[i].Data, want) {
			t.Errorf("record %d: %s, want %s", i, recs[i].Data, want)
		}
	}
}

// TestKinesisMergeKeepsTheTracersBytes: a traced producer's `_datadog` without a pathway context
// (trace ids only) gains the proxy's context, and the rest of the record's bytes stay as the
// producer wrote them (no re-encoding: member order and `<>&` kept).
func TestKinesisMergeKeepsTheTracersBytes(t *testing.T) {
	_, up, kc, ctx := kinesisSetup(t, "merged", func(c *Config) { c.KinesisInjectData = true })
	stream := awssdk.String("merged")
	head := `{"z":"<&>","_datadog":{"x-datadog-trace-id":"7","a":"<b>"`
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: []byte(head + `},"b":1}`), PartitionKey: awssdk.String("m")}); err != nil {
		t.Fatalf("PutRecord through the proxy: %v", err)
	}
	got := string(readShard(t, ctx, kinesisClient(up.URL()), stream, 1)[0].Data)
	added, ok := strings.CutPrefix(got, head+`,"`+pathway.HeaderKey+`":"`)
	if !ok || !strings.HasSuffix(added, `"},"b":1}`) {
		t.Fatalf("stored %s, want %s,\"%s\":\"<context>\"},\"b\":1}", got, head, pathway.HeaderKey)
	}
	if c := contextFromCarrier([]byte(`{"` + pathway.HeaderKey + `":"` + strings.TrimSuffix(added, `"},"b":1}`) + `"}`)); c.Hash == 0 {
		t.Errorf("stored context %q does not decode", added)
	}
}

// readShard reads the first n records of stream's one shard from its start, through kc.
func readShard(t *testing.T, ctx context.Context, kc *kinesis.Client, stream *string, n int) []ktypes.Record {
	t.Helper()
	desc, err := kc.DescribeStream(ctx, &kinesis.DescribeStreamInput{StreamName: stream})
	if err != nil {
		t.Fatal(err)
	}
	it, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: stream, ShardId: desc.StreamDescription.Shards[0].ShardId,
		ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon})
	if err != nil {
		t.Fatal(err)
	}
	var recs []ktypes.Record
	for next := it.ShardIterator; len(recs) < n && ctx.Err() == nil; {
		gr, err := kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: next})
		if err != nil {
			t.Fatalf("GetRecords: %v", err)
		}
		recs, next = append(recs, gr.Records...), gr.NextShardIterator
	}
	if len(recs) != n {
		t.Fatalf("got %d records, want %d", len(recs), n)
	}
	return recs
}

// TestKinesisCBORConsumerSeesTheProducersBytes: a JSON producer's record, given `_datadog` by an
// injecting proxy, reaches a CBOR (Java SDK) consumer through the proxy as the producer wrote it,
// with the consume checkpoint chained to the produce one.
func TestKinesisCBORConsumerSeesTheProducersBytes(t *testing.T) {
	tp, _, kc, ctx := kinesisSetup(t, "mixed", func(c *Config) { c.KinesisInjectData = true })
	data := []byte(`{"n":1,"s":"` + strings.Repeat("x", 300) + `"}`) // a head of more than one byte
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: awssdk.String("mixed"), Data: data, PartitionKey: awssdk.String("p")}); err != nil {
		t.Fatal(err)
	}
	desc, err := kc.DescribeStream(ctx, &kinesis.DescribeStreamInput{StreamName: awssdk.String("mixed")})
	if err != nil {
		t.Fatal(err)
	}
	it := cborCall(t, tp.url, "GetShardIterator", map[string]any{"StreamName": "mixed",
		"ShardId": *desc.StreamDescription.Shards[0].ShardId, "ShardIteratorType": "TRIM_HORIZON"}, false)
	var recs []any
	for next, _ := it["ShardIterator"].(string); len(recs) < 1 && ctx.Err() == nil; {
		gr := cborCall(t, tp.url, "GetRecords", map[string]any{"ShardIterator": next}, false)
		rs, _ := gr["Records"].([]any)
		recs = append(recs, rs...)
		next, _ = gr["NextShardIterator"].(string)
	}
	if len(recs) != 1 {
		t.Fatalf("got %d records", len(recs))
	}
	if got := cborBytes(recs[0].(map[string]any)["Data"]); !bytes.Equal(got, data) {
		t.Errorf("CBOR consumer got %q, want the producer's %q", got, data)
	}
	prod := tp.rec.withTags("direction:out", "topic:mixed", "type:kinesis")
	cons := tp.rec.withTags("direction:in", "topic:mixed", "type:kinesis")
	if len(prod) != 1 || len(cons) != 1 || cons[0].ParentHash != prod[0].Hash {
		t.Errorf("produce %v, consume %v: want one each, chained", prod, cons)
	}
}

// TestCBORBlobEdit: the edit replaces exactly the record's own Data item, found by the decoder,
// its head resized: not the same bytes earlier in the document (a record whose Data holds the
// next record's encoded Data), whether the item came as a byte string, base64 text
// (kinesis-mock), tagged, or in a longer form than the shortest.
func TestCBORBlobEdit(t *testing.T) {
	old := []byte(strings.Repeat("d", 30))
	inside := append([]byte("envelope:"), cborEnc(nil, old, false)...)
	long := append([]byte{0x5a, 0, 0, 0, 30}, old...)                 // a 4-byte length where 1 would do
	tagged := append([]byte{0xd8, 0x16}, cborEnc(nil, old, false)...) // tag 22
	for name, dataItem := range map[string][]byte{
		"byte string": cborEnc(nil, old, false),
		"base64 text": cborEnc(nil, base64.StdEncoding.EncodeToString(old), false),
		"long head":   long,
		"tagged":      tagged,
	} {
		// The records' members by hand, so that the Data items are written as given.
		doc := []byte{0xa1}
		doc = cborEnc(doc, "Records", false)
		doc = append(doc, 0x82)
		doc = cborEnc(doc, map[string]any{"Data": inside, "PartitionKey": "a"}, false)
		doc = append(doc, 0xa2)
		doc = cborEnc(doc, "Data", false)
		doc = append(doc, dataItem...)
		doc = cborEnc(doc, "PartitionKey", false)
		doc = cborEnc(doc, "b", false)
		v, err := cborDecode(doc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		recs := v.(map[string]any)["Records"].([]any)
		spans, ok := cborRecordData(doc)
		if !ok || len(spans) != 2 {
			t.Fatalf("%s: Data spans %v, %v", name, spans, ok)
		}
		repl := []byte("short")
		ed, ok := cborBlobEdit(doc, spans[1], recs[1].(map[string]any)["Data"], repl)
		if !ok {
			t.Fatalf("%s: not edited", name)
		}
		out, err := cborDecode(applyEdits(nil, doc, []edit{ed}))
		if err != nil {
			t.Fatalf("%s: edited document: %v", name, err)
		}
		got := out.(map[string]any)["Records"].([]any)
		if d := cborBytes(got[1].(map[string]any)["Data"]); !bytes.Equal(d, repl) {
			t.Errorf("%s: second record Data %q, want %q", name, d, repl)
		}
		if d := cborBytes(got[0].(map[string]any)["Data"]); !bytes.Equal(d, inside) {
			t.Errorf("%s: first record Data %q, want it unchanged", name, d)
		}
	}
}

// TestKinesisCBORErrors: the proxy's own refusals of a CBOR request are CBOR, as the stream
// server's errors are, so a Java SDK reads their message and not only their code. An independent
// decoder (fxamacker/cbor) reads both.
func TestKinesisCBORErrors(t *testing.T) {
	tp, _, _, _ := kinesisSetup(t, "cborerr", nil)
	send := func(secret, op string, req map[string]any) (int, http.Header, map[string]any) {
		t.Helper()
		st, h, resp := do(t, cborRequest(t, tp.url, op, cborEnc(nil, req, false), secret))
		var m map[string]any
		if err := cbor.Unmarshal([]byte(resp), &m); err != nil {
			t.Fatalf("%s answer (%d, %s) is not CBOR: %v: %q", op, st, h.Get("Content-Type"), err, resp)
		}
		return st, h, m
	}
	// From the stream server, through the proxy.
	st, h, m := send(testSecret, "DescribeStream", map[string]any{"StreamName": "no-such-stream"})
	if st != 400 || m["__type"] == nil {
		t.Fatalf("the server's error: %d %v", st, m)
	}
	serverType := h.Get("Content-Type")
	// From the proxy: a wrong secret, never forwarded.
	st, h, m = send("wrong-secret", "ListStreams", map[string]any{})
	if st != 400 && st != 403 {
		t.Errorf("refused signature: status %d", st)
	}
	if got := h.Get("Content-Type"); got != serverType {
		t.Errorf("proxy error Content-Type %q, the server's %q", got, serverType)
	}
	if m["__type"] != "InvalidSignatureException" || h.Get("X-Amzn-Errortype") != "InvalidSignatureException" {
		t.Errorf("proxy error type %v / %q, want InvalidSignatureException", m["__type"], h.Get("X-Amzn-Errortype"))
	}
	if msg, _ := m["message"].(string); msg == "" {
		t.Errorf("proxy error has no message: %v", m)
	}
}

// TestKinesisSubscribeToShardRefused: aws-sdk-go-v2's SubscribeToShard (enhanced fan-out) through
// the proxy to kinesis-local. Its answer is an event stream that stays open for minutes, which
// the front cannot relay: the client gets, at once, an error that says so and what to use, and
// /errors has it on the stream's consume edge. Forwarded, it waited with no event until the
// upstream timeout (2 minutes), got a 502 and retried the same.
func TestKinesisSubscribeToShardRefused(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "fanout", nil)
	d, err := kc.DescribeStream(ctx, &kinesis.DescribeStreamInput{StreamName: awssdk.String("fanout")})
	if err != nil {
		t.Fatalf("DescribeStream: %v", err)
	}
	rc, err := kc.RegisterStreamConsumer(ctx, &kinesis.RegisterStreamConsumerInput{StreamARN: d.StreamDescription.StreamARN,
		ConsumerName: awssdk.String("fan")})
	if err != nil {
		t.Fatalf("RegisterStreamConsumer through the proxy: %v", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second) // a bound for the old behaviour; not a timing assertion
	defer cancel()
	out, err := kc.SubscribeToShard(sctx, &kinesis.SubscribeToShardInput{ConsumerARN: rc.Consumer.ConsumerARN,
		ShardId: d.StreamDescription.Shards[0].ShardId, StartingPosition: &ktypes.StartingPosition{Type: ktypes.ShardIteratorTypeTrimHorizon}})
	if err == nil {
		out.GetStream().Close()
		t.Fatal("SubscribeToShard through the proxy succeeded; want the proxy's refusal")
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "SubscribeToShardNotSupportedException" || !strings.Contains(ae.ErrorMessage(), "GetRecords") {
		t.Fatalf("SubscribeToShard: %v; want SubscribeToShardNotSupportedException naming GetRecords", err)
	}
	evs := tp.ev.named("not_relayed")
	want := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKinesis, Topic: "fanout"}
	if len(evs) != 1 || evs[0].Category != errtrack.ProxySkip || evs[0].Operation != "SubscribeToShard" || evs[0].Edge != want {
		t.Errorf("events %+v; want one proxy_skip not_relayed SubscribeToShard on %v", evs, want)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestKinesisConsumerFrontWithoutInjectionStrips: the producer's sidecar injects (kinesis_inject_data
// on), the consumer's does not (the default), both in front of one kinesis-local. The consumer
// reading through its own proxy gets the bytes the producer sent, not the producer's proxy's
// `_datadog`, and its consume checkpoint is the produce's child with the produce's size.
func TestKinesisConsumerFrontWithoutInjectionStrips(t *testing.T) {
	up := kinesisPeer(t)
	prodProxy := startProxy(t, func(c *Config) { c.Upstream = up.URL(); c.KinesisInjectData = true })
	consProxy := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pc, cc := kinesisClient(prodProxy.url), kinesisClient(consProxy.url)
	stream := awssdk.String("split")
	if _, err := pc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: stream, ShardCount: awssdk.Int32(1)}); err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	w := kinesis.NewStreamExistsWaiter(pc, func(o *kinesis.StreamExistsWaiterOptions) {
		o.MinDelay, o.MaxDelay = 100*time.Millisecond, time.Second
	})
	if err := w.Wait(ctx, &kinesis.DescribeStreamInput{StreamName: stream}, time.Minute); err != nil {
		t.Fatalf("stream never became active: %v", err)
	}
	sent := [][]byte{[]byte(`{"order":1}`), []byte(`{"order":2,"items":[1,2]}` + "\n")}
	for i, d := range sent {
		if _, err := pc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: d, PartitionKey: awssdk.String(fmt.Sprint("k", i))}); err != nil {
			t.Fatalf("PutRecord: %v", err)
		}
	}
	if n := prodProxy.Stats().Injected; n != 2 {
		t.Fatalf("the producer's proxy injected %d records, want 2", n)
	}
	recs := readShard(t, ctx, cc, stream, len(sent))
	for i, r := range recs {
		if !bytes.Equal(r.Data, sent[i]) {
			t.Errorf("record %d read through the consumer's proxy: %q, want the producer's %q", i, r.Data, sent[i])
		}
	}
	prod := prodProxy.rec.withTags("direction:out", "topic:split", "type:kinesis")
	cons := consProxy.rec.withTags("direction:in", "topic:split", "type:kinesis")
	if len(prod) != len(sent) || len(cons) != len(sent) {
		t.Fatalf("%d produce and %d consume points, want %d each", len(prod), len(cons), len(sent))
	}
	for i := range cons {
		if cons[i].ParentHash != prod[i].Hash || cons[i].PayloadSize != prod[i].PayloadSize {
			t.Errorf("consume %d: parent %x size %d; want the produce's hash %x and size %d",
				i, cons[i].ParentHash, cons[i].PayloadSize, prod[i].Hash, prod[i].PayloadSize)
		}
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}
