package aws

import (
	"bytes"
	"fmt"
	"testing"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
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
