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
