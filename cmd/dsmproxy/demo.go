package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/sqsserver"
)

const usageDemo = `Usage: dsmproxy %s [flags]

Runs dsmproxy's main job with nothing installed: an in-process Kafka cluster (franz-go kfake, 3
brokers), dsmproxy in front of it, an in-process receiver standing in for the Datadog Agent, and
a pipeline of example services that reach Kafka only through the proxy:

  orders  --produce-->  [orders]  --consume-->  billing  --produce-->  [invoices]  --consume-->  mailer
  auditor --produce-->  [audit-log]   (a record over the broker's size limit: a tracked, lost message)

When RabbitMQ answers on --amqp-upstream (guest/guest), an AMQP front joins:

  shipping --publish--> [exchange dsmproxy-demo] --> warehouse   (plus an unroutable mandatory parcel now and then)

Unless --sqs=false, an in-process SQS server (goaws) behind an AWS front joins too; the services
use aws-sdk-go-v2 and sign with the demo's static keys (demo/demo), which the proxy also re-signs with:

  checkout --SendMessage(Batch)--> [queue dsmproxy-demo-payments] --ReceiveMessage--> payments
           (plus, every 3 s, a send to a queue that does not exist: a tracked SQS error)

Every flush (10 s) it prints what the Agent received: pathways with edge and end-to-end latency
p50/p99, messages/s, consumer lag, and the errors the proxy tracked (also at /errors). billing's
consume-to-produce link is made by the proxy's optional link_consume_produce setting, on in the
demo. Ctrl-C stops it cleanly.

Flags:
`

// register adds demo's flags to fs, their defaults set in o.
func (o *demoOptions) register(fs *flag.FlagSet) {
	fs.IntVar(&o.rate, "rate", 200, "`N` orders produced per second (1 to 1000000)")
	fs.DurationVar(&o.duration, "duration", 0, "stop after `DURATION` of traffic, counted once the services start (0 = until Ctrl-C)")
	fs.DurationVar(&o.flush, "flush", 10*time.Second, "bucket and flush `INTERVAL` (1s or more)")
	fs.StringVar(&o.agentURL, "agent-url", "", "also send the stats to the real Datadog Agent at `URL`")
	fs.StringVar(&o.amqpUpstream, "amqp-upstream", "127.0.0.1:5672", "RabbitMQ (`HOST:PORT`, guest/guest) for the AMQP part; used when it answers; off disables")
	fs.BoolVar(&o.sqs, "sqs", true, "run the SQS part of the demo (an in-process SQS server behind an AWS front); --sqs=false leaves it out")
	fs.StringVar(&o.logLevel, "log-level", "error", "proxy log `LEVEL` (tracked errors are in the tables and at /errors)")
}

func cmdDemo(args []string, stdout, stderr io.Writer) error {
	var o demoOptions
	fs := newFlagSet("demo", usageDemo, stderr)
	o.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), usageDemo, "demo")
		printFlags(fs)
	}
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if o.flush < time.Second {
		return fmt.Errorf("--flush %s: 1s or more (it is the width of the DSM buckets)", o.flush)
	}
	if o.rate < 1 || o.rate > maxDemoRate {
		// The services tick at a second divided by the rate: past a billion that is no time.
		return fmt.Errorf("--rate %d: 1 to %d orders a second", o.rate, maxDemoRate)
	}
	if o.duration < 0 {
		return fmt.Errorf("--duration %s: 0 (until Ctrl-C) or more", o.duration)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return runDemo(ctx, o, stdout, stderr)
}

// maxDemoRate bounds --rate: far more orders a second than the demo's one producer sends.
const maxDemoRate = 1_000_000

type demoOptions struct {
	rate         int
	flush        time.Duration
	duration     time.Duration // of traffic; 0: until ctx ends
	agentURL     string
	logLevel     string
	amqpUpstream string // RabbitMQ host:port, or "off"
	sqs          bool   // an in-process SQS server (goaws) behind an AWS front
}

func runDemo(ctx context.Context, o demoOptions, stdout, stderr io.Writer) error {
	// A 64 KiB message.max.bytes lets the demo's auditor provoke a real broker error now and then.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(demoMaxMessageBytes)}))
	if err != nil {
		return fmt.Errorf("starting the in-process Kafka cluster: %w", err)
	}
	defer cluster.Close()
	if err := createAuditLog(ctx, cluster.ListenAddrs()); err != nil {
		return fmt.Errorf("creating the demo's audit-log topic: %w", err)
	}

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
	withAMQP := o.amqpUpstream != "off" && o.amqpUpstream != "" && answers(o.amqpUpstream)
	if withAMQP {
		cfg.AMQP = []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: o.amqpUpstream}}
	}
	var sqsServer *sqsserver.Server
	if o.sqs {
		if sqsServer, err = sqsserver.Start(); err != nil {
			return err
		}
		defer sqsServer.Close()
		// As `dsmproxy run --aws 127.0.0.1:0=<goaws URL>` with AWS_ACCESS_KEY_ID=demo and
		// AWS_SECRET_ACCESS_KEY=demo, but the keys are given in code, not read from the environment.
		cfg.AWS = []AWSConfig{{Listen: "127.0.0.1:0", Upstream: sqsServer.URL(), credentials: demoSQSCreds}}
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	// As run's: a stalled stderr (`make demo 2>&1 | less`, paused) drops log lines, counted,
	// instead of holding the proxy's connections that log.
	log, closeLog, err := newRunLogger(cfg, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
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
	services := demoServices(bootstrap, o.rate)
	if withAMQP {
		amqpAddr := rt.fronts[1].Addr().String()
		fmt.Fprintf(stdout, "RabbitMQ at %s, dsmproxy AMQP front at %s: shipping -> [exchange dsmproxy-demo] -> warehouse\n", o.amqpUpstream, amqpAddr)
		services = append(services, demoAMQPServices("amqp://guest:guest@"+amqpAddr+"/", max(o.rate/10, 1))...)
	} else if o.amqpUpstream == "off" || o.amqpUpstream == "" {
		fmt.Fprintln(stdout, "(--amqp-upstream off: the AMQP part of the demo is off)")
	} else {
		fmt.Fprintf(stdout, "(no RabbitMQ answers on %s: the AMQP part of the demo is off)\n", o.amqpUpstream)
	}
	if o.sqs {
		awsAddr := rt.fronts[len(rt.fronts)-1].Addr().String() // AWS fronts come last
		sqsSvcs, err := demoSQSServices(ctx, "http://"+awsAddr, max(o.rate/10, 1))
		if err != nil {
			pcancel()
			_ = rt.stop()
			if ctx.Err() != nil { // stopped before the queue existed
				return nil
			}
			return err
		}
		fmt.Fprintf(stdout, "SQS (goaws, in process) at %s, dsmproxy AWS front at %s: checkout -> [queue %s] -> payments\n", sqsServer.URL(), awsAddr, demoSQSQueue)
		services = append(services, sqsSvcs...)
	}
	fmt.Fprintf(stdout, "dsmproxy demo: Kafka (kfake, 3 brokers) at %v, dsmproxy at %s\n", cluster.ListenAddrs(), bootstrap)
	fmt.Fprintf(stdout, "admin: http://%s/dsm (what DSM sees), /metrics (Prometheus), /errors (tracked errors), /stats, /readyz, /debug/pprof/\n", rt.adminLn.Addr())
	fmt.Fprintf(stdout, "pipeline: orders -> [orders] -> billing -> [invoices] -> mailer, %d orders/s; first table in about %s. Ctrl-C stops.\n\n", o.rate, 2*o.flush)

	// Timed from here, not from the start: setting up (the cluster, its topics, the SQS queue)
	// takes a second or two, and a short --duration used to end inside it with an error.
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(services))
	for _, svc := range services {
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

// answers reports whether something accepts TCP connections at addr.
func answers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// demoAMQPServices: shipping publishes parcels to a direct exchange (and, now and then, one
// mandatory message nothing is bound for: a Basic.Return the proxy tracks); warehouse consumes them.
func demoAMQPServices(url string, rate int) []func(context.Context) error {
	const exchange, queue, key = "dsmproxy-demo", "dsmproxy-demo-parcels", "parcels"
	dial := func(name string) (*amqp091.Connection, *amqp091.Channel, error) {
		conn, err := amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": name}})
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		ch, err := conn.Channel()
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		if err := ch.ExchangeDeclare(exchange, "direct", false, true, false, false, nil); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		return conn, ch, nil
	}
	warehouse := func(ctx context.Context) error {
		conn, ch, err := dial("warehouse")
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
			return err
		}
		if err := ch.QueueBind(queue, key, exchange, false, nil); err != nil {
			return err
		}
		msgs, err := ch.Consume(queue, "warehouse", true, false, false, false, nil)
		if err != nil {
			return err
		}
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case _, ok := <-msgs:
				if !ok {
					return fmt.Errorf("warehouse: the broker closed the consumer")
				}
			}
		}
	}
	shipping := func(ctx context.Context) error {
		// Give warehouse a moment to bind its queue, so parcels are not unroutable from the start.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		conn, ch, err := dial("shipping")
		if err != nil {
			return err
		}
		defer conn.Close()
		returns := ch.NotifyReturn(make(chan amqp091.Return, 16))
		go func() {
			for range returns { // the app ignores returns, as many do
			}
		}()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
			rk, mandatory := key, false
			if n%(rate*3) == rate { // about every 3 s: a parcel for a route nobody serves
				rk, mandatory = "parcels-to-mars", true
			}
			err := ch.PublishWithContext(ctx, exchange, rk, mandatory, false, amqp091.Publishing{
				ContentType: "application/json", Body: fmt.Appendf(nil, `{"parcel":%d}`, n)})
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("shipping: %w", err)
			}
		}
	}
	return []func(context.Context) error{warehouse, shipping}
}

// demoMaxMessageBytes is the demo cluster's message.max.bytes.
const demoMaxMessageBytes = 64 << 10

// createAuditLog creates the auditor's topic with max.message.bytes set to the cluster's
// message.max.bytes. On Kafka a topic without its own max.message.bytes takes the broker's; a
// kfake topic describes 1 MiB whatever the broker's limit, and the proxy, which reads the topic's
// limit, would take the auditor's refused records for refusals the header caused and report
// topic_size_limit skips that a real cluster would not show.
func createAuditLog(ctx context.Context, brokers []string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	limit := strconv.Itoa(demoMaxMessageBytes)
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, 3, 1, map[string]*string{"max.message.bytes": &limit}, "audit-log")
	if err != nil {
		return err
	}
	return resp.Err
}

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

// printFlags lists fs's flags as run --help writes its own: --name VALUE, then what it does and
// its default.
func printFlags(fs *flag.FlagSet) {
	tw := tabwriter.NewWriter(fs.Output(), 0, 0, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		value, usage := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if value != "" {
			name += " " + strings.ToUpper(value)
		}
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "false" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(tw, "  %s\t%s\n", name, usage)
	})
	tw.Flush()
}
