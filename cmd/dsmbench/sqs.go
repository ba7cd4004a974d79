package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/aws"
)

// The key pair both the bench clients and the proxy child use: the proxy verifies the clients'
// signatures with it and re-signs with it (the sidecar case).
const (
	benchKey    = "AKIDDSMBENCH00000001"
	benchSecret = "dsmbench-secret-not-a-real-one"
)

func newAWSFront(upstream string, m monitoring) (front, error) {
	return aws.New(aws.Config{
		Listen: "127.0.0.1:0", Upstream: upstream, Region: "us-east-1", Env: "bench",
		Checkpointer: m.cp, Observer: m.agg, Errors: m.errs, Services: m.svc, Log: zerolog.Nop(),
		Credentials: credentials.NewStaticCredentialsProvider(benchKey, benchSecret, ""),
	})
}

// startSQSServer runs npm's local-aws-sqs (testdata/aws/node, installed with npm ci when missing)
// and returns its URL and a stop function.
func startSQSServer(dir string, stderr io.Writer) (string, func(), error) {
	if _, err := exec.LookPath("node"); err != nil {
		return "", nil, fmt.Errorf("node is needed for the SQS server (npm local-aws-sqs): %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "local-aws-sqs")); err != nil {
		fmt.Fprintf(stderr, "sqs: installing the npm SQS server in %s\n", dir)
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", nil, fmt.Errorf("npm ci in %s: %w\n%s", dir, err, out)
		}
	}
	cmd := exec.Command("node", "sqs-server.js")
	cmd.Dir = dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	var port int
	if _, err := fmt.Fscanf(bufio.NewReader(out), "LISTENING %d\n", &port); err != nil {
		stop()
		return "", nil, fmt.Errorf("SQS server did not report its port: %w", err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", port), stop, nil
}

// benchSQS sends then receives the same messages directly and through the proxy, alternating rounds.
func benchSQS(ctx context.Context, o options, stderr io.Writer) ([]row, error) {
	server, stopServer, err := startSQSServer(o.awsNodeDir, stderr)
	if err != nil {
		return nil, err
	}
	defer stopServer()
	pp, err := startProxy("aws", server, stderr)
	if err != nil {
		return nil, err
	}
	defer pp.stop()
	paths := []benchPath{{name: "direct", target: server}, {name: "proxy", target: "http://" + pp.addr, proc: pp}}
	if o.relay {
		rp, err := startRelay(strings.TrimPrefix(server, "http://"), stderr)
		if err != nil {
			return nil, err
		}
		defer rp.stop()
		paths = append(paths, benchPath{name: "relay", target: "http://" + rp.addr, proc: rp})
	}
	fmt.Fprintf(stderr, "sqs: %d messages sent and received by %d workers, direct and through the proxy...\n", o.sqsMsgs, o.concurrency*4)
	// Warm both paths (the server's JIT, connection pools).
	small := o
	small.sqsMsgs = min(o.sqsMsgs, 200)
	for _, p := range paths {
		if _, err := sqsRun(ctx, p.target, small, p.proc.cpu); err != nil {
			return nil, err
		}
	}
	var send, recv, sendCtx rounds
	for round := 0; round < o.rounds; round++ {
		for _, i := range roundOrder(round, len(paths)) {
			p := paths[i]
			r, err := sqsRun(ctx, p.target, o, p.proc.cpu)
			if err != nil {
				return nil, err
			}
			send.add(i, r.send)
			recv.add(i, r.recv)
			sendCtx.add(i, r.sendCtx)
		}
		send.endRound()
		recv.endRound()
		sendCtx.endRound()
	}
	rss := pp.peakRSS()
	return []row{
		send.row("sqs", "SendMessage", rss, true),
		recv.row("sqs", "ReceiveMessage (10/req)", rss, true),
		sendCtx.row("sqs", "SendMessage with ctx", rss, true),
	}, nil
}

// sqsPhases is one sqsRun's results. sendCtx sends messages whose _datadog already holds a
// tracer's pathway context, which the proxy leaves as it is: the emulator then gets the same
// request on both paths, and the row shows the proxy's own cost (verifying, parsing, re-signing),
// where SendMessage adds the attribute's cost to the emulator's work.
type sqsPhases struct{ send, recv, sendCtx result }

// sqsRun sends o.sqsMsgs messages with one attribute from several workers, then receives them
// all, then sends as many again, each with a tracer's _datadog, to a second queue.
// cpu reads the proxy process's CPU: each phase gets the CPU the proxy used during it (a
// ReceiveMessage of 10 messages costs the proxy more than a SendMessage, so splitting the whole
// run's CPU by request count would charge sends for receives).
func sqsRun(ctx context.Context, endpoint string, o options, cpu func() time.Duration) (r sqsPhases, err error) {
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(benchKey, benchSecret, ""), AppID: "bench-producer"})
	q, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(fmt.Sprintf("bench-%d", time.Now().UnixNano()))})
	if err != nil {
		return r, err
	}
	workers := o.concurrency * 4
	body := string(benchValue(min(o.size, 1024)))
	attrs := map[string]types.MessageAttributeValue{"tenant": {DataType: awssdk.String("String"), StringValue: awssdk.String("acme")}}
	var failed atomic.Value
	var wg sync.WaitGroup
	if r.send, err = sqsSend(ctx, cl, q.QueueUrl, body, attrs, o.sqsMsgs, workers, cpu); err != nil {
		return r, fmt.Errorf("SendMessage via %s: %w", endpoint, err)
	}
	cpu1 := cpu()

	var got, reqs atomic.Int64
	rlat := newLatencies(o.sqsMsgs)
	// The window ends when the last message is in: receives still waiting then (an empty queue
	// answers only at WaitTimeSeconds) are cancelled, not timed.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	var ended result
	watch := startWatch()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for got.Load() < int64(o.sqsMsgs) {
				s := time.Now()
				rm, err := cl.ReceiveMessage(rctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, MaxNumberOfMessages: 10,
					MessageAttributeNames: []string{"tenant"}, WaitTimeSeconds: 1})
				if err != nil {
					if rctx.Err() == nil {
						failed.CompareAndSwap(nil, err)
					}
					return
				}
				rlat.add(time.Since(s))
				reqs.Add(1)
				if got.Add(int64(len(rm.Messages))) >= int64(o.sqsMsgs) {
					once.Do(func() {
						watch.stop(&ended)
						cancel()
					})
				}
			}
		}()
	}
	wg.Wait()
	if e, _ := failed.Load().(error); e != nil {
		return r, fmt.Errorf("ReceiveMessage via %s: %w", endpoint, e)
	}
	n := int(got.Load())
	if n < o.sqsMsgs {
		return r, fmt.Errorf("ReceiveMessage via %s: %d of %d messages: %w", endpoint, n, o.sqsMsgs, ctx.Err())
	}
	r.recv = result{msgs: n, reqs: int(reqs.Load()), bytes: int64(n * len(body)), elapsed: ended.elapsed, busy: ended.busy}
	r.recv.p50, r.recv.p99, r.recv.proxyCPU = rlat.quantile(0.5), rlat.quantile(0.99), cpu()-cpu1
	if _, err := cl.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: q.QueueUrl}); err != nil {
		return r, err
	}

	// A traced producer's messages: the proxy must leave their context as it is.
	qc, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(fmt.Sprintf("bench-ctx-%d", time.Now().UnixNano()))})
	if err != nil {
		return r, err
	}
	now := time.Now()
	carrier := fmt.Sprintf(`{"%s":"%s"}`, pathway.HeaderKey, pathway.Context{Hash: 0x5eed_cafe_f00d_beef, PathwayStart: now, EdgeStart: now})
	traced := map[string]types.MessageAttributeValue{
		"tenant":   attrs["tenant"],
		"_datadog": {DataType: awssdk.String("String"), StringValue: awssdk.String(carrier)},
	}
	if r.sendCtx, err = sqsSend(ctx, cl, qc.QueueUrl, body, traced, o.sqsMsgs, workers, cpu); err != nil {
		return r, fmt.Errorf("SendMessage with ctx via %s: %w", endpoint, err)
	}
	m, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: qc.QueueUrl, MaxNumberOfMessages: 1, MessageAttributeNames: []string{"_datadog"}})
	if err != nil || len(m.Messages) != 1 {
		return r, fmt.Errorf("reading back a message with ctx via %s: %d messages, %v", endpoint, len(m.Messages), err)
	}
	if got := m.Messages[0].MessageAttributes["_datadog"].StringValue; got == nil || *got != carrier {
		return r, fmt.Errorf("via %s: a message sent with _datadog %s arrived with %v", endpoint, carrier, got)
	}
	if _, err := cl.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: qc.QueueUrl}); err != nil {
		return r, err
	}
	return r, nil
}

// sqsSend sends n messages from workers goroutines and times it; cpu reads the proxy's CPU.
func sqsSend(ctx context.Context, cl *sqs.Client, queue *string, body string, attrs map[string]types.MessageAttributeValue, n, workers int, cpu func() time.Duration) (result, error) {
	var next atomic.Int64
	var failed atomic.Value
	lat := newLatencies(n)
	var wg sync.WaitGroup
	cpu0 := cpu()
	watch := startWatch()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				s := time.Now()
				if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: queue, MessageBody: &body, MessageAttributes: attrs}); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
				lat.add(time.Since(s))
			}
		}()
	}
	wg.Wait()
	r := result{msgs: n, reqs: n, bytes: int64(n * len(body))}
	watch.stop(&r)
	if e, _ := failed.Load().(error); e != nil {
		return r, e
	}
	r.p50, r.p99 = lat.quantile(0.5), lat.quantile(0.99)
	r.proxyCPU = cpu() - cpu0
	return r, nil
}
