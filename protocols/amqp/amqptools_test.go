package amqp

import (
	"bytes"
	"crypto/tls"
	"net"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// amqpTool finds one of Debian's amqp-tools (rabbitmq-c, a C client) or fails saying how to
// install it.
func amqpTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s (amqp-tools, the rabbitmq-c client) is required: install it with `apt-get install -y amqp-tools` (%v)", name, err)
	}
	return path
}

// toolURL is url for rabbitmq-c, which reads "amqp://host/" as the vhost "" where the AMQP URI
// spec's other clients read "/": without the path it uses "/".
func toolURL(url string) string { return strings.TrimSuffix(url, "/") }

func runAmqpTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), amqpTool(t, name), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, errb.String())
	}
	return out.String()
}

// getDirect takes one message from queue on a direct connection, failing if there is none.
func getDirect(t *testing.T, c *amqp091.Connection, queue string) amqp091.Delivery {
	t.Helper()
	ch := channel(t, c)
	defer ch.Close()
	var d amqp091.Delivery
	waitFor(t, "a message in "+queue, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get %s: %v", queue, err)
		}
		return ok
	})
	return d
}

// TestAmqpToolsThroughProxy: rabbitmq-c's amqp-publish and amqp-get, a third client with its own
// framing, publish and get through the proxy. What a direct reader finds in the queue is what
// the same command publishes directly, plus the pathway header; the get chains to the publish.
func TestAmqpToolsThroughProxy(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, directURL, "setup", 0)
	cases := []struct {
		name string
		args []string
	}{
		{"bare", []string{"-b", "tools-bare"}},
		{"properties and headers", []string{"-p", "-C", "text/plain", "-E", "utf8", "-t", "reply-q", "-H", "trace: xyz", "-H", "tenant: acme", "-b", "tools-full"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			qd, qp := declareQueue(t, c, unique("tools-direct")), declareQueue(t, c, unique("tools-proxy"))
			runAmqpTool(t, "amqp-publish", append([]string{"-u", toolURL(directURL), "-r", qd}, tc.args...)...)
			runAmqpTool(t, "amqp-publish", append([]string{"-u", toolURL(h.url), "-r", qp}, tc.args...)...)
			d, p := getDirect(t, c, qd), getDirect(t, c, qp)
			if _, ok := d.Headers[pathway.HeaderKey]; ok {
				t.Errorf("direct publish carries a pathway header")
			}
			v, _ := p.Headers[pathway.HeaderKey].(string)
			if _, err := pathway.DecodeBase64String(v); err != nil {
				t.Errorf("pathway header %q through the proxy: %v", v, err)
			}
			if !reflect.DeepEqual(publishing(d), publishing(p)) {
				t.Errorf("message differs:\ndirect %+v\nproxy  %+v", publishing(d), publishing(p))
			}
		})
	}
	t.Run("get chains to publish", func(t *testing.T) {
		q := declareQueue(t, c, unique("tools-get"))
		runAmqpTool(t, "amqp-publish", "-u", toolURL(h.url), "-r", q, "-b", "tools-get")
		getChains(t, h, q, "tools-get", "-u", toolURL(h.url))
	})
}

// getChains runs amqp-get on queue with args (URL, TLS) until it gets a message, wants its body,
// and checks that the get's checkpoint chains to the queue's publishes.
func getChains(t *testing.T, h *harness, queue, body string, args ...string) {
	t.Helper()
	var out []byte
	waitFor(t, "amqp-get to find a message in "+queue, func() bool {
		var err error
		out, err = exec.CommandContext(t.Context(), amqpTool(t, "amqp-get"), append(args, "-q", queue)...).Output()
		return err == nil // amqp-get fails on an empty queue
	})
	if got := strings.TrimSpace(string(out)); got != body {
		t.Fatalf("amqp-get through the proxy printed %q, want %q", got, body)
	}
	var pub, get []pathway.Point
	waitFor(t, "the get checkpoint on "+queue, func() bool {
		pts := h.rec.points()
		pub, get = with(pts, "direction:out", "topic:"+queue), with(pts, "direction:in", "topic:"+queue)
		return len(get) == 1 && len(pub) > 0
	})
	if get[0].ParentHash != pub[0].Hash {
		t.Errorf("amqp-get's checkpoint has parent %x, not the publish hash %x", get[0].ParentHash, pub[0].Hash)
	}
}

// publishing is what a publisher set on a delivery, without the pathway header.
func publishing(d amqp091.Delivery) amqp091.Publishing {
	return amqp091.Publishing{Headers: withoutCtx(d.Headers), ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		DeliveryMode: d.DeliveryMode, Priority: d.Priority, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo,
		Expiration: d.Expiration, MessageId: d.MessageId, Timestamp: d.Timestamp, Type: d.Type, UserId: d.UserId, AppId: d.AppId, Body: d.Body}
}

// TestAmqpToolsOverTLS: rabbitmq-c on OpenSSL, not Go's TLS, publishes and gets through a proxy
// that terminates amqps, verifying the proxy's certificate against its CA file; the message gets
// its header and the get chains to the publish.
func TestAmqpToolsOverTLS(t *testing.T) {
	pki := testpki.New(t, "amqps test CA")
	caFile := pki.WriteCA(t, t.TempDir())
	_, _, pair := pki.Issue(t, "dsmproxy")
	h := startProxy(t, func(c *Config) { c.Listener.TLS = &tls.Config{Certificates: []tls.Certificate{pair}} })
	// rabbitmq-c checks the certificate against a host name, not an IP address.
	url := "amqps://guest:guest@localhost:" + strconv.Itoa(h.p.Addr().(*net.TCPAddr).Port)
	c := dial(t, directURL, "setup", 0)
	q := declareQueue(t, c, unique("tools-tls"))
	runAmqpTool(t, "amqp-publish", "--ssl", "--cacert="+caFile, "-u", url, "-r", q, "-b", "over-tls")
	d := getDirect(t, c, q)
	if string(d.Body) != "over-tls" || d.Headers[pathway.HeaderKey] == nil {
		t.Fatalf("amqp-publish over TLS: body %q headers %v", d.Body, d.Headers)
	}
	runAmqpTool(t, "amqp-publish", "--ssl", "--cacert="+caFile, "-u", url, "-r", q, "-b", "again")
	getChains(t, h, q, "again", "--ssl", "--cacert="+caFile, "-u", url)
}
