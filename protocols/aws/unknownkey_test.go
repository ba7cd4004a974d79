package aws

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestUnknownKeyRefusalSaysWhatToSet: a client signing with a key that is neither the proxy's
// own nor one of client_keys (aws-sdk-go-v2, against local-aws-sqs) gets AWS's
// InvalidClientTokenId, and the Warn line names the key and the settings that would let it in.
func TestUnknownKeyRefusalSaysWhatToSet(t *testing.T) {
	up := sqsPeer(t)
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) { c.Upstream, c.Log = up.URL(), zerolog.New(&logs) })
	const stranger = "AKIDSTRANGER00000001"
	_, err := sqsClient(tp.url, stranger, "whatever").ListQueues(context.Background(), &sqs.ListQueuesInput{})
	if err == nil || !strings.Contains(err.Error(), "InvalidClientTokenId") {
		t.Fatalf("ListQueues with an unknown key: %v, want InvalidClientTokenId", err)
	}
	waitForLog(t, &logs, "request refused")
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "request refused") &&
			(!strings.Contains(line, `"access_key":"`+stranger+`"`) || !strings.Contains(line, "client_keys") || !strings.Contains(line, "trust_clients")) {
			t.Errorf("the refusal names neither the key nor what to set: %s", line)
		}
	}
}

// TestBadSignatureRefusalNamesKey: a client signing with a known key but the wrong secret
// (aws-sdk-go-v2, against local-aws-sqs) gets SignatureDoesNotMatch, and the Warn line names the
// key, as the unknown key's does, so that of several clients the misconfigured one shows; never
// the secret or the signature.
func TestBadSignatureRefusalNamesKey(t *testing.T) {
	up := sqsPeer(t)
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) { c.Upstream, c.Log = up.URL(), zerolog.New(&logs) })
	for _, key := range []string{otherKey, testKey} { // a client key, the proxy's own
		const wrong = "not-the-secret-dsmproxy-has"
		_, err := sqsClient(tp.url, key, wrong).ListQueues(context.Background(), &sqs.ListQueuesInput{})
		if err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
			t.Fatalf("ListQueues with %s and the wrong secret: %v, want SignatureDoesNotMatch", key, err)
		}
	}
	// Logged before the answer is written: both lines are there.
	refusals := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, "request refused") {
			continue
		}
		refusals++
		if !strings.Contains(line, `"code":"SignatureDoesNotMatch"`) || !strings.Contains(line, `"access_key":"AKID`) {
			t.Errorf("a refusal for its signature that does not name the key: %s", line)
		}
		if strings.Contains(line, "not-the-secret") || strings.Contains(line, testSecret) || strings.Contains(line, otherSec) ||
			strings.Contains(line, "Signature=") {
			t.Errorf("a refusal line that quotes a secret or the signature: %s", line)
		}
	}
	if refusals != 2 {
		t.Errorf("%d refusal lines, want 2:\n%s", refusals, logs.String())
	}
}
