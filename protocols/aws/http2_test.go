package aws

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// protoRecorder is a RoundTripper that keeps the protocol of every answer.
type protoRecorder struct {
	rt     http.RoundTripper
	mu     sync.Mutex
	protos map[string]int
}

func (p *protoRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := p.rt.RoundTrip(r)
	if err == nil {
		p.mu.Lock()
		p.protos[resp.Proto]++
		p.mu.Unlock()
	}
	return resp, err
}

// TestKinesisOverHTTP2: clients that speak HTTP/2 to Kinesis (the JavaScript SDK v3's
// KinesisClient always does, the Java SDK v2's KinesisAsyncClient by default) get through the
// proxy as HTTP/1.1 clients do: with prior knowledge on a plain listener (h2c), and in ALPN over
// TLS when they offer nothing else. Their records are checkpointed, injected and restored.
func TestKinesisOverHTTP2(t *testing.T) {
	tests := []struct {
		name string
		tls  bool
	}{
		{name: "h2c prior knowledge"},
		{name: "h2 in ALPN", tls: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := kinesisPeer(t)
			tr := &http.Transport{Protocols: new(http.Protocols)}
			var srvTLS *tls.Config
			scheme := "http://"
			if tt.tls {
				var pool *x509.CertPool
				srvTLS, pool = testpki.ServerTLS(t)
				tr.TLSClientConfig = &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}}
				tr.Protocols.SetHTTP2(true)
				scheme = "https://"
			} else {
				tr.Protocols.SetUnencryptedHTTP2(true)
			}
			tp := startProxy(t, func(c *Config) {
				c.Upstream = up.URL()
				c.KinesisInjectData = true
				c.Listener.TLS = srvTLS
			})
			rec := &protoRecorder{rt: tr, protos: map[string]int{}}
			kc := kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(scheme + tp.Addr().String()),
				Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: "h2-app",
				HTTPClient: &http.Client{Transport: rec}})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			stream := awssdk.String("h2stream")
			if _, err := kc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: stream, ShardCount: awssdk.Int32(1)}); err != nil {
				t.Fatalf("CreateStream over HTTP/2: %v", err)
			}
			w := kinesis.NewStreamExistsWaiter(kc, func(o *kinesis.StreamExistsWaiterOptions) { o.MinDelay, o.MaxDelay = 100*time.Millisecond, time.Second })
			if err := w.Wait(ctx, &kinesis.DescribeStreamInput{StreamName: stream}, time.Minute); err != nil {
				t.Fatalf("stream never became active: %v", err)
			}
			data := [][]byte{[]byte(`{"n":1}`), []byte(`{"n":2}`), []byte("raw")}
			if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: data[0], PartitionKey: awssdk.String("a")}); err != nil {
				t.Fatalf("PutRecord: %v", err)
			}
			pr, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: stream, Records: []ktypes.PutRecordsRequestEntry{
				{Data: data[1], PartitionKey: awssdk.String("b")}, {Data: data[2], PartitionKey: awssdk.String("c")}}})
			if err != nil || awssdk.ToInt32(pr.FailedRecordCount) != 0 {
				t.Fatalf("PutRecords: %v %+v", err, pr)
			}
			recs := readShard(t, ctx, kc, stream, 3)
			for i, r := range recs {
				if !bytes.Equal(r.Data, data[i]) {
					t.Errorf("record %d: %q, want the producer's %q", i, r.Data, data[i])
				}
			}
			prod := tp.rec.withTags("direction:out", "topic:h2stream", "type:kinesis")
			cons := tp.rec.withTags("direction:in", "topic:h2stream", "type:kinesis")
			if len(prod) != 3 || len(cons) != 3 || cons[0].ParentHash != prod[0].Hash || cons[1].ParentHash != prod[1].Hash {
				t.Errorf("%d produce and %d consume checkpoints, want 3 and 3, the JSON records' chained", len(prod), len(cons))
			}
			if prod[0].Service != "h2-app" {
				t.Errorf("service %q, want the client's app id", prod[0].Service)
			}
			if st := tp.Stats(); st.Injected != 2 {
				t.Errorf("injected %d records, want 2", st.Injected)
			}
			rec.mu.Lock()
			if len(rec.protos) != 1 || rec.protos["HTTP/2.0"] == 0 {
				t.Errorf("answers by protocol %v, want HTTP/2.0 only", rec.protos)
			}
			rec.mu.Unlock()
			if bad := up.failures(); len(bad) > 0 {
				t.Fatalf("upstream signature failures: %v", bad)
			}
			// A drain tells the idle HTTP/2 connection (GOAWAY), which then closes: the drain
			// ends without waiting for its deadline.
			if tp.Stats().OpenConnections == 0 {
				t.Fatal("the client's HTTP/2 connection is not counted open")
			}
			sctx, scancel := context.WithTimeout(ctx, time.Minute)
			defer scancel()
			if err := tp.Shutdown(sctx); err != nil {
				t.Errorf("drain with an HTTP/2 connection open: %v", err)
			}
		})
	}
}
