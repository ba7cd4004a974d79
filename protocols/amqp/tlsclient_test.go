package amqp

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/proxy"
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

// TestSilentUpstreamTold: a front whose upstream does not speak AMQP and waits for more (an
// HTTP server, Go's own, reading the protocol header as the start of a request line) leaves the
// client waiting for its own timeout, as without the proxy, but the proxy says why.
func TestSilentUpstreamTold(t *testing.T) {
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) {
		cfg.Upstream = strings.TrimPrefix(web.URL, "http://")
		cfg.Log = zerolog.New(&logs)
		cfg.upstreamWait = 100 * time.Millisecond
	})
	// The client's own handshake timeout ends its wait.
	if _, err := amqp091.DialConfig(h.url, amqp091.Config{Dial: amqp091.DefaultDial(3 * time.Second)}); err == nil {
		t.Fatal("a client got a connection through a front whose upstream speaks HTTP")
	}
	waitFor(t, "the silent upstream in the log", func() bool {
		return strings.Contains(logs.String(), "the upstream has not answered the AMQP protocol header")
	})
	// Counted in /stats (and /metrics) too, as the log line's running total says: after the
	// first 10 the log says it once in 1000.
	if got := h.p.Stats().SilentUpstreams; got != 1 {
		t.Errorf("SilentUpstreams = %d, want 1", got)
	}
}

// TestBrokerSpeaksAMQP: what the upstream answers the protocol header with decides whether the
// relay starts: a method frame on channel 0 (Connection.Start) or a protocol header (a broker of
// another version) goes on; bytes of another protocol end the connection, named in the Warn.
func TestBrokerSpeaksAMQP(t *testing.T) {
	for _, tc := range []struct {
		name, first, looksLike string
		ok                     bool
	}{
		{"Connection.Start", "\x01\x00\x00\x00\x00\x01\x00\x00\x0a\x00\x0a", "", true},
		{"another version's header", "AMQP\x01\x01\x00\x0a", "", true},
		{"closed at once", "", "", true},
		{"HTTP", "HTTP/1.1 400 Bad Request\r\n\r\n", "an HTTP response", false},
		{"TLS alert", "\x15\x03\x03\x00\x02\x02\x46", "a TLS alert", false},
		{"SSH", "SSH-2.0-OpenSSH_9.2\r\n", "an SSH banner", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			s := offlineSession(t, nil)
			s.log = zerolog.New(&logs)
			up, peer := net.Pipe()
			defer up.Close()
			s.c = &proxy.Conn{Upstream: up}
			go func() {
				peer.Write([]byte(tc.first))
				peer.Close()
			}()
			err := s.brokerSpeaksAMQP(newConnReader(up, nil))
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok: %v", err, tc.ok)
			}
			if tc.looksLike != "" && !strings.Contains(logs.String(), `"looks_like":"`+tc.looksLike+`"`) {
				t.Errorf("the Warn does not name %s: %s", tc.looksLike, logs.String())
			}
		})
	}
}
