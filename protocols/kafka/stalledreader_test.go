package kafka

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestStalledReaderLearnsOfBrokerClose: a client fetches far more than the sockets hold and stops
// reading (its reading goroutine stuck), then the broker closes the connection while the client
// keeps sending requests (heartbeats, metadata). Direct, one of its next writes fails: the broker
// is gone. Through the proxy it must fail too, and the proxy must let go of the connection, though
// the client reads nothing: the proxy's answer relay, stuck writing the fetch response, would
// otherwise hold the session for as long as the client lives.
func TestStalledReaderLearnsOfBrokerClose(t *testing.T) {
	const total = 16 << 20 // well over what the sockets between client and proxy hold (4 MiB send buffer)
	topic := uniqueTopic(t, "stalled-reader")
	c, g := startCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	// The whole fetch response is read from the broker before the proxy writes it in one piece:
	// once the client has any of it, the relay is in that write until the client reads the rest.
	p := startProxy(t, c, func(cfg *Config) { cfg.streamFetchMin = 2 * total })
	ctx := testCtx(t)
	value := bytes.Repeat([]byte("v"), 256<<10)
	recs := make([]*kgo.Record, total/len(value))
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Value: value}
	}
	cl := kgoClient(t, p, kgo.ProducerBatchCompression(kgo.NoCompression())) // incompressible: whole
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close() // the connections left are the test's

	for _, path := range []string{"direct", "proxy"} {
		t.Run(path, func(t *testing.T) {
			addr := c.ListenAddrs()[0]
			if path == "proxy" {
				addr = p.Addr().String()
			}
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.(*net.TCPConn).SetReadBuffer(4 << 10)
			req := wholeFetch(topic, 2*total)
			if _, err := conn.Write(requestFrame(req, 1)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the first bytes of the fetch response", func() bool { return proxy.Unread(conn) > 0 })
			g.closeAll()

			// The client sends on, as kgo does, and never reads. The deadline only ends a test
			// that failed: a client the proxy pins waits for ever.
			conn.SetWriteDeadline(time.Now().Add(60 * time.Second))
			meta := requestFrame(emptyMetadata(), 2)
			for {
				_, err := conn.Write(meta)
				if err == nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
					t.Fatalf("%s: the client never learned that the broker closed the connection: %v", path, err)
				}
				t.Logf("%s: the client's write failed: %v", path, err)
				break
			}
			if path == "proxy" {
				waitFor(t, "the proxy to end the connection", func() bool { return p.Stats().OpenConnections == 0 })
			}
		})
	}
}

// wholeFetch is a Fetch v11 of partition 0 of topic from offset 0, for up to maxBytes.
func wholeFetch(topic string, maxBytes int32) *kmsg.FetchRequest {
	req := kmsg.NewPtrFetchRequest()
	req.Version = 11
	req.ReplicaID, req.MinBytes, req.MaxBytes = -1, 1, maxBytes
	rt := kmsg.NewFetchRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewFetchRequestTopicPartition()
	rp.PartitionMaxBytes, rp.CurrentLeaderEpoch = maxBytes, -1
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	return req
}
