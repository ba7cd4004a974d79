package pathway

import (
	"bytes"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

func TestFNV1Vectors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want uint64
	}{
		{"V0 empty", "", 14695981039346656037},
		{"V1 svcenvch", "svcenvch", 9400396531696724427},
	}
	for _, tt := range tests {
		if got := fnvString(fnvOffset64, tt.in); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
		std := fnv.New64()
		std.Write([]byte(tt.in))
		if std.Sum64() != tt.want {
			t.Errorf("%s: hash/fnv disagrees with the vector", tt.name)
		}
	}
	// V1 is Go's BaseHash("svc","env",nil,"ch"): a node hash whose only "tag" is unprefixed text.
	if got := HashNode("svc", "envch", nil); got != 9400396531696724427 {
		t.Errorf("node(svc, envch) = %d", got)
	}
}

func TestNodeAndPathwayVectors(t *testing.T) {
	tests := []struct {
		name              string
		service, env      string
		edge              Edge
		parent            uint64
		wantNode, wantPwy uint64
	}{
		{"V2", "service-1", "env", Edge{Direction: In, Type: TypeKafka}, 0, 3103651165100329123, 454992504525010063},
		{"V3", "service-1", "env", Edge{Direction: Out, Type: TypeKafka}, 454992504525010063, 8206648360875004342, 17423962853687936471},
		{"V4a", "orders-api", "prod", Edge{Direction: Out, Topic: "orders", Type: TypeKafka}, 0, 11311276242764501985, 10152129340354823776},
		{"V4b", "billing", "prod", Edge{Direction: In, Group: "billing-cg", Topic: "orders", Type: TypeKafka}, 10152129340354823776, 3498785493712988000, 13485989577947138709},
	}
	for _, tt := range tests {
		c := NewCheckpointer(tt.env, 0)
		if got := c.NodeHash(tt.service, tt.edge); got != tt.wantNode {
			t.Errorf("%s node: got %d, want %d", tt.name, got, tt.wantNode)
		}
		if got := HashPathway(tt.wantNode, tt.parent); got != tt.wantPwy {
			t.Errorf("%s pathway: got %d, want %d", tt.name, got, tt.wantPwy)
		}
	}
}

func TestUnhashableTagsAreReportedNotHashed(t *testing.T) {
	c := NewCheckpointer("prod", 0)
	a := Edge{Direction: Out, Exchange: "ex", Type: TypeRabbitMQ}
	b := a
	b.HasRoutingKey = RoutingKeyTrue
	if c.NodeHash("s", a) != c.NodeHash("s", b) {
		t.Error("has_routing_key changed the node hash")
	}
	want := []string{"direction:out", "exchange:ex", "has_routing_key:true", "type:rabbitmq"}
	if got := b.Tags(); !equal(got, want) {
		t.Errorf("tags %v, want %v", got, want)
	}
}

func TestEdgeTagsSorted(t *testing.T) {
	e := Edge{Direction: In, Type: TypeKafka, Topic: "t", Group: "g", Exchange: "x", HasRoutingKey: RoutingKeyFalse, ClusterID: "c"}
	tags := e.Tags()
	for i := 1; i < len(tags); i++ {
		if tags[i-1] >= tags[i] {
			t.Fatalf("tags not sorted: %v", tags)
		}
	}
	if len(tags) != 7 {
		t.Fatalf("want 7 tags, got %v", tags)
	}
}

func TestBase64Examples(t *testing.T) {
	tests := []struct {
		b64, hex   string
		hash       uint64
		start, edg int64
	}{
		{"10nVzXmeKoDApcX0zV/ApcX0zV8=", "d749d5cd799e2a80c0a5c5f4cd5fc0a5c5f4cd5f", 9235368231858162135, 1642544540000, 1642544540000},
		{"YIarxdib44zApcX0zV+orcX0zV8=", "6086abc5d89be38cc0a5c5f4cd5fa8adc5f4cd5f", 10152129340354823776, 1642544540000, 1642544540500},
		{"leP46s4u2yD00vLN0Gf00vLN0Gc=", "95e3f8eace2edb20f4d2f2cdd067f4d2f2cdd067", 2367537495353648021, 1780345623738, 1780345623738},
	}
	for _, tt := range tests {
		c, err := DecodeBase64String(tt.b64)
		if err != nil {
			t.Fatalf("%s: %v", tt.b64, err)
		}
		if c.Hash != tt.hash || c.PathwayStart.UnixMilli() != tt.start || c.EdgeStart.UnixMilli() != tt.edg {
			t.Errorf("%s decoded to %d %d %d", tt.b64, c.Hash, c.PathwayStart.UnixMilli(), c.EdgeStart.UnixMilli())
		}
		if got := c.String(); got != tt.b64 {
			t.Errorf("re-encode: got %s, want %s", got, tt.b64)
		}
		if got := hex.EncodeToString(c.AppendBinary(nil)); got != tt.hex {
			t.Errorf("binary: got %s, want %s", got, tt.hex)
		}
		if len(tt.b64) != Base64Len {
			t.Errorf("base64 length %d", len(tt.b64))
		}
	}
}

func TestVarintVector(t *testing.T) {
	// The Python tracer's test vector: the zig-zag varint of 1679672748.
	got := appendVarint(nil, 1679672748)
	if !bytes.Equal(got, []byte{216, 150, 238, 193, 12}) {
		t.Errorf("varint: %v", got)
	}
	if got := hex.EncodeToString(appendVarint(nil, 1642544540000)); got != "c0a5c5f4cd5f" {
		t.Errorf("zig-zag varint of 1642544540000: %s", got)
	}
}

func TestDecodeGarbage(t *testing.T) {
	for _, in := range []string{"", "!!!!", "AAAA", "AAAAAAAAAAA=", "/////////////w==", "AAAAAAAAAACA"} {
		if _, err := DecodeBase64String(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: want ErrMalformed, got %v", in, err)
		}
	}
}

func TestRoundTripProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10000; i++ {
		c := Context{
			Hash:         r.Uint64(),
			PathwayStart: time.UnixMilli(r.Int64N(1<<50) - 1<<49),
			EdgeStart:    time.UnixMilli(r.Int64N(1<<50) - 1<<49),
		}
		got, err := DecodeBase64(c.AppendBase64(nil))
		if err != nil || got != c {
			t.Fatalf("round trip of %+v: %+v, %v", c, got, err)
		}
		got, err = DecodeBinary(c.AppendBinary(nil))
		if err != nil || got != c {
			t.Fatalf("binary round trip of %+v: %+v, %v", c, got, err)
		}
	}
}

func TestCheckpointChain(t *testing.T) {
	c := NewCheckpointer("prod", 0)
	t0 := time.UnixMilli(1642544540000)
	prod, ctx := c.Checkpoint(Context{}, "orders-api", Edge{Direction: Out, Topic: "orders", Type: TypeKafka}, 10, t0)
	if prod.Hash != 10152129340354823776 || prod.ParentHash != 0 || prod.PathwayLatency != 0 || prod.EdgeLatency != 0 {
		t.Fatalf("produce point %+v", prod)
	}
	if ctx.Hash != prod.Hash || !ctx.PathwayStart.Equal(t0) || !ctx.EdgeStart.Equal(t0) {
		t.Fatalf("produce context %+v", ctx)
	}
	t1 := t0.Add(1500 * time.Millisecond)
	cons, ctx2 := c.Checkpoint(ctx, "billing", Edge{Direction: In, Group: "billing-cg", Topic: "orders", Type: TypeKafka}, 10, t1)
	if cons.Hash != 13485989577947138709 || cons.ParentHash != prod.Hash {
		t.Fatalf("consume point %+v", cons)
	}
	if cons.EdgeLatency != int64(1500*time.Millisecond) || cons.PathwayLatency != int64(1500*time.Millisecond) {
		t.Fatalf("latencies %+v", cons)
	}
	if !ctx2.PathwayStart.Equal(t0) || !ctx2.EdgeStart.Equal(t1) {
		t.Fatalf("next context %+v", ctx2)
	}
	// A parent from the future (clock skew): the edge latency clamps to zero; the pathway
	// latency stays negative so that the origin is the pathway start, as the tracers bucket it
	// (the aggregator's sketches take it as zero).
	skewed, _ := c.Checkpoint(Context{Hash: 1, PathwayStart: t1, EdgeStart: t1}, "s", Edge{Direction: In, Type: TypeKafka}, 0, t0)
	if skewed.EdgeLatency != 0 || skewed.OriginTime() != t1.UnixNano() {
		t.Fatalf("skewed parent: %+v, origin %v, want edge latency 0 and origin %v", skewed, skewed.OriginTime(), t1.UnixNano())
	}
}

func TestNodeCacheBounded(t *testing.T) {
	c := NewCheckpointer("e", 4)
	for i := 0; i < 10; i++ {
		c.NodeHash("s", Edge{Topic: string(rune('a' + i))})
	}
	if len(c.nodes) > 4 || c.CacheResets() == 0 {
		t.Fatalf("cache has %d nodes, %d resets", len(c.nodes), c.CacheResets())
	}
}

func TestCachedCheckpointDoesNotAllocate(t *testing.T) {
	c := NewCheckpointer("prod", 0)
	e := Edge{Direction: Out, Topic: "orders", Type: TypeKafka}
	now := time.Now()
	c.Checkpoint(Context{}, "svc", e, 1, now)
	var buf [64]byte
	allocs := testing.AllocsPerRun(1000, func() {
		_, ctx := c.Checkpoint(Context{}, "svc", e, 1, now)
		_ = ctx.AppendBase64(buf[:0])
	})
	if allocs != 0 {
		t.Fatalf("cached checkpoint + encode allocates %.1f times", allocs)
	}
}

func BenchmarkCheckpointCachedEdge(b *testing.B) {
	c := NewCheckpointer("prod", 0)
	e := Edge{Direction: Out, Topic: "orders", Type: TypeKafka}
	parent := Context{Hash: 42, PathwayStart: time.Now(), EdgeStart: time.Now()}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		c.Checkpoint(parent, "svc", e, 100, now)
	}
}

func BenchmarkEncodeBase64(b *testing.B) {
	c := Context{Hash: 42, PathwayStart: time.Now(), EdgeStart: time.Now()}
	var buf [64]byte
	b.ReportAllocs()
	for b.Loop() {
		c.AppendBase64(buf[:0])
	}
}

func BenchmarkDecodeBase64(b *testing.B) {
	v := []byte("YIarxdib44zApcX0zV+orcX0zV8=")
	b.ReportAllocs()
	for b.Loop() {
		DecodeBase64(v)
	}
}

func FuzzDecodeBase64(f *testing.F) {
	f.Add([]byte("YIarxdib44zApcX0zV+orcX0zV8="))
	f.Add([]byte("10nVzXmeKoDApcX0zV/ApcX0zV8="))
	f.Add([]byte("////////////////////////////"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := DecodeBase64(in)
		if err != nil {
			return
		}
		again, err := DecodeBase64(c.AppendBase64(nil))
		if err != nil || again != c {
			t.Fatalf("decoded %+v does not round trip: %+v %v", c, again, err)
		}
	})
}

func FuzzDecodeBinary(f *testing.F) {
	f.Add([]byte{0xd7, 0x49, 0xd5, 0xcd, 0x79, 0x9e, 0x2a, 0x80, 0xc0, 0xa5, 0xc5, 0xf4, 0xcd, 0x5f, 0xc0, 0xa5, 0xc5, 0xf4, 0xcd, 0x5f})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := DecodeBinary(in)
		if err != nil {
			return
		}
		again, err := DecodeBinary(c.AppendBinary(nil))
		if err != nil || again != c {
			t.Fatalf("decoded %+v does not round trip", c)
		}
	})
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestContextBeforeTheEpoch: a context whose times lie before 1970 (corrupt or forged; the
// varint is signed) keeps its hash as the parent but not its timing: latencies are 0 and the
// pathway starts now, so no origin bucket starts before the epoch.
func TestContextBeforeTheEpoch(t *testing.T) {
	c := NewCheckpointer("prod", 0)
	now := time.Unix(1642544545, 0)
	parent := Context{Hash: 42, PathwayStart: time.UnixMilli(-5000), EdgeStart: time.UnixMilli(-5000)}
	p, ctx := c.Checkpoint(parent, "svc", Edge{Direction: In, Topic: "t", Type: TypeKafka}, 1, now)
	if p.ParentHash != 42 || p.PathwayLatency != 0 || p.EdgeLatency != 0 || p.OriginTime() != now.UnixNano() {
		t.Errorf("point %+v: want parent 42, no latency, origin now", p)
	}
	if !ctx.PathwayStart.Equal(now) {
		t.Errorf("the context passed on starts at %v, want now", ctx.PathwayStart)
	}
}

// TestCheckpointNode: a checkpoint on a kept node is the one Checkpoint computes, with or
// without a parent, after the cache that gave the node was emptied too.
func TestCheckpointNode(t *testing.T) {
	c := NewCheckpointer("prod", 1)
	e := Edge{Direction: Out, Exchange: "orders", HasRoutingKey: RoutingKeyTrue, Type: TypeRabbitMQ}
	n := c.Node("svc", e)
	c.Node("other", e) // the cache, of 1, forgets svc's node
	now := time.UnixMilli(1700000001000)
	for _, parent := range []Context{{}, {Hash: 42, PathwayStart: now.Add(-time.Second), EdgeStart: now.Add(-time.Millisecond)}} {
		wantPt, wantCtx := c.Checkpoint(parent, "svc", e, 100, now)
		pt, ctx := CheckpointNode(n, parent, "svc", 100, now)
		if !reflect.DeepEqual(pt, wantPt) || ctx != wantCtx {
			t.Errorf("parent %v: CheckpointNode gave %+v %v, Checkpoint %+v %v", parent, pt, ctx, wantPt, wantCtx)
		}
	}
}
