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
	// protocol package (its generated parts removed: TrimGenerated, and a protocol's own, such as a
	// Kafka client.id's consumer- prefix). May be empty.
	Described string
}

// ServiceRule maps clients to a service name. Every non-empty matcher must match.
type ServiceRule struct {
	Service string // empty: the client's description or the default names it
	// Traced: the client runs a Datadog tracer with Data Streams Monitoring on, which checkpoints
	// what it consumes; the proxy then takes no consume checkpoint for it (else the same consume
	// would be counted under two nodes).
	Traced    bool
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

// Client is what the proxy makes of a client: the service its checkpoints name, and whether its
// own tracer checkpoints what it consumes.
type Client struct {
	Service string
	Traced  bool
}

// Client resolves id: the first rule that matches decides; a rule that names no service leaves
// the name to the client's description, then the default. Protocol code calls it once per
// connection or client, not per message.
func (s *Services) Client(id Identity) Client {
	var c Client
	if s != nil {
		for i := range s.Rules {
			if s.Rules[i].match(id) {
				c = Client{Service: s.Rules[i].Service, Traced: s.Rules[i].Traced}
				break
			}
		}
	}
	switch {
	case c.Service != "":
	case id.Described != "":
		c.Service = id.Described
	case s != nil && s.Default != "":
		c.Service = s.Default
	default:
		c.Service = DefaultService
	}
	return c
}

// Service is Client's service name.
func (s *Services) Service(id Identity) string { return s.Client(id).Service }
