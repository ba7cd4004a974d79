package aws

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// downable sends upstream requests with http.DefaultTransport, or fails them as a refused
// dial while down is set: the upstream's outage, and its end, at will.
type downable struct{ down atomic.Bool }

func (d *downable) RoundTrip(r *http.Request) (*http.Response, error) {
	if d.down.Load() {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestUpstreamFailuresDoNotFloodTheLog: while the service cannot be reached, every request an
// SDK sends (and retries) was answered 502 with a Warn line of its own, so an outage under
// load wrote a Warn per message. As the Kafka and AMQP fronts log their failed upstream dials,
// the first 10 and every 1000th are Warn, the rest Debug, each with upstream_failures_total;
// and always the first after a request that got through, so that each outage is told. /stats
// counts them all (UpstreamFailures), as it counts the other fronts' failed dials.
func TestUpstreamFailuresDoNotFloodTheLog(t *testing.T) {
	up := sqsPeer(t)
	tr := &downable{}
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) {
		c.Upstream, c.Transport, c.Log = up.URL(), tr, zerolog.New(&logs).Level(zerolog.DebugLevel)
	})
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: &tp.url, Credentials: sqsClient(tp.url, testKey, testSecret).Options().Credentials,
		RetryMaxAttempts: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lines := func() (warn, all int, last map[string]any) {
		for _, l := range strings.Split(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil || m["message"] != "upstream request failed; answered 502" {
				continue
			}
			all++
			if m["level"] == "warn" {
				warn++
			}
			last = m
		}
		return warn, all, last
	}
	tr.down.Store(true)
	for range 15 {
		if _, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{}); err == nil {
			t.Fatal("ListQueues succeeded with the upstream down")
		}
	}
	if warn, all, last := lines(); warn != 10 || all != 15 || last["upstream_failures_total"] != float64(15) {
		t.Fatalf("15 failed requests: %d Warn lines of %d, the last %v; want 10 of 15, the last with upstream_failures_total 15", warn, all, last)
	}
	if n := tp.Stats().UpstreamFailures; n != 15 {
		t.Fatalf("15 requests answered 502 for an unreachable upstream: UpstreamFailures %d in /stats, want 15", n)
	}
	tr.down.Store(false)
	if _, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{}); err != nil {
		t.Fatalf("ListQueues with the upstream back: %v", err)
	}
	tr.down.Store(true)
	if _, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{}); err == nil {
		t.Fatal("ListQueues succeeded with the upstream down")
	}
	if warn, all, last := lines(); warn != 11 || all != 16 || last["level"] != "warn" {
		t.Errorf("the first failure after a request got through: %d Warn lines of %d, the last %v; want it at Warn (11 of 16)", warn, all, last)
	}
}
