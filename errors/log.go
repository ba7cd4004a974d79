package errtrack

import (
	"context"

	"github.com/rs/zerolog"
)

// LogReporter writes one line per group per interval with its count, so a storm of one error is one
// line every interval however many events it has.
type LogReporter struct {
	Log zerolog.Logger
}

// Send logs iv's groups and, when the fingerprint bound was hit, one line each for the groups
// dropped to make room and for the events not grouped.
func (r LogReporter) Send(_ context.Context, iv Interval) error {
	secs := iv.End.Sub(iv.Start).Seconds()
	for i := range iv.Groups {
		g := &iv.Groups[i]
		ev := r.Log.Warn()
		if g.Category == ProxySkip || g.Category == BrokerError && g.Retriable {
			// Expected in normal operation (leader moves, rebalances, large batches): not a warning.
			ev = r.Log.Info()
		}
		if ev == nil {
			continue
		}
		ev = ev.Str("category", g.Category.String()).Str("protocol", g.Protocol).Str("operation", g.Operation).
			Int32("code", g.Code).Str("name", g.Name).Bool("retriable", g.Retriable).
			Str("service", g.Service).Str("edge", g.Edge.String())
		if len(g.Partitions) > 0 {
			ev = ev.Ints32("partitions", g.Partitions)
			if g.MorePartitions {
				ev = ev.Bool("more_partitions", true)
			}
		}
		if g.Messages > 0 {
			ev = ev.Int64("messages", g.Messages)
		}
		if g.Throttle > 0 {
			ev = ev.Stringer("throttled", g.Throttle)
		}
		if g.Sample != "" {
			ev = ev.Str("sample", g.Sample)
		}
		ev.Int64("count", g.Count).Float64("interval_s", secs).
			Time("first", g.IntervalFirst).Time("last", g.IntervalLast).Msg("error tracking")
	}
	if iv.Evicted > 0 {
		r.Log.Warn().Int64("groups", iv.Evicted).Int("max_fingerprints", iv.MaxFingerprints).Float64("interval_s", secs).
			Msg("error tracking: too many distinct errors: groups with no event this interval were dropped, least recently " +
				"seen first, to make room for new ones (raise " + MaxFingerprintsKey + " to keep them longer)")
	}
	if iv.Overflow > 0 {
		r.Log.Warn().Int64("events", iv.Overflow).Int64("lost_messages", iv.OverflowLost).Int("max_fingerprints", iv.MaxFingerprints).
			Float64("interval_s", secs).
			Msg("error tracking: too many distinct errors: every group kept had an event this interval, events of new ones " +
				"not grouped (raise " + MaxFingerprintsKey + ")")
	}
	return nil
}

// MaxFingerprintsKey is the dsmproxy configuration key that sets Config.MaxFingerprints, which
// the log lines about the bound name.
const MaxFingerprintsKey = "errors.max_fingerprints"
