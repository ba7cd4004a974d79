package amqp

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// killBrokerSide destroys RabbitMQ's end of the TCP connection whose local address is local, as a
// broker host that drops its connections does: the kernel sends the peer a reset. It uses
// `ss -K` (iproute2; the kernel's SOCK_DESTROY, which needs CAP_NET_ADMIN).
func killBrokerSide(t *testing.T, local *net.TCPAddr) {
	t.Helper()
	out, err := exec.Command("ss", "-K", "-t", "src", rabbitAddr, "dst", local.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ss -K (iproute2, run as root) could not reset RabbitMQ's end of %s: %v\n%s", local, err, out)
	}
	if !strings.Contains(string(out), strconv.Itoa(local.Port)) {
		t.Fatalf("ss -K found no RabbitMQ connection to %s:\n%s", local, out)
	}
}

// recordDials makes the proxy report each upstream connection it dials to record.
func recordDials(record func(net.Conn)) func(*Config) {
	return func(c *Config) {
		c.Listener.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				record(conn)
			}
			return conn, err
		}
	}
}

// TestBrokerResetReachesClient: a broker connection that RabbitMQ's host resets reaches the client
// as a reset, as it does direct, not as a clean close: a client may read the two differently
// (amqp091-go reports "connection reset by peer" against "EOF", and retry logic keys on it).
func TestBrokerResetReachesClient(t *testing.T) {
	for _, path := range []string{"direct", "proxy"} {
		t.Run(path, func(t *testing.T) {
			ups := make(chan *net.TCPAddr, 1)
			record := func(c net.Conn) { ups <- c.LocalAddr().(*net.TCPAddr) }
			var url string
			if path == "direct" {
				url = directURL
			} else {
				h := startProxy(t, recordDials(record))
				url = h.url
			}
			cfg := amqp091.Config{Heartbeat: time.Minute, Dial: func(network, addr string) (net.Conn, error) {
				conn, err := net.Dial(network, addr)
				if err == nil && path == "direct" {
					record(conn)
				}
				return conn, err
			}}
			c, err := amqp091.DialConfig(url, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			closed := c.NotifyClose(make(chan *amqp091.Error, 1))
			killBrokerSide(t, <-ups)
			e := <-closed
			if e == nil {
				t.Fatal("the connection closed without an error, want the reset")
			}
			if !strings.Contains(e.Reason, syscall.ECONNRESET.Error()) {
				t.Fatalf("client saw %q, want a reset (%q), as a direct client sees", e.Reason, syscall.ECONNRESET.Error())
			}
		})
	}
}
