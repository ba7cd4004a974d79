package aggregator_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestPayloadMatchesGoTracer: the checkpoints and offsets of a produce and two consumes, through
// Checkpointer -> Aggregator -> Flusher -> AgentSink, reach the Agent as the very bytes
// dd-trace-go's own processor sends for them (testdata/ddtracego_payload.json, made by
// testdata/ddtracego_payload_driver.go.txt run inside dd-trace-go a4bdff1017d7's
// internal/datastreams with process tags off): same contexts in the headers, same msgpack (keys,
// types, integer widths, sketches), same request headers. The tracer orders buckets and points as
// its maps iterate; the golden file has them in dsmproxy's order. The one byte that differs on
// purpose is ProductMask: 3 (APM|DSM) from the tracer, 2 (DSM) from a proxy that runs no APM.
func TestPayloadMatchesGoTracer(t *testing.T) {
	var ref struct {
		Produce string            `json:"produce_header"`
		Consume string            `json:"consume_header"`
		Msgpack map[string]string `json:"msgpack"`
		Headers map[string]string `json:"headers"`
	}
	b, err := os.ReadFile("testdata/ddtracego_payload.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}

	agent := agenttest.New(t)
	a := aggregator.New(aggregator.Config{Env: "prod", DefaultService: "orders-api"})
	a.Start()
	t.Cleanup(a.Close)
	sink, err := aggregator.NewAgentSink(aggregator.AgentConfig{URL: agent.URL(), Env: "prod", Version: "1.2.3",
		TracerVersion: "v2.11.0-dev.1", Log: zerolog.Nop(), Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	f := aggregator.NewFlusher(a, 10*time.Second, zerolog.Nop(), sink)

	// The driver's steps, at its times.
	cp := pathway.NewCheckpointer("prod", 0)
	now := time.UnixMilli(1642544540500)
	p, produced := cp.Checkpoint(pathway.Context{}, "orders-api", pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "orders"}, 100, now)
	a.Add(p)
	a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Topic: "orders", Value: 41, Time: now.UnixNano()})
	now = now.Add(1250 * time.Millisecond)
	a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Topic: "orders", Value: 42, Time: now.UnixNano()})
	if got := produced.String(); got != ref.Produce {
		t.Errorf("produce context %s, the tracer's %s", got, ref.Produce)
	}
	carried, err := pathway.DecodeBase64String(produced.String())
	if err != nil {
		t.Fatal(err)
	}
	in := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: "orders", Group: "billing-cg"}
	p, consumed := cp.Checkpoint(carried, "billing", in, 120, now)
	a.Add(p)
	if got := consumed.String(); got != ref.Consume {
		t.Errorf("consume context %s, the tracer's %s", got, ref.Consume)
	}
	a.Offset(pathway.Offset{Kind: pathway.KafkaCommit, Group: "billing-cg", Topic: "orders", Value: 43, Time: now.UnixNano()})
	a.Offset(pathway.Offset{Kind: pathway.KafkaHighWatermark, Topic: "orders", Value: 44, Time: now.UnixNano()})
	now = now.Add(11 * time.Second) // the next bucket: current and origin buckets differ
	p, _ = cp.Checkpoint(carried, "billing", in, 0, now)
	a.Add(p)
	f.FlushNow(context.Background(), true)

	payloads := agent.Payloads()
	if len(payloads) != len(ref.Msgpack) {
		t.Fatalf("%d payloads, the tracer sent %d", len(payloads), len(ref.Msgpack))
	}
	const tracerMask, proxyMask = "\xabProductMask\x03", "\xabProductMask\x02"
	for _, pl := range payloads {
		want, err := hex.DecodeString(ref.Msgpack[pl.Service])
		if err != nil || len(want) == 0 {
			t.Fatalf("no golden payload for service %q (%v)", pl.Service, err)
		}
		if !bytes.HasSuffix(want, []byte(tracerMask)) {
			t.Fatalf("golden %s payload does not end with the tracer's ProductMask", pl.Service)
		}
		want = append(bytes.TrimSuffix(want, []byte(tracerMask)), proxyMask...)
		if !bytes.Equal(pl.Raw, want) {
			i := 0
			for i < len(pl.Raw) && i < len(want) && pl.Raw[i] == want[i] {
				i++
			}
			t.Errorf("%s payload differs from the tracer's at byte %d (%d and %d bytes)\nours   % x\ntracer % x", pl.Service, i,
				len(pl.Raw), len(want), pl.Raw[max(0, i-24):min(len(pl.Raw), i+24)], want[max(0, i-24):min(len(want), i+24)])
		}
		for k, v := range ref.Headers {
			if got := pl.Header.Get(k); got != v {
				t.Errorf("header %s = %q, the tracer sends %q", k, got, v)
			}
		}
		// Set from the toolchain, as dd-trace-go's transport.go does.
		if got, want := pl.Header.Get("Datadog-Meta-Lang-Version"), strings.TrimPrefix(runtime.Version(), "go"); got != want {
			t.Errorf("Datadog-Meta-Lang-Version = %q, want %q", got, want)
		}
		if got, want := pl.Header.Get("Datadog-Meta-Lang-Interpreter"), runtime.Compiler+"-"+runtime.GOARCH+"-"+runtime.GOOS; got != want {
			t.Errorf("Datadog-Meta-Lang-Interpreter = %q, want %q", got, want)
		}
	}
}
