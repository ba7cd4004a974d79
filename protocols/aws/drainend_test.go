package aws

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestDrainEndCutsLongPoll: a long-polled ReceiveMessage still waiting when the drain time runs
// out is cut off by the proxy's own shutdown, not by the upstream. The client gets an answer that
// says so (503 ServiceUnavailable, which the SDKs retry), the log line says so, and nothing is
// tracked as the upstream's failure. The front is run as dsmproxy runs it: its context ends
// after the drain, not before. Over HTTP/1.1 and HTTP/2 (h2c).
func TestDrainEndCutsLongPoll(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		name := "HTTP/1.1"
		if h2 {
			name = "h2c"
		}
		t.Run(name, func(t *testing.T) {
			defer func(d time.Duration) { drainAnswerTime = d }(drainAnswerTime)
			drainAnswerTime = time.Minute // for a loaded machine; the answers come at once
			up := sqsPeer(t)
			var logs syncbuf.Buffer
			ev := &events{}
			p, err := New(Config{Listen: "127.0.0.1:0", Region: "us-east-1", Upstream: up.URL(), Errors: ev,
				Services: &proxy.Services{Default: "svc-default"}, Log: zerolog.New(&logs),
				Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
			if err != nil {
				t.Fatal(err)
			}
			bg, stop := context.WithCancel(context.Background())
			defer stop()
			if err := p.Start(bg); err != nil {
				t.Fatal(err)
			}
			hc := &http.Client{}
			if h2 {
				tr := &http.Transport{Protocols: new(http.Protocols)}
				tr.Protocols.SetUnencryptedHTTP2(true)
				hc.Transport = tr
			}
			// One attempt: a retry would find the listener closed.
			cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String("http://" + p.Addr().String()),
				Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), RetryMaxAttempts: 1, HTTPClient: hc})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("drain-cut")})
			if err != nil {
				t.Fatal(err)
			}
			before := up.count()
			got := make(chan error, 1)
			go func() {
				_, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: cq.QueueUrl, WaitTimeSeconds: 20})
				got <- err
			}()
			for up.count() == before { // the long poll reached the emulator
				if ctx.Err() != nil {
					t.Fatal("the long poll never reached upstream")
				}
				time.Sleep(10 * time.Millisecond)
			}
			// A drain time far shorter than the long poll: it runs out with the poll waiting.
			dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer dcancel()
			if err := p.Shutdown(dctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown with a long poll waiting: %v, want the drain time to run out", err)
			}
			stop() // dsmproxy stops the fronts' context after the drain
			rerr := <-got
			ae, ok := apiErrOf(rerr)
			if !ok || ae.status != http.StatusServiceUnavailable || ae.code != "ServiceUnavailable" || !strings.Contains(ae.msg, "drain") {
				t.Errorf("the long poll cut off by the drain: %v, want a 503 ServiceUnavailable that names the drain", rerr)
			}
			const drained = "drain time ran out before the upstream answered"
			for !strings.Contains(logs.String(), drained) && !strings.Contains(logs.String(), "upstream request failed") {
				if ctx.Err() != nil {
					t.Fatalf("the cut-off long poll was never logged: %s", logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if l := logs.String(); !strings.Contains(l, drained) || strings.Contains(l, "could not reach the upstream") {
				t.Errorf("the log blames the upstream for the proxy's own shutdown, or does not name the drain:\n%s", l)
			}
			for _, e := range ev.all() {
				if e.Category == errtrack.BrokerError {
					t.Errorf("the proxy's own shutdown tracked as an upstream error: %+v", e)
				}
			}
		})
	}
}
