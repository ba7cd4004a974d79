package aws

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// TestTLSTowardClients: with Listener.TLS the proxy serves HTTPS and hands out https queue URLs.
func TestTLSTowardClients(t *testing.T) {
	up := sqsPeer(t)
	srvTLS, pool := testpki.ServerTLS(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL(); c.Listener.TLS = srvTLS })
	endpoint := "https://" + tp.Addr().String()
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""),
		HTTPClient:  &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("secure")})
	if err != nil {
		t.Fatalf("CreateQueue over TLS: %v", err)
	}
	if !strings.HasPrefix(*cq.QueueUrl, endpoint+"/") {
		t.Fatalf("queue URL %s, want it under %s", *cq.QueueUrl, endpoint)
	}
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String("over tls")}); err != nil {
		t.Fatalf("SendMessage over TLS: %v", err)
	}
	if n := len(tp.rec.withTags("direction:out", "topic:secure")); n != 1 {
		t.Errorf("%d produce points", n)
	}
}

// TestMaxConns: connections beyond Listener.MaxConns are closed at once and counted; a slot
// frees when its connection closes.
func TestMaxConns(t *testing.T) {
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:1"; c.Listener.MaxConns = 1 })
	first, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// the second is accepted by the kernel, then closed by the proxy: a read sees EOF or a reset
	second, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	second.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err == nil {
		t.Fatal("second connection was served")
	}
	second.Close()
	if tp.Stats().RefusedConns != 1 {
		t.Fatalf("RefusedConns = %d, want 1", tp.Stats().RefusedConns)
	}
	first.Close()
	// once the first is closed, a new client gets the slot (the proxy notices the close when its
	// server goroutine reads EOF, so retry for a while)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Post(tp.url+"/", "application/x-amz-json-1.0", strings.NewReader("{}"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != 403 {
				t.Fatalf("status %d, want 403 (unsigned)", resp.StatusCode)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after the first connection closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTLSTowardCLI: Debian's awscli (Python on OpenSSL, not Go's TLS) verifies the proxy's
// certificate against a CA bundle and sends through the HTTPS listener.
func TestTLSTowardCLI(t *testing.T) {
	up := sqsPeer(t)
	pki := testpki.New(t, "aws test CA")
	caFile := pki.WriteCA(t, t.TempDir())
	_, _, pair := pki.Issue(t, "dsmproxy")
	tp := startProxy(t, func(c *Config) {
		c.Upstream = up.URL()
		c.Listener.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	endpoint := "https://" + tp.Addr().String()
	aws := newCLI(t, endpoint)
	aws.env = append(aws.env, "AWS_CA_BUNDLE="+caFile)
	var cq struct{ QueueUrl string }
	aws.run(ctx, &cq, "sqs", "create-queue", "--queue-name", "secure-cli")
	if !strings.HasPrefix(cq.QueueUrl, endpoint+"/") {
		t.Fatalf("queue URL %s, want it under %s", cq.QueueUrl, endpoint)
	}
	aws.run(ctx, nil, "sqs", "send-message", "--queue-url", cq.QueueUrl, "--message-body", "over tls")
	if n := len(tp.rec.withTags("direction:out", "topic:secure-cli")); n != 1 {
		t.Errorf("%d produce points", n)
	}
}

// TestPlainClientAtTLSFrontTold: an SDK given an http:// endpoint for a front with tls is
// answered 400 in plain HTTP (as net/http's servers answer: "Client sent an HTTP request to an
// HTTPS server") rather than having its connection closed with nothing, which the CLIs report
// only as "Connection was closed before we received a valid response"; and the proxy's Warn line
// says what the client spoke and what to change, as the Kafka and AMQP fronts' lines do.
func TestPlainClientAtTLSFrontTold(t *testing.T) {
	var logs syncbuf.Buffer
	srvTLS, _ := testpki.ServerTLS(t)
	tp := startProxy(t, func(c *Config) {
		c.Upstream, c.Listener.TLS, c.Log = "http://127.0.0.1:9", srvTLS, zerolog.New(&logs)
	})
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String("http://" + tp.Addr().String()),
		Credentials:      credentials.NewStaticCredentialsProvider(testKey, testSecret, ""),
		RetryMaxAttempts: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{})
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusBadRequest {
		t.Errorf("a plain HTTP client at the TLS front got %v, want a 400 answer", err)
	}
	line := refusalLine(t, &logs, "an HTTP request")
	if !strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, "https://") || !strings.Contains(line, `"header":`) {
		t.Errorf("the refusal is no Warn line with the client's header and a hint at https://: %s", line)
	}
	if n := tp.Stats().MalformedRequests; n != 1 {
		t.Errorf("MalformedRequests %d, want 1", n)
	}
}

// TestCLIRefusingCertificateTold: the aws CLI (OpenSSL) refusing the front's expired certificate
// gets a Warn line that names its alert and says the client refused the front's certificate, and
// why; Go's handshake alone reads OpenSSL's unencrypted TLS 1.3 alert as "bad record MAC".
func TestCLIRefusingCertificateTold(t *testing.T) {
	var logs syncbuf.Buffer
	pki := testpki.New(t, "aws test CA")
	pki.LeafNotAfter = time.Now().Add(-time.Hour)
	caFile := pki.WriteCA(t, t.TempDir())
	_, _, pair := pki.Issue(t, "dsmproxy")
	tp := startProxy(t, func(c *Config) {
		c.Upstream, c.Log = "http://127.0.0.1:9", zerolog.New(&logs)
		c.Listener.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	aws := newCLI(t, "https://"+tp.Addr().String())
	cmd := exec.CommandContext(ctx, debianAWS, "sqs", "list-queues", "--endpoint-url", aws.endpoint)
	cmd.Env = append(aws.env, "AWS_CA_BUNDLE="+caFile, "AWS_MAX_ATTEMPTS=1")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("the CLI accepted an expired certificate: %s", out)
	}
	waitForLog(t, &logs, "TLS handshake with client failed")
	i := strings.Index(logs.String(), `{"level":"warn"`)
	if i < 0 {
		t.Fatalf("the refusal was not logged at Warn:\n%s", logs.String())
	}
	line, _, _ := strings.Cut(logs.String()[i:], "\n")
	for _, want := range []string{`"client_alert":"expired certificate"`, "refused the certificate this front serves", `"problem":"the certificate expired at`} {
		if !strings.Contains(line, want) {
			t.Errorf("the line has no %s:\n%s", want, line)
		}
	}
}

// TestClientWithoutCertificateTold: at a front with client_ca_file, an SDK that presents no
// certificate gets a Warn line that says the front wants one and from which setting.
func TestClientWithoutCertificateTold(t *testing.T) {
	var logs syncbuf.Buffer
	pki := testpki.New(t, "aws test CA")
	_, _, pair := pki.Issue(t, "dsmproxy")
	tp := startProxy(t, func(c *Config) {
		c.Upstream, c.Log = "http://127.0.0.1:9", zerolog.New(&logs)
		c.Listener.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pki.Pool, ClientAuth: tls.RequireAndVerifyClientCert}
	})
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String("https://" + tp.Addr().String()),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), RetryMaxAttempts: 1,
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{}); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	waitForLog(t, &logs, "client didn't provide a certificate")
	if s := logs.String(); !strings.Contains(s, "client_ca_file") {
		t.Errorf("the line does not name client_ca_file:\n%s", s)
	}
}
