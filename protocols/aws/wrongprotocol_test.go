package aws

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// refusalLine waits for the Warn line refusing a client of another protocol and returns it.
func refusalLine(t *testing.T, logs *syncbuf.Buffer, what string) string {
	t.Helper()
	want := `"looks_like":"` + what + `"`
	waitForLog(t, logs, want)
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, want) {
			return line
		}
	}
	return ""
}

// TestWrongProtocolClientTold: clients of another protocol pointed at the AWS front (the real
// amqp-publish of amqp-tools, a franz-go Kafka client, a TLS client at a plaintext listener)
// are answered at once (a 400, then the connection closes) instead of waiting for the end of a
// request head that never comes, and the Warn line names their protocol (looks_like) and what to
// change (hint), as the Kafka and AMQP fronts' lines do.
func TestWrongProtocolClientTold(t *testing.T) {
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) { c.Upstream, c.Log = "http://127.0.0.1:9", zerolog.New(&logs) })
	addr := tp.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("amqp-publish", func(t *testing.T) {
		path, err := exec.LookPath("amqp-publish")
		if err != nil {
			t.Fatalf("amqp-publish (amqp-tools) is required: apt-get install -y amqp-tools (%v)", err)
		}
		cmd := exec.CommandContext(ctx, path, "-u", "amqp://guest:guest@"+addr, "-r", "nowhere", "-b", "hello")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err == nil {
			t.Fatalf("amqp-publish at the AWS front succeeded: %s", out.String())
		}
		if strings.Contains(out.String(), "timed out") {
			t.Errorf("amqp-publish waited until it timed out instead of being answered: %s", out.String())
		}
		line := refusalLine(t, &logs, "an AMQP protocol header")
		if !strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, "AMQP front") {
			t.Errorf("the refusal is no Warn line with a hint at the AMQP front: %s", line)
		}
	})

	t.Run("kgo", func(t *testing.T) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RequestRetries(0))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		err = cl.Ping(ctx)
		if err == nil {
			t.Fatal("a Kafka client got an answer from the AWS front")
		}
		// kgo reads the answer's first four bytes as a size and names them: "HTTP".
		if !strings.Contains(err.Error(), "HTTP") {
			t.Errorf("the Kafka client was not answered with HTTP: %v", err)
		}
		line := refusalLine(t, &logs, "a Kafka request")
		if !strings.Contains(line, "Kafka front") {
			t.Errorf("the refusal has no hint at the Kafka front: %s", line)
		}
	})

	t.Run("TLS at a plaintext listener", func(t *testing.T) {
		d := &tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			t.Fatal("a TLS handshake with the plaintext AWS front succeeded")
		}
		line := refusalLine(t, &logs, "a TLS handshake")
		if !strings.Contains(line, "cert_file") {
			t.Errorf("the refusal has no hint at the front's tls settings: %s", line)
		}
	})

	// HTTP clients are not kept waiting, however their request line arrives: a method sent in
	// pieces, one no SDK sends, the HTTP/2 preface (TestKinesisOverHTTP2 and h2c tests).
	t.Run("HTTP in pieces", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		for _, piece := range []string{"PO", "ST", " / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\n",
			"X-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 2\r\n\r\n{}"} {
			if _, err := io.WriteString(c, piece); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // each piece its own segment
		}
		r, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || r.StatusCode != http.StatusForbidden { // unsigned: refused for its signature, as an HTTP request
			t.Fatalf("a request line sent in pieces: %v %v", r, err)
		}
		rs, _ := rawExchange(t, addr, "M-SEARCH * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1)
		if rs[0].StatusCode == http.StatusBadRequest {
			t.Errorf("a request with an unusual method was refused as another protocol")
		}
	})
	if n := tp.Stats().MalformedRequests; n < 3 { // kgo may dial again
		t.Errorf("MalformedRequests %d, want the clients of other protocols counted", n)
	}
	if l := logs.String(); strings.Contains(l, `"looks_like":"an HTTP`) {
		t.Errorf("an HTTP client was refused as another protocol:\n%s", l)
	}
}

// TestNotHTTPLeavesMalformedHTTP: notHTTP names only what cannot begin an HTTP request line;
// a line with no method (garbage, an empty line first) is malformed HTTP, which ReadRequest
// refuses with its own reason, as before the check.
func TestNotHTTPLeavesMalformedHTTP(t *testing.T) {
	for _, tc := range []struct {
		in      string
		notHTTP bool
	}{
		{"GET / HTTP/1.1\r\n", false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false},
		{"garbage\r\n\r\n", false},
		{"\r\nGET / HTTP/1.1\r\n", false},
		{"get\n", false},
		{"AMQP\x00\x00\x09\x01", true},
		{"\x00\x00\x00\x24\x00\x12\x00\x03", true},
		{"\x16\x03\x01\x02\x00", true},
	} {
		br := bufio.NewReader(strings.NewReader(tc.in))
		if got := notHTTP(br); got != tc.notHTTP {
			t.Errorf("notHTTP(%q) = %v, want %v", tc.in, got, tc.notHTTP)
		}
	}
}
