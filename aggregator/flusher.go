package aggregator

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Sink receives finished buckets.
type Sink interface {
	// Send gets every bucket finished since the last call. It must not keep the slice after returning.
	Send(ctx context.Context, buckets []Bucket) error
}

// Flusher hands finished buckets to sinks every interval, off the data path.
type Flusher struct {
	agg      *Aggregator
	interval time.Duration
	sinks    []Sink
	log      zerolog.Logger
	mu       sync.Mutex // one flush at a time: Run's tick and a FlushNow at shutdown
	seen     Stats      // the aggregator's counters at the last flush; guarded by mu
}

// NewFlusher returns a Flusher for a; interval <= 0 means the aggregator's bucket duration.
func NewFlusher(a *Aggregator, interval time.Duration, log zerolog.Logger, sinks ...Sink) *Flusher {
	if interval <= 0 {
		interval = a.cfg.BucketDuration
	}
	return &Flusher{agg: a, interval: interval, sinks: sinks, log: log}
}

// Run flushes finished buckets every interval until ctx is done. It does not flush at the end:
// the owner calls FlushNow(ctx, true) after the data path has stopped, so nothing is left behind.
func (f *Flusher) Run(ctx context.Context) {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// A slow or unreachable Agent must not push the next flush back: sinks get one
			// interval, and what they could not send waits for the next tick.
			fctx, cancel := context.WithTimeout(ctx, f.interval)
			f.FlushNow(fctx, false)
			cancel()
		}
	}
}

// FlushNow takes finished buckets (every bucket when final) and hands them to every sink. Sink
// errors are logged; a sink that fails keeps its own retry state.
func (f *Flusher) FlushNow(ctx context.Context, final bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	buckets := f.agg.Flush(f.agg.cfg.Clock(), final)
	f.reportDrops()
	for _, s := range f.sinks {
		err := s.Send(ctx, buckets)
		switch {
		case err == nil:
		case final:
			f.log.Warn().Err(err).Int("buckets", len(buckets)).Msg("DSM flush at exit failed: what the sink held is not delivered")
		default:
			// Sinks warn about their own conditions once (an Agent down for hours would
			// otherwise log this every flush).
			f.log.Debug().Err(err).Int("buckets", len(buckets)).Msg("DSM flush: sink failed")
		}
	}
}

// reportDrops logs what the aggregator dropped since the last flush: it never blocks the data
// path, so when it falls behind it drops and counts, and this is where the counts show.
func (f *Flusher) reportDrops() {
	st := f.agg.Stats()
	points, offsets, groups := st.PointsDropped-f.seen.PointsDropped, st.OffsetsDropped-f.seen.OffsetsDropped, st.GroupsRefused-f.seen.GroupsRefused
	backlogs := st.OffsetsRefused - f.seen.OffsetsRefused
	f.seen = st
	if points == 0 && offsets == 0 && groups == 0 && backlogs == 0 {
		return
	}
	f.log.Warn().Uint64("points_queue_full", points).Uint64("offsets_queue_full", offsets).
		Uint64("points_group_limit", groups).Int("max_groups", f.agg.cfg.MaxGroups).
		Uint64("offsets_backlog_limit", backlogs).Int("max_backlogs", f.agg.cfg.MaxBacklogs).
		Msg("DSM checkpoints dropped since the last flush: the aggregator fell behind (queue full) or too many pathway nodes or offsets were open at once")
}

func sortBuckets(bs []Bucket) {
	slices.SortFunc(bs, func(a, b Bucket) int {
		return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.TimestampType, b.TimestampType))
	})
}

func sortGroups(gs []Group) {
	slices.SortFunc(gs, func(a, b Group) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Hash, b.Hash), cmp.Compare(a.ParentHash, b.ParentHash), slices.Compare(a.EdgeTags, b.EdgeTags))
	})
}

func sortBacklogs(bl []Backlog) {
	slices.SortFunc(bl, func(a, b Backlog) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), slices.Compare(a.Tags, b.Tags))
	})
}
