package main

import (
	"cmp"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode"

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
func printTable(out io.Writer, title string, pts []agentpayload.Point, bl []agentpayload.BacklogEntry, totals map[string]pathwayTotal, sizes map[string]float64) {
	var cur []agentpayload.Point
	for _, p := range pts {
		if p.TimestampType == "current" {
			cur = append(cur, p)
		}
	}
	cur, depth := pathwayOrder(cur)
	fmt.Fprintln(out, title)
	if len(cur) == 0 { // lag, kept far longer than pathways, may be all there is
		if totals != nil {
			fmt.Fprintln(out, "No pathway had a checkpoint in that time.") // the title says how long
		} else {
			fmt.Fprintln(out, "No pathway in these payloads.")
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	total := ""
	if totals != nil {
		total = "\tMESSAGES*"
	}
	if len(cur) > 0 {
		fmt.Fprintln(tw, "BUCKET\tSERVICE\tEDGE\tHASH <- PARENT\tMSG/S"+total+"\tEDGE p50 / p99\tEND-TO-END p50 / p99\tAVG SIZE")
	}
	for i, p := range cur {
		key := pathwayKey(p.Service, p.EdgeTags, p.Hash, p.ParentHash)
		if totals != nil {
			total = fmt.Sprintf("\t%d", totals[key].Messages)
		}
		fmt.Fprintf(tw, "%s\t%s%s\t%s\t%016x <- %016x\t%.1f%s\t%s / %s\t%s / %s\t%.0f B\n",
			p.Start.Format(time.TimeOnly), strings.Repeat("  ", min(depth[i], maxIndent)), cell(p.Service), edgeString(p.EdgeTags), p.Hash, p.ParentHash, ratePerSecond(p), total,
			ms(quantile(p.EdgeLatency, 0.5)), ms(quantile(p.EdgeLatency, 0.99)),
			ms(quantile(p.PathwayLatency, 0.5)), ms(quantile(p.PathwayLatency, 0.99)), averageSize(p, sizes, key))
	}
	tw.Flush()
	if len(cur) > 0 {
		fmt.Fprintln(out, "Each row is indented under the row of its parent (the row whose HASH is its PARENT). A row at the left starts a pathway here (PARENT 0000000000000000), or continues one whose previous checkpoint is not on this page: a traced service's, another proxy's, or too old.")
	}
	if totals != nil && len(cur) > 0 {
		fmt.Fprintln(out, "MESSAGES*: checkpoints on the pathway since the proxy started, up to its latest flushed bucket (one that drops off this page and comes back counts again from 0).")
	}
	if lag := consumerLag(bl); len(lag) > 0 {
		fmt.Fprintln(out)
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "CONSUMER GROUP\tTOPIC\tPARTITIONS COMMITTED\tLAG (messages past the last commit)\tKAFKA CLUSTER")
		for _, l := range lag {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", cell(l.group), cell(l.topic), l.partitions, l.lag, cell(l.cluster))
		}
		tw.Flush()
	}
	fmt.Fprintln(out)
}

// maxIndent bounds the indent of a long pathway's rows, so its last hops still fit a terminal.
const maxIndent = 8

// pathwayOrder orders pts as pathways read: each point right under its parent's (the point whose
// Hash is its ParentHash), children by end-to-end latency, then service and edge, and each
// pathway's points together. Points whose parent is not among pts head their pathway: it starts
// at them (parent 0), or its earlier checkpoints are elsewhere (a tracer's, another proxy's, an
// older bucket's). Points of one node in several buckets (the demo's table) go together, oldest
// first. depth[i] is how many parents of pts[i] are shown above it.
func pathwayOrder(pts []agentpayload.Point) (ordered []agentpayload.Point, depth []int) {
	slices.SortFunc(pts, func(a, b agentpayload.Point) int {
		return cmp.Or(cmp.Compare(quantile(a.PathwayLatency, 0.5), quantile(b.PathwayLatency, 0.5)), cmp.Compare(a.Service, b.Service),
			slices.Compare(a.EdgeTags, b.EdgeTags), cmp.Compare(a.Hash, b.Hash), a.Start.Compare(b.Start))
	})
	nodes := map[uint64][]int{} // hash -> its points, in pts's order
	var hashes []uint64         // in order of their first point
	for i, p := range pts {
		if _, ok := nodes[p.Hash]; !ok {
			hashes = append(hashes, p.Hash)
		}
		nodes[p.Hash] = append(nodes[p.Hash], i)
	}
	children := map[uint64][]uint64{}
	var roots []uint64
	for _, h := range hashes {
		parent := pts[nodes[h][0]].ParentHash
		if _, shown := nodes[parent]; shown && parent != h {
			children[parent] = append(children[parent], h)
		} else {
			roots = append(roots, h)
		}
	}
	ordered, depth = make([]agentpayload.Point, 0, len(pts)), make([]int, 0, len(pts))
	done := make(map[uint64]bool, len(hashes))
	var walk func(h uint64, d int)
	walk = func(h uint64, d int) {
		if done[h] {
			return
		}
		done[h] = true
		for _, i := range slices.SortedFunc(slices.Values(nodes[h]), func(a, b int) int { return pts[a].Start.Compare(pts[b].Start) }) {
			ordered, depth = append(ordered, pts[i]), append(depth, d)
		}
		for _, c := range children[h] {
			walk(c, d+1)
		}
	}
	for _, h := range roots {
		walk(h, 0)
	}
	// Hashes in a cycle (a forged or colliding hash) have no root: shown at the left, after.
	for _, h := range hashes {
		walk(h, 0)
	}
	return ordered, depth
}

// printErrors lists the tracked error groups (what GET /errors returns), in the order of
// errtrack.Snapshot: by category, protocol, service and edge.
func printErrors(out io.Writer, s *errtrack.Snapshot) {
	if len(s.Groups) == 0 {
		return
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TRACKED ERRORS\tSERVICE\tOPERATION\tEDGE\tERROR\tCOUNT\tMESSAGES (since start)")
	for _, g := range s.Groups {
		name := g.Name
		if g.Code != 0 {
			name = fmt.Sprintf("%s (%d)", name, g.Code) // the same skip for different broker codes
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\t%s\t%d\t%d\n", g.Category, cell(g.Service), g.Protocol, cell(g.Operation),
			edgeString(g.Edge.Tags()), cell(name), g.TotalCount, g.TotalMessages)
	}
	tw.Flush()
	fmt.Fprintln(out)
}

// cell is s as one cell of a plain-text table: names come from clients and brokers, and a tab or
// a line break in one would make columns or rows of its own.
func cell(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// edgeString shows edge tags as one cell: direction:in group:billing topic:orders type:kafka. The
// type stays: a Kafka topic and an SNS topic may share a name.
func edgeString(tags []string) string { return cell(strings.Join(tags, " ")) }

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

func ms(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second))
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	default:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
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
