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
			{Service: "reports", Traced: true, ClientID: regexp.MustCompile(`^reports$`)},
			{Traced: true, ClientID: regexp.MustCompile(`^traced-`)},
		},
	}
	tests := []struct {
		name   string
		id     Identity
		want   string
		traced bool
	}{
		{"rule on client id", Identity{Protocol: "kafka", ClientID: "billing-7", Described: "billing-7"}, "billing", false},
		{"rule protocol must match", Identity{Protocol: "amqp", ClientID: "billing-7"}, "fallback", false},
		{"rule on cidr", Identity{Protocol: "aws", Addr: netip.MustParseAddr("10.1.2.3"), Described: "app"}, "ops", false},
		{"rule on user", Identity{Protocol: "amqp", User: "worker"}, "worker", false},
		{"self description", Identity{Protocol: "kafka", ClientID: "consumer-orders-1", Described: "orders"}, "orders", false},
		{"default", Identity{Protocol: "kafka"}, "fallback", false},
		{"traced rule with a service", Identity{Protocol: "amqp", ClientID: "reports", Described: "r"}, "reports", true},
		{"traced rule without a service: description", Identity{Protocol: "kafka", ClientID: "traced-a-1", Described: "traced-a"}, "traced-a", true},
		{"traced rule without a service: default", Identity{Protocol: "kafka", ClientID: "traced-"}, "fallback", true},
		{"earlier rule decides", Identity{Protocol: "kafka", ClientID: "billing-traced-"}, "billing", false},
	}
	for _, tt := range tests {
		got := s.Client(tt.id)
		if got.Service != tt.want || got.Traced != tt.traced {
			t.Errorf("%s: got %+v, want service %q traced %v", tt.name, got, tt.want, tt.traced)
		}
		if s.Service(tt.id) != got.Service {
			t.Errorf("%s: Service and Client disagree", tt.name)
		}
	}
	var none *Services
	if got := none.Service(Identity{}); got != DefaultService {
		t.Errorf("nil Services: %q", got)
	}
}
