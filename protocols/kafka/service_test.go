package kafka

import "testing"

func TestNormalizeClientID(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"orders-api", "orders-api"},
		{"orders-api-3", "orders-api"},
		{"orders-api-5f1c9a2e", "orders-api"},
		{"orders-api-1b4e28ba-2fa1-11d2-883f-0016d3cca427", "orders-api"},
		{"consumer-billing-1", "billing"},
		{"consumer-billing-instance-a", "billing-instance-a"},
		{"producer-1", ""},
		{"consumer-2", ""},
		{"kgo", ""},
		{"rdkafka", ""},
		{"sarama", ""},
		{"", ""},
		{"7", ""},
		{"api-v2", "api-v2"},
		{"deadbeef-service", "deadbeef-service"},
	} {
		if got := NormalizeClientID(tc.in); got != tc.want {
			t.Errorf("NormalizeClientID(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
