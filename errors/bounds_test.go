package errtrack

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// lostGroup is a LostMessage group of one SQS send to topic, seen at at.
func lostGroup(service, topic string, at time.Time) Group {
	return Group{
		Fingerprint: Fingerprint{Category: LostMessage, Protocol: "sqs", Operation: "SendMessage", Code: 400,
			Name: "QueueDoesNotExist", Service: service,
			Edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: topic}},
		Count: 1, Messages: 1, TotalCount: 1, TotalMessages: 1,
		IntervalFirst: at, IntervalLast: at, FirstSeen: at, LastSeen: at,
	}
}

// TestAgentBusyKeepsSpans: the trace-agent answers 429 when its decoders stay busy for a second
// (pkg/trace/api/api.go, handleTraces): a refusal for now. The interval's error spans go again with
// the next flush, as after a 5xx, instead of being dropped as after other 4xx.
func TestAgentBusyKeepsSpans(t *testing.T) {
	fa := &fakeAgent{status: http.StatusTooManyRequests}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	a := NewAgentReporter(AgentConfig{Enabled: true, URL: srv.URL})
	now := time.Now()
	ctx := context.Background()

	if err := a.Send(ctx, Interval{Start: now.Add(-10 * time.Second), End: now,
		Groups: []Group{lostGroup("billing", "orders", now)}}); err == nil {
		t.Fatal("429 not reported as an error")
	}
	// The Agent is no longer overloaded.
	fa.mu.Lock()
	fa.status, fa.traces = 0, nil
	fa.mu.Unlock()
	_ = a.Send(ctx, Interval{Start: now, End: now.Add(10 * time.Second)})
	if n := len(fa.spans()); n != 1 {
		t.Fatalf("after a transient 429 the Agent received %d error spans of the refused interval, want 1 (they were dropped)", n)
	}
}

// sizeLimitedAgent behaves like the trace-agent's receiver with its default
// apm_config max request size (25 MiB): larger bodies get 413 payload-too-large.
type sizeLimitedAgent struct {
	mu    sync.Mutex
	spans []map[string]any
	codes []int
}

func (s *sizeLimitedAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	const limit = 25 * 1024 * 1024
	body, _ := io.ReadAll(io.LimitReader(r.Body, limit+1))
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(body) > limit {
		s.codes = append(s.codes, http.StatusRequestEntityTooLarge)
		http.Error(w, "payload-too-large", http.StatusRequestEntityTooLarge)
		return
	}
	var traces [][]map[string]any
	if err := msgpack.Unmarshal(body, &traces); err != nil {
		s.codes = append(s.codes, http.StatusBadRequest)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.codes = append(s.codes, http.StatusOK)
	for _, tr := range traces {
		s.spans = append(s.spans, tr...)
	}
	_, _ = io.WriteString(w, `{"rate_by_service":{}}`)
}

// TestLongNamesClipped: names in a fingerprint come from clients and brokers (a queue name from a
// request body up to 16 MiB, a 32 KiB Kafka topic) and each is copied several times into its span.
// They are cut to maxField when reported, so one long name neither holds memory for Retain nor
// makes the interval's request pass the Agent's 25 MiB limit (413), which dropped every span of
// the interval, another service's lost messages included.
func TestLongNamesClipped(t *testing.T) {
	ag := &sizeLimitedAgent{}
	srv := httptest.NewServer(ag)
	defer srv.Close()
	c := New(Config{})
	now := time.Now()
	for _, e := range []struct{ service, topic string }{{"billing", "orders"}, {"scanner", strings.Repeat("q", 16<<20)}} {
		c.Report(Event{Time: now, Category: LostMessage, Protocol: "sqs", Operation: "SendMessage", Code: 400,
			Name: "QueueDoesNotExist", Service: e.service, Partition: -1, Messages: 1,
			Edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: e.topic}})
	}
	for _, g := range c.Snapshot().Groups {
		if len(g.Edge.Topic) > maxField {
			t.Errorf("a group keeps a topic of %d bytes", len(g.Edge.Topic))
		}
	}
	a := NewAgentReporter(AgentConfig{Enabled: true, URL: srv.URL})
	if err := a.Send(context.Background(), c.Close(now.Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	ag.mu.Lock()
	defer ag.mu.Unlock()
	if len(ag.spans) != 2 {
		t.Fatalf("the Agent got %d spans (answers %v), want both", len(ag.spans), ag.codes)
	}
}

// TestLostTotalsOutliveRetain: /errors and /dsm show lost messages since start, but a group idle
// for Retain (1 h) is dropped: its lost messages must stay in the totals.
func TestLostTotalsOutliveRetain(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	now := t0
	c := New(Config{Clock: func() time.Time { return now }})
	edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "orders"}
	c.Report(Event{Time: t0, Category: LostMessage, Protocol: "kafka", Operation: "Produce", Code: 10,
		Name: "MESSAGE_TOO_LARGE", Service: "billing", Edge: edge, Partition: 0, Messages: 500})
	for now = t0.Add(10 * time.Second); now.Before(t0.Add(62 * time.Minute)); now = now.Add(10 * time.Second) {
		c.Close(now)
	}
	doc := c.Snapshot().JSON()
	var lost int64
	for _, l := range doc.Lost {
		lost += l.Messages
	}
	if lost != 500 {
		t.Fatalf("/errors lost messages since start = %d, want 500 (groups: %d)", lost, len(doc.Groups))
	}
}
