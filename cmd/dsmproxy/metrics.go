package main

import (
	"bufio"
	"cmp"
	"io"
	"math"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/DataDog/sketches-go/ddsketch"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
)

// metricsPage serves GET /metrics: what /dsm and /stats show, in the Prometheus text format
// (version 0.0.4), for people who scrape metrics instead of running an Agent. Pathways and
// backlogs come from the same local view as /dsm (each from its latest bucket, so they are
// gauges, beside the pathways' totals since the start, counters); the process's counters are
// counters.
type metricsPage struct {
	view  *localView
	stats func() statsSnapshot
}

// statsSnapshot is what GET /stats serves.
type statsSnapshot struct {
	Fronts       []frontStats           `json:"fronts"`
	Aggregator   aggregator.Stats       `json:"aggregator"`
	Checkpointer checkpointerStats      `json:"checkpointer"`
	Agent        *aggregator.AgentStats `json:"agent,omitempty"`
	// Certificates: each certificate a front serves or presents upstream, as last loaded. A front
	// serving an expired one stays ready (see /readyz): this is what to alert on.
	Certificates []certificateStatus `json:"certificates,omitempty"`
}

type certificateStatus struct {
	Front    string    `json:"front"`
	For      string    `json:"for"` // the front's listener or its upstream connections
	CertFile string    `json:"cert_file"`
	NotAfter time.Time `json:"not_after"`
}

// checkpointerStats: the node cache (hashes per service and edge) is started again when full.
type checkpointerStats struct {
	CacheResets uint64
}

type frontStats struct {
	Front    string `json:"front"` // the config entry, as log lines name it: amqp[1]
	Protocol string `json:"protocol"`
	Listen   string `json:"listen"`
	Stats    any    `json:"stats"`
	// Listeners: a Kafka front's open connections per listener (Stats has their sum).
	Listeners []kafka.ListenerConnections `json:"listeners,omitempty"`
}

const metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

func (m *metricsPage) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", metricsContentType)
	// Written as it goes: with tens of thousands of pathways, a page built first took tens of MB
	// and seconds per scrape.
	p := &promWriter{w: bufio.NewWriterSize(w, 64<<10)}
	if m.view != nil {
		c := m.view.contents()
		p.pathways(c.pts, c.keys, c.totals, c.sizes)
		p.backlogs(c.bl)
		if m.view.errs != nil {
			if s := m.view.errs(); s != nil {
				p.trackedErrors(s)
			}
		}
	}
	if m.stats != nil {
		// A few hundred series at most, but fronts of one protocol share families, so these are
		// collected and grouped before they are written.
		var e exposition
		st := m.stats()
		for _, f := range st.Fronts {
			e.counters("dsmproxy_"+f.Protocol+"_", f.Stats, "listen", f.Listen)
			e.listeners("dsmproxy_"+f.Protocol+"_", f.Listen, f.Listeners)
		}
		e.counters("dsmproxy_aggregator_", st.Aggregator)
		e.counters("dsmproxy_checkpointer_", st.Checkpointer)
		if st.Agent != nil {
			e.counters("dsmproxy_agent_", *st.Agent)
		}
		for _, c := range st.Certificates {
			e.add("dsmproxy_tls_certificate_not_after_seconds", "gauge",
				"End of validity (Unix seconds) of a certificate a front serves or presents, as last loaded (start or SIGHUP).",
				float64(c.NotAfter.Unix()), "front", c.Front, "for", c.For, "cert_file", c.CertFile)
		}
		e.write(p)
	}
	_ = p.w.Flush()
}

// promWriter writes the text format as it goes: a family's HELP and TYPE lines, then its samples
// (begin, label..., end). The format wants all samples of a family together, so the view's
// families are written one after another, each in a pass over what the view holds.
type promWriter struct {
	w      *bufio.Writer
	labels int    // labels of the sample begun
	num    []byte // scratch for numbers
}

func (p *promWriter) family(name, typ, help string) {
	p.w.WriteString("# HELP ")
	p.w.WriteString(name)
	p.w.WriteByte(' ')
	p.w.WriteString(escapeHelp(help))
	p.w.WriteString("\n# TYPE ")
	p.w.WriteString(name)
	p.w.WriteByte(' ')
	p.w.WriteString(typ)
	p.w.WriteByte('\n')
}

func (p *promWriter) begin(name string) {
	p.w.WriteString(name)
	p.labels = 0
}

// labelSep opens the labels or separates a label from the one before.
func (p *promWriter) labelSep() {
	if p.labels == 0 {
		p.w.WriteByte('{')
	} else {
		p.w.WriteByte(',')
	}
	p.labels++
}

// labelStart writes what comes before a label's value; the caller writes the value and its
// closing quote.
func (p *promWriter) labelStart(name string) {
	p.labelSep()
	p.w.WriteString(name)
	p.w.WriteString(`="`)
}

func (p *promWriter) label(name, value string) {
	p.labelStart(name)
	writeLabelValue(p.w, value)
	p.w.WriteByte('"')
}

// hexLabel is a hash as 16 hex digits.
func (p *promWriter) hexLabel(name string, v uint64) {
	p.labelStart(name)
	p.num = strconv.AppendUint(p.num[:0], v, 16)
	for range 16 - len(p.num) {
		p.w.WriteByte('0')
	}
	p.w.Write(p.num)
	p.w.WriteByte('"')
}

// edgeTagsLabel writes the edge_tags label (see edgeTagsLabel).
func (p *promWriter) edgeTagsLabel(tags []string) {
	p.labelStart("edge_tags")
	if slices.ContainsFunc(tags, func(t string) bool { return strings.ContainsAny(t, `\,`) }) {
		writeLabelValue(p.w, edgeTagsLabel(tags))
	} else {
		// Nothing to escape between the tags: each can be made a label value on its own, as
		// an invalid byte or U+FFFD never spans a comma.
		for i, t := range tags {
			if i > 0 {
				p.w.WriteByte(',')
			}
			writeLabelValue(p.w, t)
		}
	}
	p.w.WriteByte('"')
}

func (p *promWriter) end(v float64) {
	if p.labels > 0 {
		p.w.WriteByte('}')
	}
	p.w.WriteByte(' ')
	p.num = appendValue(p.num[:0], v)
	p.w.Write(p.num)
	p.w.WriteByte('\n')
}

// exposition collects samples and writes them grouped by family, as the format requires: all
// samples of a metric name together, after its HELP and TYPE lines.
type exposition struct {
	order    []string
	families map[string]*family
}

type family struct {
	typ, help string
	samples   []sample
}

type sample struct {
	labels []string // name, value, name, value...
	value  float64
}

func (e *exposition) add(name, typ, help string, v float64, labels ...string) {
	if e.families == nil {
		e.families = map[string]*family{}
	}
	f := e.families[name]
	if f == nil {
		f = &family{typ: typ, help: help}
		e.families[name] = f
		e.order = append(e.order, name)
	}
	f.samples = append(f.samples, sample{labels: labels, value: v})
}

func (e *exposition) write(p *promWriter) {
	for _, name := range e.order {
		f := e.families[name]
		p.family(name, f.typ, f.help)
		for _, s := range f.samples {
			p.begin(name)
			for i := 0; i+1 < len(s.labels); i += 2 {
				p.label(s.labels[i], s.labels[i+1])
			}
			p.end(s.value)
		}
	}
}

// pathwayRow is a pathway of the view and its pathwayKey.
type pathwayRow struct {
	pt  *agentpayload.Point
	key string
}

var pathwayQuantiles = [...]struct {
	q     float64
	label string
}{{0.5, "0.5"}, {0.99, "0.99"}}

// pathways: one series per pathway (service, edge tags, hash, parent) from its latest bucket,
// and its totals (see pathwayTotal) as counters. keys are the pathwayKey of each of pts.
func (p *promWriter) pathways(pts []agentpayload.Point, keys []string, totals map[string]pathwayTotal, sizes map[string]float64) {
	rows := make([]pathwayRow, 0, len(pts))
	for i := range pts {
		if pts[i].TimestampType == string(aggregator.Current) {
			rows = append(rows, pathwayRow{&pts[i], keys[i]})
		}
	}
	if len(rows) == 0 {
		return
	}
	slices.SortFunc(rows, func(a, b pathwayRow) int {
		return cmp.Or(strings.Compare(a.pt.Service, b.pt.Service), slices.Compare(a.pt.EdgeTags, b.pt.EdgeTags), cmp.Compare(a.pt.Hash, b.pt.Hash))
	})
	sample := func(name string, r pathwayRow, quantile string, v float64) {
		p.begin(name)
		p.label("service", r.pt.Service)
		p.edgeTagsLabel(r.pt.EdgeTags)
		p.hexLabel("hash", r.pt.Hash)
		p.hexLabel("parent_hash", r.pt.ParentHash)
		if quantile != "" {
			p.label("quantile", quantile)
		}
		p.end(v)
	}

	const rate = "dsmproxy_pathway_messages_per_second"
	p.family(rate, "gauge", "Checkpoints per second on the pathway, in its latest bucket.")
	for _, r := range rows {
		sample(rate, r, "", ratePerSecond(*r.pt))
	}
	// Summaries of quantiles alone (no _sum or _count: a sketch keeps neither exactly), as the
	// format wants a quantile label only on a summary (promtool: "non-summary metrics should
	// not have quantile label").
	for _, f := range []struct {
		name, help string
		sketch     func(*agentpayload.Point) *ddsketch.DDSketch
	}{
		{"dsmproxy_pathway_edge_latency_seconds", "Edge latency (since the previous checkpoint) at the quantile, in the pathway's latest bucket.",
			func(pt *agentpayload.Point) *ddsketch.DDSketch { return pt.EdgeLatency }},
		{"dsmproxy_pathway_latency_seconds", "End-to-end latency (since the pathway began) at the quantile, in the pathway's latest bucket.",
			func(pt *agentpayload.Point) *ddsketch.DDSketch { return pt.PathwayLatency }},
	} {
		p.family(f.name, "summary", f.help)
		for _, r := range rows {
			for _, q := range pathwayQuantiles {
				sample(f.name, r, q.label, quantile(f.sketch(r.pt), q.q))
			}
		}
	}
	const average = "dsmproxy_pathway_payload_bytes_average"
	p.family(average, "gauge", "Average payload size on the pathway, in its latest bucket.")
	for _, r := range rows {
		sample(average, r, "", averageSize(*r.pt, sizes, r.key))
	}
	for _, f := range []struct {
		name, help string
		value      func(pathwayTotal) uint64
	}{
		{"dsmproxy_pathway_messages_total", "Checkpoints on the pathway in every bucket flushed since it came into the view (since the start, or since it came back after dropping out of /dsm): exact up to the latest flushed bucket.",
			func(t pathwayTotal) uint64 { return t.Messages }},
		{"dsmproxy_pathway_payload_bytes_total", "Payload bytes on the pathway in every bucket flushed since it came into the view (since the start, or since it came back after dropping out of /dsm): exact up to the latest flushed bucket.",
			func(t pathwayTotal) uint64 { return t.Bytes }},
	} {
		started := false
		for _, r := range rows {
			t, ok := totals[r.key]
			if !ok {
				continue
			}
			if !started {
				p.family(f.name, "counter", f.help)
				started = true
			}
			sample(f.name, r, "", float64(f.value(t)))
		}
	}
}

// backlogs: the Kafka offsets (produce, high watermark, commit) per partition, and the consumer
// lag /dsm shows (log end - commit, summed over a group's partitions of a topic), from the last
// known offsets (localView keeps them for offsetRetention).
func (p *promWriter) backlogs(bl []agentpayload.BacklogEntry) {
	slices.SortFunc(bl, func(a, b agentpayload.BacklogEntry) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), slices.Compare(a.Tags, b.Tags))
	})
	const offset = "dsmproxy_kafka_offset"
	if len(bl) > 0 {
		p.family(offset, "gauge",
			"Last known Kafka offset per kind (type: kafka_produce, kafka_high_watermark, kafka_commit) and partition, kept a week after its last update.")
	}
	for _, b := range bl {
		p.begin(offset)
		p.label("service", b.Service)
		for _, t := range b.Tags {
			k, v, _ := strings.Cut(t, ":")
			p.labelSep()
			writeLabelName(p.w, k)
			p.w.WriteString(`="`)
			writeLabelValue(p.w, v)
			p.w.WriteByte('"')
		}
		p.end(float64(b.Value))
	}
	const lag = "dsmproxy_kafka_consumer_lag_messages"
	for i, r := range consumerLag(bl) {
		if i == 0 {
			p.family(lag, "gauge",
				"Messages past the group's last commit, summed over the topic's partitions it committed (log end: the later of the high watermark and the last produced offset + 1).")
		}
		p.begin(lag)
		p.label("consumer_group", r.group)
		p.label("topic", r.topic)
		p.label("kafka_cluster_id", r.cluster)
		p.end(float64(r.lag))
	}
}

// trackedErrors: the error groups of GET /errors, counted over each group's life.
func (p *promWriter) trackedErrors(s *errtrack.Snapshot) {
	for _, c := range []struct {
		name, help string
		v          int64
	}{
		{"dsmproxy_error_traces_dropped_total", "Error traces dropped because more than 2,000 waited for the Agent.", s.TracesDropped},
		{"dsmproxy_tracked_errors_overflow_total", "Error events not grouped because the most error groups kept at once (errors.max_fingerprints, default 1,000) already existed, each with an event in the interval; each interval's Warn line counts them too.", s.Overflow},
		{"dsmproxy_tracked_errors_evicted_total", "Error groups dropped before their hour to make room for new ones, least recently seen first, when errors.max_fingerprints groups existed; each interval's Warn line counts them too.", s.Evicted},
		{"dsmproxy_tracked_errors_overflow_messages_total", "Lost messages among the error events counted by dsmproxy_tracked_errors_overflow_total.", s.OverflowLost},
	} {
		p.family(c.name, "counter", c.help)
		p.begin(c.name)
		p.end(float64(c.v))
	}
	if len(s.Groups) == 0 {
		return
	}
	// Each group's edge tags once, for both families: pathway.Edge.Tags builds them anew at
	// every call.
	tags := make([][]string, len(s.Groups))
	for i := range s.Groups {
		tags[i] = s.Groups[i].Edge.Tags()
	}
	for _, f := range []struct {
		name, help string
		value      func(*errtrack.Group) float64
	}{
		{"dsmproxy_tracked_errors_total", "Tracked error events (broker errors, lost messages, proxy skips, decode errors).",
			func(g *errtrack.Group) float64 { return float64(g.TotalCount) }},
		{"dsmproxy_tracked_error_messages_total", "Messages the tracked error events concerned.",
			func(g *errtrack.Group) float64 { return float64(g.TotalMessages) }},
	} {
		p.family(f.name, "counter", f.help)
		for i := range s.Groups {
			g := &s.Groups[i]
			p.begin(f.name)
			p.label("category", g.Category.String())
			p.label("protocol", g.Protocol)
			p.label("service", g.Service)
			p.label("operation", g.Operation)
			p.edgeTagsLabel(tags[i])
			p.label("error", g.Name)
			p.label("code", strconv.Itoa(int(g.Code)))
			p.end(f.value(g))
		}
	}
}

// listeners: one series per listener of a front that has several (Kafka: the bootstrap one and
// one per broker node), as max_conns limits each; the front's own open_connections is their sum.
func (e *exposition) listeners(prefix, listen string, ls []kafka.ListenerConnections) {
	for _, l := range ls {
		node := "bootstrap"
		if l.Node >= 0 {
			node = strconv.Itoa(int(l.Node))
		}
		e.add(prefix+"listener_open_connections", "gauge",
			"Client connections open now on one listener of the front (bootstrap, or a broker node's); max_conns limits each listener.",
			float64(l.Open), "listen", listen, "listener", l.Listen, "node", node)
	}
}

// counters adds every exported field of the struct st: unsigned integers count since the start
// (counters, named _total), signed ones are levels (gauges), booleans are 0 or 1. Each has its
// HELP from statsHelp.
func (e *exposition) counters(prefix string, st any, labels ...string) {
	v := reflect.ValueOf(st)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return
	}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name := prefix + snakeCase(f.Name)
		help, known := statsHelp[t.String()+"."+f.Name]
		fv := v.Field(i)
		switch fv.Kind() {
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			if !known {
				help = "Since the process started: see GET /stats and README.md."
			}
			e.add(name+"_total", "counter", help, float64(fv.Uint()), labels...)
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			if !known {
				help = "Current level: see GET /stats and README.md."
			}
			e.add(name, "gauge", help, float64(fv.Int()), labels...)
		case reflect.Bool:
			if !known {
				help = "1 when true: see GET /stats and README.md."
			}
			b := 0.0
			if fv.Bool() {
				b = 1
			}
			e.add(name, "gauge", help, b, labels...)
		}
	}
}

// snakeCase: InjectedRecords -> injected_records, UnknownCorrIDs -> unknown_corr_ids.
func snakeCase(s string) string {
	s = strings.ReplaceAll(s, "IDs", "Ids")
	r := []rune(s)
	var b strings.Builder
	for i, c := range r {
		if unicode.IsUpper(c) {
			if i > 0 && (unicode.IsLower(r[i-1]) || unicode.IsDigit(r[i-1]) || i+1 < len(r) && unicode.IsLower(r[i+1])) {
				b.WriteByte('_')
			}
			c = unicode.ToLower(c)
		}
		b.WriteRune(c)
	}
	return b.String()
}

// textWriter is what label values are written to: the page's buffer, or a string.
type textWriter interface {
	io.ByteWriter
	io.StringWriter
}

// writeLabelName writes a tag key as a valid label name ([a-zA-Z_][a-zA-Z0-9_]*).
func writeLabelName(w textWriter, k string) {
	if k == "" {
		w.WriteByte('_')
		return
	}
	for i := range len(k) {
		c := k[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			c = '_'
		}
		w.WriteByte(c)
	}
}

var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

// writeLabelValue writes s as a label value, without its quotes: names come from clients and
// brokers; a label value must not end its quotes or line.
func writeLabelValue(w textWriter, s string) {
	s = validLabel(s)
	for {
		i := strings.IndexAny(s, "\\\"\n")
		if i < 0 {
			w.WriteString(s)
			return
		}
		w.WriteString(s[:i])
		if s[i] == '\n' {
			w.WriteString(`\n`)
		} else {
			w.WriteByte('\\')
			w.WriteByte(s[i])
		}
		s = s[i+1:]
	}
}

// escapeLabel is s as writeLabelValue writes it.
func escapeLabel(s string) string {
	var b strings.Builder
	writeLabelValue(&b, s)
	return b.String()
}

func escapeHelp(s string) string { return helpEscaper.Replace(s) }

// validLabel makes s valid UTF-8, as the format requires, without merging names: replacing
// invalid bytes by U+FFFD alone made "t\xff" and "t\xfe" one series. Each invalid byte becomes
// U+FFFD and its hex ("t\xff" -> "t\uFFFDff") and a U+FFFD of the name itself is doubled, so the
// value still reads back to one name only.
func validLabel(s string) string {
	if utf8.ValidString(s) && !strings.ContainsRune(s, utf8.RuneError) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1: // an invalid byte
			const hex = "0123456789abcdef"
			b.WriteRune(utf8.RuneError)
			b.WriteByte(hex[s[i]>>4])
			b.WriteByte(hex[s[i]&0xf])
		case r == utf8.RuneError: // the name's own U+FFFD
			b.WriteString("\uFFFD\uFFFD")
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func appendValue(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// edgeTagsLabel is the edge_tags label: the tags joined by commas, as before, with each tag's
// own backslashes and commas escaped (\\, \,). Names such as a consumer group or a RabbitMQ
// exchange or queue may hold commas, and error series have no hash to keep two edges apart:
// unescaped, a group "g,topic:t" read as group g on topic t.
func edgeTagsLabel(tags []string) string {
	var b strings.Builder
	for i, t := range tags {
		if i > 0 {
			b.WriteByte(',')
		}
		edgeTagEscaper.WriteString(&b, t)
	}
	return b.String()
}

var edgeTagEscaper = strings.NewReplacer(`\`, `\\`, `,`, `\,`)
