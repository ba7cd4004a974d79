package errtrack

import (
	"encoding/json"
	"net/http"
	"time"
)

// View is the admin listener's `GET /errors`: the collector's current groups as JSON.
type View struct {
	C *Collector
}

// View returns the /errors handler of c.
func (c *Collector) View() View { return View{C: c} }

// ViewJSON is the /errors document.
type ViewJSON struct {
	Time                 time.Time   `json:"time"`
	IntervalStart        time.Time   `json:"interval_start"`
	IntervalSeconds      float64     `json:"interval_seconds"`
	Fingerprints         int         `json:"fingerprints"`
	MaxFingerprints      int         `json:"max_fingerprints"`
	OverflowEvents       int64       `json:"overflow_events"`
	OverflowLostMessages int64       `json:"overflow_lost_messages"`
	EvictedGroups        int64       `json:"evicted_groups"`
	AgentTracesDropped   int64       `json:"agent_traces_dropped"`
	Lost                 []LostJSON  `json:"lost"`
	Groups               []GroupJSON `json:"groups"`
}

// LostJSON is the lost-message total of one service's edge since its groups appeared.
type LostJSON struct {
	Service  string   `json:"service"`
	Edge     string   `json:"edge"`
	EdgeTags []string `json:"edge_tags"`
	Messages int64    `json:"messages"`
}

// GroupJSON is one group in /errors.
type GroupJSON struct {
	Category          string    `json:"category"`
	Protocol          string    `json:"protocol"`
	Operation         string    `json:"operation"`
	Code              int32     `json:"code"`
	Name              string    `json:"name"`
	Retriable         bool      `json:"retriable"`
	Service           string    `json:"service"`
	Edge              string    `json:"edge"`
	EdgeTags          []string  `json:"edge_tags"`
	Partitions        []int32   `json:"partitions,omitempty"`
	MorePartitions    bool      `json:"more_partitions,omitempty"`
	Count             int64     `json:"count"`
	Messages          int64     `json:"messages"`
	IntervalCount     int64     `json:"interval_count"`
	LastIntervalCount int64     `json:"last_interval_count"`
	ThrottledMillis   int64     `json:"throttled_ms,omitempty"`
	FirstSeen         time.Time `json:"first_seen"`
	LastSeen          time.Time `json:"last_seen"`
	Sample            string    `json:"sample,omitempty"`
	ErrorType         string    `json:"error_type"`
}

// JSON builds the /errors document from a snapshot.
func (s Snapshot) JSON() ViewJSON {
	out := ViewJSON{Time: s.Time.UTC(), IntervalStart: s.IntervalStart.UTC(), IntervalSeconds: s.Interval.Seconds(),
		Fingerprints: len(s.Groups), MaxFingerprints: s.MaxFingerprints,
		OverflowEvents: s.Overflow, OverflowLostMessages: s.OverflowLost, EvictedGroups: s.Evicted, AgentTracesDropped: s.TracesDropped,
		Lost: []LostJSON{}, Groups: make([]GroupJSON, 0, len(s.Groups))}
	for _, l := range s.Lost() {
		out.Lost = append(out.Lost, LostJSON{Service: l.Service, Edge: l.Edge.String(), EdgeTags: l.Edge.Tags(), Messages: l.Messages})
	}
	for _, g := range s.Groups {
		out.Groups = append(out.Groups, GroupJSON{
			Category: g.Category.String(), Protocol: g.Protocol, Operation: g.Operation, Code: g.Code, Name: g.Name,
			Retriable: g.Retriable, Service: g.Service, Edge: g.Edge.String(), EdgeTags: g.Edge.Tags(),
			Partitions: g.Partitions, MorePartitions: g.MorePartitions,
			Count: g.TotalCount, Messages: g.TotalMessages, IntervalCount: g.Count, LastIntervalCount: g.LastIntervalCount,
			ThrottledMillis: g.TotalThrottle.Milliseconds(),
			FirstSeen:       g.FirstSeen.UTC(), LastSeen: g.LastSeen.UTC(), Sample: g.Sample, ErrorType: ErrorType(g.Fingerprint),
		})
	}
	return out
}

// ServeHTTP answers GET (and HEAD) with the current groups.
func (v View) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := json.MarshalIndent(v.C.Snapshot().JSON(), "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(body, '\n'))
}
