package proxy

import (
	"bytes"
	"fmt"
)

// LooksLike names what the first bytes a peer sent begin, when it is a protocol a front is
// commonly pointed at or reached with by mistake, or "": a TLS record (a client speaking TLS to a
// plaintext listener, or a TLS listener answering plaintext with an alert), AMQP's protocol
// header, HTTP. Four bytes are enough, but a Kafka client's first request takes eight.
func LooksLike(b []byte) string {
	switch {
	case isKafkaOpening(b):
		return KafkaRequest
	case len(b) >= 2 && b[0] == 0x16 && b[1] == 0x03:
		return "a TLS handshake"
	case len(b) >= 2 && b[0] == 0x15 && b[1] == 0x03:
		return "a TLS alert"
	case bytes.HasPrefix(b, []byte("AMQP")):
		return AMQPHeader
	case bytes.HasPrefix(b, []byte("HTTP")):
		return "an HTTP response"
	case bytes.HasPrefix(b, []byte("GET ")), bytes.HasPrefix(b, []byte("POST")), bytes.HasPrefix(b, []byte("PUT ")),
		bytes.HasPrefix(b, []byte("HEAD")), bytes.HasPrefix(b, []byte("PRI ")):
		return HTTPRequest
	case bytes.HasPrefix(b, []byte("SSH-")):
		return "an SSH banner"
	}
	return ""
}

// Describe is LooksLike's name for b, or its bytes in hex when LooksLike names none: what an
// error says a peer sent instead of the protocol it should speak.
func Describe(b []byte) string {
	if what := LooksLike(b); what != "" {
		return what
	}
	return fmt.Sprintf("bytes %x", b)
}

// IsTLS reports whether LooksLike named a TLS record.
func IsTLS(what string) bool { return what == "a TLS handshake" || what == "a TLS alert" }

// KafkaRequest, AMQPHeader and HTTPRequest are what LooksLike names a Kafka client's first
// request, AMQP's protocol header and an HTTP request.
const (
	KafkaRequest = "a Kafka request"
	AMQPHeader   = "an AMQP protocol header"
	HTTPRequest  = "an HTTP request"
)

// OtherFrontHint says where a client whose first bytes LooksLike named what belongs, when it is
// a client of another front than this one ("Kafka", "AMQP" or "AWS"; an HTTP client is taken
// for an AWS SDK or CLI); "" otherwise.
func OtherFrontHint(what, this string) string {
	var speaks, name, front string
	switch what {
	case KafkaRequest:
		speaks, name, front = "Kafka", "Kafka", "a Kafka front"
	case AMQPHeader:
		speaks, name, front = "AMQP", "AMQP", "an AMQP front"
	case HTTPRequest:
		speaks, name, front = "HTTP", "AWS", "an AWS front"
	default:
		return ""
	}
	if name == this {
		return ""
	}
	return "the client speaks " + speaks + ": point it at " + front + "'s listen address, not at this " + this + " one"
}

// isKafkaOpening reports whether b begins a request a Kafka client opens a connection with: a
// size prefix under 64 KiB, then ApiVersions (18), or Metadata (3) or SaslHandshake (17) from an
// older client, at a version under 256.
func isKafkaOpening(b []byte) bool {
	if len(b) < 8 || b[0] != 0 || b[1] != 0 || int(b[2])<<8|int(b[3]) < 8 || b[4] != 0 || b[6] != 0 {
		return false
	}
	return b[5] == 18 || b[5] == 3 || b[5] == 17
}
