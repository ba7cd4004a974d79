package errtrack

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
)

var update = flag.Bool("update", false, "rewrite golden files")

const goldenDir = "../testdata/errors"

// viewCollector is a collector with one group of every category and a closed interval behind it.
func viewCollector(t *testing.T) (*Collector, *clock) {
	t.Helper()
	clk := &clock{now: t0}
	c := New(Config{Clock: clk.Now, MaxFingerprints: 5})
	amqpEdge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Exchange: "events", HasRoutingKey: pathway.RoutingKeyTrue}
	sqsEdge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: "missing-queue"}
	for i := range 3 {
		c.Report(ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "orders-api", ordersOut, int32(i), 10, time.Duration(i)*time.Second))
	}
	c.Report(Event{Time: t0.Add(time.Second), Category: LostMessage, Protocol: "amqp", Operation: "Basic.Return", Code: 312,
		Name: "NO_ROUTE", Message: "mandatory publish matched no queue", Service: "notifier", Edge: amqpEdge, Partition: -1, Messages: 1})
	c.Report(Event{Time: t0.Add(2 * time.Second), Category: BrokerError, Protocol: "sqs", Operation: "SendMessage", Code: 400,
		Name: "AWS.SimpleQueueService.NonExistentQueue", Message: "The specified queue does not exist.", Service: "billing",
		Edge: sqsEdge, Partition: -1, Messages: 1})
	c.Report(Event{Time: t0.Add(3 * time.Second), Category: ProxySkip, Protocol: "kafka", Operation: "Produce",
		Name: "size_limit", Message: "batch forwarded unmodified", Service: "orders-api", Edge: ordersOut, Partition: 1, Messages: 50})
	if err := c.Flush(context.Background(), t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Open interval: more of the Kafka error and a decode error; then the bound is reached. The
	// next new error takes the place of the AMQP one, the least recently seen without an event
	// since the flush; once every group had one, the one after is overflow.
	c.Report(ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "orders-api", ordersOut, 0, 10, 11*time.Second))
	c.Report(Event{Time: t0.Add(12 * time.Second), Category: DecodeError, Protocol: "kafka", Operation: "Fetch",
		Name: "undecodable", Message: "Fetch response v17: short buffer", Partition: -1})
	c.Report(Event{Time: t0.Add(13 * time.Second), Category: LostMessage, Protocol: "sqs", Operation: "SendMessageBatch",
		Name: "InvalidParameterValue", Service: "billing", Edge: sqsEdge, Partition: -1, Messages: 2}) // evicts NO_ROUTE
	c.Report(Event{Time: t0.Add(13 * time.Second), Category: BrokerError, Protocol: "sqs", Operation: "SendMessage", Code: 400,
		Name: "AWS.SimpleQueueService.NonExistentQueue", Message: "The specified queue does not exist.", Service: "billing",
		Edge: sqsEdge, Partition: -1, Messages: 1})
	c.Report(Event{Time: t0.Add(13 * time.Second), Category: ProxySkip, Protocol: "kafka", Operation: "Produce",
		Name: "size_limit", Message: "batch forwarded unmodified", Service: "orders-api", Edge: ordersOut, Partition: 1, Messages: 50})
	c.Report(ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "orders-api", ordersOut, 0, 3, 14*time.Second)) // overflow
	clk.Set(t0.Add(15 * time.Second))
	return c, clk
}

func TestViewGolden(t *testing.T) {
	c, _ := viewCollector(t)
	srv := httptest.NewServer(c.View())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/errors")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	golden := filepath.Join(goldenDir, "view.json")
	if *update {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(body, want) {
		t.Errorf("GET /errors differs from %s (run with -update after checking):\n%s", golden, body)
	}
	var doc ViewJSON
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Fingerprints != 5 || doc.OverflowEvents != 1 || doc.OverflowLostMessages != 3 || doc.EvictedGroups != 1 ||
		len(doc.Lost) != 2 || doc.Lost[0].Messages != 2 || doc.Lost[1].Messages != 1 {
		t.Errorf("document summary: %+v", doc)
	}

	post, err := http.Post(srv.URL+"/errors", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST status %d", post.StatusCode)
	}
}

func TestLogReporterOneLinePerGroup(t *testing.T) {
	var buf bytes.Buffer
	clk := &clock{now: t0}
	c := New(Config{Clock: clk.Now, Log: zerolog.New(&buf), MaxFingerprints: 2})
	storm := ev(BrokerError, "Produce", 6, "NOT_LEADER_FOR_PARTITION", "a", ordersOut, 0, 1, time.Second)
	storm.Retriable = true // retriable broker errors are routine: info, not warn
	for range 5000 {
		c.Report(storm)
	}
	c.Report(ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "a", ordersOut, 0, 3, time.Second))
	c.Report(ev(LostMessage, "Produce", 10, "MESSAGE_TOO_LARGE", "b", ordersOut, 0, 3, time.Second)) // overflow
	if err := c.Flush(context.Background(), t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("log lines = %d, want 3 (two groups and the overflow):\n%s", len(lines), buf.String())
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if first["count"] != 5000.0 || first["level"] != "info" || first["name"] != "NOT_LEADER_FOR_PARTITION" || first["edge"] != "direction:out,topic:orders,type:kafka" {
		t.Errorf("storm line: %v", first)
	}
	var second, third map[string]any
	_ = json.Unmarshal([]byte(lines[1]), &second)
	_ = json.Unmarshal([]byte(lines[2]), &third)
	if second["level"] != "warn" || second["category"] != "lost_message" || second["messages"] != 3.0 {
		t.Errorf("lost line: %v", second)
	}
	if third["events"] != 1.0 || third["lost_messages"] != 3.0 {
		t.Errorf("overflow line: %v", third)
	}
	buf.Reset()
	if err := c.Flush(context.Background(), t0.Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Errorf("a quiet interval logged: %s", buf.String())
	}
}
