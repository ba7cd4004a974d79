package kafka

import (
	"net/netip"
	"strings"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// client resolves a client through the configured proxy.Services: rules first, then the
// client.id normalized by NormalizeClientID, then the default service.
func (p *Proxy) client(addr netip.Addr, clientID, software string) proxy.Client {
	return p.cfg.Services.Client(proxy.Identity{
		Protocol:  "kafka",
		ClientID:  clientID,
		Addr:      addr,
		Described: NormalizeClientID(clientID),
	})
}

// libraryDefaults are client.ids that client libraries send when the application sets none; they
// name the library, not a service. (A version or counter after them is removed first:
// kafka-python-2.0.2, kafka-python-producer-1, aiokafka-0.11.0.)
var libraryDefaults = map[string]bool{
	"kgo": true, "rdkafka": true, "sarama": true, "kafka-python": true, "kafka-python-producer": true,
	"kafkajs": true, "aiokafka": true, "confluent-kafka": true, "segmentio": true, "kafka-go": true,
}

// kafkaGoSuffix ends segmentio/kafka-go's default client.id, "<program>@<host> (github.com/segmentio/kafka-go)".
const kafkaGoSuffix = " (github.com/segmentio/kafka-go)"

// NormalizeClientID turns a Kafka client.id into the service name it suggests, or "" when it
// suggests none. Generated parts are removed:
//
//	orders-api                  -> orders-api
//	orders-api-3                -> orders-api       (instance counter, up to 7 digits: a PID)
//	orders-api-5f1c9a2e         -> orders-api       (hex id of 8+ digits)
//	orders-api-2.4.1            -> orders-api       (version)
//	orders-api-7d9f8b6c4-x2k9p  -> orders-api       (Kubernetes pod name)
//	orders-api-1b4e28ba-2fa1-11d2-883f-0016d3cca427 -> orders-api (UUID, and all after it:
//	wordcount-<uuid>-StreamThread-1-consumer, Kafka Streams' ids, -> wordcount)
//	consumer-billing-1          -> billing          (Java consumer default: consumer-<group>-<n>)
//	orders@host-1 (github.com/segmentio/kafka-go) -> orders (kafka-go default: the program)
//	producer-1, consumer-2      -> ""               (Java defaults without a group)
//	kgo, rdkafka, sarama, kafka-python-2.0.2 -> ""  (library defaults)
//	1b4e28ba-2fa1-11d2-883f-0016d3cca427     -> ""  (nothing but a UUID)
func NormalizeClientID(id string) string {
	s := strings.TrimSpace(id)
	if prog, ok := strings.CutSuffix(s, kafkaGoSuffix); ok {
		s, _, _ = strings.Cut(prog, "@")
	}
	s = proxy.TrimGenerated(s)
	switch {
	case s == "producer" || s == "consumer":
		return ""
	case strings.HasPrefix(s, "consumer-"):
		s = strings.TrimPrefix(s, "consumer-")
	case strings.HasPrefix(s, "producer-"):
		s = strings.TrimPrefix(s, "producer-")
	}
	if libraryDefaults[s] {
		return ""
	}
	return proxy.TrimGenerated(s)
}
