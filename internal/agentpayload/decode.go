// Package agentpayload decodes what a DSM client posts to the Agent's /v0.1/pipeline_stats (gzip,
// msgpack, protobuf sketches), strictly: it is the receiving side of the fake Agent in tests and of
// the demo's stand-in Agent, written independently of the aggregator's encoder so that a wrong field
// name or type there is caught here.
package agentpayload

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/pb/sketchpb"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/protobuf/proto"
)

// Payload is one decoded POST to /v0.1/pipeline_stats.
type Payload struct {
	Env           string      `msgpack:"Env"`
	Service       string      `msgpack:"Service"`
	Stats         []Bucket    `msgpack:"Stats"`
	TracerVersion string      `msgpack:"TracerVersion"`
	Lang          string      `msgpack:"Lang"`
	Version       string      `msgpack:"Version"`
	ProcessTags   []string    `msgpack:"ProcessTags"`
	ProductMask   uint64      `msgpack:"ProductMask"`
	Header        http.Header `msgpack:"-"`
	// Raw is the body inflated: the msgpack as sent, for byte comparisons with a tracer's.
	Raw []byte `msgpack:"-"`
}

// Bucket is one StatsBucket.
type Bucket struct {
	Start                    uint64     `msgpack:"Start"`
	Duration                 uint64     `msgpack:"Duration"`
	Stats                    []RawPoint `msgpack:"Stats"`
	Backlogs                 []Backlog  `msgpack:"Backlogs"`
	Transactions             []byte     `msgpack:"Transactions"`
	TransactionCheckpointIDs []byte     `msgpack:"TransactionCheckpointIds"`
}

// RawPoint is a StatsPoint as sent, sketches still encoded.
type RawPoint struct {
	EdgeTags       []string `msgpack:"EdgeTags"`
	Hash           uint64   `msgpack:"Hash"`
	ParentHash     uint64   `msgpack:"ParentHash"`
	PathwayLatency []byte   `msgpack:"PathwayLatency"`
	EdgeLatency    []byte   `msgpack:"EdgeLatency"`
	PayloadSize    []byte   `msgpack:"PayloadSize"`
	TimestampType  string   `msgpack:"TimestampType"`
}

// Backlog is one Backlog entry.
type Backlog struct {
	Tags  []string `msgpack:"Tags"`
	Value int64    `msgpack:"Value"`
}

// Point is a StatsPoint flattened with its payload and bucket, sketches decoded.
type Point struct {
	Service, Env     string
	Start            time.Time
	Duration         time.Duration
	TimestampType    string
	EdgeTags         []string
	Hash, ParentHash uint64
	PathwayLatency   *ddsketch.DDSketch // seconds
	EdgeLatency      *ddsketch.DDSketch // seconds
	PayloadSize      *ddsketch.DDSketch // bytes
}

// Count is how many checkpoints the point aggregates.
func (p Point) Count() float64 { return p.EdgeLatency.GetCount() }

// BacklogEntry is a Backlog with the service and bucket that carried it.
type BacklogEntry struct {
	Service string
	Start   time.Time
	Tags    []string
	Value   int64
	At      time.Time // when Value was seen, where known (dsmproxy's own view); zero from a payload
}

// Seen is when the entry's value was seen: At, else the start of its bucket.
func (e BacklogEntry) Seen() time.Time {
	if !e.At.IsZero() {
		return e.At
	}
	return e.Start
}

// Required keys per map, checked on the raw msgpack before typed decoding.
var (
	payloadKeys = []string{"Env", "Service", "Stats", "TracerVersion", "Lang", "Version"}
	bucketKeys  = []string{"Start", "Duration", "Stats", "Backlogs"}
	pointKeys   = []string{"EdgeTags", "Hash", "ParentHash", "PathwayLatency", "EdgeLatency", "PayloadSize", "TimestampType"}
	binKeys     = []string{"PathwayLatency", "EdgeLatency", "PayloadSize"}
)

// MaxPayload bounds what DecodePayload inflates, so a hostile body cannot exhaust memory.
const MaxPayload = 64 << 20

// DecodePayload gunzips and strictly decodes one /v0.1/pipeline_stats body: every required key
// present, no unknown key, byte fields as msgpack bin, sketches valid protobuf DDSketches.
func DecodePayload(body []byte) (*Payload, []Point, error) {
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("gzip: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, MaxPayload+1))
	if err != nil {
		return nil, nil, fmt.Errorf("gzip: %w", err)
	}
	if len(raw) > MaxPayload {
		return nil, nil, fmt.Errorf("payload over %d bytes inflated", MaxPayload)
	}
	if err := checkLengths(raw); err != nil {
		return nil, nil, err
	}
	var generic map[string]any
	if err := msgpack.Unmarshal(raw, &generic); err != nil {
		return nil, nil, fmt.Errorf("msgpack: %w", err)
	}
	if err := checkShape(generic); err != nil {
		return nil, nil, err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields(true)
	var p Payload
	if err := dec.Decode(&p); err != nil {
		return nil, nil, fmt.Errorf("msgpack: %w", err)
	}
	p.Raw = raw
	var pts []Point
	for _, b := range p.Stats {
		for _, rp := range b.Stats {
			pt := Point{Service: p.Service, Env: p.Env, Start: time.Unix(0, int64(b.Start)), Duration: time.Duration(b.Duration),
				TimestampType: rp.TimestampType, EdgeTags: rp.EdgeTags, Hash: rp.Hash, ParentHash: rp.ParentHash}
			for _, s := range []struct {
				name string
				in   []byte
				out  **ddsketch.DDSketch
			}{{"PathwayLatency", rp.PathwayLatency, &pt.PathwayLatency}, {"EdgeLatency", rp.EdgeLatency, &pt.EdgeLatency}, {"PayloadSize", rp.PayloadSize, &pt.PayloadSize}} {
				sk, err := DecodeSketch(s.in)
				if err != nil {
					return nil, nil, fmt.Errorf("point %x %s: %w", rp.Hash, s.name, err)
				}
				*s.out = sk
			}
			pts = append(pts, pt)
		}
	}
	return &p, pts, nil
}

// DecodeSketch decodes a protobuf DDSketch.
func DecodeSketch(b []byte) (*ddsketch.DDSketch, error) {
	var pb sketchpb.DDSketch
	if err := proto.Unmarshal(b, &pb); err != nil {
		return nil, fmt.Errorf("sketch protobuf: %w", err)
	}
	if pb.Mapping == nil {
		return nil, fmt.Errorf("sketch has no index mapping")
	}
	return ddsketch.FromProto(&pb)
}

func checkShape(p map[string]any) error {
	if err := hasKeys("payload", p, payloadKeys); err != nil {
		return err
	}
	if err := notNil("payload", p, "Stats", "ProcessTags"); err != nil {
		return err
	}
	buckets, ok := p["Stats"].([]any)
	if !ok {
		return fmt.Errorf("payload Stats is %T, want an array", p["Stats"])
	}
	for i, b := range buckets {
		bm, ok := b.(map[string]any)
		if !ok {
			return fmt.Errorf("payload Stats[%d] is %T, want a map", i, b)
		}
		if err := hasKeys(fmt.Sprintf("Stats[%d]", i), bm, bucketKeys); err != nil {
			return err
		}
		if err := notNil(fmt.Sprintf("Stats[%d]", i), bm, "Stats", "Backlogs", "Transactions", "TransactionCheckpointIds"); err != nil {
			return err
		}
		bls, _ := bm["Backlogs"].([]any)
		for j, bl := range bls {
			blm, ok := bl.(map[string]any)
			if !ok {
				return fmt.Errorf("Stats[%d].Backlogs[%d] is %T, want a map", i, j, bl)
			}
			if err := notNil(fmt.Sprintf("Stats[%d].Backlogs[%d]", i, j), blm, "Tags"); err != nil {
				return err
			}
		}
		pts, _ := bm["Stats"].([]any)
		for j, pt := range pts {
			pm, ok := pt.(map[string]any)
			if !ok {
				return fmt.Errorf("Stats[%d].Stats[%d] is %T, want a map", i, j, pt)
			}
			where := fmt.Sprintf("Stats[%d].Stats[%d]", i, j)
			if err := hasKeys(where, pm, pointKeys); err != nil {
				return err
			}
			if err := notNil(where, pm, "EdgeTags"); err != nil {
				return err
			}
			for _, k := range binKeys {
				if _, ok := pm[k].([]byte); !ok {
					return fmt.Errorf("%s.%s is %T, want msgpack bin", where, k, pm[k])
				}
			}
		}
	}
	return nil
}

// notNil refuses msgpack nil under keys where dd-trace-go writes an array or a bin, empty or
// not: its generated decoder (internal/datastreams/payload_msgp.go) reads their headers with
// ReadArrayHeader and ReadBytes, which refuse nil. A key left out is hasKeys' business.
func notNil(where string, m map[string]any, keys ...string) error {
	for _, k := range keys {
		if v, ok := m[k]; ok && v == nil {
			return fmt.Errorf("%s.%s is nil: the tracer's decoder wants an array or a bin there, empty or not", where, k)
		}
	}
	return nil
}

func hasKeys(where string, m map[string]any, keys []string) error {
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			return fmt.Errorf("%s: key %q missing", where, k)
		}
	}
	return nil
}
