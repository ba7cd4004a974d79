package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

const usageDemo = `Usage: dsmproxy %s [flags]

Runs dsmproxy's main job with nothing installed: an in-process Kafka cluster (franz-go kfake, 3
brokers), dsmproxy in front of it, an in-process receiver standing in for the Datadog Agent, and
a pipeline of example services that reach Kafka only through the proxy:

  orders  --produce-->  [orders]  --consume-->  billing  --produce-->  [invoices]  --consume-->  mailer
  auditor --produce-->  [audit-log]   (a record over the broker's size limit: a tracked, lost message)

Every flush (10 s) it prints what the Agent received: pathways with edge and end-to-end latency
p50/p99, messages/s, consumer lag, and the errors the proxy tracked (also at /errors). billing's consume-to-produce link is made by the proxy's
optional link_consume_produce setting, on in the demo. Ctrl-C stops it cleanly.

Flags:
`

func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", usageDemo, stderr)
	rate := fs.Int("rate", 200, "orders produced per second")
	duration := fs.Duration("duration", 0, "stop after this long (0 = until Ctrl-C)")
	flush := fs.Duration("flush", 10*time.Second, "bucket and flush interval")
	agentURL := fs.String("agent-url", "", "also send the stats to this real Datadog Agent")
	logLevel := fs.String("log-level", "error", "proxy log level (tracked errors are in the tables and at /errors)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), usageDemo, "demo")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	return runDemo(ctx, demoOptions{rate: *rate, flush: *flush, agentURL: *agentURL, logLevel: *logLevel}, stdout, stderr)
}

type demoOptions struct {
	rate     int
	flush    time.Duration
	agentURL string
	logLevel string
}

func runDemo(ctx context.Context, o demoOptions, stdout, stderr io.Writer) error {
	// A 64 KiB message.max.bytes lets the demo's auditor provoke a real broker error now and then.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(demoMaxMessageBytes)}))
	if err != nil {
		return fmt.Errorf("starting the in-process Kafka cluster: %w", err)
	}
	defer cluster.Close()

	recv := newDemoAgent(stdout)
	defer recv.Close()

	on := true
	cfg := &Config{
		Env:     "demo",
		Service: "dsmproxy-demo",
		Log:     LogConfig{Level: o.logLevel, Format: "console"},
		Admin:   AdminConfig{Listen: "127.0.0.1:0"},
		Agent:   AgentConfig{URL: recv.URL(), FlushInterval: Duration(o.flush)},
		Kafka: []KafkaConfig{{
			Listen: "127.0.0.1:0", Bootstrap: cluster.ListenAddrs(),
			LinkConsumeProduce: true, RespectExistingContext: &on,
		}},
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	pctx, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	var extra []aggregator.Sink
	if o.agentURL != "" {
		real, err := aggregator.NewAgentSink(aggregator.AgentConfig{URL: o.agentURL, Env: cfg.Env, TracerVersion: version, Log: log})
		if err != nil {
			return fmt.Errorf("--agent-url: %w", err)
		}
		extra = append(extra, real)
	}
	rt, err := start(pctx, cfg, log, extra)
	if err != nil {
		return err
	}
	recv.mu.Lock()
	recv.errors = func() *errtrack.Snapshot { s := rt.errs.Snapshot(); return &s }
	recv.mu.Unlock()
	bootstrap := rt.fronts[0].Addr().String()
	fmt.Fprintf(stdout, "dsmproxy demo: Kafka (kfake, 3 brokers) at %v, dsmproxy at %s\n", cluster.ListenAddrs(), bootstrap)
	fmt.Fprintf(stdout, "admin: http://%s/errors (tracked errors), /readyz, /debug/pprof/\n", rt.adminLn.Addr())
	fmt.Fprintf(stdout, "pipeline: orders -> [orders] -> billing -> [invoices] -> mailer, %d orders/s; first table in about %s. Ctrl-C stops.\n\n", o.rate, 2*o.flush)

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for _, svc := range demoServices(bootstrap, o.rate) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := svc(ctx); err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
				errc <- err
			}
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	wg.Wait()
	fmt.Fprintln(stdout, "\nstopping: draining the proxy and flushing the last bucket")
	rt.cfg.DrainTimeout = Duration(2 * time.Second)
	pcancel()
	if err := rt.stop(); err != nil && runErr == nil {
		runErr = err
	}
	recv.printPending()
	return runErr
}

// demoServices returns the three example services; each runs until ctx is done.
func demoServices(bootstrap string, rate int) []func(context.Context) error {
	orders := func(ctx context.Context) error {
		cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ClientID("orders"), kgo.DefaultProduceTopic("orders"),
			kgo.ProducerLinger(5*time.Millisecond), kgo.AllowAutoTopicCreation())
		if err != nil {
			return err
		}
		defer cl.Close()
		tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
			v := fmt.Appendf(nil, `{"order":%d,"amount":%d}`, n, 10+rand.IntN(990))
			cl.Produce(ctx, &kgo.Record{Key: fmt.Appendf(nil, "customer-%d", n%50), Value: v}, nil)
		}
	}
	billing := func(ctx context.Context) error {
		return relay(ctx, bootstrap, "billing", "orders", "invoices")
	}
	mailer := func(ctx context.Context) error {
		return relay(ctx, bootstrap, "mailer", "invoices", "")
	}
	// auditor sends one record over the broker's limit every few seconds: MESSAGE_TOO_LARGE, which
	// its client reports to nobody; the proxy tracks it as a broker error and a lost message.
	auditor := func(ctx context.Context) error {
		cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ClientID("auditor"), kgo.AllowAutoTopicCreation(),
			kgo.ProducerBatchMaxBytes(4*demoMaxMessageBytes), kgo.RecordRetries(0), kgo.ProducerBatchCompression(kgo.NoCompression()))
		if err != nil {
			return err
		}
		defer cl.Close()
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
		for {
			big := &kgo.Record{Topic: "audit-log", Value: make([]byte, 2*demoMaxMessageBytes)}
			_ = cl.ProduceSync(ctx, big).FirstErr() // refused by the broker; the app shrugs
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
		}
	}
	return []func(context.Context) error{orders, billing, mailer, auditor}
}

// demoMaxMessageBytes is the demo cluster's message.max.bytes.
const demoMaxMessageBytes = 64 << 10

// relay consumes topic in group (= client id) and, when out is set, produces every record to out.
func relay(ctx context.Context, bootstrap, group, topic, out string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ClientID(group), kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.ProducerLinger(5*time.Millisecond), kgo.AllowAutoTopicCreation(), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := fetches.Err0(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("%s consuming %s: %w", group, topic, err)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			if out != "" {
				// The app's own payload, not the proxy's header: the proxy adds a fresh context.
				cl.Produce(ctx, &kgo.Record{Topic: out, Key: r.Key, Value: append([]byte(`{"invoice_for":`), append(r.Value, '}')...)}, nil)
			}
		})
	}
}
