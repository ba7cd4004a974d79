package proxy

import (
	"net/netip"
	"regexp"
	"testing"
)

func TestServicesResolutionOrder(t *testing.T) {
	s := &Services{
		Default: "fallback",
		Rules: []ServiceRule{
			{Service: "billing", Protocol: "kafka", ClientID: regexp.MustCompile(`^billing-`)},
			{Service: "ops", CIDR: netip.MustParsePrefix("10.1.0.0/16")},
			{Service: "worker", User: "worker", Protocol: "amqp"},
		},
	}
	tests := []struct {
		name string
		id   Identity
		want string
	}{
		{"rule on client id", Identity{Protocol: "kafka", ClientID: "billing-7", Described: "billing-7"}, "billing"},
		{"rule protocol must match", Identity{Protocol: "amqp", ClientID: "billing-7"}, "fallback"},
		{"rule on cidr", Identity{Protocol: "aws", Addr: netip.MustParseAddr("10.1.2.3"), Described: "app"}, "ops"},
		{"rule on user", Identity{Protocol: "amqp", User: "worker"}, "worker"},
		{"self description", Identity{Protocol: "kafka", ClientID: "consumer-orders-1", Described: "orders"}, "orders"},
		{"default", Identity{Protocol: "kafka"}, "fallback"},
	}
	for _, tt := range tests {
		if got := s.Service(tt.id); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
	var none *Services
	if got := none.Service(Identity{}); got != DefaultService {
		t.Errorf("nil Services: %q", got)
	}
}
