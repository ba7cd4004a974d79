package main

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

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
	var e exposition
	if m.view != nil {
		c := m.view.contents()
		e.pathways(c.pts, c.totals, c.sizes)
		e.backlogs(c.bl)
		if m.view.errs != nil {
			if s := m.view.errs(); s != nil {
				e.trackedErrors(s)
			}
		}
	}
	if m.stats != nil {
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
	}
	w.Header().Set("Content-Type", metricsContentType)
	bw := bufio.NewWriter(w)
	e.write(bw)
	_ = bw.Flush()
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

func (e *exposition) write(w *bufio.Writer) {
	for _, name := range e.order {
		f := e.families[name]
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(f.help), name, f.typ)
		for _, s := range f.samples {
			w.WriteString(name)
			if len(s.labels) > 0 {
				w.WriteByte('{')
				for i := 0; i+1 < len(s.labels); i += 2 {
					if i > 0 {
						w.WriteByte(',')
					}
					w.WriteString(s.labels[i])
					w.WriteString(`="`)
					w.WriteString(escapeLabel(s.labels[i+1]))
					w.WriteByte('"')
				}
				w.WriteByte('}')
			}
			w.WriteByte(' ')
			w.WriteString(formatValue(s.value))
			w.WriteByte('\n')
		}
	}
}

// pathways: one series per pathway (service, edge tags, hash, parent) from its latest bucket,
// and its totals (see pathwayTotal) as counters.
func (e *exposition) pathways(pts []agentpayload.Point, totals map[string]pathwayTotal, sizes map[string]float64) {
	slices.SortFunc(pts, func(a, b agentpayload.Point) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), slices.Compare(a.EdgeTags, b.EdgeTags), cmp.Compare(a.Hash, b.Hash))
	})
	for _, p := range pts {
		if p.TimestampType != string(aggregator.Current) {
			continue
		}
		l := []string{"service", p.Service, "edge_tags", edgeTagsLabel(p.EdgeTags),
			"hash", fmt.Sprintf("%016x", p.Hash), "parent_hash", fmt.Sprintf("%016x", p.ParentHash)}
		e.add("dsmproxy_pathway_messages_per_second", "gauge",
			"Checkpoints per second on the pathway, in its latest bucket.", ratePerSecond(p), l...)
		// Summaries of quantiles alone (no _sum or _count: a sketch keeps neither exactly), as
		// the format wants a quantile label only on a summary (promtool: "non-summary metrics
		// should not have quantile label").
		for _, q := range []float64{0.5, 0.99} {
			ql := append(slices.Clone(l), "quantile", strconv.FormatFloat(q, 'g', -1, 64))
			e.add("dsmproxy_pathway_edge_latency_seconds", "summary",
				"Edge latency (since the previous checkpoint) at the quantile, in the pathway's latest bucket.", quantile(p.EdgeLatency, q), ql...)
			e.add("dsmproxy_pathway_latency_seconds", "summary",
				"End-to-end latency (since the pathway began) at the quantile, in the pathway's latest bucket.", quantile(p.PathwayLatency, q), ql...)
		}
		key := pathwayKey(p.Service, p.EdgeTags, p.Hash, p.ParentHash)
		e.add("dsmproxy_pathway_payload_bytes_average", "gauge",
			"Average payload size on the pathway, in its latest bucket.", averageSize(p, sizes, key), l...)
		if t, ok := totals[key]; ok {
			e.add("dsmproxy_pathway_messages_total", "counter",
				"Checkpoints on the pathway in every bucket flushed since it came into the view (since the start, or since it came back after dropping out of /dsm): exact up to the latest flushed bucket.", float64(t.Messages), l...)
			e.add("dsmproxy_pathway_payload_bytes_total", "counter",
				"Payload bytes on the pathway in every bucket flushed since it came into the view (since the start, or since it came back after dropping out of /dsm): exact up to the latest flushed bucket.", float64(t.Bytes), l...)
		}
	}
}

// backlogs: the Kafka offsets (produce, high watermark, commit) per partition, and the consumer
// lag /dsm shows (log end - commit, summed over a group's partitions of a topic), from the last
// known offsets (localView keeps them for offsetRetention).
func (e *exposition) backlogs(bl []agentpayload.BacklogEntry) {
	slices.SortFunc(bl, func(a, b agentpayload.BacklogEntry) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), slices.Compare(a.Tags, b.Tags))
	})
	for _, b := range bl {
		l := []string{"service", b.Service}
		for _, t := range b.Tags {
			k, v, _ := strings.Cut(t, ":")
			l = append(l, labelName(k), v)
		}
		e.add("dsmproxy_kafka_offset", "gauge",
			"Last known Kafka offset per kind (type: kafka_produce, kafka_high_watermark, kafka_commit) and partition, kept a week after its last update.", float64(b.Value), l...)
	}
	for _, r := range consumerLag(bl) {
		e.add("dsmproxy_kafka_consumer_lag_messages", "gauge",
			"Messages past the group's last commit, summed over the topic's partitions it committed (log end: the later of the high watermark and the last produced offset + 1).", float64(r.lag),
			"consumer_group", r.group, "topic", r.topic, "kafka_cluster_id", r.cluster)
	}
}

// trackedErrors: the error groups of GET /errors, counted over each group's life.
func (e *exposition) trackedErrors(s *errtrack.Snapshot) {
	e.add("dsmproxy_error_traces_dropped_total", "counter",
		"Error traces dropped because more than 2,000 waited for the Agent.", float64(s.TracesDropped))
	e.add("dsmproxy_tracked_errors_overflow_total", "counter",
		"Error events not grouped because the most error groups kept at once (errors.max_fingerprints, default 1,000) already existed, each with an event in the interval; each interval's Warn line counts them too.", float64(s.Overflow))
	e.add("dsmproxy_tracked_errors_evicted_total", "counter",
		"Error groups dropped before their hour to make room for new ones, least recently seen first, when errors.max_fingerprints groups existed; each interval's Warn line counts them too.", float64(s.Evicted))
	e.add("dsmproxy_tracked_errors_overflow_messages_total", "counter",
		"Lost messages among the error events counted by dsmproxy_tracked_errors_overflow_total.", float64(s.OverflowLost))
	for _, g := range s.Groups {
		l := []string{"category", g.Category.String(), "protocol", g.Protocol, "service", g.Service, "operation", g.Operation,
			"edge_tags", edgeTagsLabel(g.Edge.Tags()), "error", g.Name, "code", strconv.Itoa(int(g.Code))}
		e.add("dsmproxy_tracked_errors_total", "counter", "Tracked error events (broker errors, lost messages, proxy skips, decode errors).", float64(g.TotalCount), l...)
		e.add("dsmproxy_tracked_error_messages_total", "counter", "Messages the tracked error events concerned.", float64(g.TotalMessages), l...)
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

// labelName makes a tag key a valid label name ([a-zA-Z_][a-zA-Z0-9_]*).
func labelName(k string) string {
	b := []byte(k)
	for i, c := range b {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return "_"
	}
	return string(b)
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

// escapeLabel: names come from clients and brokers; a label value must not end its quotes or line.
func escapeLabel(s string) string { return labelEscaper.Replace(validLabel(s)) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

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

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
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
