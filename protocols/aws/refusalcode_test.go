package aws

import (
	"errors"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/smithy-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestKinesisRefusalLogNamesClientCode: a Kinesis client with a wrong secret is told
// InvalidSignatureException; the Warn line said "code":"SignatureDoesNotMatch", SQS's name,
// so grepping the log for what the client showed found nothing. The line names the code sent.
func TestKinesisRefusalLogNamesClientCode(t *testing.T) {
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) { c.Upstream, c.Log = "http://127.0.0.1:1", zerolog.New(&logs) })
	kc := kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, "wrong", "")})
	_, err := kc.ListStreams(t.Context(), &kinesis.ListStreamsInput{})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "InvalidSignatureException" {
		t.Fatalf("ListStreams with a wrong secret: %v; want InvalidSignatureException", err)
	}
	waitForLog(t, &logs, "request refused")
	if s := logs.String(); !strings.Contains(s, `"code":"InvalidSignatureException"`) {
		t.Errorf("refusal line does not name the code the client got:\n%s", s)
	}
}
