package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// demoAgent stands in for the Datadog Agent in the demo: it serves /info, decodes every
// /v0.1/pipeline_stats payload strictly (the same decoder the tests use), and prints what it
// received as a table once each flush's payloads have arrived.
type demoAgent struct {
	srv     *httptest.Server
	out     io.Writer
	arrived chan struct{}
	stop    chan struct{}
	done    chan struct{}

	errors func() *errtrack.Snapshot // tracked errors to print under each table (guarded by mu)

	mu       sync.Mutex
	points   []agentpayload.Point
	backlogs []agentpayload.BacklogEntry
	payloads int
	bytes    int
	errs     int
}

func newDemoAgent(out io.Writer) *demoAgent {
	d := &demoAgent{out: out, arrived: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"version":"dsmproxy-demo","endpoints":["/v0.1/pipeline_stats","/v0.4/traces","/info"]}`)
	})
	mux.HandleFunc("POST /v0.1/pipeline_stats", d.receive)
	mux.HandleFunc("POST /v0.4/traces", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	d.srv = httptest.NewServer(mux)
	go d.printLoop()
	return d
}

// URL is where the proxy's Agent sink posts.
func (d *demoAgent) URL() string { return d.srv.URL }

func (d *demoAgent) receive(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, agentpayload.MaxPayload))
	var p *agentpayload.Payload
	var pts []agentpayload.Point
	if err == nil {
		p, pts, err = agentpayload.DecodePayload(body)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.errs++
		fmt.Fprintf(d.out, "stand-in Agent: payload did not decode: %v\n", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	d.payloads++
	d.bytes += len(body)
	d.points = append(d.points, pts...)
	for _, b := range p.Stats {
		for _, bl := range b.Backlogs {
			d.backlogs = append(d.backlogs, agentpayload.BacklogEntry{Service: p.Service, Start: time.Unix(0, int64(b.Start)), Tags: bl.Tags, Value: bl.Value})
		}
	}
	select {
	case d.arrived <- struct{}{}:
	default:
	}
	w.WriteHeader(http.StatusAccepted)
}

// printLoop prints once a flush's payloads (one per service) have all arrived: after a short quiet.
func (d *demoAgent) printLoop() {
	defer close(d.done)
	for {
		select {
		case <-d.stop:
			return
		case <-d.arrived:
		}
		quiet := time.NewTimer(300 * time.Millisecond)
		for waiting := true; waiting; {
			select {
			case <-d.arrived:
				quiet.Reset(300 * time.Millisecond)
			case <-quiet.C:
				waiting = false
			case <-d.stop:
				quiet.Stop()
				return
			}
		}
		d.printPending()
	}
}

// printPending prints and forgets what arrived since the last table.
func (d *demoAgent) printPending() {
	d.mu.Lock()
	pts, bl, n, size := d.points, d.backlogs, d.payloads, d.bytes
	d.points, d.backlogs, d.payloads, d.bytes = nil, nil, 0, 0
	errs := d.errors
	d.mu.Unlock()
	if n == 0 {
		return
	}
	printTable(d.out, fmt.Sprintf("== the Agent received %d payload(s), %d bytes (msgpack+gzip) ==", n, size), pts, bl, nil, nil)
	if errs != nil {
		if s := errs(); s != nil {
			printErrors(d.out, s)
		}
	}
}

// Close stops the printer and the server.
func (d *demoAgent) Close() {
	close(d.stop)
	<-d.done
	d.srv.Close()
}

// printTable prints the current-time points as a pathway table under title, then consumer lag.
// With totals (the local view's, by pathwayKey), the table has a column of messages since the start;
// sizes (likewise) are exact average sizes, where the Agent's payload has only the size sketch.
// A view holds tens of thousands of pathways: rows are laid out in a textTable and written
// through a buffer, with no formatting or allocation per row.
func printTable(out io.Writer, title string, pts []agentpayload.Point, bl []agentpayload.BacklogEntry, totals map[string]pathwayTotal, sizes map[string]float64) {
	cur := make([]*agentpayload.Point, 0, len(pts))
	for i := range pts {
		if pts[i].TimestampType == "current" {
			cur = append(cur, &pts[i])
		}
	}
	cur, depth := pathwayOrder(cur)
	w := bufio.NewWriterSize(out, 32<<10)
	defer w.Flush()
	w.WriteString(title)
	w.WriteByte('\n')
	if len(cur) == 0 { // lag, kept far longer than pathways, may be all there is
		if totals != nil {
			w.WriteString("No pathway had a checkpoint in that time.\n") // the title says how long
		} else {
			w.WriteString("No pathway in these payloads.\n")
		}
	} else {
		header := "BUCKET\tSERVICE\tEDGE\tHASH <- PARENT\tMSG/S\tEDGE p50 / p99\tEND-TO-END p50 / p99\tAVG SIZE"
		if totals != nil {
			header = "BUCKET\tSERVICE\tEDGE\tHASH <- PARENT\tMSG/S\tMESSAGES*\tEDGE p50 / p99\tEND-TO-END p50 / p99\tAVG SIZE"
		}
		size := len(header) // the text of the rows, roughly: their numbers' digits, then names
		for i, p := range cur {
			size += 100 + 2*min(depth[i], maxIndent) + len(p.Service) + len(p.EdgeTags)
			for _, tag := range p.EdgeTags {
				size += len(tag)
			}
		}
		t := newTextTable(strings.Count(header, "\t")+1, len(cur)+1, size)
		t.cells(header)
		var key []byte
		for i, p := range cur {
			if totals != nil || sizes != nil {
				key = appendPathwayKey(key[:0], p.Service, p.EdgeTags, p.Hash, p.ParentHash)
			}
			t.text = p.Start.AppendFormat(t.text, time.TimeOnly)
			t.endCell()
			for range min(depth[i], maxIndent) {
				t.text = append(t.text, "  "...)
			}
			t.text = appendCell(t.text, p.Service)
			t.endCell()
			t.text = appendEdge(t.text, p.EdgeTags)
			t.endCell()
			t.text = appendHash(t.text, p.Hash)
			t.text = append(t.text, " <- "...)
			t.text = appendHash(t.text, p.ParentHash)
			t.endCell()
			t.text = strconv.AppendFloat(t.text, ratePerSecond(*p), 'f', 1, 64)
			t.endCell()
			if totals != nil {
				t.text = strconv.AppendUint(t.text, totals[string(key)].Messages, 10)
				t.endCell()
			}
			for _, s := range [...]*ddsketch.DDSketch{p.EdgeLatency, p.PathwayLatency} {
				t.text = appendMs(t.text, quantile(s, 0.5))
				t.text = append(t.text, " / "...)
				t.text = appendMs(t.text, quantile(s, 0.99))
				t.endCell()
			}
			avg, exact := sizes[string(key)] // looked up here: string(key) passed on would be a copy
			if !exact {
				avg = averageSize(*p, nil, "")
			}
			t.text = strconv.AppendFloat(t.text, avg, 'f', 0, 64)
			t.text = append(t.text, " B"...)
			t.endCell()
		}
		t.writeTo(w)
		w.WriteString("Each row is indented under the row of its parent (the row whose HASH is its PARENT). A row at the left starts a pathway here (PARENT 0000000000000000), or continues one whose previous checkpoint is not on this page: a traced service's, another proxy's, or too old.\n")
		if totals != nil {
			w.WriteString("MESSAGES*: checkpoints on the pathway since the proxy started, up to its latest flushed bucket (one that drops off this page and comes back counts again from 0).\n")
		}
	}
	if lag := consumerLag(bl); len(lag) > 0 {
		w.WriteByte('\n')
		t := newTextTable(5, len(lag)+1, 0)
		t.cells("CONSUMER GROUP\tTOPIC\tPARTITIONS COMMITTED\tLAG (messages past the last commit)\tKAFKA CLUSTER")
		for _, l := range lag {
			t.text = appendCell(t.text, l.group)
			t.endCell()
			t.text = appendCell(t.text, l.topic)
			t.endCell()
			t.text = strconv.AppendInt(t.text, int64(l.partitions), 10)
			t.endCell()
			t.text = strconv.AppendInt(t.text, l.lag, 10)
			t.endCell()
			t.text = appendCell(t.text, l.cluster)
			t.endCell()
		}
		t.writeTo(w)
	}
	w.WriteByte('\n')
}

// appendHash appends h as 16 hex digits.
func appendHash(b []byte, h uint64) []byte {
	const digits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, digits[h>>shift&0xf])
	}
	return b
}

// maxIndent bounds the indent of a long pathway's rows, so its last hops still fit a terminal.
const maxIndent = 8

// pathwayOrder orders pts as pathways read: each point right under its parent's (the point whose
// Hash is its ParentHash), children by end-to-end latency, then service and edge, and each
// pathway's points together. Points whose parent is not among pts head their pathway: it starts
// at them (parent 0), or its earlier checkpoints are elsewhere (a tracer's, another proxy's, an
// older bucket's). Points of one node in several buckets (the demo's table) go together, oldest
// first. depth[i] is how many parents of ordered[i] are shown above it. It reorders pts.
func pathwayOrder(pts []*agentpayload.Point) (ordered []*agentpayload.Point, depth []int) {
	// Each point's end-to-end p50 once, not at every comparison: a sketch's quantile is a walk
	// of its bins.
	type sortRow struct {
		p   *agentpayload.Point
		p50 float64
	}
	rows := make([]sortRow, len(pts))
	for i, p := range pts {
		rows[i] = sortRow{p, quantile(p.PathwayLatency, 0.5)}
	}
	slices.SortFunc(rows, func(a, b sortRow) int {
		if c := cmp.Compare(a.p50, b.p50); c != 0 {
			return c
		}
		if c := cmp.Compare(a.p.Service, b.p.Service); c != 0 {
			return c
		}
		if c := slices.Compare(a.p.EdgeTags, b.p.EdgeTags); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.p.Hash, b.p.Hash), a.p.Start.Compare(b.p.Start))
	})
	for i, r := range rows {
		pts[i] = r.p
	}
	// A node is a hash and its points, linked through next in pts's order; its children are
	// linked through sibling in order of their first point. -1 ends a list.
	type node struct {
		first, last      int32 // its points
		child, lastChild int32 // its children
		sibling          int32
		done             bool
	}
	ids := make(map[uint64]int32, len(pts))
	nodes := make([]node, 0, len(pts))
	next := make([]int32, len(pts))
	for i, p := range pts {
		next[i] = -1
		if n, ok := ids[p.Hash]; ok {
			next[nodes[n].last] = int32(i)
			nodes[n].last = int32(i)
			continue
		}
		ids[p.Hash] = int32(len(nodes))
		nodes = append(nodes, node{first: int32(i), last: int32(i), child: -1, lastChild: -1, sibling: -1})
	}
	var roots []int32
	for n := range nodes {
		h, parent := pts[nodes[n].first].Hash, pts[nodes[n].first].ParentHash
		if pn, shown := ids[parent]; shown && parent != h {
			if nodes[pn].lastChild < 0 {
				nodes[pn].child = int32(n)
			} else {
				nodes[nodes[pn].lastChild].sibling = int32(n)
			}
			nodes[pn].lastChild = int32(n)
		} else {
			roots = append(roots, int32(n))
		}
	}
	ordered, depth = make([]*agentpayload.Point, 0, len(pts)), make([]int, 0, len(pts))
	var buckets []*agentpayload.Point // one node's points
	var walk func(n int32, d int)
	walk = func(n int32, d int) {
		if nodes[n].done {
			return
		}
		nodes[n].done = true
		buckets = buckets[:0]
		for i := nodes[n].first; i >= 0; i = next[i] {
			buckets = append(buckets, pts[i])
		}
		slices.SortFunc(buckets, func(a, b *agentpayload.Point) int { return a.Start.Compare(b.Start) })
		for _, p := range buckets {
			ordered, depth = append(ordered, p), append(depth, d)
		}
		for c := nodes[n].child; c >= 0; c = nodes[c].sibling {
			walk(c, d+1)
		}
	}
	for _, n := range roots {
		walk(n, 0)
	}
	// Hashes in a cycle (a forged or colliding hash) have no root: shown at the left, after.
	for n := range nodes {
		walk(int32(n), 0)
	}
	return ordered, depth
}

// printErrors lists the tracked error groups (what GET /errors returns), in the order of
// errtrack.Snapshot: by category, protocol, service and edge.
func printErrors(out io.Writer, s *errtrack.Snapshot) {
	if len(s.Groups) == 0 {
		return
	}
	w := bufio.NewWriterSize(out, 32<<10)
	defer w.Flush()
	t := newTextTable(7, len(s.Groups)+1, 0)
	t.cells("TRACKED ERRORS\tSERVICE\tOPERATION\tEDGE\tERROR\tCOUNT\tMESSAGES (since start)")
	for i := range s.Groups {
		g := &s.Groups[i]
		t.text = append(t.text, g.Category.String()...)
		t.endCell()
		t.text = appendCell(t.text, g.Service)
		t.endCell()
		t.text = append(t.text, g.Protocol...)
		t.text = append(t.text, ' ')
		t.text = appendCell(t.text, g.Operation)
		t.endCell()
		t.text = appendEdge(t.text, g.Edge.Tags())
		t.endCell()
		t.text = appendCell(t.text, g.Name)
		if g.Code != 0 { // the same skip for different broker codes
			t.text = append(t.text, " ("...)
			t.text = strconv.AppendInt(t.text, int64(g.Code), 10)
			t.text = append(t.text, ')')
		}
		t.endCell()
		t.text = strconv.AppendInt(t.text, g.TotalCount, 10)
		t.endCell()
		t.text = strconv.AppendInt(t.text, g.TotalMessages, 10)
		t.endCell()
	}
	t.writeTo(w)
	w.WriteByte('\n')
}

// ratePerSecond is the point's checkpoints per second of its bucket (10 s when it names none).
func ratePerSecond(p agentpayload.Point) float64 {
	secs := p.Duration.Seconds()
	if secs <= 0 {
		secs = 10
	}
	return p.Count() / secs
}

// averageSize is the point's average payload size, 0 without any: from sizes[key] where it is
// there, else from the size sketch (within 1%).
func averageSize(p agentpayload.Point, sizes map[string]float64, key string) float64 {
	if s, ok := sizes[key]; ok {
		return s
	}
	if c := p.PayloadSize.GetCount(); c > 0 {
		return p.PayloadSize.GetSum() / c
	}
	return 0
}

type sketch interface {
	GetValueAtQuantile(float64) (float64, error)
	IsEmpty() bool
}

func quantile(s sketch, q float64) float64 {
	if s == nil || s.IsEmpty() {
		return 0
	}
	v, err := s.GetValueAtQuantile(q)
	if err != nil {
		return 0
	}
	return v
}

// appendMs appends a latency in seconds as ms or s: 12.3ms, 1.25s.
func appendMs(b []byte, seconds float64) []byte {
	d := time.Duration(seconds * float64(time.Second))
	if d >= time.Second {
		return append(strconv.AppendFloat(b, d.Seconds(), 'f', 2, 64), 's')
	}
	return append(strconv.AppendFloat(b, float64(d)/float64(time.Millisecond), 'f', 1, 64), "ms"...)
}

type lagRow struct {
	group, topic, cluster string
	partitions            int
	lag                   int64
}

// consumerLag joins log ends and commits per (topic, partition): lag = log end - committed offset,
// summed over partitions per group and topic. The log end is the high watermark fetches brought
// or the offset after the last one produced, whichever is later. The commit is the latest one
// (by when it was seen where the view knows it, else by bucket): a group's offsets reset back,
// by its consumer or by another service (an admin tool, a new deployment), replace the higher
// ones committed before, in the same bucket too.
func consumerLag(bl []agentpayload.BacklogEntry) []lagRow {
	// Offsets of one topic and group on two clusters (two Kafka fronts) are two lags.
	type tp struct {
		cluster, topic string
		partition      int32
	}
	end := map[tp]int64{}
	type gtp struct {
		group string
		tp
	}
	type commit struct {
		at    time.Time
		value int64
	}
	commits := map[gtp]commit{}
	for _, b := range bl {
		o := offsetOfTags(b.Tags)
		at := tp{o.ClusterID, o.Topic, o.Partition}
		switch o.Kind {
		case pathway.KafkaHighWatermark:
			end[at] = max(end[at], b.Value)
		case pathway.KafkaProduce:
			// The last offset a producer got: the log ends after it. Fetches bring the high
			// watermark, and with no consumer fetching it would stand still while the log grows.
			end[at] = max(end[at], b.Value+1)
		case pathway.KafkaCommit:
			k := gtp{o.Group, at}
			if c, ok := commits[k]; !ok || b.Seen().After(c.at) || b.Seen().Equal(c.at) && b.Value > c.value {
				commits[k] = commit{b.Seen(), b.Value}
			}
		}
	}
	rows := map[[3]string]*lagRow{}
	for k, c := range commits {
		h, ok := end[k.tp]
		if !ok {
			continue
		}
		key := [3]string{k.group, k.topic, k.cluster}
		r := rows[key]
		if r == nil {
			r = &lagRow{group: k.group, topic: k.topic, cluster: k.cluster}
			rows[key] = r
		}
		r.partitions++
		r.lag += max(h-c.value, 0)
	}
	out := make([]lagRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b lagRow) int {
		return cmp.Or(cmp.Compare(a.group, b.group), cmp.Compare(a.topic, b.topic), cmp.Compare(a.cluster, b.cluster))
	})
	return out
}
