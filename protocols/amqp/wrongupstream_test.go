package amqp

import (
	"context"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestUpstreamOfAnotherProtocol: a front pointed at a Kafka broker (kfake) takes TCP dials, and
// the broker, reading the protocol header as the size of a 1 GB request, waits for the rest:
// the front warned of a silent upstream, while /readyz, which asks the front what it knows of
// its upstream, still said "ok". The front keeps what it saw for /readyz, and asking again
// (with a moment's silence for an answer) does not take it back.
func TestUpstreamOfAnotherProtocol(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	kafkaAddr := cluster.ListenAddrs()[0]
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) {
		cfg.Upstream = kafkaAddr
		cfg.Log = zerolog.New(&logs)
		cfg.upstreamWait = 100 * time.Millisecond
	})
	reporter, ok := any(h.p).(interface {
		UpstreamProblem(ctx context.Context, addr string) error
	})
	if !ok {
		t.Fatal("the AMQP front tells /readyz nothing of what its upstream answered: a Kafka broker there is reported ready")
	}
	if err := reporter.UpstreamProblem(context.Background(), kafkaAddr); err != nil {
		t.Errorf("before any client: %v; want nil (nothing seen yet)", err)
	}
	// The client's own handshake timeout ends its wait.
	if _, err := amqp091.DialConfig(h.url, amqp091.Config{Dial: amqp091.DefaultDial(time.Second)}); err == nil {
		t.Fatal("a client got a connection through a front whose upstream is a Kafka broker")
	}
	waitFor(t, "the silent upstream in the log", func() bool {
		return strings.Contains(logs.String(), "the upstream has not answered the AMQP protocol header")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = reporter.UpstreamProblem(ctx, kafkaAddr)
	if err == nil || !strings.Contains(err.Error(), "did not answer the AMQP protocol header") {
		t.Errorf("UpstreamProblem = %v; want the silence the front saw", err)
	}
}
