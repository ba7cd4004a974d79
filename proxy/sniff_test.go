package proxy

import "testing"

// TestLooksLike: the first bytes of what fronts are commonly reached with or pointed at by
// mistake are named, a Kafka client's first request among them; a Kafka size prefix alone
// and AMQP 0-9-1 frames are not.
func TestLooksLike(t *testing.T) {
	for in, want := range map[string]string{
		"\x16\x03\x01\x02":                 "a TLS handshake",         // a ClientHello
		"\x15\x03\x03\x00":                 "a TLS alert",             // a TLS listener answering plaintext
		"AMQP\x00\x00\x09\x01":             "an AMQP protocol header", // RabbitMQ's answer to a header it does not speak
		"HTTP/1.1 400":                     "an HTTP response",
		"GET / HTTP/1.1":                   "an HTTP request",
		"SSH-2.0":                          "an SSH banner",
		"\x00\x00\x00\x2a":                 "",                // a Kafka size prefix
		"\x00\x00\x00\x24\x00\x12\x00\x03": "a Kafka request", // ApiVersions v3, kcat's first request
		"\x00\x00\x00\x1d\x00\x03\x00\x01": "a Kafka request", // Metadata v1, an older client's
		"\x00\x00\x00\x24\x00\x00\x00\x03": "",                // a Kafka Produce: never a first request
		"\x01\x00\x00\x00":                 "",                // an AMQP method frame
		"":                                 "",
	} {
		if got := LooksLike([]byte(in)); got != want {
			t.Errorf("LooksLike(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOtherFrontHint(t *testing.T) {
	for _, tc := range []struct{ what, this, want string }{
		{KafkaRequest, "AMQP", "the client speaks Kafka: point it at a Kafka front's listen address, not at this AMQP one"},
		{KafkaRequest, "AWS", "the client speaks Kafka: point it at a Kafka front's listen address, not at this AWS one"},
		{AMQPHeader, "AWS", "the client speaks AMQP: point it at an AMQP front's listen address, not at this AWS one"},
		{AMQPHeader, "AMQP", ""},
		{"a TLS handshake", "AWS", ""},
		{AMQPHeader, "Kafka", "the client speaks AMQP: point it at an AMQP front's listen address, not at this Kafka one"},
		{HTTPRequest, "Kafka", "the client speaks HTTP: point it at an AWS front's listen address, not at this Kafka one"},
		{HTTPRequest, "AMQP", "the client speaks HTTP: point it at an AWS front's listen address, not at this AMQP one"},
		{HTTPRequest, "AWS", ""},
	} {
		if got := OtherFrontHint(tc.what, tc.this); got != tc.want {
			t.Errorf("OtherFrontHint(%q, %q) = %q, want %q", tc.what, tc.this, got, tc.want)
		}
	}
}

// FuzzLooksLike: LooksLike reads no more than 8 bytes, names only what it knows, and never
// changes its mind as more bytes come: what a prefix was named, the whole is.
func FuzzLooksLike(f *testing.F) {
	for _, s := range []string{"\x16\x03\x01\x02", "AMQP\x00\x00\x09\x01", "GET / HTTP/1.1", "PRI * HTTP/2.0",
		"\x00\x00\x00\x24\x00\x12\x00\x03\x00\x05kcat", "SSH-2.0-OpenSSH", "\x01\x00\x00\x00"} {
		f.Add([]byte(s))
	}
	known := map[string]bool{"": true, KafkaRequest: true, AMQPHeader: true, "a TLS handshake": true, "a TLS alert": true,
		"an HTTP response": true, "an HTTP request": true, "an SSH banner": true}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := LooksLike(b)
		if !known[got] {
			t.Fatalf("LooksLike(%q) = %q, a name it does not know", b, got)
		}
		if len(b) > 8 && LooksLike(b[:8]) != got {
			t.Fatalf("LooksLike(%q) = %q, but its first 8 bytes give %q", b, got, LooksLike(b[:8]))
		}
		for n := range len(b) {
			if p := LooksLike(b[:n]); p != "" && p != got {
				t.Fatalf("LooksLike(%q) = %q, but its first %d bytes were named %q", b, got, n, p)
			}
		}
	})
}
