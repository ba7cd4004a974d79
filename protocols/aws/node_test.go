package aws

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestSQSNodeClient runs @aws-sdk/client-sqs (JS v3, body MD5 validation on) through the proxy.
func TestSQSNodeClient(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	out := runNodeClient(t, "AWS_ENDPOINT_URL_SQS="+tp.url, "sqs-client.js", "nodeq")
	var res struct {
		QueueURL string `json:"queueUrl"`
		Send     struct {
			MD5OfMessageAttributes string
		} `json:"send"`
		Batch struct {
			Successful []struct{ Id, MD5OfMessageAttributes string }
			Failed     []any
		} `json:"batch"`
		Received []struct {
			Body                   string
			MD5OfMessageAttributes string
			MessageAttributes      map[string]jsonAttrValue
		} `json:"received"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node output %s: %v", out, err)
	}
	if !strings.HasPrefix(res.QueueURL, tp.url+"/") {
		t.Errorf("queue URL %s does not point at the proxy", res.QueueURL)
	}
	if want := attributesMD5([]attr{{Name: "who", DataType: "String", String: sp("node")}}); res.Send.MD5OfMessageAttributes != want {
		t.Errorf("send MD5OfMessageAttributes %q, want %q", res.Send.MD5OfMessageAttributes, want)
	}
	if len(res.Batch.Successful) != 2 || len(res.Batch.Failed) != 0 {
		t.Errorf("batch result %+v", res.Batch)
	}
	if len(res.Received) != 3 {
		t.Fatalf("received %d messages, want 3", len(res.Received))
	}
	for _, m := range res.Received {
		var attrs []attr
		for k, v := range m.MessageAttributes {
			if k == ddAttr {
				t.Errorf("%q: _datadog leaked to a client that did not ask for it", m.Body)
			}
			attrs = append(attrs, attr{Name: k, DataType: v.DataType, String: v.StringValue, Binary: v.BinaryValue})
		}
		if m.MD5OfMessageAttributes != attributesMD5(attrs) {
			t.Errorf("%q: MD5OfMessageAttributes %q, want %q", m.Body, m.MD5OfMessageAttributes, attributesMD5(attrs))
		}
	}
	assertChained(t, tp, "sqs", "nodeq", 3)
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestKinesisNodeClient runs @aws-sdk/client-kinesis (JS v3), which speaks HTTP/2 to every
// endpoint (h2c to this http one), through the proxy with injection on: its calls succeed, its
// reads return the records as it put them, and the JSON ones' consume checkpoints are chained.
func TestKinesisNodeClient(t *testing.T) {
	up := kinesisPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL(); c.KinesisInjectData = true })
	out := runNodeClient(t, "AWS_ENDPOINT_URL_KINESIS="+tp.url, "kinesis-client.js", "nodestream")
	var res struct {
		ShardID, SequenceNumber string
		Failed                  int
		Records                 []struct{ PartitionKey, Data string }
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node output %s: %v", out, err)
	}
	if res.ShardID == "" || res.SequenceNumber == "" || res.Failed != 0 {
		t.Errorf("puts: %+v", res)
	}
	want := []string{`{"from":"node"}`, `{"batch":1}`, "\xf3\x89\x9a\xc2\x00"}
	if len(res.Records) != len(want) {
		t.Fatalf("read %d records, want %d", len(res.Records), len(want))
	}
	for i, r := range res.Records {
		if got, _ := decodeB64(r.Data); string(got) != want[i] {
			t.Errorf("record %d (%s): %q, want the producer's %q", i, r.PartitionKey, got, want[i])
		}
	}
	prod := tp.rec.withTags("direction:out", "topic:nodestream", "type:kinesis")
	cons := tp.rec.withTags("direction:in", "topic:nodestream", "type:kinesis")
	if len(prod) != 3 || len(cons) != 3 || cons[0].ParentHash != prod[0].Hash || cons[1].ParentHash != prod[1].Hash {
		t.Errorf("%d produce and %d consume checkpoints, want 3 and 3, the JSON records' chained", len(prod), len(cons))
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// runNodeClient runs one of testdata/aws/node's client scripts with args, its endpoint set by
// endpointEnv (AWS_ENDPOINT_URL_<SERVICE>=url) and the test's credentials, and returns its stdout.
func runNodeClient(t *testing.T, endpointEnv, script string, args ...string) []byte {
	t.Helper()
	dir := ensureNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Env = []string{
		"PATH=" + getenv("PATH"), "HOME=" + t.TempDir(), endpointEnv, "AWS_REGION=us-east-1",
		"AWS_ACCESS_KEY_ID=" + testKey, "AWS_SECRET_ACCESS_KEY=" + testSecret,
	}
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("node client %s: %v\n%s\n%s", script, err, out, stderr)
	}
	return out
}
