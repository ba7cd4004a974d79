package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/Admiral-Piett/goaws/app/gosqs"
	"github.com/Admiral-Piett/goaws/app/models"
	"github.com/Admiral-Piett/goaws/app/router"
	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/sirupsen/logrus"
)

// The SQS part of the demo: queue names, and the static keys both the example services and the
// proxy sign with (goaws checks no signature; the proxy verifies the services' and re-signs).
const (
	demoSQSQueue   = "dsmproxy-demo-payments"
	demoSQSMissing = "dsmproxy-demo-refunds" // never created: sends to it fail
	demoSQSKey     = "demo"
	demoSQSSecret  = "demo"
	demoSQSRegion  = "us-east-1"
)

var demoSQSCreds = credentials.NewStaticCredentialsProvider(demoSQSKey, demoSQSSecret, "")

// demoSQS is the demo's in-process SQS server: goaws's router (both the JSON and the Query
// protocol) on a loopback listener. goaws keeps its queues in package globals, so one process
// runs one of these at a time.
type demoSQS struct {
	srv  *http.Server
	ln   net.Listener
	quit chan bool
}

func startDemoSQS() (*demoSQS, error) {
	// goaws logs every request through logrus's standard logger; nothing else here uses logrus.
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.PanicLevel)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("in-process SQS server: %w", err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	// Queue URLs goaws hands out: http://127.0.0.1:<port>/000000000000/<queue> (a region would be
	// prepended to the host). Queues left by an earlier demo in this process are dropped.
	models.SyncQueues.Lock()
	models.CurrentEnvironment = models.Environment{Host: host, Port: port, AccountID: "000000000000",
		// what goaws's own config loader defaults to (30 s visibility, 256 KiB, 4 days)
		QueueAttributeDefaults: models.EnvQueueAttributes{VisibilityTimeout: 30, MaximumMessageSize: 256 << 10, MessageRetentionPeriod: 4 * 24 * 3600}}
	models.SyncQueues.Queues = map[string]*models.Queue{}
	models.SyncQueues.Unlock()
	d := &demoSQS{ln: ln, quit: make(chan bool),
		srv: &http.Server{Handler: awsBatchShape(router.New()), ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = d.srv.Serve(ln) }()
	go gosqs.PeriodicTasks(time.Second, d.quit) // makes unacknowledged messages visible again
	return d, nil
}

// URL is the endpoint the proxy's AWS front forwards to.
func (d *demoSQS) URL() string { return "http://" + d.ln.Addr().String() }

func (d *demoSQS) Close() {
	close(d.quit)
	_ = d.srv.Close()
}

// awsBatchShape fixes the one goaws v0.5.4 JSON answer the demo's services get in a non-AWS
// shape: SendMessageBatch returns {"SendMessageBatchResultEntry":[…],"BatchResultErrorEntry":[…]}
// (its Query XML names) where AWS's JSON protocol has {"Successful":[…],"Failed":[…]}. Left as
// it is, the SDK sees neither a success nor a failure and the proxy, which reads Successful,
// records no produce checkpoint for batch entries. Every other answer passes through untouched,
// errors included.
func awsBatchShape(next http.Handler) http.Handler {
	rename := map[string]string{"SendMessageBatchResultEntry": "Successful", "BatchResultErrorEntry": "Failed"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") != "AmazonSQS.SendMessageBatch" {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var m map[string]json.RawMessage
		if rec.Code/100 == 2 && json.Unmarshal(body, &m) == nil {
			for from, to := range rename {
				if v, ok := m[from]; ok {
					delete(m, from)
					m[to] = v
				}
			}
			if b, err := json.Marshal(m); err == nil {
				body = b
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	})
}

// newDemoSQSClient is an SQS client that reaches the queues only through the proxy at endpoint.
// Its app id (User-Agent app/<name>) is the service name the proxy gives it.
func newDemoSQSClient(endpoint, app string) *sqs.Client {
	return sqs.NewFromConfig(awssdk.Config{Region: demoSQSRegion, Credentials: demoSQSCreds, AppID: app},
		func(o *sqs.Options) { o.BaseEndpoint = awssdk.String(endpoint) })
}

// demoSQSServices creates the payments queue (before any service runs: goaws's queue map is
// read without a lock) and returns checkout, which sends about rate messages/s to it (every
// fifth send a SendMessageBatch) and every 3 s one to a queue that does not exist, and payments,
// which long-polls the queue and deletes what it receives.
func demoSQSServices(ctx context.Context, endpoint string, rate int) ([]func(context.Context) error, error) {
	setup := newDemoSQSClient(endpoint, "payments")
	cq, err := setup.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(demoSQSQueue)})
	if err != nil {
		return nil, fmt.Errorf("creating SQS queue %s through the proxy: %w", demoSQSQueue, err)
	}
	queueURL := awssdk.ToString(cq.QueueUrl)
	missingURL := queueURL[:strings.LastIndexByte(queueURL, '/')+1] + demoSQSMissing

	checkout := func(ctx context.Context) error {
		cl := newDemoSQSClient(endpoint, "checkout")
		// 7 messages every 5 ticks (4 single sends and a batch of 3): about rate messages/s
		tick := time.NewTicker(7 * time.Second / time.Duration(5*max(rate, 1)))
		defer tick.Stop()
		lost := time.NewTicker(3 * time.Second)
		defer lost.Stop()
		attrs := map[string]sqstypes.MessageAttributeValue{
			// String attributes only: goaws gets MD5OfMessageAttributes wrong for Number ones.
			"currency": {DataType: awssdk.String("String"), StringValue: awssdk.String("EUR")},
		}
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-lost.C:
				// A refund for a queue nobody created: the app logs and moves on; the proxy
				// tracks the error.
				_, _ = cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &missingURL, MessageBody: awssdk.String(`{"refund":1}`)})
				continue
			case <-tick.C:
			}
			var err error
			if n%5 == 4 {
				entries := make([]sqstypes.SendMessageBatchRequestEntry, 3)
				for i := range entries {
					entries[i] = sqstypes.SendMessageBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)),
						MessageBody: awssdk.String(fmt.Sprintf(`{"payment":%d,"part":%d}`, n, i)), MessageAttributes: attrs}
				}
				var out *sqs.SendMessageBatchOutput
				if out, err = cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &queueURL, Entries: entries}); err == nil && len(out.Failed) > 0 {
					err = fmt.Errorf("%d of %d batch entries failed: %s", len(out.Failed), len(entries), awssdk.ToString(out.Failed[0].Message))
				}
			} else {
				_, err = cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &queueURL, MessageAttributes: attrs,
					MessageBody: awssdk.String(fmt.Sprintf(`{"payment":%d}`, n))})
			}
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("checkout sending to %s: %w", demoSQSQueue, err)
			}
		}
	}
	payments := func(ctx context.Context) error {
		cl := newDemoSQSClient(endpoint, "payments")
		for {
			out, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &queueURL,
				MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageAttributeNames: []string{"All"}})
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				return fmt.Errorf("payments receiving from %s: %w", demoSQSQueue, err)
			}
			if len(out.Messages) == 0 {
				continue
			}
			del := make([]sqstypes.DeleteMessageBatchRequestEntry, len(out.Messages))
			for i, m := range out.Messages {
				del[i] = sqstypes.DeleteMessageBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle}
			}
			if _, err := cl.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{QueueUrl: &queueURL, Entries: del}); err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
				return fmt.Errorf("payments deleting from %s: %w", demoSQSQueue, err)
			}
		}
	}
	return []func(context.Context) error{checkout, payments}, nil
}
