package aws

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/smithy-go"
)

// TestSigningScopeFromTheClient: the proxy signs each request for the region and service the
// client's own signature names, not its configured region (us-east-1 here): a client of
// eu-west-1 must reach eu-west-1. The verifier in front of each emulator records the scope.
func TestSigningScopeFromTheClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	sc := sqs.New(sqs.Options{Region: "eu-west-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
	if _, err := sc.ListQueues(ctx, &sqs.ListQueuesInput{}); err != nil {
		t.Fatalf("SQS ListQueues signed for eu-west-1: %v", err)
	}
	if want := []string{"eu-west-1/sqs"}; !slices.Equal(up.signedScopes(), want) {
		t.Errorf("SQS upstream signatures %v, want %v", up.signedScopes(), want)
	}

	kup := kinesisPeer(t)
	ktp := startProxy(t, func(c *Config) { c.Upstream = kup.URL() })
	kc := kinesis.New(kinesis.Options{Region: "ap-southeast-2", BaseEndpoint: awssdk.String(ktp.url),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
	if _, err := kc.ListStreams(ctx, &kinesis.ListStreamsInput{}); err != nil {
		t.Fatalf("Kinesis ListStreams signed for ap-southeast-2: %v", err)
	}
	if want := []string{"ap-southeast-2/kinesis"}; !slices.Equal(kup.signedScopes(), want) {
		t.Errorf("Kinesis upstream signatures %v, want %v", kup.signedScopes(), want)
	}
}

// TestKinesisAuthRefused: a Kinesis client with a wrong secret or an unknown key gets Kinesis's
// own error codes (not SQS's), and nothing reaches the stream server.
func TestKinesisAuthRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	up := kinesisPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	for _, tc := range []struct{ key, secret, code string }{
		{testKey, "wrong-secret", "InvalidSignatureException"},
		{"AKIDUNKNOWN000000000", "whatever", "UnrecognizedClientException"},
	} {
		kc := kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
			Credentials: credentials.NewStaticCredentialsProvider(tc.key, tc.secret, ""), RetryMaxAttempts: 1})
		_, err := kc.ListStreams(ctx, &kinesis.ListStreamsInput{})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != tc.code {
			t.Errorf("key %s: %v, want API error %s", tc.key, err, tc.code)
		}
	}
	if n := up.count(); n != 0 {
		t.Errorf("%d refused requests reached the stream server", n)
	}
	if got := tp.Stats().AuthFailures; got != 2 {
		t.Errorf("AuthFailures = %d, want 2", got)
	}
}
