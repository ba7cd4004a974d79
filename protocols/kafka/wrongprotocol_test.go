package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// TestTLSBrokerWithoutUpstreamTLSTold: a front without upstream_tls in front of a TLS listener
// gets no answer to its own ApiVersions. Brokers answer ApiVersions before any login, so the
// start-up line says to look at the listener and upstream_tls, at Warn (every client fails the
// same way), and does not blame SASL.
func TestTLSBrokerWithoutUpstreamTLSTold(t *testing.T) {
	pki := testpki.New(t, "kafka test CA")
	_, _, brokerPair := pki.Issue(t, "kfake")
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(&tls.Config{Certificates: []tls.Certificate{brokerPair}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	p.discover(testCtx(t), 0) // returns once it has given up on the proxy's own Metadata
	var told bool
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "did not answer the proxy's ApiVersions") {
			told = strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "upstream_tls")
		}
		if strings.Contains(line, "SASL") {
			t.Errorf("a TLS listener's silence is put down to SASL: %s", line)
		}
	}
	if !told {
		t.Errorf("no Warn naming upstream_tls:\n%s", logs.String())
	}
}

// TestTLSClientOnPlaintextFrontTold: a client that speaks TLS to a plaintext front (kgo with a
// TLS dialer, against kfake) is refused, and the Warn line says it spoke TLS (looks_like, the
// field the README names for every front) and which setting to change.
func TestTLSClientOnPlaintextFrontTold(t *testing.T) {
	c, _ := startCluster(t)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.DialTLSConfig(&tls.Config{InsecureSkipVerify: true}),
		kgo.RequestRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Ping(testCtx(t)); err == nil {
		t.Fatal("a TLS client got an answer from a plaintext front")
	}
	waitFor(t, "the refusal logged", func() bool { return strings.Contains(logs.String(), "not valid Kafka framing") })
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "not valid Kafka framing") &&
			(!strings.Contains(line, `"looks_like":"a TLS handshake"`) || !strings.Contains(line, `"hint":"the client speaks TLS`) ||
				!strings.Contains(line, "tls {cert_file, key_file}")) {
			t.Errorf("the refusal does not say the client speaks TLS and what to set: %s", line)
		}
	}
}

// TestUnreachableBootstrapTold: with no broker at the bootstrap address (a kfake cluster that
// was closed), discovery says so at Warn, naming the address, instead of only at Debug: a wrong
// bootstrap is in the log at start, not only once a client connects.
func TestUnreachableBootstrapTold(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	gone := c.ListenAddrs()
	c.Close()
	var logs syncbuf.Buffer
	p := startProxy(t, nil, func(cfg *Config) { cfg.Bootstrap, cfg.Log = gone, zerolog.New(&logs) })
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan struct{})
	go func() { p.discover(ctx, time.Second); close(done) }()
	waitFor(t, "the unreachable bootstrap told", func() bool {
		return strings.Contains(logs.String(), "cannot learn the broker nodes from the bootstrap brokers")
	})
	cancel()
	<-done
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "cannot learn the broker nodes") && (!strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, gone[0])) {
			t.Errorf("told as %s", line)
		}
	}
}

// TestAMQPBrokerAsBootstrapTold: a Kafka front whose bootstrap is a RabbitMQ port (the local
// RabbitMQ, which answers any other protocol with its AMQP header) says so in the field the
// README names for every front, looks_like, with the hint, on the client connection's Warn line
// and on discovery's.
func TestAMQPBrokerAsBootstrapTold(t *testing.T) {
	const rabbit = "127.0.0.1:5672"
	if c, err := net.DialTimeout("tcp", rabbit, 5*time.Second); err != nil {
		t.Fatalf("this test needs the local RabbitMQ on %s (rabbitmq-server -detached): %v", rabbit, err)
	} else {
		c.Close()
	}
	var logs syncbuf.Buffer
	p := startProxy(t, nil, func(cfg *Config) { cfg.Bootstrap, cfg.Log = []string{rabbit}, zerolog.New(&logs) })
	p.discover(testCtx(t), 0) // returns once it has given up on the proxy's own Metadata
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.RequestRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Ping(testCtx(t)); err == nil {
		t.Fatal("a Kafka client got an answer from RabbitMQ through the proxy")
	}
	for _, msg := range []string{"response frame is not valid Kafka framing", "did not answer the proxy's ApiVersions"} {
		waitFor(t, msg, func() bool { return strings.Contains(logs.String(), msg) })
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, msg) && (!strings.Contains(line, `"looks_like":"an AMQP protocol header"`) ||
				!strings.Contains(line, `"hint":"the upstream is not a Kafka broker`)) {
				t.Errorf("the line does not name the AMQP header in looks_like, with the hint: %s", line)
			}
		}
	}
}

// TestUpstreamProblemFromAClient: /readyz asks the front what it knows of a bootstrap broker
// that takes TCP dials. One that answered a client's request with AMQP's protocol header (the
// local RabbitMQ; no discovery at start with ephemeral node ports) is not a Kafka broker, and
// asking again (RabbitMQ answers the same) keeps it so; a broker recorded so that answers
// ApiVersions when asked again (kfake) is a Kafka broker after all.
func TestUpstreamProblemFromAClient(t *testing.T) {
	const rabbit = "127.0.0.1:5672"
	p := startProxy(t, nil, func(cfg *Config) { cfg.Bootstrap = []string{rabbit} })
	if err := p.UpstreamProblem(testCtx(t), rabbit); err != nil {
		t.Errorf("before any answer: %v; want nil", err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.RequestRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Ping(testCtx(t)); err == nil {
		t.Fatal("a Kafka client got an answer from RabbitMQ through the proxy")
	}
	waitFor(t, "the answer recorded", func() bool { return p.wrong.Why(rabbit) != nil })
	if err := p.UpstreamProblem(testCtx(t), rabbit); err == nil || !strings.Contains(err.Error(), "an AMQP protocol header") ||
		!strings.Contains(err.Error(), "not a Kafka broker") {
		t.Errorf("UpstreamProblem = %v; want it to say RabbitMQ answered AMQP and is not a Kafka broker", err)
	}

	c, _ := startCluster(t)
	k := startProxy(t, c, nil)
	addr := c.ListenAddrs()[0]
	k.wrong.Wrong(addr, errors.New("recorded before the broker was put right"))
	if err := k.UpstreamProblem(testCtx(t), addr); err != nil {
		t.Errorf("kfake asked again: %v; want nil", err)
	}
	if err := k.wrong.Why(addr); err != nil {
		t.Errorf("still recorded after kfake answered: %v", err)
	}
}

// TestOtherFrontsClientTold: a client of another front at a Kafka front is told which front to
// point it at, as the AMQP and AWS fronts tell a Kafka client: an AMQP client (amqp091-go) at an
// AMQP front, an HTTP one (net/http, as the AWS SDKs) at an AWS front. The hint said only "is it
// pointed at the wrong port?".
func TestOtherFrontsClientTold(t *testing.T) {
	c, _ := startCluster(t)
	for _, tc := range []struct {
		name, looksLike, hint string
		connect               func(addr string) error
	}{
		{"amqp091-go", "an AMQP protocol header", "the client speaks AMQP: point it at an AMQP front's listen address, not at this Kafka one",
			func(addr string) error {
				conn, err := amqp091.DialConfig("amqp://guest:guest@"+addr, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
				if err == nil {
					conn.Close()
				}
				return err
			}},
		{"net/http", "an HTTP request", "the client speaks HTTP: point it at an AWS front's listen address, not at this Kafka one",
			func(addr string) error {
				resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/")
				if err == nil {
					resp.Body.Close()
				}
				return err
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
			if err := tc.connect(p.Addr().String()); err == nil {
				t.Fatal("the client got an answer from the Kafka front")
			}
			const msg = "request frame is not valid Kafka framing"
			waitFor(t, "the refusal logged", func() bool { return strings.Contains(logs.String(), msg) })
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, msg) && (!strings.Contains(line, `"looks_like":"`+tc.looksLike+`"`) || !strings.Contains(line, `"hint":"`+tc.hint)) {
					t.Errorf("the refusal does not name the front to use (%q): %s", tc.hint, line)
				}
			}
		})
	}
}

// TestStreamedFetchAnswerClearsUpstreamProblem: a reason recorded for a bootstrap broker is
// cleared by the first answer a connection gets from it. A client whose first request is a
// Fetch (one that sends no ApiVersions first) gets that answer streamed (fetchstream.go), which
// did not count as the broker's answer: the reason stayed until /readyz asked the broker again.
func TestStreamedFetchAnswerClearsUpstreamProblem(t *testing.T) {
	topic := uniqueTopic(t, "streamed-first")
	c, _ := startCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	p := startProxy(t, c, streamAll)
	addr := c.ListenAddrs()[0]
	p.wrong.Wrong(addr, errors.New("recorded before the broker was put right"))
	fetch := kmsg.NewPtrFetchRequest()
	fetch.Version = 11 // topics by name
	fetch.MaxBytes, fetch.MinBytes, fetch.SessionEpoch = 1<<20, 1, -1
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = topic
	fp := kmsg.NewFetchRequestTopicPartition()
	fp.PartitionMaxBytes = 1 << 20
	ft.Partitions = append(ft.Partitions, fp)
	fetch.Topics = append(fetch.Topics, ft)
	conn := rawClient(t, p)
	if _, err := conn.Write(requestFrame(fetch, 1)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := readFrame(conn, DefaultMaxFrameBytes); err != nil {
		t.Fatal(err)
	}
	if n := p.Stats().StreamedFetches; n != 1 {
		t.Fatalf("%d fetch responses streamed, want this one", n)
	}
	if err := p.wrong.Why(addr); err != nil {
		t.Errorf("still recorded after the broker's streamed Fetch answer reached the client: %v", err)
	}
}
