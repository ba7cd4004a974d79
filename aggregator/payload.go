package aggregator

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/protobuf/proto"
)

// The msgpack schema of /v0.1/pipeline_stats (dsm-protocol.md 5.2). Field names are the Go tracer's,
// exactly; []byte fields encode as msgpack bin.
type statsPayload struct {
	Env           string        `msgpack:"Env"`
	Service       string        `msgpack:"Service"`
	Stats         []statsBucket `msgpack:"Stats"`
	TracerVersion string        `msgpack:"TracerVersion"`
	Lang          string        `msgpack:"Lang"`
	Version       string        `msgpack:"Version"`
	ProcessTags   []string      `msgpack:"ProcessTags"`
	ProductMask   uint64        `msgpack:"ProductMask"`
}

type statsBucket struct {
	Start                    uint64       `msgpack:"Start"`
	Duration                 uint64       `msgpack:"Duration"`
	Stats                    []statsPoint `msgpack:"Stats"`
	Backlogs                 []backlog    `msgpack:"Backlogs"`
	Transactions             []byte       `msgpack:"Transactions"`
	TransactionCheckpointIDs []byte       `msgpack:"TransactionCheckpointIds"`
}

type statsPoint struct {
	EdgeTags       []string `msgpack:"EdgeTags"`
	Hash           uint64   `msgpack:"Hash"`
	ParentHash     uint64   `msgpack:"ParentHash"`
	PathwayLatency []byte   `msgpack:"PathwayLatency"`
	EdgeLatency    []byte   `msgpack:"EdgeLatency"`
	PayloadSize    []byte   `msgpack:"PayloadSize"`
	TimestampType  string   `msgpack:"TimestampType"`
}

type backlog struct {
	Tags  []string    `msgpack:"Tags"`
	Value signedInt64 `msgpack:"Value"`
}

// signedInt64 is written as msgp's WriteInt64 writes the Go tracer's Backlog.Value: in the
// shortest signed type (200 is int16 d1 00 c8), where vmihailenco's compact form would use an
// unsigned one (cc c8). Readers take either; the tracer's bytes are the reference.
type signedInt64 int64

func (n signedInt64) EncodeMsgpack(enc *msgpack.Encoder) error {
	switch v := int64(n); {
	case v < 0, v <= math.MaxInt8:
		return enc.EncodeInt(v) // fixints and negatives are msgp's forms already
	case v <= math.MaxInt16:
		return enc.EncodeInt16(int16(v))
	case v <= math.MaxInt32:
		return enc.EncodeInt32(int32(v))
	default:
		return enc.EncodeInt64(v)
	}
}

// productDSM is the ProductMask bit for Data Streams. The proxy runs no APM tracer, so it does not
// claim the APM bit (1) the Go tracer also sets.
const productDSM = 2

// payloadMeta is what every payload carries besides the buckets.
type payloadMeta struct {
	Env, Version, TracerVersion string
}

// buildPayloads groups buckets by service: one payload per service, as the tracers send.
func buildPayloads(meta payloadMeta, buckets []Bucket) []statsPayload {
	idx := map[string]int{}
	var out []statsPayload
	get := func(svc string) *statsPayload {
		i, ok := idx[svc]
		if !ok {
			i = len(out)
			idx[svc] = i
			out = append(out, statsPayload{Env: meta.Env, Service: svc, TracerVersion: meta.TracerVersion, Lang: "go",
				Version: meta.Version, ProcessTags: []string{}, ProductMask: productDSM})
		}
		return &out[i]
	}
	// Within one bucket, each service gets its own statsBucket.
	for _, b := range buckets {
		per := map[string]*statsBucket{}
		order := []string{}
		sb := func(svc string) *statsBucket {
			s := per[svc]
			if s == nil {
				s = &statsBucket{Start: uint64(b.Start.UnixNano()), Duration: uint64(b.Duration), Stats: []statsPoint{},
					Backlogs: []backlog{}, Transactions: []byte{}, TransactionCheckpointIDs: []byte{}}
				per[svc] = s
				order = append(order, svc)
			}
			return s
		}
		for _, g := range b.Groups {
			s := sb(g.Service)
			tags := g.EdgeTags
			if tags == nil {
				tags = []string{} // an empty array, as the Go tracer's msgp writes, not nil
			}
			s.Stats = append(s.Stats, statsPoint{
				EdgeTags: tags, Hash: g.Hash, ParentHash: g.ParentHash,
				PathwayLatency: encodeSketch(g.PathwayLatency), EdgeLatency: encodeSketch(g.EdgeLatency),
				PayloadSize: encodeSketch(g.PayloadSize), TimestampType: string(b.TimestampType),
			})
		}
		for _, bl := range b.Backlogs {
			s := sb(bl.Service)
			s.Backlogs = append(s.Backlogs, backlog{Tags: bl.Tags, Value: signedInt64(bl.Value)})
		}
		for _, svc := range order {
			p := get(svc)
			p.Stats = append(p.Stats, *per[svc])
		}
	}
	return out
}

// encodeSketch is the protobuf DDSketch message exactly as the Go tracer writes it:
// proto.Marshal(sketch.ToProto()). (sketches-go's streaming EncodeProto orders fields and packs
// bins differently: decodable, but not the tracer's bytes.)
func encodeSketch(s *ddsketch.DDSketch) []byte {
	b, err := proto.Marshal(s.ToProto())
	if err != nil {
		return nil // a sketch of finite values always marshals
	}
	return b
}

// payloadEncoder encodes payloads: msgpack then gzip (BestSpeed, as the Go tracer). Integers take
// their shortest form, as the Go tracer's msgp writes them (vmihailenco's default is full width):
// unsigned for the tracer's uint64 fields, signed for Backlog.Value (signedInt64). A flush sends a
// payload per service, so its one gzip writer is reset for each: a new one costs about 1.1 MB of
// allocations, 5.7 GB per flush for 5,000 services. Not safe for concurrent use.
type payloadEncoder struct {
	mp bytes.Buffer
	zw *gzip.Writer
}

// maxKeptPayloadBuffer is the largest msgpack buffer the encoder keeps from one flush to the next:
// a service's payload is usually far smaller, and one that a huge flush grew (16 MB in a soak with
// 60,000 pathway contexts) would otherwise be held for good.
const maxKeptPayloadBuffer = 1 << 20

// release runs once a flush's payloads are encoded. It lets the msgpack buffer go if it grew past
// maxKeptPayloadBuffer (the next flush grows a new one if it needs to), and points the gzip writer
// away from the last body, which it would otherwise hold until the next flush.
func (e *payloadEncoder) release() {
	if e.mp.Cap() > maxKeptPayloadBuffer {
		e.mp = bytes.Buffer{}
	}
	if e.zw != nil {
		e.zw.Reset(io.Discard)
	}
}

// encode returns p's body, in a buffer of its own.
func (e *payloadEncoder) encode(p *statsPayload) ([]byte, error) {
	e.mp.Reset()
	enc := msgpack.NewEncoder(&e.mp)
	enc.UseCompactInts(true)
	if err := enc.Encode(p); err != nil {
		return nil, fmt.Errorf("msgpack: %w", err)
	}
	var buf bytes.Buffer
	if e.zw == nil {
		zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		if err != nil {
			return nil, err
		}
		e.zw = zw
	} else {
		e.zw.Reset(&buf)
	}
	if _, err := e.zw.Write(e.mp.Bytes()); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if err := e.zw.Close(); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	// A body may wait for a down Agent, counted by its length (MaxPendingBytes): the buffer gzip
	// grew by doubling could hold up to twice that.
	if body := buf.Bytes(); cap(body) > len(body)+len(body)/8 {
		return bytes.Clone(body), nil
	}
	return buf.Bytes(), nil
}
