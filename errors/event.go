// Package errtrack is dsmproxy's error tracking: protocol code reports the errors it sees (broker
// error codes, returns, nacks, failed batch entries, skipped injections, frames it could not decode)
// and the collector groups them by fingerprint, counts them, rate-limits them and hands them to
// reporters. Declared as errtrack so it never shadows the standard errors package.
package errtrack

import (
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// Category says what kind of trouble an event is; which categories are reported is configurable.
type Category uint8

// The categories.
const (
	BrokerError Category = iota + 1 // the broker answered with an error code
	LostMessage                     // a message did not enter the broker (non-retriable error, return, nack)
	ProxySkip                       // the proxy left a message alone (size, attribute count, frame_max, existing header)
	DecodeError                     // the proxy could not decode something and forwarded it as it was
)

// String names the category in logs, /errors and span tags.
func (c Category) String() string {
	switch c {
	case BrokerError:
		return "broker_error"
	case LostMessage:
		return "lost_message"
	case ProxySkip:
		return "proxy_skip"
	case DecodeError:
		return "decode_error"
	}
	return "unknown"
}

// ParseCategory reads a category by the name String gives it (configuration files use these).
func ParseCategory(name string) (Category, bool) {
	for c := BrokerError; c <= DecodeError; c++ {
		if c.String() == name {
			return c, true
		}
	}
	return 0, false
}

// Event is one error occurrence as protocol code reports it. Fields that are not known stay zero;
// Partition is -1 when unknown.
type Event struct {
	Time      time.Time
	Category  Category
	Protocol  string // kafka, sqs, sns, kinesis, amqp
	Operation string // Produce, SendMessageBatch, Basic.Publish, ...
	Code      int32  // Kafka error code, HTTP status, AMQP reply code, or 0
	Name      string // NOT_LEADER_OR_FOLLOWER, QueueDoesNotExist, NO_ROUTE, size_limit, ...
	Message   string
	Retriable bool
	Service   string
	Edge      pathway.Edge
	Partition int32
	Messages  int           // messages the event concerns
	Throttle  time.Duration // how long the broker throttled the client (Kafka throttle_time_ms), summed per group
}

// Reporter receives events. Implementations must not block: the caller is on the data path.
type Reporter interface {
	Report(Event)
}

// Discard is a Reporter that drops everything, for protocol code run without error tracking.
type Discard struct{}

// Report drops e.
func (Discard) Report(Event) {}
