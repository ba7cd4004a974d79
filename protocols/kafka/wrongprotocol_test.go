package kafka

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestTLSClientOnPlaintextFrontTold: a client that speaks TLS to a plaintext front (kgo with a
// TLS dialer, against kfake) is refused, and the Warn line says it spoke TLS and which setting to
// change.
func TestTLSClientOnPlaintextFrontTold(t *testing.T) {
	c, _ := startCluster(t)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.DialTLSConfig(&tls.Config{InsecureSkipVerify: true}),
		kgo.RequestRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Ping(testCtx(t)); err == nil {
		t.Fatal("a TLS client got an answer from a plaintext front")
	}
	waitFor(t, "the refusal logged", func() bool { return strings.Contains(logs.String(), "not valid Kafka framing") })
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "not valid Kafka framing") &&
			(!strings.Contains(line, "a TLS handshake") || !strings.Contains(line, `"hint":"the client speaks TLS`) ||
				!strings.Contains(line, "tls {cert_file, key_file}")) {
			t.Errorf("the refusal does not say the client speaks TLS and what to set: %s", line)
		}
	}
}
