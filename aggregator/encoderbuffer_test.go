package aggregator

import (
	"context"
	"fmt"
	goruntime "runtime"
	"testing"
	"time"
	"weak"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/agenttest"
)

// TestEncoderLetsAHugeBufferGo: the Agent sink's encoder keeps its msgpack buffer for the next
// payload, but one that a huge flush grew (16 MB in a soak with 60,000 pathway contexts) was
// kept for good. After a flush of one huge payload, the encoder holds no more than
// maxKeptPayloadBuffer; a small one's buffer is kept for reuse.
func TestEncoderLetsAHugeBufferGo(t *testing.T) {
	agent := agenttest.New(t)
	s, err := NewAgentSink(AgentConfig{URL: agent.URL(), TracerVersion: "test", MaxPendingBytes: 64 << 20, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	flush := func(groups int) {
		t.Helper()
		b := Bucket{Start: time.Unix(1700000000, 0), Duration: 10 * time.Second, TimestampType: Current}
		for i := range groups {
			topic := fmt.Sprintf("a-rather-long-topic-name-%06d", i)
			b.Groups = append(b.Groups, Group{Service: "svc", EdgeTags: []string{"direction:in", "group:consumers-of-" + topic, "topic:" + topic, "type:kafka"},
				Hash: uint64(i) + 1, ParentHash: uint64(i) << 32, PathwayLatency: sketch(t, float64(i)), EdgeLatency: sketch(t, 1), PayloadSize: sketch(t, 100)})
		}
		if err := s.Send(context.Background(), []Bucket{b}); err != nil {
			t.Fatal(err)
		}
	}
	flush(20000)
	if held := s.enc.mp.Cap(); held > maxKeptPayloadBuffer {
		t.Errorf("after a flush of 20,000 groups the encoder holds a %d-byte buffer, want at most %d", held, maxKeptPayloadBuffer)
	}
	flush(10)
	if held := s.enc.mp.Cap(); held == 0 || held > maxKeptPayloadBuffer {
		t.Errorf("after a flush of 10 groups the encoder holds a %d-byte buffer, want it kept, and at most %d", held, maxKeptPayloadBuffer)
	}
	if st := s.Stats(); st.Payloads != 2 {
		t.Errorf("the Agent took %d payloads, want both", st.Payloads)
	}
}

// TestEncoderLetsTheLastBodyGo: the gzip writer kept for the next payload writes into the last
// payload's buffer until then, so a huge flush's last body stayed in memory after the Agent
// took it, until the next flush.
func TestEncoderLetsTheLastBodyGo(t *testing.T) {
	var enc payloadEncoder
	body, err := enc.encode(&statsPayload{Service: "svc", Stats: []statsBucket{{Stats: []statsPoint{{Hash: 1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	sent := weak.Make(&body[0])
	body = nil
	enc.release()
	goruntime.GC()
	if sent.Value() != nil {
		t.Error("the encoder still holds the last payload's body after the flush")
	}
	goruntime.KeepAlive(&enc) // kept for the next flush
}

func sketch(t testing.TB, v float64) *ddsketch.DDSketch {
	t.Helper()
	s, err := ddsketch.NewDefaultDDSketch(0.01)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add(v); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPayloadBodyHasNoSlack: a body waits for a down Agent counted by its length
// (MaxPendingBytes), so the memory behind it must be about that length; a buffer that doubled
// as gzip wrote into it held up to twice the bound.
func TestPayloadBodyHasNoSlack(t *testing.T) {
	var enc payloadEncoder
	for _, n := range []int{1, 10, 100, 1000, 5000} {
		p := &statsPayload{Service: "svc"}
		for i := range n {
			p.Stats = append(p.Stats, statsBucket{Stats: []statsPoint{{Hash: uint64(i)*0x9e3779b97f4a7c15 + 1, EdgeTags: []string{fmt.Sprintf("topic:t-%d", i)}}}})
		}
		body, err := enc.encode(p)
		if err != nil {
			t.Fatal(err)
		}
		if c, l := cap(body), len(body); c > l+l/4+64 {
			t.Errorf("%d points: a %d-byte body holds %d bytes", n, l, c)
		}
	}
}
