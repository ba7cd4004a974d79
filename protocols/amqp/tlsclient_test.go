package amqp

import (
	"crypto/tls"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestTLSClientOnPlaintextFrontTold: a client dialling amqps:// to a plaintext front (amqp091-go,
// in front of the local RabbitMQ) is refused as any other protocol is, and the Warn line says it
// spoke TLS and which setting to change, not only the header's hex.
func TestTLSClientOnPlaintextFrontTold(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	if _, err := amqp091.DialTLS("amqps://guest:guest@"+h.p.Addr().String()+"/", &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatal("an amqps client got through a plaintext front")
	}
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "protocol other than AMQP 0-9-1") })
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "protocol other than AMQP 0-9-1") &&
			(!strings.Contains(line, `"looks_like":"a TLS handshake"`) || !strings.Contains(line, "give the front tls {cert_file, key_file}")) {
			t.Errorf("the refusal does not say the client speaks TLS and what to set: %s", line)
		}
	}
}
