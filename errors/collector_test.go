package errtrack

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dsmproxy/dsmproxy/pathway"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// sinkRecorder keeps every interval a collector flushes.
type sinkRecorder struct {
	mu  sync.Mutex
	ivs []Interval
}

func (s *sinkRecorder) Send(_ context.Context, iv Interval) error {
	s.mu.Lock()
	s.ivs = append(s.ivs, iv)
	s.mu.Unlock()
	return nil
}

var (
	ordersOut = pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "orders"}
	ordersIn  = pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: "orders", Group: "billing"}
	paysOut   = pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "payments"}
)

func ev(cat Category, op string, code int32, name, svc string, edge pathway.Edge, part int32, msgs int, at time.Duration) Event {
	return Event{Time: t0.Add(at), Category: cat, Protocol: "kafka", Operation: op, Code: code, Name: name,
		Service: svc, Edge: edge, Partition: part, Messages: msgs}
}

// want is the part of a flushed group a table row checks.
type want struct {
	cat        Category
	op, name   string
	svc, topic string
	count      int64
	msgs       int64
	parts      []int32
	more       bool
}

func TestGrouping(t *testing.T) {
	tooLarge := func(svc string, edge pathway.Edge, part int32, at time.Duration) Event {
		return ev(BrokerError, "Produce", 10, "MESSAGE_TOO_LARGE", svc, edge, part, 3, at)
	}
	many := func() []Event {
		var es []Event
		for p := range int32(20) {
			es = append(es, tooLarge("a", ordersOut, p, 0))
		}
		return es
	}
	tests := []struct {
		name   string
		cfg    Config
		events []Event
		want   []want
		over   int64
	}{
		{
			name:   "same fingerprint, partitions collected not split",
			events: []Event{tooLarge("a", ordersOut, 0, 1), tooLarge("a", ordersOut, 1, 2), tooLarge("a", ordersOut, 0, 3)},
			want:   []want{{BrokerError, "Produce", "MESSAGE_TOO_LARGE", "a", "orders", 3, 9, []int32{0, 1}, false}},
		},
		{
			name: "service, edge, operation, code and category each split",
			events: []Event{
				tooLarge("a", ordersOut, 0, 0),
				tooLarge("b", ordersOut, 0, 0),
				tooLarge("a", paysOut, 0, 0),
				ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "a", ordersOut, 0, 3, 0),
				ev(BrokerError, "OffsetCommit", 22, "ILLEGAL_GENERATION", "a", ordersIn, 0, 0, 0),
				ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "a", ordersOut, 0, 3, 0),
			},
			want: []want{
				{BrokerError, "OffsetCommit", "ILLEGAL_GENERATION", "a", "orders", 1, 0, []int32{0}, false},  // direction:in sorts first
				{BrokerError, "Produce", "NOT_LEADER_FOR_PARTITION", "a", "orders", 1, 3, []int32{0}, false}, // code 6
				{BrokerError, "Produce", "MESSAGE_TOO_LARGE", "a", "orders", 1, 3, []int32{0}, false},        // code 10
				{BrokerError, "Produce", "MESSAGE_TOO_LARGE", "a", "payments", 1, 3, []int32{0}, false},
				{BrokerError, "Produce", "MESSAGE_TOO_LARGE", "b", "orders", 1, 3, []int32{0}, false},
				{LostMessage, "Produce", "MESSAGE_TOO_LARGE", "a", "orders", 1, 3, []int32{0}, false},
			},
		},
		{
			name: "proxy skips split by reason name (all code 0)",
			events: []Event{
				ev(ProxySkip, "Produce", 0, "size_limit", "a", ordersOut, 0, 1, 0),
				ev(ProxySkip, "Produce", 0, "existing_context", "a", ordersOut, 0, 1, 0),
				ev(ProxySkip, "Produce", 0, "size_limit", "a", ordersOut, 0, 1, 0),
			},
			want: []want{
				{ProxySkip, "Produce", "existing_context", "a", "orders", 1, 1, []int32{0}, false},
				{ProxySkip, "Produce", "size_limit", "a", "orders", 2, 2, []int32{0}, false},
			},
		},
		{
			name:   "partitions bounded",
			events: many(),
			want:   []want{{BrokerError, "Produce", "MESSAGE_TOO_LARGE", "a", "orders", 20, 60, []int32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, true}},
		},
		{
			name: "unknown partition -1 and non-Kafka partitions are not listed",
			events: []Event{
				ev(DecodeError, "Fetch response", 0, "undecodable", "", pathway.Edge{}, -1, 0, 0),
				{Time: t0, Category: BrokerError, Protocol: "amqp", Operation: "Basic.Publish", Code: 404, Name: "NOT_FOUND",
					Service: "a", Edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Exchange: "missing"}},
			},
			want: []want{
				{BrokerError, "Basic.Publish", "NOT_FOUND", "a", "", 1, 0, nil, false},
				{DecodeError, "Fetch response", "undecodable", "", "", 1, 0, nil, false},
			},
		},
		{
			name:   "categories filter",
			cfg:    Config{Categories: []Category{LostMessage}},
			events: []Event{tooLarge("a", ordersOut, 0, 0), ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "a", ordersOut, 0, 3, 0)},
			want:   []want{{LostMessage, "Produce", "MESSAGE_TOO_LARGE", "a", "orders", 1, 3, []int32{0}, false}},
		},
		{
			name: "fingerprint bound: overflow counted, existing groups still count",
			cfg:  Config{MaxFingerprints: 2},
			events: []Event{
				tooLarge("a", ordersOut, 0, 0), tooLarge("b", ordersOut, 0, 0),
				tooLarge("c", ordersOut, 0, 0), tooLarge("d", ordersOut, 0, 0),
				tooLarge("a", ordersOut, 0, 0),
			},
			want: []want{
				{BrokerError, "Produce", "MESSAGE_TOO_LARGE", "a", "orders", 2, 6, []int32{0}, false},
				{BrokerError, "Produce", "MESSAGE_TOO_LARGE", "b", "orders", 1, 3, []int32{0}, false},
			},
			over: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{now: t0}
			tt.cfg.Clock = clk.Now
			c := New(tt.cfg)
			for _, e := range tt.events {
				c.Report(e)
			}
			iv := c.Close(t0.Add(10 * time.Second))
			if iv.Overflow != tt.over {
				t.Errorf("overflow = %d, want %d", iv.Overflow, tt.over)
			}
			var got []want
			for _, g := range iv.Groups {
				got = append(got, want{g.Category, g.Operation, g.Name, g.Service, g.Edge.Topic, g.Count, g.Messages, g.Partitions, g.MorePartitions})
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("groups\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestIntervalsAndRetention(t *testing.T) {
	clk := &clock{now: t0}
	rec := &sinkRecorder{}
	c := New(Config{Clock: clk.Now, Interval: 10 * time.Second, Retain: 30 * time.Second, Sinks: []Sink{rec}})
	ctx := context.Background()

	// Interval 1: a storm of 1000 with times out of order; first/last must still be min/max.
	for i := range 1000 {
		c.Report(ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "a", ordersOut, 0, 2, time.Duration(999-i)*time.Millisecond))
	}
	c.Report(Event{Category: LostMessage, Protocol: "kafka", Operation: "Produce", Name: "MESSAGE_TOO_LARGE", Service: "a",
		Edge: ordersOut, Partition: 1, Messages: 7, Message: "first"}) // no Time: the clock's
	c.Report(Event{Time: t0.Add(time.Second), Category: LostMessage, Protocol: "kafka", Operation: "Produce",
		Name: "MESSAGE_TOO_LARGE", Service: "a", Edge: ordersOut, Partition: 1, Messages: 5, Message: "latest"})
	if err := c.Flush(ctx, t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Interval 2: only the lost group.
	c.Report(Event{Time: t0.Add(12 * time.Second), Category: LostMessage, Protocol: "kafka", Operation: "Produce",
		Name: "MESSAGE_TOO_LARGE", Service: "a", Edge: ordersOut, Partition: 2, Messages: 1})
	if err := c.Flush(ctx, t0.Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Interval 3: nothing; the snapshot still shows both groups with last interval counts.
	clk.Set(t0.Add(25 * time.Second))
	snap := c.Snapshot()
	if len(snap.Groups) != 2 {
		t.Fatalf("snapshot groups = %d, want 2", len(snap.Groups))
	}
	if err := c.Flush(ctx, t0.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	// At 45 s the storm group (last seen 0.999 s) is older than Retain and goes; the lost one stays.
	if err := c.Flush(ctx, t0.Add(42*time.Second)); err != nil {
		t.Fatal(err)
	}
	after := c.Snapshot()

	if len(rec.ivs) != 4 {
		t.Fatalf("intervals = %d, want 4", len(rec.ivs))
	}
	iv1 := rec.ivs[0]
	if !iv1.Start.Equal(t0) || !iv1.End.Equal(t0.Add(10*time.Second)) || len(iv1.Groups) != 2 {
		t.Fatalf("interval 1: %v..%v with %d groups", iv1.Start, iv1.End, len(iv1.Groups))
	}
	storm, lost := iv1.Groups[0], iv1.Groups[1]
	if storm.Count != 1000 || storm.Messages != 2000 || !storm.IntervalFirst.Equal(t0) || !storm.IntervalLast.Equal(t0.Add(999*time.Millisecond)) {
		t.Errorf("storm group: count %d msgs %d first %v last %v", storm.Count, storm.Messages, storm.IntervalFirst, storm.IntervalLast)
	}
	if lost.Count != 2 || lost.Messages != 12 || lost.Sample != "latest" || !lost.FirstSeen.Equal(t0) {
		t.Errorf("lost group: %+v", lost)
	}
	if l := iv1.Lost(); len(l) != 1 || l[0].Messages != 12 || l[0].Edge != ordersOut || l[0].Service != "a" {
		t.Errorf("interval 1 lost = %+v", l)
	}
	iv2 := rec.ivs[1]
	if len(iv2.Groups) != 1 || iv2.Groups[0].Count != 1 || iv2.Groups[0].TotalCount != 3 || iv2.Groups[0].TotalMessages != 13 ||
		!slices.Equal(iv2.Groups[0].Partitions, []int32{1, 2}) {
		t.Errorf("interval 2 = %+v", iv2.Groups)
	}
	if len(rec.ivs[2].Groups) != 0 {
		t.Errorf("interval 3 should be empty: %+v", rec.ivs[2].Groups)
	}
	if snap.Groups[0].Count != 0 || snap.Groups[0].LastIntervalCount != 0 || snap.Groups[0].TotalCount != 1000 {
		t.Errorf("snapshot storm: %+v", snap.Groups[0])
	}
	if snap.Groups[1].LastIntervalCount != 1 || snap.Lost()[0].Messages != 13 {
		t.Errorf("snapshot lost: %+v %+v", snap.Groups[1], snap.Lost())
	}
	if len(after.Groups) != 1 || after.Groups[0].Category != LostMessage {
		t.Errorf("after retention: %+v", after.Groups)
	}
}

func TestOverflowLostStaysCounted(t *testing.T) {
	c := New(Config{MaxFingerprints: 1})
	c.Report(ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "a", ordersOut, 0, 2, 0))
	c.Report(ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "a", ordersOut, 0, 4, 0))
	c.Report(ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "b", ordersOut, 0, 5, 0))
	s := c.Snapshot()
	if s.Overflow != 2 || s.OverflowLost != 9 {
		t.Errorf("overflow %d lost %d, want 2 and 9", s.Overflow, s.OverflowLost)
	}
	iv := c.Close(t0)
	if iv.Overflow != 2 || iv.OverflowLost != 9 {
		t.Errorf("interval overflow %d lost %d", iv.Overflow, iv.OverflowLost)
	}
	if s := c.Snapshot(); s.Overflow != 2 {
		t.Errorf("overflow since start = %d after flush, want 2", s.Overflow)
	}
}

func TestAgentEnabledFromEnv(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": "all"}, true},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": "user"}, true},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": "third_party"}, true},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE": "kafka"}, true},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE": "a, b"}, true},
		// dd-trace-py reads these as off: any other value of the first, no module in the second.
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": ""}, false},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": "false"}, false},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": "anything"}, false},
		{map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE": " , "}, false},
	} {
		if got := AgentEnabledFromEnv(func(k string) string { return tt.env[k] }); got != tt.want {
			t.Errorf("%v: %v, want %v", tt.env, got, tt.want)
		}
	}
}

// TestConcurrentReport runs reporters against flushes and snapshots; -race checks the locking and
// the total proves no event is lost between intervals.
func TestConcurrentReport(t *testing.T) {
	rec := &sinkRecorder{}
	c := New(Config{Sinks: []Sink{rec}})
	const workers, each = 4, 5000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				c.Report(ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", fmt.Sprint("svc", w%2), ordersOut, int32(i%3), 1, 0))
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		_ = c.FlushNow(context.Background())
		_ = c.Snapshot()
	}
	_ = c.FlushNow(context.Background())
	var total int64
	for _, iv := range rec.ivs {
		for _, g := range iv.Groups {
			total += g.Count
		}
	}
	if total != workers*each {
		t.Errorf("flushed %d events, want %d", total, workers*each)
	}
}

// BenchmarkReportSameFingerprint is a storm of one error: a counter increment, no allocation.
func BenchmarkReportSameFingerprint(b *testing.B) {
	c := New(Config{})
	e := ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "orders-api", ordersOut, 3, 10, 0)
	b.ReportAllocs()
	for b.Loop() {
		c.Report(e)
	}
}

// BenchmarkReportEqualCopies alternates two events with equal but separately allocated strings, as
// protocol code decoding each response produces: the group cache compares bytes, not pointers.
func BenchmarkReportEqualCopies(b *testing.B) {
	es := make([]Event, 2)
	for i := range es {
		es[i] = ev(BrokerError, strings.Clone("Produce"), 6, strings.Clone("NOT_LEADER_FOR_PARTITION"),
			strings.Clone("orders-api"), ordersOut, 3, 10, 0)
		es[i].Edge.Topic = strings.Clone("orders")
	}
	benchCycle(b, es)
}

// BenchmarkReportRotating cycles through 8 fingerprints, so every event takes the map path.
func BenchmarkReportRotating(b *testing.B) {
	es := make([]Event, 8)
	for i := range es {
		es[i] = ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", fmt.Sprint("svc-", i), ordersOut, 3, 10, 0)
	}
	benchCycle(b, es)
}

// benchCycle reports es in turn, one per iteration.
func benchCycle(b *testing.B, es []Event) {
	c := New(Config{})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Report(es[i%len(es)])
		i++
	}
}

// BenchmarkReportParallel is one error storm from every core at once.
func BenchmarkReportParallel(b *testing.B) {
	c := New(Config{})
	e := ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "orders-api", ordersOut, 3, 10, 0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Report(e)
		}
	})
}

func TestThrottleSummed(t *testing.T) {
	c := New(Config{})
	for _, ms := range []int{100, 250, 0} {
		e := ev(BrokerError, "Produce", 0, "THROTTLED", "a", pathway.Edge{Type: pathway.TypeKafka}, -1, 0, 0)
		e.Throttle = time.Duration(ms) * time.Millisecond
		c.Report(e)
	}
	iv := c.Close(t0.Add(10 * time.Second))
	if len(iv.Groups) != 1 || iv.Groups[0].Throttle != 350*time.Millisecond || iv.Groups[0].Count != 3 {
		t.Fatalf("groups: %+v", iv.Groups)
	}
	c.Report(ev(BrokerError, "Produce", 0, "THROTTLED", "a", pathway.Edge{Type: pathway.TypeKafka}, -1, 0, 0))
	if g := c.Snapshot().Groups[0]; g.Throttle != 0 || g.TotalThrottle != 350*time.Millisecond {
		t.Errorf("after flush: interval %v total %v", g.Throttle, g.TotalThrottle)
	}
}

// TestRunFinalFlush: when Run's context ends, the open interval still reaches the sinks.
func TestRunFinalFlush(t *testing.T) {
	rec := &sinkRecorder{}
	clk := &clock{now: t0}
	c := New(Config{Clock: clk.Now, Interval: time.Hour, Sinks: []Sink{rec}}) // the ticker never fires here
	c.Report(ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "a", ordersOut, 0, 2, time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	clk.Set(t0.Add(5 * time.Second))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(rec.ivs) != 1 || len(rec.ivs[0].Groups) != 1 || rec.ivs[0].Groups[0].Messages != 2 {
		t.Fatalf("final flush: %+v", rec.ivs)
	}
}

// TestManyInterleavedFingerprints: with far more fingerprints than cache slots, colliding slots
// must never count an event in another group.
func TestManyInterleavedFingerprints(t *testing.T) {
	c := New(Config{})
	const n, rounds = 500, 3
	for r := range rounds {
		for i := range n {
			c.Report(ev(BrokerError, "Produce", int32(i%7), "E", fmt.Sprint("svc-", i), ordersOut, int32(r), 1, 0))
		}
	}
	iv := c.Close(t0.Add(time.Minute))
	if len(iv.Groups) != n {
		t.Fatalf("groups = %d, want %d", len(iv.Groups), n)
	}
	for _, g := range iv.Groups {
		if g.Count != rounds || len(g.Partitions) != rounds {
			t.Fatalf("group %s/%d: count %d partitions %v", g.Service, g.Code, g.Count, g.Partitions)
		}
	}
}

func TestParseCategory(t *testing.T) {
	for c := BrokerError; c <= DecodeError; c++ {
		if got, ok := ParseCategory(c.String()); !ok || got != c {
			t.Errorf("ParseCategory(%q) = %v, %v", c.String(), got, ok)
		}
	}
	if _, ok := ParseCategory("nope"); ok {
		t.Error("unknown name parsed")
	}
}

// TestSampleBounded: a group keeps at most maxSample bytes of a message, cut on a character
// boundary: messages come from brokers and services, and a thousand groups hold one each.
func TestSampleBounded(t *testing.T) {
	c := New(Config{})
	long := strings.Repeat("é", 4096) // 8 KiB of two-byte characters
	e := ev(BrokerError, "SendMessage", 400, "InvalidParameterValue", "svc", ordersOut, 0, 1, 0)
	e.Message = long
	c.Report(e)
	s := c.Snapshot()
	if len(s.Groups) != 1 {
		t.Fatalf("%d groups", len(s.Groups))
	}
	got := s.Groups[0].Sample
	if len(got) > maxSample || !utf8.ValidString(got) || !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) {
		t.Errorf("sample of %d bytes (valid UTF-8 %v)", len(got), utf8.ValidString(got))
	}
}
