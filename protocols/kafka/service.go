package kafka

import (
	"net/netip"
	"strings"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// service resolves a client to its service name through the configured proxy.Services: rules
// first, then the client.id normalized by NormalizeClientID, then the default service.
func (p *Proxy) service(addr netip.Addr, clientID, software string) string {
	return p.cfg.Services.Service(proxy.Identity{
		Protocol:  "kafka",
		ClientID:  clientID,
		Addr:      addr,
		Described: NormalizeClientID(clientID),
	})
}

// libraryDefaults are client.ids that client libraries send when the application sets none; they
// name the library, not a service.
var libraryDefaults = map[string]bool{
	"kgo": true, "rdkafka": true, "sarama": true, "kafka-python": true, "kafkajs": true,
	"aiokafka": true, "confluent-kafka": true, "segmentio": true, "kafka-go": true,
}

// NormalizeClientID turns a Kafka client.id into the service name it suggests, or "" when it
// suggests none. Generated parts are removed:
//
//	orders-api                  -> orders-api
//	orders-api-3                -> orders-api       (instance counter)
//	orders-api-5f1c9a2e         -> orders-api       (hex id of 8+ digits)
//	orders-api-1b4e28ba-2fa1-11d2-883f-0016d3cca427 -> orders-api (UUID)
//	consumer-billing-1          -> billing          (Java consumer default: consumer-<group>-<n>)
//	producer-1, consumer-2      -> ""               (Java defaults without a group)
//	kgo, rdkafka, sarama        -> ""               (library defaults)
func NormalizeClientID(id string) string {
	s := strings.TrimSpace(id)
	for {
		i := strings.LastIndexByte(s, '-')
		if i <= 0 {
			break
		}
		// UUID first: five dash-separated hex groups 8-4-4-4-12.
		if trimmed, ok := trimUUID(s); ok {
			s = trimmed
			continue
		}
		if tail := s[i+1:]; isCounter(tail) || isHexID(tail) {
			s = s[:i]
			continue
		}
		break
	}
	switch {
	case s == "producer" || s == "consumer":
		return ""
	case strings.HasPrefix(s, "consumer-"):
		s = strings.TrimPrefix(s, "consumer-")
	case strings.HasPrefix(s, "producer-"):
		s = strings.TrimPrefix(s, "producer-")
	}
	if libraryDefaults[s] || isCounter(s) {
		return ""
	}
	return s
}

func isCounter(s string) bool {
	if s == "" || len(s) > 6 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHexID(s string) bool {
	if len(s) < 8 {
		return false
	}
	digits := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits = true
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		default:
			return false
		}
	}
	return digits
}

func trimUUID(s string) (string, bool) {
	const n = 36
	if len(s) <= n+1 || s[len(s)-n-1] != '-' {
		return s, false
	}
	u := s[len(s)-n:]
	for i := 0; i < n; i++ {
		c := u[i]
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return s, false
			}
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return s, false
		}
	}
	return s[:len(s)-n-1], true
}
