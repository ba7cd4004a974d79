package amqp

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestKafkaClientOnAMQPFrontTold: a Kafka client pointed at the AMQP front (kgo here; kcat
// sends the same ApiVersions request) is refused as any other protocol is, and the Warn line
// says it is a Kafka client at the wrong port, not only the header's hex.
func TestKafkaClientOnAMQPFrontTold(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.p.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err == nil {
		t.Fatal("a Kafka client got an answer through an AMQP front")
	}
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "protocol other than AMQP 0-9-1") })
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "protocol other than AMQP 0-9-1") &&
			(!strings.Contains(line, `"looks_like":"a Kafka request"`) || !strings.Contains(line, "the client speaks Kafka")) {
			t.Errorf("the refusal does not say the client speaks Kafka: %s", line)
		}
	}
}
