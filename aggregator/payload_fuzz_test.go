package aggregator

import (
	"bytes"
	"compress/gzip"
	"github.com/vmihailenco/msgpack/v5"
	"io"
	"reflect"
	"testing"

	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
)

// FuzzDecodedPayloadReencodes: a payload the test Agent's decoder accepts, handed to the
// aggregator's encoder as buildPayloads hands it one (no nil slice), encodes to a body the decoder
// accepts and reads as the same payload; and encoding that again gives the same bytes. A field
// the encoder names or types otherwise than the decoder, or an integer form that changes a value
// (signedInt64), breaks it. The fuzzer works on the inflated msgpack; the test gzips it.
func FuzzDecodedPayloadReencodes(f *testing.F) {
	// Seeds are written by msgpack's generic encoder, not the one under test, so that a fault of
	// the encoder's is not in the seeds too.
	sk := encodeSketch(sketch(f, 0.5))
	for _, bl := range []int64{-1, 0, 127, 128, 200, 32767, 32768, 1 << 31, -1 << 40} {
		raw, err := msgpack.Marshal(map[string]any{
			"Env": "e", "Service": "s", "TracerVersion": "v", "Lang": "go", "Version": "", "ProcessTags": []string{}, "ProductMask": 2,
			"Stats": []any{map[string]any{"Start": uint64(1), "Duration": uint64(10),
				"Backlogs":     []any{map[string]any{"Tags": []string{"type:kafka_produce"}, "Value": bl}},
				"Transactions": []byte{}, "TransactionCheckpointIds": []byte{},
				"Stats": []any{map[string]any{"EdgeTags": []string{"direction:out"}, "Hash": uint64(1 << 63), "ParentHash": uint64(0),
					"PathwayLatency": sk, "EdgeLatency": sk, "PayloadSize": sk, "TimestampType": "current"}}}},
		})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	// One encoder and one gzip writer for every input (a fuzz worker runs them one at a time): a
	// new gzip writer costs more than the rest of the run.
	var enc payloadEncoder
	var zbuf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zbuf, gzip.BestSpeed)
	f.Fuzz(func(t *testing.T, raw []byte) {
		zbuf.Reset()
		zw.Reset(&zbuf)
		if _, err := zw.Write(raw); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		p, _, err := agentpayload.DecodePayload(zbuf.Bytes())
		if err != nil {
			return
		}
		body, err := enc.encode(statsPayloadOf(p))
		if err != nil {
			t.Fatalf("the encoder refused a payload the decoder accepted: %v", err)
		}
		q, _, err := agentpayload.DecodePayload(body)
		if err != nil {
			t.Fatalf("the decoder refused what the encoder wrote of a payload it accepted: %v\nin  %x\nout %x", err, raw, inflate(t, body))
		}
		want := statsPayloadOf(p)
		if got := statsPayloadOf(q); !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded, encoded and decoded again, the payload changed:\nwas %+v\nnow %+v", want, got)
		}
		again, err := enc.encode(statsPayloadOf(q))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body, again) { // gzip writes the same bytes for the same input
			t.Fatalf("encoding the payload read back gives other bytes:\nfirst  %x\nsecond %x", inflate(t, body), inflate(t, again))
		}
	})
}

// statsPayloadOf is p as the encoder's input, with an empty slice wherever p has none, as
// buildPayloads fills them in (the decoder takes a key left out; it refuses nil).
func statsPayloadOf(p *agentpayload.Payload) *statsPayload {
	out := &statsPayload{Env: p.Env, Service: p.Service, TracerVersion: p.TracerVersion, Lang: p.Lang, Version: p.Version,
		ProcessTags: orEmpty(p.ProcessTags), ProductMask: p.ProductMask, Stats: []statsBucket{}}
	for _, b := range p.Stats {
		sb := statsBucket{Start: b.Start, Duration: b.Duration, Stats: []statsPoint{}, Backlogs: []backlog{},
			Transactions: orEmpty(b.Transactions), TransactionCheckpointIDs: orEmpty(b.TransactionCheckpointIDs)}
		for _, pt := range b.Stats {
			sb.Stats = append(sb.Stats, statsPoint{EdgeTags: orEmpty(pt.EdgeTags), Hash: pt.Hash, ParentHash: pt.ParentHash,
				PathwayLatency: orEmpty(pt.PathwayLatency), EdgeLatency: orEmpty(pt.EdgeLatency), PayloadSize: orEmpty(pt.PayloadSize),
				TimestampType: pt.TimestampType})
		}
		for _, bl := range b.Backlogs {
			sb.Backlogs = append(sb.Backlogs, backlog{Tags: orEmpty(bl.Tags), Value: signedInt64(bl.Value)})
		}
		out.Stats = append(out.Stats, sb)
	}
	return out
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func inflate(t testing.TB, body []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
