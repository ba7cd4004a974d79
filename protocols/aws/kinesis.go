package aws

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// MaxKinesisRecordBytes is Kinesis's limit on data plus partition key of one record.
const MaxKinesisRecordBytes = 1 << 20

// MaxKinesisRequestBytes is Kinesis's limit on the data plus partition keys of a whole
// PutRecords request: past it the service rejects every record.
const MaxKinesisRequestBytes = 5 << 20

func kinesisStream(b []byte, ms []member) string {
	if s, ok := jsonString(b, find(ms, "StreamName")); ok && s != "" {
		return s
	}
	if arn, ok := jsonString(b, find(ms, "StreamARN")); ok {
		return arn[strings.LastIndexByte(arn, '/')+1:]
	}
	return ""
}

func (p *Proxy) kinesisJSON(c *call) ([]byte, respFixer, error) {
	switch c.op {
	case "PutRecord", "PutRecords", "GetShardIterator", "GetRecords":
	default:
		// Managing a stream (DescribeStream, ListShards...): its errors go on the stream's edge,
		// with no direction, as SQS's queue calls.
		if ms, _, err := objectMembers(c.body, 0); err == nil {
			c.edge = kinesisEdge("", kinesisStream(c.body, ms))
		}
		return nil, nil, nil
	}
	b := c.body
	ms, end, err := objectMembers(b, 0)
	if err != nil {
		return nil, nil, err
	}
	stream := kinesisStream(b, ms)
	e := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKinesis, Topic: stream}
	switch c.op {
	case "PutRecord":
		pt, ed := p.kinesisPut(c, e, b, ms, nil)
		fix := func([]byte) []byte { p.produced(c, pt); return nil }
		if ed == nil {
			return nil, fix, nil
		}
		return applyEdits(make([]byte, 0, len(b)+96), b, []edit{*ed}), fix, nil
	case "PutRecords":
		rm := find(ms, "Records")
		if rm == nil {
			return nil, nil, nil
		}
		els, err := arrayElems(b, rm.VS)
		if err != nil {
			return nil, nil, err
		}
		var eds []edit
		pts := make([]pathway.Point, len(els))
		recs := make([][]member, len(els))
		room := MaxKinesisRequestBytes
		for i, el := range els {
			if recs[i], _, err = objectMembers(b, el[0]); err != nil {
				return nil, nil, err
			}
			room -= putRecordBytes(b, recs[i])
		}
		for i, rms := range recs {
			var ed *edit
			pts[i], ed = p.kinesisPut(c, e, b, rms, &room)
			if ed != nil {
				eds = append(eds, *ed)
			}
		}
		fix := func(resp []byte) []byte {
			var out struct {
				Records []struct{ ErrorCode, ErrorMessage string }
			}
			if err := json.Unmarshal(resp, &out); err != nil {
				p.answerUndecoded(c, e, err) // which records were stored is unknown: no checkpoints
				return nil
			}
			for i, r := range out.Records {
				if i >= len(pts) {
					break
				}
				if r.ErrorCode != "" {
					p.reportFailedEntry(c, r.ErrorCode, "record "+strconv.Itoa(i)+": "+r.ErrorMessage, false, 1)
					continue
				}
				p.produced(c, pts[i])
			}
			return nil
		}
		if len(eds) == 0 {
			return nil, fix, nil
		}
		return applyEdits(make([]byte, 0, len(b)+96*len(eds)), b, eds), fix, nil
	case "GetShardIterator":
		c.edge = kinesisEdge(pathway.In, stream) // a consumer's call: a missing stream is told there
		return nil, func(resp []byte) []byte {
			rms, _, err := objectMembers(resp, 0)
			if err == nil {
				if it, ok := jsonString(resp, find(rms, "ShardIterator")); ok && stream != "" {
					p.iters.put(it, stream)
				}
			}
			return nil
		}, nil
	}
	// GetRecords
	if stream == "" {
		if it, ok := jsonString(b, find(ms, "ShardIterator")); ok {
			stream, _ = p.iters.get(it)
		}
	}
	_ = end
	e = pathway.Edge{Direction: pathway.In, Type: pathway.TypeKinesis, Topic: stream}
	c.edge = e
	return nil, func(resp []byte) []byte { return p.kinesisGetRecords(c, e, resp) }, nil
}

// kinesisEdge is the edge a Kinesis call's errors are reported on; none without a stream.
func kinesisEdge(d pathway.Direction, stream string) pathway.Edge {
	if stream == "" {
		return pathway.Edge{}
	}
	return pathway.Edge{Direction: d, Type: pathway.TypeKinesis, Topic: stream}
}

// putRecordBytes is what one put record counts against Kinesis's limits: its data (decoded)
// plus its partition key.
func putRecordBytes(b []byte, ms []member) int {
	raw, _ := jsonString(b, find(ms, "Data"))
	n := len(raw) / 4 * 3
	for i := len(raw) - 1; i >= len(raw)-2 && i >= 0 && raw[i] == '='; i-- {
		n--
	}
	pk, _ := jsonString(b, find(ms, "PartitionKey"))
	return n + len(pk)
}

// kinesisPut records one put record's checkpoint and, when enabled, returns the edit that puts
// `_datadog` into its JSON-object data. room, for PutRecords, is what the request may still grow
// by; the edit's growth is taken from it.
func (p *Proxy) kinesisPut(c *call, e pathway.Edge, b []byte, ms []member, room *int) (pathway.Point, *edit) {
	c.edge = e
	c.sent++
	dm := find(ms, "Data")
	raw, _ := jsonString(b, dm)
	data, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		data = nil
	}
	pk, _ := jsonString(b, find(ms, "PartitionKey"))
	dms, dend, isObj := jsonObjectMembers(data)
	parent, traced := p.kinesisPutParent(c, data, dms)
	if traced {
		return pathway.Point{}, nil
	}
	pt, ctx := p.cp.Checkpoint(parent, c.svcName, e, int64(len(data)+len(pk)), c.now)
	if !p.cfg.KinesisInjectData || dm == nil {
		return pt, nil
	}
	if !isObj {
		p.skip(c, e, "not_json", notJSONMessage)
		return pt, nil
	}
	var ed edit
	if d := find(dms, ddAttr); d != nil {
		if !isCarrier(data[d.VS:d.VE]) {
			// Replaced, it would also be taken for the proxy's and dropped on consume.
			p.skip(c, e, "datadog_not_carrier", notCarrierMessage)
			return pt, nil
		}
		ed = edit{S: d.VS, E: d.VE, New: carrierJSON(data[d.VS:d.VE], ctx)}
	} else {
		ed = appendMember(dms, dend, ddAttr, carrierJSON(nil, ctx))
	}
	nd := applyEdits(make([]byte, 0, len(data)+64), data, []edit{ed})
	if len(nd)+len(pk) > MaxKinesisRecordBytes {
		p.skip(c, e, "size_limit", "record with _datadog would exceed 1 MiB; sent without it")
		return pt, nil
	}
	if room != nil {
		grow := len(nd) - len(data)
		if grow > *room {
			p.skip(c, e, "size_limit", "PutRecords request with _datadog would exceed 5 MiB; record sent without it")
			return pt, nil
		}
		*room -= grow
	}
	p.stats.injected.Add(1)
	nv := make([]byte, 0, base64.StdEncoding.EncodedLen(len(nd))+2)
	nv = append(nv, '"')
	nv = base64.StdEncoding.AppendEncode(nv, nd)
	nv = append(nv, '"')
	return pt, &edit{S: dm.VS, E: dm.VE, New: nv}
}

// jsonObjectMembers returns the members of record data that is one JSON object (with
// whitespace around it), the only data `_datadog` goes into; ok false for any other data.
func jsonObjectMembers(data []byte) (ms []member, end int, ok bool) {
	t := bytes.TrimSpace(data)
	if len(t) < 2 || t[0] != '{' || t[len(t)-1] != '}' || !json.Valid(t) {
		return nil, 0, false
	}
	ms, end, err := objectMembers(data, 0)
	return ms, end, err == nil
}

// kinesisPutParent is the parent of a put record's produce checkpoint: the context in the
// `_datadog` of its JSON-object data (dms, nil for other data). traced means that context is a
// tracer's, which checkpointed the record: it gets no checkpoint of the proxy's (counted). A
// context some front handed a consumer is no tracer's: the client sends the message on (a relay
// from SQS, say), and its consume of it is the parent.
func (p *Proxy) kinesisPutParent(c *call, data []byte, dms []member) (parent pathway.Context, traced bool) {
	d := find(dms, ddAttr)
	if d == nil {
		return pathway.Context{}, false
	}
	parent = contextFromCarrier(data[d.VS:d.VE])
	if cc, ok := p.handed.Parent(parent, c.svcName); ok {
		return cc, false
	}
	if p.respect && carrierHasPathway(data[d.VS:d.VE]) {
		p.stats.existing.Add(1)
		return pathway.Context{}, true
	}
	return parent, false
}

// kinesisGetRecords checkpoints each record, remembers the next iterator's stream and removes
// the `_datadog` a proxy added, so consumers see the bytes the producer sent.
func (p *Proxy) kinesisGetRecords(c *call, e pathway.Edge, resp []byte) []byte {
	rms, _, err := objectMembers(resp, 0)
	if err != nil {
		p.answerUndecoded(c, e, err)
		return nil
	}
	if it, ok := jsonString(resp, find(rms, "NextShardIterator")); ok && e.Topic != "" {
		p.iters.put(it, e.Topic)
	}
	recs, err := arrayObjects(resp, rms, "Records")
	if err != nil {
		p.answerUndecoded(c, e, err)
		return nil
	}
	var eds []edit
	for _, rec := range recs {
		ems := rec.ms
		dm := find(ems, "Data")
		raw, _ := jsonString(resp, dm)
		data, _ := base64.StdEncoding.DecodeString(raw)
		pk, _ := jsonString(resp, find(ems, "PartitionKey"))
		nd := p.kinesisConsume(c, e, data, pk, arrival(resp, find(ems, "ApproximateArrivalTimestamp")))
		if nd != nil && dm != nil {
			nv := append([]byte{'"'}, base64.StdEncoding.AppendEncode(nil, nd)...)
			eds = append(eds, edit{S: dm.VS, E: dm.VE, New: append(nv, '"')})
		}
	}
	p.reportNoStream(c, e)
	if len(eds) == 0 {
		return nil
	}
	return applyEdits(make([]byte, 0, len(resp)), resp, eds)
}

// kinesisConsume records one received record's checkpoint and returns the data without the
// `_datadog` a proxy added (nil when there was none to remove). Whether this front injects does
// not matter: the record may have come through another one (a producer's sidecar) that does.
func (p *Proxy) kinesisConsume(c *call, e pathway.Edge, data []byte, pk string, at time.Time) []byte {
	if c.traced {
		// Its tracer checkpoints what it consumes, with the context it reads from `_datadog`:
		// left in the data, as a traced producer's is.
		return nil
	}
	var parent pathway.Context
	var out []byte
	if t := bytes.TrimSpace(data); len(t) > 1 && t[0] == '{' && bytes.Contains(t, []byte(ddAttr)) {
		if dms, _, err := objectMembers(data, 0); err == nil {
			for i := range dms {
				if !dms[i].is(ddAttr) {
					continue
				}
				parent = contextFromCarrier(data[dms[i].VS:dms[i].VE])
				// Only the shape the proxy adds to data that had none: a `_datadog` with more in it
				// came from the producer (trace ids of a tracer), and its consumer's tracer reads it.
				if cms, _, err := objectMembers(data, dms[i].VS); err == nil && len(cms) == 1 && cms[0].is(pathway.HeaderKey) {
					out = applyEdits(make([]byte, 0, len(data)), data, []edit{removeLastAdded(data, dms, i)})
				}
			}
		}
	}
	if e.Topic == "" {
		// A shard iterator the proxy did not hand out (it restarted, or another instance did):
		// no stream to name, and a checkpoint without one is a node no tracer makes (dd-trace-py
		// records nothing then either). Counted, and reported once per answer.
		c.noStream++
		return out
	}
	seen := data
	if out != nil {
		seen = out // the consumer gets the data without the proxy's `_datadog`, as its produce size was
	}
	pt, ctx := p.cp.Checkpoint(parent, c.svcName, e, int64(len(seen)+len(pk)), c.now)
	if out == nil {
		// The `_datadog` reaches the consumer (a tracer's): one that sends it on is a relay, whose
		// put's parent is this consume, as for SQS.
		p.handed.Put(parent, c.svcName, ctx)
	}
	// With a context, its own starts are the producer's checkpoint times, which are exact: kept,
	// although dd-trace-py replaces both with the arrival time even then (dsm-protocol.md 3.5).
	if parent.IsZero() && !at.IsZero() {
		// no context: time in the stream stands in for both latencies, as the tracers do
		l := max(0, int64(c.now.Sub(at)))
		pt.PathwayLatency, pt.EdgeLatency = l, l
	}
	p.stats.consumed.Add(1)
	p.add(pt)
	return out
}

// reportNoStream reports the records of a GetRecords answer that got no consume checkpoint for
// want of a stream name.
func (p *Proxy) reportNoStream(c *call, e pathway.Edge) {
	if c.noStream == 0 {
		return
	}
	p.stats.skipped.Add(uint64(c.noStream))
	p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.ProxySkip, Protocol: c.service, Operation: c.op,
		Name: "unknown_stream", Service: c.svcName, Edge: e, Partition: -1, Messages: c.noStream,
		Message: "GetRecords with a shard iterator this proxy did not hand out (it restarted, or another instance did): no consume checkpoints until the consumer gets a new iterator through it"})
	c.noStream = 0
}

// removeLastAdded deletes member i including the comma before it, the exact inverse of
// appendMember, so the data goes back to the producer's bytes.
func removeLastAdded(b []byte, ms []member, i int) edit {
	if i == 0 {
		return removeMember(b, ms, i)
	}
	s := ms[i].MS - 1
	for s > 0 && b[s] != ',' {
		s--
	}
	return edit{S: s, E: ms[i].VE}
}

// arrival decodes ApproximateArrivalTimestamp (epoch seconds with a fraction in JSON 1.1).
func arrival(b []byte, m *member) time.Time {
	if m == nil {
		return time.Time{}
	}
	f, err := strconv.ParseFloat(string(b[m.VS:m.VE]), 64)
	if err != nil {
		return time.Time{}
	}
	return epoch(f)
}

// epoch converts epoch seconds, or milliseconds (CBOR clients use those), to a time.
func epoch(f float64) time.Time {
	if f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) || f > 1e15 {
		return time.Time{}
	}
	if f > 1e11 { // later than year 5138 in seconds: milliseconds
		f /= 1000
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// kinesisCBOR reads a CBOR request (Java SDKs' default) for checkpoints. Requests go upstream
// unchanged, so no `_datadog` is injected into CBOR records; a GetRecords answer loses the
// `_datadog` the proxy added to JSON producers' records, as a JSON one does.
func (p *Proxy) kinesisCBOR(c *call) ([]byte, respFixer, error) {
	managing := false
	switch c.op {
	case "PutRecord", "PutRecords", "GetShardIterator", "GetRecords":
	default:
		managing = true
	}
	v, err := cborDecode(c.body)
	if err != nil {
		if managing {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	req, ok := v.(map[string]any)
	if !ok {
		if managing {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("%w: request is a %T, not a map", errCBOR, v)
	}
	str := func(m map[string]any, k string) string { s, _ := m[k].(string); return s }
	stream := str(req, "StreamName")
	if stream == "" {
		if arn := str(req, "StreamARN"); arn != "" {
			stream = arn[strings.LastIndexByte(arn, '/')+1:]
		}
	}
	if managing {
		c.edge = kinesisEdge("", stream) // as kinesisJSON: the stream's edge, no direction
		return nil, nil, nil
	}
	decodeResp := func(resp []byte) map[string]any {
		v, err := cborDecode(resp)
		if err != nil {
			p.answerUndecoded(c, c.edge, err)
			return nil
		}
		m, _ := v.(map[string]any)
		return m
	}
	out := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKinesis, Topic: stream}
	put := func(r map[string]any) pathway.Point {
		c.edge = out
		c.sent++
		data := cborBytes(r["Data"])
		dms, _, obj := jsonObjectMembers(data)
		parent, traced := p.kinesisPutParent(c, data, dms) // as a JSON client's record
		if traced {
			return pathway.Point{}
		}
		pt, _ := p.cp.Checkpoint(parent, c.svcName, out, int64(len(data)+len(str(r, "PartitionKey"))), c.now)
		if p.cfg.KinesisInjectData {
			// Counted as the JSON path counts the records it cannot give `_datadog`.
			if obj {
				p.skip(c, out, "cbor", "record put in CBOR (the Java SDKs' default), which the proxy does not rewrite; sent without _datadog")
			} else {
				p.skip(c, out, "not_json", notJSONMessage)
			}
		}
		return pt
	}
	switch c.op {
	case "PutRecord":
		pt := put(req)
		return nil, func([]byte) []byte { p.produced(c, pt); return nil }, nil
	case "PutRecords":
		recs, _ := req["Records"].([]any)
		pts := make([]pathway.Point, 0, len(recs))
		for _, r := range recs {
			if m, ok := r.(map[string]any); ok {
				pts = append(pts, put(m))
			}
		}
		return nil, func(resp []byte) []byte {
			rm := decodeResp(resp)
			res, _ := rm["Records"].([]any)
			for i, r := range res {
				m, _ := r.(map[string]any)
				if i >= len(pts) || m == nil {
					break
				}
				if code := str(m, "ErrorCode"); code != "" {
					p.reportFailedEntry(c, code, "record "+strconv.Itoa(i)+": "+str(m, "ErrorMessage"), false, 1)
					continue
				}
				p.produced(c, pts[i])
			}
			return nil
		}, nil
	case "GetShardIterator":
		c.edge = kinesisEdge(pathway.In, stream)
		return nil, func(resp []byte) []byte {
			if it := str(decodeResp(resp), "ShardIterator"); it != "" && stream != "" {
				p.iters.put(it, stream)
			}
			return nil
		}, nil
	}
	if stream == "" {
		stream, _ = p.iters.get(str(req, "ShardIterator"))
	}
	in := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKinesis, Topic: stream}
	c.edge = in
	return nil, func(resp []byte) []byte {
		rm := decodeResp(resp)
		if it := str(rm, "NextShardIterator"); it != "" && stream != "" {
			p.iters.put(it, stream)
		}
		recs, _ := rm["Records"].([]any)
		var eds []edit
		var spans [][2]int // where each record's Data lies, found when the first is edited
		walked := false
		for i, r := range recs {
			m, _ := r.(map[string]any)
			if m == nil {
				continue
			}
			data := cborBytes(m["Data"])
			f, _ := cborNumber(m["ApproximateArrivalTimestamp"])
			nd := p.kinesisConsume(c, in, data, str(m, "PartitionKey"), epoch(f))
			if nd == nil {
				continue
			}
			if !walked { // once: an answer the walk cannot read is not walked again per record
				spans, _ = cborRecordData(resp)
				walked = true
			}
			if i >= len(spans) {
				continue
			}
			if ed, ok := cborBlobEdit(resp, spans[i], m["Data"], nd); ok {
				eds = append(eds, ed)
			}
		}
		p.reportNoStream(c, in)
		if len(eds) == 0 {
			return nil
		}
		return applyEdits(make([]byte, 0, len(resp)), resp, eds)
	}, nil
}

// cborBlobEdit replaces the blob item v of a CBOR document, which lies at span (its tags
// included, and kept), with data, in the form it came in: a byte string, or base64 text
// (kinesis-mock). The span is the decoder's: the same bytes elsewhere in the document, in an
// earlier record's Data say, are never taken for it.
func cborBlobEdit(doc []byte, span [2]int, v any, data []byte) (edit, bool) {
	d := &cborDec{b: doc[:span[1]], i: span[0]}
	if span[1] <= span[0] || d.skipTags() != nil {
		return edit{}, false
	}
	var repl []byte
	switch v.(type) {
	case []byte:
		repl = append(appendCBORHead(nil, 2, len(data)), data...)
	case string:
		enc := base64.StdEncoding.AppendEncode(nil, data)
		repl = append(appendCBORHead(nil, 3, len(enc)), enc...)
	default:
		return edit{}, false
	}
	return edit{S: d.i, E: span[1], New: repl}, true
}

// appendCBORText appends s as a definite-length CBOR text string.
func appendCBORText(dst []byte, s string) []byte {
	return append(appendCBORHead(dst, 3, len(s)), s...)
}

// appendCBORHead appends the shortest head of a major type with argument n.
func appendCBORHead(dst []byte, major byte, length int) []byte {
	m, n := major<<5, uint64(length) // uint64: MaxUint32 does not fit a 32-bit int
	switch {
	case n < 24:
		return append(dst, m|byte(n))
	case n <= math.MaxUint8:
		return append(dst, m|24, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, m|25), uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, m|26), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(dst, m|27), n)
}

// cborBytes is a blob member: a byte string, or base64 text (kinesis-mock answers that way).
func cborBytes(v any) []byte {
	switch b := v.(type) {
	case []byte:
		return b
	case string:
		d, err := base64.StdEncoding.DecodeString(b)
		if err == nil {
			return d
		}
	}
	return nil
}
