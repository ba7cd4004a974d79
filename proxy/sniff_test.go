package proxy

import "testing"

// TestLooksLike: the first bytes of what fronts are commonly reached with or pointed at by
// mistake are named; Kafka and AMQP 0-9-1 frames are not.
func TestLooksLike(t *testing.T) {
	for in, want := range map[string]string{
		"\x16\x03\x01\x02":     "a TLS handshake",         // a ClientHello
		"\x15\x03\x03\x00":     "a TLS alert",             // a TLS listener answering plaintext
		"AMQP\x00\x00\x09\x01": "an AMQP protocol header", // RabbitMQ's answer to a header it does not speak
		"HTTP/1.1 400":         "an HTTP response",
		"GET / HTTP/1.1":       "an HTTP request",
		"SSH-2.0":              "an SSH banner",
		"\x00\x00\x00\x2a":     "", // a Kafka size prefix
		"\x01\x00\x00\x00":     "", // an AMQP method frame
		"":                     "",
	} {
		if got := LooksLike([]byte(in)); got != want {
			t.Errorf("LooksLike(%q) = %q, want %q", in, got, want)
		}
	}
}
