package aws

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
)

// upstreamProblem is what /readyz asks a front of an upstream that takes TCP dials.
type upstreamProblem interface {
	UpstreamProblem(ctx context.Context, addr string) error
}

// TestUpstreamOfAnotherProtocol: a front whose upstream is RabbitMQ's port takes TCP dials, so
// /readyz said "ok" while every request was answered 502: RabbitMQ answers an HTTP request with
// AMQP's protocol header and closes. The front keeps that for /readyz, and asking again
// (RabbitMQ answers the same) keeps it. An endpoint recorded so that answers HTTP (the npm SQS
// server) is cleared by a client's request, or by asking it again.
func TestUpstreamOfAnotherProtocol(t *testing.T) {
	const rabbit = "127.0.0.1:5672" // the local RabbitMQ (test-peers.md)
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://" + rabbit })
	reporter, ok := any(tp.Proxy).(upstreamProblem)
	if !ok {
		t.Fatal("the AWS front tells /readyz nothing of what its upstream answered: RabbitMQ there is reported ready")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := reporter.UpstreamProblem(ctx, rabbit); err != nil {
		t.Errorf("before any request: %v; want nil (nothing seen yet)", err)
	}
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: sqsClient(tp.url, testKey, testSecret).Options().Credentials, RetryMaxAttempts: 1})
	if _, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{}); err == nil {
		t.Fatal("a request through a front whose upstream is RabbitMQ succeeded")
	}
	// The 502 reached the client after the front saw the answer: nothing to wait for.
	for i := range 2 { // the second asks RabbitMQ again
		err := reporter.UpstreamProblem(ctx, rabbit)
		if err == nil || !strings.Contains(err.Error(), "an AMQP protocol header") || !strings.Contains(err.Error(), "not HTTP") {
			t.Errorf("UpstreamProblem (call %d) = %v; want it to say RabbitMQ answered AMQP, not HTTP", i+1, err)
		}
	}

	port := startNode(t, nil, "sqs-server.js")
	sqsAddr := fmt.Sprintf("127.0.0.1:%d", port)
	good := startProxy(t, func(c *Config) { c.Upstream = "http://" + sqsAddr })
	good.wrong.Wrong(sqsAddr, errors.New("recorded before the endpoint was put right"))
	cl = sqsClient(good.url, testKey, testSecret)
	if _, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{}); err != nil {
		t.Fatal(err)
	}
	if err := good.wrong.Why(sqsAddr); err != nil {
		t.Errorf("still recorded after the SQS server answered a request: %v", err)
	}
	good.wrong.Wrong(sqsAddr, errors.New("recorded before the endpoint was put right"))
	if err := any(good.Proxy).(upstreamProblem).UpstreamProblem(ctx, sqsAddr); err != nil {
		t.Errorf("the SQS server asked again: %v; want nil", err)
	}
	if err := good.wrong.Why(sqsAddr); err != nil {
		t.Errorf("still recorded after the SQS server answered when asked again: %v", err)
	}
}

// TestUpstreamErrorStatusIsHTTP: an endpoint that refuses a request (the npm SQS server's 400 for
// a queue that does not exist) answers HTTP, as AWS does to a bad request: nothing is recorded.
func TestUpstreamErrorStatusIsHTTP(t *testing.T) {
	port := startNode(t, nil, "sqs-server.js")
	sqsAddr := fmt.Sprintf("127.0.0.1:%d", port)
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://" + sqsAddr })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: sqsClient(tp.url, testKey, testSecret).Options().Credentials, RetryMaxAttempts: 1})
	_, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: awssdk.String(tp.url + "/000000000000/no-such-queue"), MessageBody: awssdk.String("x")})
	if ae, ok := apiErrOf(err); !ok || ae.status < 400 || ae.status >= 500 {
		t.Fatalf("SendMessage to a queue that does not exist: %v; want the server's 4xx", err)
	}
	reporter, ok := any(tp.Proxy).(upstreamProblem)
	if !ok {
		t.Fatal("the AWS front tells /readyz nothing of what its upstream answered")
	}
	if err := reporter.UpstreamProblem(ctx, sqsAddr); err != nil {
		t.Errorf("UpstreamProblem after a 4xx = %v; want nil (an HTTP refusal is HTTP)", err)
	}
}
