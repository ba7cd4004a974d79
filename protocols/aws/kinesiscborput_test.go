package aws

import (
	"bytes"
	"fmt"
	"testing"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestKinesisCBORPutCountsSkips: with kinesis_inject_data, a record put in CBOR (the Java SDKs'
// default) goes upstream without `_datadog`, as the proxy does not rewrite CBOR: each such record
// is a skip, counted and reported on the stream's edge as the JSON path reports its own (a JSON
// object as `cbor`, other data as `not_json`), and still gets its produce checkpoint. Without
// injection there is nothing to skip.
func TestKinesisCBORPutCountsSkips(t *testing.T) {
	tests := []struct {
		inject bool
		skips  map[string]int // event name -> records
	}{
		{inject: true, skips: map[string]int{"cbor": 2, "not_json": 2}},
		{inject: false, skips: map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("inject=%v", tt.inject), func(t *testing.T) {
			tp, up, _, _ := kinesisSetup(t, "cborskips", func(c *Config) { c.KinesisInjectData = tt.inject })
			put := map[string]any{"StreamName": "cborskips", "Data": []byte(`{"n":1}`), "PartitionKey": "p1"}
			cborCall(t, tp.url, "PutRecord", put, false)
			cborCall(t, tp.url, "PutRecords", map[string]any{"StreamName": "cborskips", "Records": []any{
				map[string]any{"Data": []byte(`{"n":2}`), "PartitionKey": "p2"},
				map[string]any{"Data": []byte{1, 2, 3}, "PartitionKey": "p3"},
				map[string]any{"Data": []byte(`[1]`), "PartitionKey": "p4"},
			}}, false)
			bodies, _ := up.seen()
			if last := bodies[len(bodies)-1]; bytes.Contains([]byte(last), []byte(ddAttr)) {
				t.Errorf("a CBOR request went upstream with %s: %q", ddAttr, last)
			}
			got := map[string]int{}
			total := 0
			for _, ev := range tp.ev.all() {
				if ev.Category != errtrack.ProxySkip {
					continue
				}
				if ev.Edge.Topic != "cborskips" || ev.Edge.Direction != "out" {
					t.Errorf("skip %q on edge %v, want the stream's out edge", ev.Name, ev.Edge)
				}
				got[ev.Name] += ev.Messages
				total += ev.Messages
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.skips) {
				t.Errorf("skip events %v, want %v", got, tt.skips)
			}
			if st := tp.Stats(); st.Skipped != uint64(total) || st.Produced != 4 || st.Injected != 0 {
				t.Errorf("Stats: skipped %d (events %d), produced %d, injected %d; want produced 4, injected 0", st.Skipped, total, st.Produced, st.Injected)
			}
		})
	}
}

// TestKinesisCBORRespectsTracerContext: a record put in CBOR whose JSON data carries a tracer's
// `_datadog` is treated as the same record put in JSON: by default the tracer checkpointed it, so
// the proxy records no produce checkpoint (and counts it as existing, not as a skip); with
// respect_existing_context off its produce checkpoint has the tracer's as parent.
func TestKinesisCBORRespectsTracerContext(t *testing.T) {
	tctx := tracerContext(pathway.TypeKinesis, "cbortraced")
	traced := []byte(`{"a":1,"_datadog":{"x-datadog-trace-id":"1","dd-pathway-ctx-base64":"` + tctx.String() + `"}}`)
	off := false
	tests := []struct {
		name     string
		respect  *bool
		produced bool
	}{
		{name: "left to the tracer"},
		{name: "respect off", respect: &off, produced: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, _, _, _ := kinesisSetup(t, "cbortraced", func(c *Config) {
				c.KinesisInjectData = true
				c.RespectExistingContext = tt.respect
			})
			cborCall(t, tp.url, "PutRecord", map[string]any{"StreamName": "cbortraced", "Data": traced, "PartitionKey": "p"}, false)
			prod := tp.rec.withTags("direction:out", "topic:cbortraced")
			st := tp.Stats()
			if !tt.produced {
				if len(prod) != 0 || st.Existing != 1 || st.Skipped != 0 {
					t.Errorf("%d produce checkpoints, existing %d, skipped %d; want 0, 1, 0", len(prod), st.Existing, st.Skipped)
				}
				return
			}
			if len(prod) != 1 || prod[0].ParentHash != tctx.Hash {
				t.Errorf("produce checkpoints %+v, want one with the tracer's parent %d", prod, tctx.Hash)
			}
		})
	}
}
