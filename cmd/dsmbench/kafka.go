package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
)

// benchValues returns count distinct message bodies of n bytes shaped like JSON events: the same
// keys in every record and random ids, amounts and words in the values, so a batch compresses
// about as well as a batch of real events (lz4 ~2x), neither the best case (identical records,
// ~35x) nor the worst (random bytes).
func benchValues(n, count int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	word := func(b []byte) []byte {
		for i := 3 + r.IntN(6); i > 0; i-- {
			b = append(b, byte('a'+r.IntN(26)))
		}
		return b
	}
	out := make([][]byte, count)
	for i := range out {
		v := make([]byte, 0, n+128)
		v = fmt.Appendf(v, `{"event_id":"%016x","type":"order_created","customer_id":%d,"items":[`, r.Uint64(), r.IntN(1000000))
		for j := 0; len(v) < n; j++ {
			if j > 0 {
				v = append(v, ',')
			}
			v = fmt.Appendf(v, `{"sku":"sku-%05d","qty":%d,"price":%d.%02d,"note":"`, r.IntN(100000), 1+r.IntN(9), r.IntN(500), r.IntN(100))
			v = word(v)
			v = append(v, ' ')
			v = word(v)
			v = append(v, `"}`...)
		}
		out[i] = v[:n]
	}
	return out
}

// benchValue is one such body.
func benchValue(n int) []byte { return benchValues(n, 1)[0] }

func newFront(protocol, upstream string, m monitoring) (front, error) {
	switch protocol {
	case "kafka":
		return kafka.New(kafka.Config{
			Listen: "127.0.0.1:0", Bootstrap: strings.Split(upstream, ","), Env: "bench",
			Checkpointer: m.cp, Observer: m.agg, Errors: m.errs, Services: m.svc, Log: zerolog.Nop(),
		})
	case "amqp":
		return newAMQPFront(upstream, m)
	case "aws":
		return newAWSFront(upstream, m)
	}
	return nil, fmt.Errorf("unknown protocol %q", protocol)
}

var codecsByName = map[string]kgo.CompressionCodec{
	"none": kgo.NoCompression(), "gzip": kgo.GzipCompression(), "snappy": kgo.SnappyCompression(),
	"lz4": kgo.Lz4Compression(), "zstd": kgo.ZstdCompression(),
}

// benchKafka: per codec, produce then fetch the same number of records directly and through the
// proxy, each path on its own topic. The records produced through the proxy carry the pathway
// header, which the consumer decodes too; the "with ctx" row reads them directly as well, so that
// both of its paths read the same records.
func benchKafka(ctx context.Context, o options, stderr io.Writer) ([]row, error) {
	const partitions = 4
	broker, err := startBroker(partitions, o.kafkaInProcess, stderr)
	if err != nil {
		return nil, err
	}
	defer broker.stop()
	if !o.kafkaClientGC || o.kafkaInProcess { // in process, the broker's heap is this one
		defer offPhaseGC()()
	}
	bootstrap := broker.bootstrap
	// dropTopic deletes a phase's topic, which kfake keeps in memory, and collects this process
	// and the broker's once each before the next timed phase (a second collection in a row once
	// cut the next proxy fetch ratio from 0.5-0.6 to 0.2).
	settle := func() error {
		runtime.GC()
		return broker.collect()
	}
	dropTopic := func(topic string) error {
		if err := deleteTopic(ctx, bootstrap, topic); err != nil {
			return err
		}
		return settle()
	}
	// warmRead reads topic once, directly and untimed, before its timed fetches. kfake builds
	// every fetch response in its heap (about 5 bytes allocated per byte served, collections off
	// during a phase), and on this VM the first touch of a heap page the Go runtime has handed
	// back to the kernel costs about 6 µs of user time with MADV_FREE, with no page fault to show
	// for it. A fetch that outgrew the heap kept from earlier phases paid that: the proxy's, whose
	// batches are 5% bigger (the header; kfake's appends grow by bigger steps) and whose produce
	// phase lasts longer (more time for the runtime to hand memory back), ran at 0.35-0.6 of the
	// rate of a second read of the same records, on any path (2026-12-05). The read before leaves
	// the heap that read needs, for the timed one; a broker serving its log from the page cache
	// allocates nothing per fetch.
	warmRead := func(topic string) error {
		if err := settle(); err != nil {
			return err
		}
		if _, err := kafkaFetch(ctx, benchPath{name: "direct", target: bootstrap}, topic, o.records); err != nil {
			return fmt.Errorf("untimed first read of %s: %w", topic, err)
		}
		return settle()
	}
	pp, err := startProxy("kafka", bootstrap, stderr)
	if err != nil {
		return nil, err
	}
	defer pp.stop()
	paths := []benchPath{{name: "direct", target: bootstrap}, {name: "proxy", target: pp.addr, proc: pp}}
	if o.relay {
		rp, err := startRelay(bootstrap, stderr)
		if err != nil {
			return nil, err
		}
		defer rp.stop()
		paths = append(paths, benchPath{name: "relay", target: bootstrap, via: rp.addr, proc: rp})
	}

	// The first run on a new cluster was 2-5x slower than every later one (kfake's heap faulting
	// in fresh pages, with GC off), which made round 1's proxy/direct ratio meaningless: run both
	// paths once, untimed, first.
	for _, path := range paths {
		topic := fmt.Sprintf("bench-warmup-%d", time.Now().UnixNano())
		if _, err := kafkaProduce(ctx, path, topic, partitions, kgo.NoCompression(), nil, o); err != nil {
			return nil, fmt.Errorf("warm-up produce: %w", err)
		}
		if _, err := kafkaFetch(ctx, path, topic, o.records); err != nil {
			return nil, fmt.Errorf("warm-up fetch: %w", err)
		}
		if err := dropTopic(topic); err != nil {
			return nil, err
		}
	}
	now := time.Now()
	traced := []kgo.RecordHeader{{Key: pathway.HeaderKey, Value: []byte(pathway.Context{Hash: 0x5eed_cafe_f00d_beef, PathwayStart: now, EdgeStart: now}.String())}}
	var rows []row
	for _, name := range o.codecs {
		codec, ok := codecsByName[strings.TrimSpace(name)]
		if !ok {
			return nil, fmt.Errorf("unknown codec %q", name)
		}
		fmt.Fprintf(stderr, "kafka %s: producing and fetching %d records of %d B, direct and through the proxy...\n", name, o.records, o.size)
		var prod, fetch, withCtx, prodCtx rounds
		// Alternate the paths for several rounds and keep each path's best: on a shared machine
		// a single run measures the neighbours as much as the proxy.
		for round := 0; round < o.rounds; round++ {
			for _, i := range roundOrder(round, len(paths)) {
				path := paths[i]
				topic := fmt.Sprintf("bench-%s-%s-%d-%d", name, path.name, round, time.Now().UnixNano())
				cpu0 := path.proc.cpu()
				r, err := kafkaProduce(ctx, path, topic, partitions, codec, nil, o)
				if err != nil {
					return nil, fmt.Errorf("%s produce: %w", path.name, err)
				}
				r.proxyCPU = path.proc.cpu() - cpu0
				prod.add(i, r)
				// Every timed fetch reads a log that was read once before (see warmRead), and
				// starts from the same heap state: collected, as the direct fetch of the proxy's
				// records ("with ctx") below does.
				if err := warmRead(topic); err != nil {
					return nil, err
				}
				r, err = kafkaFetch(ctx, path, topic, o.records)
				if err != nil {
					return nil, fmt.Errorf("%s fetch: %w", path.name, err)
				}
				fetch.add(i, r)
				if i == pathProxy {
					// The same records, with the pathway header the proxy put in, read directly:
					// what a consumer of a traced producer's records reads without the proxy.
					if err := settle(); err != nil {
						return nil, err
					}
					d, err := kafkaFetch(ctx, paths[pathDirect], topic, o.records)
					if err != nil {
						return nil, fmt.Errorf("direct fetch of the proxy's records: %w", err)
					}
					withCtx.add(0, d)
					withCtx.add(1, r)
				}
				if err := dropTopic(topic); err != nil {
					return nil, err
				}
			}
			// Records that already carry a context, as a traced producer sends them: the broker
			// stores the same bytes on both paths, and the proxy observes them without splicing.
			for _, i := range roundOrder(round, 2) {
				path := paths[i]
				topic := fmt.Sprintf("bench-%s-ctx-%s-%d-%d", name, path.name, round, time.Now().UnixNano())
				cpu0 := path.proc.cpu()
				r, err := kafkaProduce(ctx, path, topic, partitions, codec, traced, o)
				if err != nil {
					return nil, fmt.Errorf("%s produce with ctx: %w", path.name, err)
				}
				r.proxyCPU = path.proc.cpu() - cpu0
				prodCtx.add(i, r)
				if err := dropTopic(topic); err != nil {
					return nil, err
				}
			}
			prod.endRound()
			fetch.endRound()
			withCtx.endRound()
			prodCtx.endRound()
		}
		rss := pp.peakRSS()
		rows = append(rows,
			prod.row("kafka", fmt.Sprintf("produce %s, %d/batch", name, o.batch), rss, false),
			prodCtx.row("kafka", fmt.Sprintf("produce %s, with ctx", name), rss, false),
			fetch.row("kafka", fmt.Sprintf("fetch %s", name), rss, false),
			withCtx.row("kafka", fmt.Sprintf("fetch %s, with ctx", name), rss, false))
	}
	return rows, nil
}

// kafkaClientOpts point a Kafka client along p: target is its seed broker, and via, where set,
// the address it dials for every broker instead (the relay, which kfake's metadata does not name).
func kafkaClientOpts(p benchPath) []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(p.target)}
	if p.via != "" {
		var d net.Dialer
		opts = append(opts, kgo.Dialer(func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, p.via)
		}))
	}
	return opts
}

// kafkaProduce sends o.records records, o.batch consecutive records per partition so batches hold
// about o.batch records, asynchronously (the client pipelines requests as real producers do), and
// times each record from Produce to its acknowledgement.
func kafkaProduce(ctx context.Context, path benchPath, topic string, partitions int, codec kgo.CompressionCodec, headers []kgo.RecordHeader, o options) (result, error) {
	cl, err := kgo.NewClient(append(kafkaClientOpts(path), kgo.ClientID("bench-producer"), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchCompression(codec), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		// Room for o.batch records and no more, so a batch closes at about o.batch records.
		kgo.ProducerBatchMaxBytes(int32(o.batch*(o.size+40))), kgo.ProducerLinger(time.Millisecond),
		kgo.AllowAutoTopicCreation(), kgo.MaxBufferedRecords(max(o.kafkaBuffered, o.batch*partitions)))...)
	if err != nil {
		return result{}, err
	}
	defer cl.Close()
	// Create the topic (and learn its leaders) before timing.
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("warm-up"), Headers: headers}).FirstErr(); err != nil {
		return result{}, err
	}
	values := benchValues(o.size, 256)
	lat := newLatencies(o.records)
	var failed atomic.Value
	var wg sync.WaitGroup
	watch := startWatch()
	for i := 0; i < o.records; i++ {
		t0 := time.Now()
		wg.Add(1)
		r := &kgo.Record{Key: []byte(strconv.Itoa(i)), Value: values[i%len(values)], Headers: headers, Partition: int32((i / o.batch) % partitions)}
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			defer wg.Done()
			if err != nil {
				failed.CompareAndSwap(nil, err)
				return
			}
			lat.add(time.Since(t0))
		})
	}
	wg.Wait()
	r := result{msgs: o.records, bytes: int64(o.records) * int64(o.size)}
	watch.stop(&r)
	if err, _ := failed.Load().(error); err != nil {
		return result{}, err
	}
	r.p50, r.p99 = lat.quantile(0.5), lat.quantile(0.99)
	return r, nil
}

// deleteTopic deletes topic (directly, not through the proxy).
func deleteTopic(ctx context.Context, bootstrap, topic string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(bootstrap, ",")...))
	if err != nil {
		return err
	}
	defer cl.Close()
	rs, err := kadm.NewClient(cl).DeleteTopics(ctx, topic)
	if err == nil {
		err = rs.Error()
	}
	if err != nil {
		return fmt.Errorf("deleting bench topic %s: %w", topic, err)
	}
	return nil
}

// offPhaseGC turns this process's collector off, with a memory limit as the backstop, and returns
// the restore. kfake keeps every record on its process's heap, and the clients allocate per
// record: with the default GC, collections of a heap growing by hundreds of MB ran during the
// timed phases, at random, and moved direct throughput by 2x between rounds. The benchmark
// collects between phases instead (dropTopic).
func offPhaseGC() func() {
	gc := debug.SetGCPercent(-1)
	limit := debug.SetMemoryLimit(8 << 30)
	return func() { debug.SetGCPercent(gc); debug.SetMemoryLimit(limit) }
}

// kafkaFetch reads n records from the start of topic; latency is per poll.
func kafkaFetch(ctx context.Context, path benchPath, topic string, n int) (result, error) {
	cl, err := kgo.NewClient(append(kafkaClientOpts(path), kgo.ClientID("bench-consumer"), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(16<<20), kgo.FetchMaxWait(100*time.Millisecond))...)
	if err != nil {
		return result{}, err
	}
	defer cl.Close()
	// The client connects, learns metadata and offsets at its first poll: not timed. The window
	// opens once the first records are in; those are not counted.
	got, size := 0, int64(0)
	watch := startWatch() // kept if the first poll brings every record (a small run)
	for got == 0 {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			return result{}, fmt.Errorf("first fetch: %w", err)
		}
		fs.EachRecord(func(r *kgo.Record) { got, size = got+1, size+int64(len(r.Value)) })
	}
	first, firstSize, cpu0 := 0, int64(0), path.proc.cpu()
	if got < n+1 {
		first, firstSize, cpu0 = got, size, path.proc.cpu()
		watch = startWatch()
	}
	lat := newLatencies(1024)
	for got < n+1 { // +1: the warm-up record
		t0 := time.Now()
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return result{}, fmt.Errorf("fetched %d of %d records: %w", got, n, err)
			}
			return result{}, err
		}
		lat.add(time.Since(t0))
		fs.EachRecord(func(r *kgo.Record) {
			got++
			size += int64(len(r.Value))
		})
	}
	r := result{msgs: got - first, bytes: size - firstSize}
	watch.stop(&r)
	r.proxyCPU = path.proc.cpu() - cpu0 // over the same window
	r.p50, r.p99 = lat.quantile(0.5), lat.quantile(0.99)
	return r, nil
}
