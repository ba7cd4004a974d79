package aws

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// benchRewrite runs the request rewrite and response fix of one captured exchange.
func benchRewrite(b *testing.B, service, wireName, op string, w wire) {
	rr, ok := captured(b, service, wireName)[op]
	if !ok {
		b.Fatalf("no captured %s %s", service, op)
	}
	p := fuzzProxy(b, false)
	b.ReportAllocs()
	b.SetBytes(int64(len(rr[0]) + len(rr[1])))
	r := fuzzCall(service, op, w, rr[0]).r // the HTTP request is the server's cost, not the rewrite's
	for b.Loop() {
		c := &call{r: r, wire: w, service: service, op: op, body: rr[0], now: time.Now(), svcName: "svc"}
		if w == wireQuery {
			c.form, _ = parseForm(rr[0])
		}
		_, fix := p.rewriteRequest(c)
		if fix != nil {
			fix(rr[1])
		}
	}
}

func BenchmarkRewriteSendMessageJSON(b *testing.B) {
	benchRewrite(b, "sqs", "json10", "SendMessage", wireJSON10)
}
func BenchmarkRewriteSendMessageBatchJSON(b *testing.B) {
	benchRewrite(b, "sqs", "json10", "SendMessageBatch", wireJSON10)
}
func BenchmarkRewriteReceiveMessageJSON(b *testing.B) {
	benchRewrite(b, "sqs", "json10", "ReceiveMessage", wireJSON10)
}
func BenchmarkRewriteSendMessageQuery(b *testing.B) {
	benchRewrite(b, "sqs", "query", "SendMessage", wireQuery)
}
func BenchmarkRewriteReceiveMessageQuery(b *testing.B) {
	benchRewrite(b, "sqs", "query", "ReceiveMessage", wireQuery)
}
func BenchmarkRewritePublishQuery(b *testing.B) {
	benchRewrite(b, "sns", "query", "Publish", wireQuery)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSQSEndToEnd sends and receives through local-aws-sqs directly and through the proxy in
// one run, with aws-sdk-go-v2 clients, and reports each rate, the proxy/direct ratio and the
// proxy's CPU per request (this process's CPU through the proxy minus directly: the client runs in
// both, the emulator is another process).
func BenchmarkSQSEndToEnd(b *testing.B) {
	port := startNode(b, nil, "sqs-server.js")
	direct := fmt.Sprintf("http://127.0.0.1:%d", port)
	tp := startProxy(b, func(c *Config) { c.Upstream = direct })
	const workers, perWorker = 16, 150
	type result struct {
		sendRate, recvRate float64
		cpuPerReq          time.Duration
	}
	run := func(endpoint, queue string) result {
		cl := sqsClient(endpoint, testKey, testSecret)
		ctx := context.Background()
		cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(queue)})
		if err != nil {
			b.Fatal(err)
		}
		attrs := map[string]types.MessageAttributeValue{"tenant": strAttr("acme")}
		var reqs atomic.Int64
		cpu0, t0 := cpuTime(), time.Now()
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perWorker; i++ {
					if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String("benchmark message body of a typical small size"), MessageAttributes: attrs}); err != nil {
						b.Error(err)
						return
					}
					reqs.Add(1)
				}
			}()
		}
		wg.Wait()
		sendDur := time.Since(t0)
		var got atomic.Int64
		t1 := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for got.Load() < workers*perWorker {
					rm, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: cq.QueueUrl, MaxNumberOfMessages: 10, MessageAttributeNames: []string{"tenant"}})
					if err != nil {
						b.Error(err)
						return
					}
					reqs.Add(1)
					got.Add(int64(len(rm.Messages)))
				}
			}()
		}
		wg.Wait()
		recvDur := time.Since(t1)
		cpu := cpuTime() - cpu0
		return result{float64(workers*perWorker) / sendDur.Seconds(), float64(got.Load()) / recvDur.Seconds(), cpu / time.Duration(reqs.Load())}
	}
	run(direct, "warmdirect") // warm both paths (node's JIT, connection pools) before measuring
	run(tp.url, "warmproxy")
	for b.Loop() {
		d := run(direct, fmt.Sprintf("direct%d", time.Now().UnixNano()))
		p := run(tp.url, fmt.Sprintf("proxied%d", time.Now().UnixNano()))
		b.ReportMetric(d.sendRate, "direct-send/s")
		b.ReportMetric(p.sendRate, "proxy-send/s")
		b.ReportMetric(d.recvRate, "direct-recv-msg/s")
		b.ReportMetric(p.recvRate, "proxy-recv-msg/s")
		b.ReportMetric(p.sendRate/d.sendRate, "send-ratio")
		b.ReportMetric(p.recvRate/d.recvRate, "recv-ratio")
		b.ReportMetric(float64((p.cpuPerReq - d.cpuPerReq).Microseconds()), "proxy-cpu-µs/req")
	}
}
