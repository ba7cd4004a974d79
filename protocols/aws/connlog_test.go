package aws

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestRequestLinesNameTheirConnection: every line about a client connection carries `conn`, the
// process-wide id the Kafka and AMQP fronts log too, and the AWS front's lines about the
// connection itself had it (a client of another protocol, a malformed request). Its lines about
// one request on it (the client identified, a refused signature, the service's refusal) had
// `client` alone, so a grep for a connection's id missed its requests. Over HTTP/1.1 and HTTP/2
// (h2c) alike, each request's lines name the connection it came on: one id per client address.
func TestRequestLinesNameTheirConnection(t *testing.T) {
	up := sqsPeer(t)
	for _, tc := range []struct {
		name string
		h2c  bool
	}{{name: "HTTP/1.1"}, {name: "h2c", h2c: true}} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			tp := startProxy(t, func(c *Config) { c.Upstream, c.Log = up.URL(), zerolog.New(&logs).Level(zerolog.DebugLevel) })
			tr := &http.Transport{Protocols: new(http.Protocols)}
			if tc.h2c {
				tr.Protocols.SetUnencryptedHTTP2(true)
			} else {
				tr.Protocols.SetHTTP1(true)
			}
			defer tr.CloseIdleConnections()
			client := func(key, secret string) *sqs.Client {
				return sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), HTTPClient: &http.Client{Transport: tr},
					Credentials: credentials.NewStaticCredentialsProvider(key, secret, ""), RetryMaxAttempts: 1})
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := client(testKey, testSecret).ListQueues(ctx, &sqs.ListQueuesInput{}); err != nil {
				t.Fatal(err)
			}
			if _, err := client(testKey, "wrong").ListQueues(ctx, &sqs.ListQueuesInput{}); err == nil {
				t.Fatal("a wrong secret was taken")
			}
			if _, err := client(testKey, testSecret).GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: awssdk.String("no-such-queue")}); err == nil {
				t.Fatal("GetQueueUrl of a queue that does not exist succeeded")
			}
			conns := map[string]float64{} // kind of line -> its conn
			byClient := map[string]float64{}
			byConn := map[float64]string{}
			for _, line := range strings.Split(logs.String(), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) != nil {
					continue
				}
				msg, _ := m["message"].(string)
				for _, want := range []string{"aws client identified", "request refused", "the service refused the request"} {
					if !strings.HasPrefix(msg, want) {
						continue
					}
					id, ok := m["conn"].(float64)
					if !ok || id == 0 {
						t.Errorf("%q names no connection: %s", want, line)
					}
					conns[want] = id
					// One connection, one client address: the same id for the same address.
					addr, _ := m["client"].(string)
					if c, seen := byClient[addr]; seen && c != id {
						t.Errorf("client %s named as conn %v and %v", addr, c, id)
					}
					if a, seen := byConn[id]; seen && a != addr {
						t.Errorf("conn %v named for clients %s and %s", id, a, addr)
					}
					byClient[addr], byConn[id] = id, addr
				}
			}
			if len(conns) != 3 {
				t.Fatalf("want a line of each kind, got %v; log:\n%s", conns, logs.String())
			}
		})
	}
}

// TestRefusedConnectionNamed: a connection refused at max_conns gets a conn id in its line, as
// the Kafka and AMQP fronts give theirs.
func TestRefusedConnectionNamed(t *testing.T) {
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) {
		c.Upstream, c.Listener.MaxConns, c.Log = "http://127.0.0.1:1", 1, zerolog.New(&logs)
	})
	first, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err == nil {
		t.Fatal("the second connection was served")
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message"] == "connection refused: listener is at its connection limit" {
			if id, _ := m["conn"].(float64); id == 0 {
				t.Errorf("the refusal names no connection: %s", line)
			}
			return
		}
	}
	t.Fatalf("no line for the refused connection:\n%s", logs.String())
}
