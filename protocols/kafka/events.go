package kafka

import (
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// clientsRecover are codes kerr marks not retriable that clients nonetheless get past by
// themselves, so they are no lost messages and no failures to warn about:
//   - the idempotent producer's sequence and epoch codes: franz-go's producer (kgo/sink.go) retries
//     OUT_OF_ORDER_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH, UNKNOWN_PRODUCER_ID and
//     CONCURRENT_TRANSACTIONS and treats DUPLICATE_SEQUENCE_NUMBER as success, as the Java
//     producer does since KIP-360;
//   - a consumer group's rebalance steps: the member rejoins.
var clientsRecover = map[int16]bool{
	kerr.OutOfOrderSequenceNumber.Code: true, kerr.DuplicateSequenceNumber.Code: true,
	kerr.InvalidProducerEpoch.Code: true, kerr.UnknownProducerID.Code: true, kerr.ConcurrentTransactions.Code: true,
	kerr.RebalanceInProgress.Code: true, kerr.IllegalGeneration.Code: true, kerr.UnknownMemberID.Code: true,
	kerr.FencedMemberEpoch.Code: true, kerr.StaleMemberEpoch.Code: true,
}

// errorName returns kerr's name for a Kafka error code, and whether clients retry past it (kerr's
// flag, or clientsRecover).
func errorName(code int16) (string, bool) {
	e := kerr.TypedErrorForCode(code)
	if e == nil {
		return "NONE", false
	}
	if e == kerr.UnknownServerError && code != kerr.UnknownServerError.Code {
		return "UNKNOWN_ERROR_CODE_" + strconv.Itoa(int(code)), false
	}
	return e.Message, e.Retriable || clientsRecover[code]
}

// errorDescription is kerr's sentence for a code (a static string: no allocation per event), the
// message Error Tracking shows next to the name.
func errorDescription(code int16) string {
	if e := kerr.TypedErrorForCode(code); e != nil && e.Code == code {
		return e.Description
	}
	return ""
}

// brokerError reports a per-partition (or top-level, partition -1) error code from a response.
func (p *Proxy) brokerError(op int16, code int16, service string, edge pathway.Edge, partition int32, msgs int) {
	p.brokerErrorMessage(op, code, errorDescription(code), service, edge, partition, msgs)
}

// brokerErrorMessage is brokerError with a message of the caller's instead of kerr's sentence.
func (p *Proxy) brokerErrorMessage(op int16, code int16, message, service string, edge pathway.Edge, partition int32, msgs int) {
	name, retriable := errorName(code)
	p.errs.Report(errtrack.Event{
		Time: p.now(), Category: errtrack.BrokerError, Protocol: "kafka", Operation: kmsg.NameForKey(op),
		Code: int32(code), Name: name, Message: message, Retriable: retriable, Service: service,
		Edge: edge, Partition: partition, Messages: msgs,
	})
}

// decodeError reports something the proxy forwarded without understanding it.
func (p *Proxy) decodeError(what string, key, version int16, err error) {
	p.stats.decodeErrors.Add(1)
	op := what
	if key >= 0 {
		op = kmsg.NameForKey(key)
	}
	msg := what
	if version >= 0 {
		msg += " v" + strconv.Itoa(int(version))
	}
	if err != nil {
		msg += ": " + err.Error()
	}
	p.errs.Report(errtrack.Event{
		Time: p.now(), Category: errtrack.DecodeError, Protocol: "kafka", Operation: op,
		Name: "undecodable", Message: msg, Partition: -1,
	})
}

// skip reports produced messages the proxy left alone.
func (p *Proxy) skip(reason, message, service string, edge pathway.Edge, partition int32, msgs int) {
	p.skipOp("Produce", reason, message, service, edge, partition, msgs)
}

// skipOp reports messages of operation op the proxy left alone (or could not read).
func (p *Proxy) skipOp(op, reason, message, service string, edge pathway.Edge, partition int32, msgs int) {
	p.errs.Report(errtrack.Event{
		Time: p.now(), Category: errtrack.ProxySkip, Protocol: "kafka", Operation: op,
		Name: reason, Message: message, Service: service, Edge: edge, Partition: partition, Messages: msgs,
	})
}

// throttled reports a response whose throttle_time_ms says the broker held the client back for a
// quota: clients wait it out silently, so it is only visible here.
func (p *Proxy) throttled(op int16, ms int32, service string) {
	p.errs.Report(errtrack.Event{
		Time: p.now(), Category: errtrack.BrokerError, Protocol: "kafka", Operation: kmsg.NameForKey(op),
		Name: "THROTTLED", Message: "the broker throttled the client for a quota", Retriable: true,
		Service: service, Edge: pathway.Edge{Type: pathway.TypeKafka}, Partition: -1,
		Throttle: time.Duration(ms) * time.Millisecond,
	})
}
