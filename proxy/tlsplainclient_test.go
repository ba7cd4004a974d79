package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestPlainClientAtTLSFrontTold: a client that does not speak TLS at a front that expects it
// gets a line that says so, with what its first bytes look like. It used to get only Go's
// "tls: first record does not look like a TLS handshake", where a TLS client at a plain front is
// told what to change.
func TestPlainClientAtTLSFrontTold(t *testing.T) {
	l, logs := startTLSListener(t)
	addr := l.Addr().String()

	for _, tc := range []struct {
		name, looksLike string
		connect         func()
	}{
		{"kgo without TLS", "", func() {
			cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RequestRetries(0))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = cl.Ping(ctx) // refused: the line is what counts
		}},
		{"amqp091 with amqp://", AMQPHeader, func() {
			if c, err := amqp091.DialConfig("amqp://guest:guest@"+addr+"/", amqp091.Config{Dial: amqp091.DefaultDial(30 * time.Second)}); err == nil {
				c.Close()
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := len(logs.String())
			tc.connect()
			for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String()[from:], "TLS handshake with client failed"); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no failed TLS handshake logged; logs:\n%s", logs.String())
				}
			}
			line := logs.String()[from:]
			if !strings.Contains(line, "does not speak TLS") || !strings.Contains(line, `"header":`) {
				t.Errorf("the line does not say the client does not speak TLS, with its first bytes:\n%s", line)
			}
			if tc.looksLike != "" && !strings.Contains(line, `"looks_like":"`+tc.looksLike+`"`) {
				t.Errorf("the line does not say the client's bytes look like %s:\n%s", tc.looksLike, line)
			}
		})
	}
}
