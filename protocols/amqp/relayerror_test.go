package amqp

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
)

// TestClientRelayError: the client-to-broker relay's error names the broker when its write to the
// broker failed (a soak run logged RabbitMQ's reset of a stalled consumer as "amqp from client"),
// and the client otherwise.
func TestClientRelayError(t *testing.T) {
	broker := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5672}
	client := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 41000}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"write to the broker reset", &net.OpError{Op: "write", Net: "tcp", Source: local, Addr: broker, Err: syscall.ECONNRESET}, "amqp to broker 127.0.0.1:5672: write tcp 127.0.0.1:41000->127.0.0.1:5672: connection reset by peer"},
		{"read from the client reset", &net.OpError{Op: "read", Net: "tcp", Source: local, Addr: client, Err: syscall.ECONNRESET}, "amqp from client: read tcp"},
		{"write to the client", &net.OpError{Op: "write", Net: "tcp", Source: local, Addr: client, Err: syscall.EPIPE}, "amqp from client: write tcp"},
		{"not a socket error", io.ErrUnexpectedEOF, "amqp from client: unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := clientRelayError(tc.err, broker)
			if !strings.HasPrefix(got.Error(), tc.want) {
				t.Errorf("got %q, want it to start %q", got, tc.want)
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("%q does not wrap %v", got, tc.err)
			}
		})
	}
}
