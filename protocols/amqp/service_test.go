package amqp

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestConnectionNameService: the service a connection_name suggests. Spring AMQP's generated names
// (AbstractConnectionFactory: "<bean or SpringAMQP>#<identity hash>:<counter>", the publisher
// factory's bean with ".publisher") would make every JVM and reconnect a service of its own.
func TestConnectionNameService(t *testing.T) {
	p := &Proxy{cfg: Config{Services: &proxy.Services{Default: "fallback"}}}
	for _, tc := range []struct{ name, want string }{
		{"orders-api", "orders-api"},
		{"rabbitConnectionFactory#7a4c6ad6:0", "fallback"},
		{"rabbitConnectionFactory#7a4c6ad6:1", "fallback"},
		{"rabbitConnectionFactory.publisher#1f2e3d4c:0", "fallback"},
		{"SpringAMQP#5e4c3b2a:0", "fallback"},
		{"billingFactory#5e4c3b2a:3", "billingFactory"},
		{"team#1:a", "team#1:a"},
		// Instance parts go, as from a Kafka client.id (proxy.TrimGenerated): a pod's host name
		// is a common connection_name.
		{"orders-api-7d9f8b6c4-x2k9p", "orders-api"},
		{"worker-3", "worker"},
		{"billing-1b4e28ba-2fa1-11d2-883f-0016d3cca427", "billing"},
		{"billingFactory-2#5e4c3b2a:3", "billingFactory"},
		{"12345", "fallback"},
		{"", "fallback"},
		{strings.Repeat("n", 70000), strings.Repeat("n", maxConnNameBytes)},
	} {
		s := &session{p: p, log: zerolog.Nop()}
		s.setService(tc.name, "guest")
		if got := *s.service.Load(); got != tc.want {
			t.Errorf("connection_name %.40q -> service %.40q, want %.40q", tc.name, got, tc.want)
		}
	}
}
