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
		if _, _, err := sqsRun(ctx, p.target, small, p.proc.cpu); err != nil {
			return nil, err
		}
	}
	var send, recv rounds
	for round := 0; round < o.rounds; round++ {
		for _, i := range roundOrder(round, len(paths)) {
			p := paths[i]
			s, r, err := sqsRun(ctx, p.target, o, p.proc.cpu)
			if err != nil {
				return nil, err
			}
			send.add(i, s)
			recv.add(i, r)
		}
		send.endRound()
		recv.endRound()
	}
	rss := pp.peakRSS()
	return []row{
		send.row("sqs", "SendMessage", rss, true),
		recv.row("sqs", "ReceiveMessage (10/req)", rss, true),
	}, nil
}

// sqsRun sends o.sqsMsgs messages with one attribute from several workers, then receives them all.
// cpu reads the proxy process's CPU: each phase gets the CPU the proxy used during it (a
// ReceiveMessage of 10 messages costs the proxy more than a SendMessage, so splitting the whole
// run's CPU by request count would charge sends for receives).
func sqsRun(ctx context.Context, endpoint string, o options, cpu func() time.Duration) (send, recv result, err error) {
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(benchKey, benchSecret, ""), AppID: "bench-producer"})
	q, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(fmt.Sprintf("bench-%d", time.Now().UnixNano()))})
	if err != nil {
		return send, recv, err
	}
	workers := o.concurrency * 4
	body := string(benchValue(min(o.size, 1024)))
	attrs := map[string]types.MessageAttributeValue{"tenant": {DataType: awssdk.String("String"), StringValue: awssdk.String("acme")}}
	var next atomic.Int64
	var failed atomic.Value
	lat := newLatencies(o.sqsMsgs)
	var wg sync.WaitGroup
	cpu0 := cpu()
	watch := startWatch()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(o.sqsMsgs) {
				s := time.Now()
				if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: &body, MessageAttributes: attrs}); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
				lat.add(time.Since(s))
			}
		}()
	}
	wg.Wait()
	send = result{msgs: o.sqsMsgs, reqs: o.sqsMsgs, bytes: int64(o.sqsMsgs * len(body))}
	watch.stop(&send)
	if e, _ := failed.Load().(error); e != nil {
		return send, recv, fmt.Errorf("SendMessage via %s: %w", endpoint, e)
	}
	send.p50, send.p99 = lat.quantile(0.5), lat.quantile(0.99)
	cpu1 := cpu()
	send.proxyCPU = cpu1 - cpu0

	var got, reqs atomic.Int64
	rlat := newLatencies(o.sqsMsgs)
	// The window ends when the last message is in: receives still waiting then (an empty queue
	// answers only at WaitTimeSeconds) are cancelled, not timed.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	var ended result
	watch = startWatch()
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
		return send, recv, fmt.Errorf("ReceiveMessage via %s: %w", endpoint, e)
	}
	n := int(got.Load())
	if n < o.sqsMsgs {
		return send, recv, fmt.Errorf("ReceiveMessage via %s: %d of %d messages: %w", endpoint, n, o.sqsMsgs, ctx.Err())
	}
	recv = result{msgs: n, reqs: int(reqs.Load()), bytes: int64(n * len(body)), elapsed: ended.elapsed, busy: ended.busy}
	recv.p50, recv.p99, recv.proxyCPU = rlat.quantile(0.5), rlat.quantile(0.99), cpu()-cpu1
	return send, recv, nil
}
