package aws

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// benchRewrite runs the request rewrite and response fix of one captured exchange.
func benchRewrite(b *testing.B, service, wireName, op string, w wire) {
	rr, ok := captured(b, service, wireName)[op]
	if !ok {
		b.Fatalf("no captured %s %s", service, op)
	}
	benchRewriteOf(b, service, op, w, rr)
}

// benchRewriteOf runs the request rewrite and response fix of the exchange rr.
func benchRewriteOf(b *testing.B, service, op string, w wire, rr [2][]byte) {
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

// jsonEvent is a 1 KiB JSON event as it sits inside a JSON string: its quotes escaped.
var jsonEvent = `{\"type\":\"order.created\",\"id\":12345,\"note\":\"` + strings.Repeat("x", 980) + `\"}`

// BenchmarkRewriteSendMessageJSON1KiB: the captured SendMessage with a 1 KiB JSON event as body.
func BenchmarkRewriteSendMessageJSON1KiB(b *testing.B) {
	rr := captured(b, "sqs", "json10")["SendMessage"]
	rr[0] = regexp.MustCompile(`"MessageBody":"[^"]*"`).ReplaceAll(rr[0], []byte(`"MessageBody":"`+jsonEvent+`"`))
	benchRewriteOf(b, "sqs", "SendMessage", wireJSON10, rr)
}

// BenchmarkRewriteReceiveMessageJSON1KiB: the captured ReceiveMessage answer with every body
// replaced by a 1 KiB JSON event.
func BenchmarkRewriteReceiveMessageJSON1KiB(b *testing.B) {
	rr := captured(b, "sqs", "json10")["ReceiveMessage"]
	rr[1] = regexp.MustCompile(`"Body":"[^"]*"`).ReplaceAll(rr[1], []byte(`"Body":"`+jsonEvent+`"`))
	benchRewriteOf(b, "sqs", "ReceiveMessage", wireJSON10, rr)
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

// TestAWSProxyProcess is not a test: BenchmarkSQSEndToEnd runs the test binary with it as a
// separate proxy process, so the proxy's CPU can be read from /proc apart from the client's.
func TestAWSProxyProcess(t *testing.T) {
	up := os.Getenv("DSMPROXY_AWS_PROXY_UPSTREAM")
	if up == "" {
		return
	}
	tp := startProxy(t, func(c *Config) { c.Upstream = up })
	fmt.Printf("LISTENING %d\n", tp.Addr().(*net.TCPAddr).Port)
	io.Copy(io.Discard, os.Stdin) // until the benchmark closes our stdin
}

// procCPU is a process's user+system CPU from /proc/<pid>/stat.
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// startProxyProcess runs the proxy as a separate process (this test binary in
// TestAWSProxyProcess) in front of upstream and returns its URL and process, so a benchmark reads
// the proxy's own CPU. DSMPROXY_AWS_PROXY_CPUPROFILE names a file for its CPU profile.
func startProxyProcess(b *testing.B, upstream string) (string, *exec.Cmd) {
	args := []string{"-test.run=^TestAWSProxyProcess$"}
	if prof := os.Getenv("DSMPROXY_AWS_PROXY_CPUPROFILE"); prof != "" {
		args = append(args, "-test.cpuprofile="+prof)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "DSMPROXY_AWS_PROXY_UPSTREAM="+upstream)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	var proxyPort int
	if _, err := fmt.Fscanf(bufio.NewReader(stdout), "LISTENING %d\n", &proxyPort); err != nil {
		b.Fatalf("proxy process: %v", err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", proxyPort), cmd
}

// BenchmarkSQSEndToEnd sends and receives through local-aws-sqs directly and through the proxy in
// one run, with aws-sdk-go-v2 clients, and reports each rate, the proxy/direct ratio and the
// proxy's CPU per request, read from the proxy's own process.
func BenchmarkSQSEndToEnd(b *testing.B) {
	port := startNode(b, nil, "sqs-server.js")
	direct := fmt.Sprintf("http://127.0.0.1:%d", port)
	proxyURL, cmd := startProxyProcess(b, direct)
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
		cpu0, t0 := procCPU(b, cmd.Process.Pid), time.Now()
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
		cpu := procCPU(b, cmd.Process.Pid) - cpu0
		return result{float64(workers*perWorker) / sendDur.Seconds(), float64(got.Load()) / recvDur.Seconds(), cpu / time.Duration(reqs.Load())}
	}
	run(direct, "warmdirect") // warm both paths (node's JIT, connection pools) before measuring
	run(proxyURL, "warmproxy")
	for b.Loop() {
		d := run(direct, fmt.Sprintf("direct%d", time.Now().UnixNano()))
		p := run(proxyURL, fmt.Sprintf("proxied%d", time.Now().UnixNano()))
		b.ReportMetric(d.sendRate, "direct-send/s")
		b.ReportMetric(p.sendRate, "proxy-send/s")
		b.ReportMetric(d.recvRate, "direct-recv-msg/s")
		b.ReportMetric(p.recvRate, "proxy-recv-msg/s")
		b.ReportMetric(p.sendRate/d.sendRate, "send-ratio")
		b.ReportMetric(p.recvRate/d.recvRate, "recv-ratio")
		b.ReportMetric(float64((p.cpuPerReq - d.cpuPerReq).Microseconds()), "proxy-cpu-µs/req")
	}
}

// replay answers every upstream request with one captured emulator response, so a benchmark
// measures the handler's own CPU (verify, rewrite, re-sign, fix) without the network.
type replay struct{ body []byte }

func (r replay) RoundTrip(req *http.Request) (*http.Response, error) {
	io.Copy(io.Discard, req.Body)
	return &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, ContentLength: int64(len(r.body)),
		Header: http.Header{"Content-Type": {"application/x-amz-json-1.0"}}, Body: io.NopCloser(bytes.NewReader(r.body)), Request: req}, nil
}

func benchHandler(b *testing.B, op string) {
	rr := captured(b, "sqs", "json10")[op]
	p, err := New(Config{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:9", Transport: replay{rr[1]},
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
	if err != nil {
		b.Fatal(err)
	}
	// one signed request, re-created per iteration with the same headers (the signature stays valid)
	signed := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:4566/", bytes.NewReader(rr[0]))
	signed.Header.Set("Content-Type", "application/x-amz-json-1.0")
	signed.Header.Set("X-Amz-Target", "AmazonSQS."+op)
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	v4.NewSigner().SignHTTP(context.Background(), creds, signed, sha256Hex(rr[0]), "sqs", "us-east-1", time.Now())
	b.ReportAllocs()
	for b.Loop() {
		req := *signed
		req.Body = io.NopCloser(bytes.NewReader(rr[0]))
		w := httptest.NewRecorder()
		p.ServeHTTP(w, &req)
		if w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// BenchmarkHandlerSendMessage: one SendMessage through the whole handler, network excluded.
func BenchmarkHandlerSendMessage(b *testing.B) { benchHandler(b, "SendMessage") }

// BenchmarkHandlerReceiveMessage: one ReceiveMessage of three messages, network excluded.
func BenchmarkHandlerReceiveMessage(b *testing.B) { benchHandler(b, "ReceiveMessage") }

// BenchmarkSQSProxySendCPU sends b.N messages through the proxy, run as a separate process in
// front of local-aws-sqs, and reports the proxy process's CPU per SendMessage (read from /proc),
// a steadier figure on a shared machine than BenchmarkSQSEndToEnd's rates.
func BenchmarkSQSProxySendCPU(b *testing.B) {
	port := startNode(b, nil, "sqs-server.js")
	proxyURL, cmd := startProxyProcess(b, fmt.Sprintf("http://127.0.0.1:%d", port))
	cl := sqsClient(proxyURL, testKey, testSecret)
	ctx := context.Background()
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(fmt.Sprintf("cpu%d", time.Now().UnixNano()))})
	if err != nil {
		b.Fatal(err)
	}
	attrs := map[string]types.MessageAttributeValue{"tenant": strAttr("acme")}
	send := func(n int) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(n) {
					if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String("benchmark message body of a typical small size"), MessageAttributes: attrs}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	send(500) // warm up
	cpu0 := procCPU(b, cmd.Process.Pid)
	b.ResetTimer()
	send(b.N)
	b.StopTimer()
	b.ReportMetric(float64((procCPU(b, cmd.Process.Pid)-cpu0).Microseconds())/float64(b.N), "proxy-cpu-µs/send")
}

// BenchmarkProxyRoundTripSendMessage: one SendMessage through the whole front over loopback TCP:
// the front's server, verification, rewrite, signing and its upstream client, against an upstream
// that answers the captured response at once. The client writes a pre-signed request on one
// keep-alive connection. Allocations here are the front's per-request allocations.
func BenchmarkProxyRoundTripSendMessage(b *testing.B) {
	rr := captured(b, "sqs", "json10")["SendMessage"]
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amzn-Requestid: 1\r\nContent-Length: " +
		strconv.Itoa(len(rr[1])) + "\r\n\r\n" + string(rr[1]))
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if _, err := c.Write(answer); err != nil {
						return
					}
				}
			}()
		}
	}()
	tp := startProxy(b, func(c *Config) { c.Upstream = "http://" + up.Addr().String() })
	signed, _ := http.NewRequest(http.MethodPost, tp.url+"/", bytes.NewReader(rr[0]))
	signed.Header.Set("Content-Type", "application/x-amz-json-1.0")
	signed.Header.Set("X-Amz-Target", "AmazonSQS.SendMessage")
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	v4.NewSigner().SignHTTP(context.Background(), creds, signed, sha256Hex(rr[0]), "sqs", "us-east-1", time.Now())
	var raw bytes.Buffer
	signed.Write(&raw)
	conn, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conn.Write(raw.Bytes()); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
