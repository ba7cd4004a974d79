// Command dsmbench runs the same workload directly against a broker and through dsmproxy in one
// run, and prints throughput, latency, the proxy's CPU per GB moved and its peak RSS, with the
// proxy/direct ratios. The proxy runs as a child process (this binary, re-executed) so its CPU and
// memory are its own; the Kafka broker (kfake) runs in another, SQS and RabbitMQ are local servers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const usage = `Usage: dsmbench [flags]

Runs each workload directly against the broker and through dsmproxy, alternating for -rounds rounds
in one run, and prints messages/s, MB/s, p50/p99 round-trip latency, proxy CPU seconds per GB moved,
proxy peak RSS and the ratio proxy/direct. Defaults finish in about two minutes on 2 cores (three
with --relay).

Protocols:
  kafka  franz-go's kfake broker, in a process of its own, or with --kafka-in-process in
         dsmbench's; produce (acks=all, one batch per request) and fetch, per codec. The proxy
         injects the pathway header into every record and checkpoints it. Each path fetches what it
         produced, so only the proxy's consumer decodes a header per record; the "fetch with ctx"
         row compares fetches of the same records, those produced through the proxy, as a
         consumer of a traced producer reads them. The "produce with ctx" row sends records that
         already carry a context, as a traced producer does: the broker stores the same bytes on
         both paths and the proxy reads every record without splicing, so its direct rate against
         the bare produce's shows what the header itself costs the broker. Every timed fetch is a
         repeat read: each topic is read once, directly and untimed, first (kfake served the first
         read of records produced through the proxy at about half the rate of their second read,
         on every path).
  sqs    npm's local-aws-sqs server (node required); SendMessage with an attribute, ReceiveMessage
         10 at a time, from several workers; the proxy verifies, injects _datadog, re-signs. Then
         SendMessage "with ctx": messages whose _datadog already holds a tracer's context, which
         the proxy leaves as it is, so the emulator does the same work on both paths.
  amqp   the local RabbitMQ at --amqp-url; publish bare messages (confirms off, then on), consume
         them, then publish messages that already carry a pathway context, as a traced publisher
         sends them ("with ctx"; the proxy checkpoints them and replaces it). The entry the proxy
         adds to a bare message costs RabbitMQ itself; with the context on both paths the broker
         does the same work, and the "with ctx" rows show the proxy's own cost. Without confirms,
         a publish phase ends when the queue holds every message. The bare messages are consumed
         with automatic acks, those with a context acknowledged one by one (prefetch 1000), as
         most consumers read.

With --relay, each round also runs every workload through a plain TCP relay (a child process
that forwards each read as it comes and parses nothing; its CPU shows in the PROXY CPU column):
relay/direct is what one more TCP hop costs on this machine, proxy/relay what the proxy's
protocol work costs beyond it. (With AMQP confirms and consumes, many small frames, the relay
has used more CPU than the proxy: there it is a plain relay, not a floor.)

dsmbench and the broker keep the memory they free mapped (GODEBUG=madvdontneed=0, unless
GODEBUG sets it): they collect only between timed phases, and on VMs that fault pages in slowly
faulting freed memory in again cost whole phases half their rate. The proxy and relay children
run with the Go runtime's default, as dsmproxy ships.

To see inside the proxy child: DSMBENCH_PROXY_CPUPROFILE=FILE writes its CPU profile (go tool
pprof), DSMBENCH_PROXY_MEMPROFILE=FILE what it allocated (go tool pprof -sample_index=alloc_space),
DSMBENCH_PROXY_TRACE=FILE its execution trace (go tool trace; -pprof=sched or =net for where its
goroutines waited).

Flags:
`

type options struct {
	protocols      []string
	records        int
	size           int
	batch          int
	codecs         []string
	concurrency    int
	kafkaBuffered  int
	kafkaInProcess bool
	kafkaClientGC  bool
	relay          bool
	rounds         int
	amqpURL        string
	awsNodeDir     string
	sqsMsgs        int
	amqpMsgs       int
	timeout        time.Duration
	pinned         []int // --pin: the clients' and brokers' CPUs
}

func main() {
	if code, ok := runAsChild(os.Args[1:]); ok {
		os.Exit(code)
	}
	reexecWithBenchMemory()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// runAsChild runs this process as one of the children dsmbench starts, when args name one.
func runAsChild(args []string) (int, bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case childArg:
		return runChild(args[1:]), true
	case brokerArg:
		return runBroker(args[1:]), true
	case relayArg:
		return runRelay(args[1:]), true
	}
	return 0, false
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dsmbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	protocols := fs.String("protocols", "kafka,sqs,amqp", "comma-separated workloads to run: kafka, sqs, amqp")
	fs.IntVar(&o.rounds, "rounds", 5, "alternate direct and proxy this many times; RATIO is the median of the rounds' proxy/direct ratios")
	fs.IntVar(&o.records, "records", 200000, "Kafka: records per phase (produce or fetch, per codec, per path)")
	fs.IntVar(&o.size, "size", 1024, "record / message value size in bytes")
	fs.IntVar(&o.batch, "batch", 100, "Kafka: records per produce batch (one request)")
	codecs := fs.String("codecs", "none,lz4", "Kafka: batch codecs, comma-separated: none, gzip, snappy, lz4, zstd")
	fs.IntVar(&o.concurrency, "concurrency", 4, "AMQP: concurrent publishers; SQS: 4x this many workers")
	fs.IntVar(&o.kafkaBuffered, "kafka-buffered", 10000, "Kafka: records the producer buffers before Produce waits (kgo's default); a buffer of a few batches measures round-trip latency more than throughput")
	fs.BoolVar(&o.kafkaInProcess, "kafka-in-process", false, "Kafka: run kfake inside dsmbench, beside the clients, instead of in its own process; clients and broker then share one Go scheduler, which makes the direct path faster than a real deployment's")
	fs.BoolVar(&o.kafkaClientGC, "kafka-client-gc", false, "Kafka: leave the collector of the clients' process on during timed phases, as a real client runs (by default it is off and the heap collected between phases, which steadies the rounds but makes every allocation touch memory not used since the last phase, which costs most where a path allocates most: the consumer decoding a header per record); the broker's stays off either way, and with --kafka-in-process, where the broker's heap is the clients', the flag does nothing")
	fs.StringVar(&o.amqpURL, "amqp-url", "amqp://guest:guest@127.0.0.1:5672/", "AMQP: the broker the direct path uses")
	fs.IntVar(&o.amqpMsgs, "amqp-messages", 20000, "AMQP: messages per phase")
	fs.StringVar(&o.awsNodeDir, "aws-node-dir", "testdata/aws/node", "SQS: directory of the npm SQS server (npm ci runs there when needed)")
	fs.IntVar(&o.sqsMsgs, "sqs-messages", 3000, "SQS: messages per phase")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up on a protocol's workloads after this long (kafka, sqs and amqp each have their own); make bench's Kafka with a million records takes about 8 minutes on 2 cores")
	fs.BoolVar(&o.relay, "relay", false, "also run each workload through a plain TCP relay (a child process that forwards bytes and parses nothing), in each round: what one more TCP hop costs by itself")
	pin := fs.Bool("pin", false, "run the proxy child on the last CPU and the clients and brokers on the others, as a proxy on its own host would be (RabbitMQ, a system service, is moved to their CPUs for the AMQP runs and given its own affinity back after them); without it all share every CPU and the ratios include the CPU the proxy takes from them")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *pin {
		bench, proxyCPUs, err := pinCPUs()
		if err == nil {
			err = pinSelf(bench)
		}
		if err != nil {
			fmt.Fprintf(stderr, "dsmbench: %v\n", err)
			return 2
		}
		// The child reads it before it starts serving (runChild).
		var list []string
		for _, c := range proxyCPUs {
			list = append(list, strconv.Itoa(c))
		}
		os.Setenv(pinEnv, strings.Join(list, ","))
		o.pinned = bench
		fmt.Fprintf(stderr, "dsmbench: clients and brokers on CPUs %v, the proxy on CPUs %v\n", bench, proxyCPUs)
	}
	o.protocols = strings.Split(*protocols, ",")
	o.codecs = strings.Split(*codecs, ",")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var rows []row
	for _, p := range o.protocols {
		p = strings.TrimSpace(p)
		var bench func(context.Context, options, io.Writer) ([]row, error)
		switch p {
		case "kafka":
			bench = benchKafka
		case "sqs":
			bench = benchSQS
		case "amqp":
			bench = benchAMQP
		default:
			fmt.Fprintf(stderr, "dsmbench %s: unknown protocol %q (kafka, sqs, amqp)\n", p, p)
			return 1
		}
		r, err := giveUpAfter(ctx, o.timeout, cleanupGrace, func(ctx context.Context) ([]row, error) {
			return bench(ctx, o, stderr)
		})
		if err != nil {
			fmt.Fprintf(stderr, "dsmbench %s: %v\n", p, err)
			atExit.run()
			return 1
		}
		rows = append(rows, r...)
	}
	printTable(stdout, rows)
	return 0
}
