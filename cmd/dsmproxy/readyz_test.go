package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/amqp"
	"github.com/dsmproxy/dsmproxy/protocols/aws"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestReadyzTLSUpstream: a front that reaches its upstream over TLS is ready only when the
// handshake succeeds, so a wrong CA or server name shows in /readyz, not first at a client's
// connection; a plain TCP dial would answer "ok" for both.
func TestReadyzTLSUpstream(t *testing.T) {
	dir := t.TempDir()
	good, other := testpki.New(t, "upstream CA"), testpki.New(t, "another CA")
	_, _, pair := good.Issue(t, "upstream")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	up := ln.Addr().String()
	sh := shared{cp: pathway.NewCheckpointer("", 0), obs: noObserver{}, errs: errtrack.Discard{}, services: &proxy.Services{}, log: zerolog.Nop()}
	for _, tc := range []struct {
		name  string
		tls   *TLSClient
		ready bool
		says  string
	}{
		{"right CA", &TLSClient{CAFile: good.WriteCA(t, t.TempDir())}, true, "ok"},
		{"wrong CA", &TLSClient{CAFile: other.WriteCA(t, dir)}, false, "certificate signed by unknown authority"},
		{"wrong server name", &TLSClient{CAFile: good.WriteCA(t, t.TempDir()), ServerName: "elsewhere"}, false, "elsewhere"},
	} {
		for _, build := range []func() (namedFront, error){
			func() (namedFront, error) {
				return buildAMQP(AMQPConfig{Listen: "127.0.0.1:0", Upstream: up, ListenerLimits: ListenerLimits{UpstreamTLS: tc.tls}}, sh)
			},
			func() (namedFront, error) {
				return buildKafka(KafkaConfig{Listen: "127.0.0.1:0", Bootstrap: []string{up}, ListenerLimits: ListenerLimits{UpstreamTLS: tc.tls}}, sh)
			},
			func() (namedFront, error) {
				return buildAWS(AWSConfig{Listen: "127.0.0.1:0", Upstream: "https://" + up, ListenerLimits: ListenerLimits{UpstreamTLS: tc.tls}}, sh)
			},
		} {
			f, err := build()
			if err != nil {
				t.Fatal(err)
			}
			t.Run(tc.name+" "+f.protocol, func(t *testing.T) {
				a := newAdmin([]namedFront{f})
				a.ready.Store(true)
				rec, body := getReadyz(t, a, context.Background())
				status := body.Fronts[0].Upstreams[up]
				if body.Ready != tc.ready || (rec.Code == http.StatusOK) != tc.ready || !strings.Contains(status, tc.says) {
					t.Errorf("ready %v (%d), upstream %q; want ready %v, saying %q", body.Ready, rec.Code, status, tc.ready, tc.says)
				}
			})
		}
	}
	// A broker that requires a client certificate (TLS 1.3) refuses one given none only after
	// the client's side of the handshake is done.
	mtls, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer mtls.Close()
	go func() {
		for {
			c, err := mtls.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	f, err := buildAMQP(AMQPConfig{Listen: "127.0.0.1:0", Upstream: mtls.Addr().String(),
		ListenerLimits: ListenerLimits{UpstreamTLS: &TLSClient{CAFile: good.WriteCA(t, t.TempDir())}}}, sh)
	if err != nil {
		t.Fatal(err)
	}
	a := newAdmin([]namedFront{f})
	a.ready.Store(true)
	rec := httptest.NewRecorder()
	a.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "certificate required") {
		t.Errorf("upstream requiring a client certificate, none configured: %d %s; want 503 naming it", rec.Code, rec.Body)
	}
	// Without upstream_tls the dial stays a TCP one: the TLS listener answers it.
	f, err = buildAMQP(AMQPConfig{Listen: "127.0.0.1:0", Upstream: up}, sh)
	if err != nil {
		t.Fatal(err)
	}
	if f.readyDials != nil {
		t.Errorf("a front without upstream TLS has TLS readiness dials")
	}
}

// TestReadyzDoesNotWaitForAHungUpstream: a Kafka front with three bootstrap brokers, one of
// them on a host that is down (its dial hangs until the timeout), works through the other two.
// /readyz waited for the hung dial (2 s), past a probe's timeout (Kubernetes: 1 s), so a proxy
// that works was taken out of service. Here the hung dial is released only when the request
// ends: /readyz must answer without it.
func TestReadyzDoesNotWaitForAHungUpstream(t *testing.T) {
	released := make(chan struct{})
	hang := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		close(released)
		return nil, ctx.Err()
	}
	answer := func(context.Context, string, string) (net.Conn, error) {
		c, peer := net.Pipe()
		peer.Close()
		return c, nil
	}
	f := namedFront{front: boundFront{addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 19092}}, protocol: "kafka", listen: "127.0.0.1:19092",
		upstreams:  []string{"kafka-1:9092", "kafka-2:9092", "kafka-3:9092"},
		readyDials: map[string]proxy.DialFunc{"kafka-1:9092": answer, "kafka-2:9092": hang, "kafka-3:9092": answer}}
	a := newAdmin([]namedFront{f})
	a.dialTO = 10 * time.Second // before the fix, the test's cost: /readyz waited this long
	a.ready.Store(true)
	rec, body := getReadyz(t, a, context.Background())
	if rec.Code != http.StatusOK || !body.Ready {
		t.Errorf("/readyz %d %s: want 200, ready", rec.Code, rec.Body)
	}
	if got := body.Fronts[0].Upstreams["kafka-2:9092"]; !strings.HasPrefix(got, "no answer yet") {
		t.Errorf("the hung upstream says %q: /readyz waited for its dial to time out", got)
	}
	<-released // the request's end released the hung dial
}

// TestReadyzAnswersWhenEveryDialFails: a front whose upstreams all hang until /readyz's dials
// end (hosts that are down) is answered 503, each upstream with its error. A dial that ended
// with the request's context dropped its result (its select saw the context done as well as
// room to send, and picked at random), and /readyz then waited on the results forever: before
// the fix this test hung until go test's timeout, in readyz at <-results.
func TestReadyzAnswersWhenEveryDialFails(t *testing.T) {
	const n = 16 // each dropped with odds 1/2: the hang was all but sure
	var started sync.WaitGroup
	started.Add(n)
	hang := func(ctx context.Context, _, _ string) (net.Conn, error) {
		started.Done()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	f := namedFront{front: boundFront{addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 19092}}, protocol: "kafka", listen: "127.0.0.1:19092",
		readyDials: map[string]proxy.DialFunc{}}
	for i := range n {
		up := fmt.Sprintf("kafka-%d:9092", i)
		f.upstreams = append(f.upstreams, up)
		f.readyDials[up] = hang
	}
	a := newAdmin([]namedFront{f})
	a.ready.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { started.Wait(); cancel() }() // the dials end as at their deadline, no clock involved
	rec, body := getReadyz(t, a, ctx)
	if rec.Code != http.StatusServiceUnavailable || body.Ready {
		t.Errorf("/readyz %d %s: want 503, not ready", rec.Code, rec.Body)
	}
	for up, st := range body.Fronts[0].Upstreams {
		if !strings.Contains(st, "context canceled") {
			t.Errorf("upstream %s says %q, want its dial's error", up, st)
		}
	}
}

// readyzBody is the part of /readyz's JSON the tests read.
type readyzBody struct {
	Ready  bool
	Fronts []frontStatus
}

// getReadyz asks a's /readyz, with ctx as the request's context, and decodes the answer.
func getReadyz(t *testing.T, a *admin, ctx context.Context) (*httptest.ResponseRecorder, readyzBody) {
	t.Helper()
	rec := httptest.NewRecorder()
	a.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil).WithContext(ctx))
	var body readyzBody
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("/readyz %d %s: %v", rec.Code, rec.Body, err)
	}
	return rec, body
}

// TestReadyzUpstreamOfAnotherProtocol: a Kafka front whose bootstrap is RabbitMQ's port takes
// TCP dials, so /readyz said it was ready ("ok"), while the front had already seen RabbitMQ
// answer its ApiVersions with AMQP's protocol header and logged that it is not a Kafka broker.
// That upstream is not ready, with the front's reason.
func TestReadyzUpstreamOfAnotherProtocol(t *testing.T) {
	const rabbitAddr = "127.0.0.1:5672" // the local RabbitMQ (test-peers.md section 3)
	// A fixed port, so that the front learns its nodes at start (node ports 27421-27430).
	cfg := &Config{Kafka: []KafkaConfig{{Listen: "127.0.0.1:27420", Bootstrap: []string{rabbitAddr}}},
		Admin: AdminConfig{Listen: "off"}, Agent: AgentConfig{Disabled: true}}
	prepare(t, cfg)
	rt, logs := startLogged(t, cfg)
	defer rt.stop()
	// The front's own ApiVersions at start (node discovery) meets AMQP's answer.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), "did not answer the proxy's ApiVersions"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the front did not say that RabbitMQ does not answer ApiVersions; logs:\n%s", logs)
		}
	}
	a := newAdmin(rt.fronts)
	a.ready.Store(true)
	rec, body := getReadyz(t, a, context.Background())
	status := body.Fronts[0].Upstreams[rabbitAddr]
	if rec.Code != http.StatusServiceUnavailable || body.Ready || body.Fronts[0].Ready || !strings.Contains(status, "not a Kafka broker") || !strings.Contains(status, "AMQP") {
		t.Errorf("/readyz %d, ready %v, upstream %s says %q; want 503, not ready, saying it answered AMQP and is not a Kafka broker", rec.Code, body.Ready, rabbitAddr, status)
	}
}

// The AMQP front knows the same of its broker (amqp's TestUpstreamOfAnotherProtocol).
var _ upstreamProblemReporter = (*amqp.Proxy)(nil)

// TestReadyzAWSUpstreamOfAnotherProtocol: an AWS front whose upstream URL names RabbitMQ's port
// takes TCP dials, so /readyz said "ok" and ready while every request was answered 502 (RabbitMQ
// answers an HTTP request with AMQP's protocol header). After a client's request the upstream
// is not ready, with the front's reason, and each /readyz asks it again.
func TestReadyzAWSUpstreamOfAnotherProtocol(t *testing.T) {
	const rabbitAddr = "127.0.0.1:5672" // the local RabbitMQ (test-peers.md section 3)
	cfg := &Config{AWS: []AWSConfig{{Listen: "127.0.0.1:0", Upstream: "http://" + rabbitAddr, Region: "us-east-1", TrustClients: true,
		credentials: credentials.NewStaticCredentialsProvider("proxy", "proxy", "")}}, Admin: AdminConfig{Listen: "off"}}
	cfg.Agent.Disabled = true
	rt := startRuntime(t, cfg)
	if code := listQueues(t, rt.fronts[0].Addr().String()); code != http.StatusBadGateway {
		t.Fatalf("a request through a front whose upstream is RabbitMQ was answered %d, want 502", code)
	}
	a := newAdmin(rt.fronts)
	a.ready.Store(true)
	rec, body := getReadyz(t, a, context.Background())
	status := body.Fronts[0].Upstreams[rabbitAddr]
	if rec.Code != http.StatusServiceUnavailable || body.Ready || body.Fronts[0].Ready || !strings.Contains(status, "not HTTP") || !strings.Contains(status, "AMQP") {
		t.Errorf("/readyz %d, ready %v, upstream %s says %q; want 503, not ready, saying it answered AMQP, not HTTP", rec.Code, body.Ready, rabbitAddr, status)
	}
}

// listQueues sends an SQS Query ListQueues to the AWS front at addr and returns the status.
func listQueues(t *testing.T, addr string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("Action=ListQueues&Version=2012-11-05"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode
}

// The AWS front knows the same of its endpoints (aws's TestUpstreamOfAnotherProtocol).
var _ upstreamProblemReporter = (*aws.Proxy)(nil)
