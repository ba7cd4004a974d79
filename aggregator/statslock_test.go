package aggregator

import (
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestStatsDoNotWaitForAFlush: GET /stats and /metrics read Stats, and a flush holds the
// aggregator's lock while it exports its buckets (seconds with tens of thousands of groups): a
// health scrape must not stall exactly when the proxy is busy. The test holds the lock, as a
// flush does, and Stats must answer meanwhile; the aggregator's own counters must still be
// right after it.
func TestStatsDoNotWaitForAFlush(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	a := New(Config{Clock: func() time.Time { return t0 }})
	a.Add(pathway.Point{Service: "s", Hash: 1, Time: t0.UnixNano()})
	a.Flush(t0, false) // folds the point in: one current and one origin bucket open
	a.mu.Lock()
	locked := true
	defer func() {
		if locked {
			a.mu.Unlock()
		}
	}()
	got := make(chan Stats, 1)
	go func() { got <- a.Stats() }()
	for {
		select {
		case st := <-got:
			if st.OpenBuckets != 2 || st.Aggregated != 1 {
				t.Errorf("Stats while a flush held the lock: OpenBuckets %d, Aggregated %d; want 2 and 1", st.OpenBuckets, st.Aggregated)
			}
			a.mu.Unlock()
			locked = false
			a.Flush(t0, true)
			if st := a.Stats(); st.OpenBuckets != 0 || st.Buckets != 2 {
				t.Errorf("Stats after the flush: OpenBuckets %d, Buckets %d; want 0 and 2", st.OpenBuckets, st.Buckets)
			}
			return
		default:
		}
		if blockedInStats() {
			t.Fatal("Stats waits for the aggregator's lock, which a flush holds")
		}
		goruntime.Gosched()
	}
}

// blockedInStats reports whether a goroutine is in Aggregator.Stats, waiting for a mutex.
func blockedInStats() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:goruntime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "(*Aggregator).Stats(") && strings.Contains(g, "sync.(*Mutex).Lock") {
			return true
		}
	}
	return false
}
