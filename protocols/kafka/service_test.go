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
		// Library defaults with a version or counter (kafka-python, aiokafka).
		{"kafka-python-2.0.2", ""},
		{"kafka-python-producer-1", ""},
		{"aiokafka-0.11.0", ""},
		{"orders-api-2.4.1", "orders-api"},
		// segmentio/kafka-go's default names the program and the host.
		{"orders@orders-api-7d9f8b6c4-x2k9p (github.com/segmentio/kafka-go)", "orders"},
		{"orders@orders-api-7d9f8b6c4-q8m4z (github.com/segmentio/kafka-go)", "orders"},
		// Kubernetes pod names: ReplicaSet hash and pod suffix (no vowels in their alphabet).
		{"orders-api-7d9f8b6c4-x2k9p", "orders-api"},
		{"orders-api-5c8bdfz9w-x2k9p", "orders-api"},
		{"orders-api-x2k9p", "orders-api"},
		{"orders-api-batch", "orders-api-batch"},
		// A UUID anywhere: Kafka Streams' <application.id>-<process UUID>-StreamThread-<n>-<role>.
		{"wordcount-1b4e28ba-2fa1-11d2-883f-0016d3cca427-StreamThread-1-consumer", "wordcount"},
		{"wordcount-9f0c5e2a-7b1d-4c3e-8a6f-21d4b7e9c0aa-StreamThread-2-producer", "wordcount"},
		{"1b4e28ba-2fa1-11d2-883f-0016d3cca427", ""},
		// Counters up to 7 digits (a PID), hex ids from 8.
		{"orders-api-1234567", "orders-api"},
		{"orders-api-12345678", "orders-api"},
	} {
		if got := NormalizeClientID(tc.in); got != tc.want {
			t.Errorf("NormalizeClientID(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
