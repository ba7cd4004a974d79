package proxy

import (
	"net/netip"
	"regexp"
)

// Identity is what the proxy knows about a client when it needs a service name for a checkpoint.
type Identity struct {
	Protocol  string     // kafka, amqp, aws
	ClientID  string     // Kafka client.id, AMQP connection_name, AWS SDK app id (raw, as sent)
	User      string     // AMQP or SASL user
	AccessKey string     // AWS access key id
	Addr      netip.Addr // client source address
	// Described is the service the client's own self-description suggests, already normalized by the
	// protocol package (for example a Kafka client.id with its generated suffixes removed). May be empty.
	Described string
}

// ServiceRule maps clients to a service name. Every non-empty matcher must match.
type ServiceRule struct {
	Service   string
	Protocol  string         // exact, empty = any
	ClientID  *regexp.Regexp // matched against Identity.ClientID
	User      string         // exact
	AccessKey string         // exact
	CIDR      netip.Prefix   // zero = any
}

func (r *ServiceRule) match(id Identity) bool {
	if r.Protocol != "" && r.Protocol != id.Protocol {
		return false
	}
	if r.ClientID != nil && !r.ClientID.MatchString(id.ClientID) {
		return false
	}
	if r.User != "" && r.User != id.User {
		return false
	}
	if r.AccessKey != "" && r.AccessKey != id.AccessKey {
		return false
	}
	if r.CIDR.IsValid() && !r.CIDR.Contains(id.Addr) {
		return false
	}
	return true
}

// Services resolves a client to its service name: the first configured rule that matches, else the
// client's own description, else the default service (DD_SERVICE or config).
type Services struct {
	Rules   []ServiceRule
	Default string
}

// DefaultService is used when nothing else names a client's service.
const DefaultService = "dsmproxy-client"

// Service returns the service name for id. Protocol code calls it once per connection or client,
// not per message.
func (s *Services) Service(id Identity) string {
	if s != nil {
		for i := range s.Rules {
			if s.Rules[i].match(id) {
				return s.Rules[i].Service
			}
		}
	}
	if id.Described != "" {
		return id.Described
	}
	if s != nil && s.Default != "" {
		return s.Default
	}
	return DefaultService
}
