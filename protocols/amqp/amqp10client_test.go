package amqp

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestAMQP10ClientTold: an AMQP 1.0 client (Node's rhea), which RabbitMQ 4 serves on the same
// port as 0-9-1 clients, is refused by the front as RabbitMQ 3 without the plugin refuses it, and
// the Warn line says it speaks AMQP 1.0 and where it belongs, not only "an AMQP protocol header"
// beside "a protocol other than AMQP 0-9-1".
func TestAMQP10ClientTold(t *testing.T) {
	needNode(t)
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	host, port, _ := net.SplitHostPort(h.p.Addr().String())
	cmd := exec.CommandContext(t.Context(), "node", "amqp10.js", host, port)
	cmd.Dir = nodeDir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Unsupported AMQP version: 0-9-1") {
		t.Fatalf("rhea through the front: %v\n%s", err, out)
	}
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "protocol other than AMQP 0-9-1") })
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "protocol other than AMQP 0-9-1") &&
			(!strings.Contains(line, `"looks_like":"an AMQP 1.0 protocol header`) || !strings.Contains(line, "connect AMQP 1.0 clients to the broker")) {
			t.Errorf("the refusal does not say the client speaks AMQP 1.0: %s", line)
		}
	}
}

func TestAMQPVersionNamed(t *testing.T) {
	for hdr, want := range map[string]string{
		"AMQP\x00\x01\x00\x00": "1.0", "AMQP\x02\x01\x00\x00": "1.0", "AMQP\x03\x01\x00\x00": "1.0",
		"AMQP\x01\x01\x00\x0a": "0-10", "AMQP\x01\x01\x00\x09": "0-9", "AMQP\x01\x01\x08\x00": "0-8",
		"AMQP\x00\x00\x08\x00": "0.0.8.0",
	} {
		if got := amqpVersion([8]byte([]byte(hdr))); got != want {
			t.Errorf("%q: %s, want %s", hdr, got, want)
		}
	}
}
