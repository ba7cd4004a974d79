package aws

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// outMsg is one message being sent (SendMessage, a batch entry, Publish ...), as the rewriters
// track it from request to response.
type outMsg struct {
	ID       string // batch entry id; "" for single sends
	OrigMD5  string // MD5OfMessageAttributes over the client's own attributes ("" = none)
	Point    pathway.Point
	Injected bool
}

// snsSizeMargin is kept free under the size limit for SNS: its own count of a message's size is
// not documented to the byte, and a Publish it refuses fails the client's call, where an SQS send
// refused as too large is sent again without `_datadog`. dd-trace-go keeps the same 256 bytes.
const snsSizeMargin = 256

// prepareOut computes a sent message's checkpoint and the carrier to inject; carrier is nil when
// the message must go unmodified (attribute count or size, or a tracer's context, which also
// leaves pt zero: no checkpoint). dd is the message's own `_datadog`.
func (p *Proxy) prepareOut(c *call, e pathway.Edge, bodyLen int, attrs []attr, ddType string) (pt pathway.Point, carrier []byte, dd *attr) {
	c.edge = e
	c.sent++
	size := bodyLen
	for i := range attrs {
		size += attrSize(&attrs[i])
		if attrs[i].Name == ddAttr {
			dd = &attrs[i]
		}
	}
	var existing []byte
	if dd != nil {
		if dd.String != nil {
			existing = []byte(*dd.String)
		} else {
			existing = dd.Binary
		}
	}
	parent := contextFromCarrier(existing)
	if cc, ok := p.handed.Parent(parent, c.svcName); ok {
		// A context a consumer was handed, sent on: its next hop.
		parent = cc
	} else if p.respect && carrierHasPathway(existing) {
		p.stats.existing.Add(1)
		return pathway.Point{}, nil, dd
	}
	pt, ctx := p.cp.Checkpoint(parent, c.svcName, e, int64(size), c.now)
	if dd != nil && !isCarrier(existing) {
		p.skip(c, e, "datadog_not_carrier", notCarrierMessage)
		return pt, nil, dd
	}
	carrier = carrierJSON(existing, ctx)
	if dd == nil && len(attrs) >= MaxAttributes {
		msg := "message already has 10 attributes; sent without _datadog"
		switch {
		case len(attrs) > MaxAttributes && c.service == ServiceSNS:
			// SNS takes it, and drops the attributes for raw deliveries to SQS queues.
			msg = "message has " + strconv.Itoa(len(attrs)) + " attributes, over the 10 an SQS subscriber takes; sent without _datadog"
		case len(attrs) > MaxAttributes:
			// SQS refuses it whatever the proxy does: say so rather than "10".
			msg = "message has " + strconv.Itoa(len(attrs)) + " attributes, over the 10 SQS allows; sent as it is, for the service to refuse"
		}
		p.skip(c, e, "attribute_limit", msg)
		return pt, nil, dd
	}
	extra := len(carrier) + len(ddAttr) + len(ddType)
	if ddType == "Binary" {
		extra = base64.StdEncoding.EncodedLen(len(carrier)) + len(ddAttr) + len(ddType)
	}
	if dd != nil {
		extra -= attrSize(dd)
	}
	limit := p.cfg.MaxMessageBytes
	if c.service == ServiceSNS {
		limit -= snsSizeMargin
	}
	if size+extra > limit {
		p.skip(c, e, "size_limit", "message with _datadog would exceed the size limit; sent without it")
		return pt, nil, dd
	}
	if c.noInject {
		// The queue refused it with `_datadog`: whatever the proxy's count of its size says.
		p.skip(c, e, "queue_size_limit", "message with _datadog was refused as over its queue's own size limit; sent again without it")
		return pt, nil, dd
	}
	if n := p.sizes.learned(c, e); n > 0 && size+extra > n {
		p.skip(c, e, "queue_size_limit", "message with _datadog would exceed its queue's own size limit of "+strconv.Itoa(n)+" bytes; sent without it")
		return pt, nil, dd
	}
	if c.batchTotal > 0 && c.batchTotal+c.batchAdded+extra > limit {
		p.skip(c, e, "batch_size_limit", "batch with _datadog would exceed the size limit; entry sent without it")
		return pt, nil, dd
	}
	c.batchAdded += extra
	c.injected++
	return pt, carrier, dd
}

// jsonAttrJSON is the `_datadog` attribute value in the JSON protocols.
func jsonAttrJSON(carrier []byte, binary bool) []byte {
	if binary {
		b := []byte(`{"DataType":"Binary","BinaryValue":"`)
		b = base64.StdEncoding.AppendEncode(b, carrier)
		return append(b, `"}`...)
	}
	b := []byte(`{"DataType":"String","StringValue":`)
	b = appendJSONString(b, string(carrier))
	return append(b, '}')
}

// jsonInjectEdits returns the edits that put carrier into the message object whose members are ms
// (closing brace at end); attrsKey is the member holding attributes.
func jsonInjectEdits(b []byte, ms []member, end int, attrsKey string, carrier []byte, binary bool) ([]edit, error) {
	val := jsonAttrJSON(carrier, binary)
	am := find(ms, attrsKey)
	if am == nil {
		return []edit{appendMember(ms, end, attrsKey, append(append([]byte(`{"`+ddAttr+`":`), val...), '}'))}, nil
	}
	if b[am.VS] == 'n' { // null
		return []edit{{S: am.VS, E: am.VE, New: append(append([]byte(`{"`+ddAttr+`":`), val...), '}')}}, nil
	}
	ams, aend, err := objectMembers(b, am.VS)
	if err != nil {
		return nil, err
	}
	if d := find(ams, ddAttr); d != nil {
		return []edit{{S: d.VS, E: d.VE, New: val}}, nil
	}
	return []edit{appendMember(ams, aend, ddAttr, val)}, nil
}

// jsonMessageAttrs decodes the attributes member of a message object (nil when absent).
func jsonMessageAttrs(b []byte, ms []member, key string) ([]attr, error) {
	am := find(ms, key)
	if am == nil || b[am.VS] == 'n' {
		return nil, nil
	}
	return parseJSONAttrs(b[am.VS:am.VE])
}

// fixSendMD5 returns the edits that make a send result's MD5OfMessageAttributes what the client
// computes from its own request.
func fixSendMD5(b []byte, ms []member, end int, orig string) []edit {
	for i := range ms {
		if !ms[i].is("MD5OfMessageAttributes") {
			continue
		}
		if orig == "" {
			return []edit{removeMember(b, ms, i)}
		}
		return []edit{{S: ms[i].VS, E: ms[i].VE, New: appendJSONString(nil, orig)}}
	}
	if orig != "" {
		return []edit{appendMember(ms, end, "MD5OfMessageAttributes", appendJSONString(nil, orig))}
	}
	return nil
}

// queueURLEdit maps a QueueUrl member of a request back to the upstream URL.
func (p *Proxy) queueURLEdit(c *call, b []byte, ms []member) (string, []edit) {
	m := find(ms, "QueueUrl")
	s, ok := jsonString(b, m)
	if !ok {
		return queueFromPath(c), nil
	}
	up, changed := p.toUpstreamURL(c, s)
	if !changed {
		return queueName(s), nil
	}
	return queueName(up), []edit{{S: m.VS, E: m.VE, New: appendJSONString(nil, up)}}
}

// sqsEdge is the edge a request's errors are reported on: its queue, `direction:out` for sends,
// `direction:in` for what consumers do (receive, then delete or change visibility, as Kafka's
// commits are), no direction for managing the queue (as AMQP's Queue.* methods).
func sqsEdge(op, queue string) pathway.Edge {
	if queue == "" {
		return pathway.Edge{}
	}
	e := pathway.Edge{Type: pathway.TypeSQS, Topic: queue}
	switch op {
	case "SendMessage", "SendMessageBatch":
		e.Direction = pathway.Out
	case "ReceiveMessage", "DeleteMessage", "DeleteMessageBatch", "ChangeMessageVisibility", "ChangeMessageVisibilityBatch":
		e.Direction = pathway.In
	}
	return e
}

func queueFromPath(c *call) string {
	if path := strings.Trim(c.r.URL.Path, "/"); strings.Contains(path, "/") {
		return queueName(path)
	}
	return ""
}

func (p *Proxy) sqsJSON(c *call) ([]byte, respFixer, error) {
	b := c.body
	ms, end, err := objectMembers(b, 0)
	if err != nil {
		return nil, nil, err
	}
	queue, eds := p.queueURLEdit(c, b, ms)
	if queue == "" {
		queue, _ = jsonString(b, find(ms, "QueueName")) // GetQueueUrl, CreateQueue
	}
	c.edge = sqsEdge(c.op, queue)
	var fix respFixer
	switch c.op {
	case "SendMessage":
		var more []edit
		more, fix, err = p.sqsJSONSend(c, b, ms, end, queue)
		eds = append(eds, more...)
	case "SendMessageBatch":
		var more []edit
		more, fix, err = p.sqsJSONSendBatch(c, b, ms, queue)
		eds = append(eds, more...)
	case "ReceiveMessage":
		var more []edit
		more, fix, err = p.sqsJSONReceive(c, b, ms, end, queue)
		eds = append(eds, more...)
	case "GetQueueUrl", "CreateQueue", "ListQueues", "ListDeadLetterSourceQueues":
		fix = func(resp []byte) []byte { return p.jsonQueueURLs(c, resp) }
	case "DeleteMessageBatch", "ChangeMessageVisibilityBatch":
		fix = func(resp []byte) []byte {
			if rms, _, err := objectMembers(resp, 0); err == nil {
				for _, f := range jsonFailedEntries(resp, rms, "Failed") {
					p.reportEntryError(c, f.Code, "entry "+f.ID+": "+f.Message, f.SenderFault)
				}
			}
			return nil
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if len(eds) == 0 {
		return nil, fix, nil
	}
	return applyEdits(make([]byte, 0, len(b)+128), b, eds), fix, nil
}

func (p *Proxy) sqsJSONSend(c *call, b []byte, ms []member, end int, queue string) ([]edit, respFixer, error) {
	attrs, err := jsonMessageAttrs(b, ms, "MessageAttributes")
	if err != nil {
		return nil, nil, err
	}
	bodyLen := jsonStringLen(b, find(ms, "MessageBody"))
	e := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: queue}
	pt, carrier, _ := p.prepareOut(c, e, bodyLen, attrs, "String")
	msg := outMsg{OrigMD5: attributesMD5(attrs), Point: pt}
	var eds []edit
	if carrier != nil {
		if eds, err = jsonInjectEdits(b, ms, end, "MessageAttributes", carrier, false); err != nil {
			return nil, nil, err
		}
		msg.Injected = true
		p.stats.injected.Add(1)
	}
	fix := func(resp []byte) []byte {
		p.produced(c, msg.Point)
		if !msg.Injected {
			return nil
		}
		rms, rend, err := objectMembers(resp, 0)
		if err != nil {
			p.answerUndecoded(c, e, err) // its MD5OfMessageAttributes is the injected attribute's
			return nil
		}
		return applyEdits(nil, resp, fixSendMD5(resp, rms, rend, msg.OrigMD5))
	}
	return eds, fix, nil
}

// produced records a sent message's checkpoint once the service accepted it; a zero pt (a
// tracer's message, left alone) records nothing.
func (p *Proxy) produced(c *call, pt pathway.Point) {
	if pt.Hash == 0 {
		return
	}
	p.stats.produced.Add(1)
	p.add(pt)
}

func (p *Proxy) sqsJSONSendBatch(c *call, b []byte, ms []member, queue string) ([]edit, respFixer, error) {
	em := find(ms, "Entries")
	if em == nil {
		return nil, nil, nil
	}
	elems, err := arrayElems(b, em.VS)
	if err != nil {
		return nil, nil, err
	}
	e := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: queue}
	msgs := map[string]*outMsg{}
	var eds []edit
	ents, err := jsonEntries(c, b, elems, "MessageBody")
	if err != nil {
		return nil, nil, err
	}
	for _, en := range ents {
		ems, eend, attrs, id, body := en.ms, en.end, en.attrs, en.id, en.body
		pt, carrier, _ := p.prepareOut(c, e, len(body), attrs, "String")
		m := &outMsg{ID: id, OrigMD5: attributesMD5(attrs), Point: pt}
		if carrier != nil {
			more, err := jsonInjectEdits(b, ems, eend, "MessageAttributes", carrier, false)
			if err != nil {
				return nil, nil, err
			}
			eds = append(eds, more...)
			m.Injected = true
			p.stats.injected.Add(1)
		}
		msgs[id] = m
	}
	c.out = msgs
	fix := func(resp []byte) []byte {
		rms, _, err := objectMembers(resp, 0)
		if err != nil {
			p.answerUndecoded(c, e, err) // which entries were stored is unknown: no checkpoints
			return nil
		}
		var reds []edit
		ok, err := arrayObjects(resp, rms, "Successful")
		if err != nil {
			p.answerUndecoded(c, e, err)
			return nil
		}
		for _, o := range ok {
			id, _ := jsonString(resp, find(o.ms, "Id"))
			m := msgs[id]
			if m == nil {
				continue
			}
			p.produced(c, m.Point)
			if m.Injected {
				reds = append(reds, fixSendMD5(resp, o.ms, o.End, m.OrigMD5)...)
			}
		}
		p.jsonBatchFailures(c, resp, rms, "Failed")
		if len(reds) == 0 {
			return nil
		}
		return applyEdits(make([]byte, 0, len(resp)), resp, reds)
	}
	return eds, fix, nil
}

// jsonEntry is one decoded batch entry.
type jsonEntry struct {
	ms       []member
	end      int
	attrs    []attr
	id, body string
}

// jsonEntries decodes batch entries and sets the batch's total payload on c.
func jsonEntries(c *call, b []byte, elems [][2]int, bodyKey string) ([]jsonEntry, error) {
	out := make([]jsonEntry, 0, len(elems))
	total := 0
	for _, el := range elems {
		ems, eend, err := objectMembers(b, el[0])
		if err != nil {
			return nil, err
		}
		attrs, err := jsonMessageAttrs(b, ems, "MessageAttributes")
		if err != nil {
			return nil, err
		}
		id, _ := jsonString(b, find(ems, "Id"))
		body, _ := jsonString(b, find(ems, bodyKey))
		subj, _ := jsonString(b, find(ems, "Subject")) // SQS entries have none
		total += snsBodySize(body, subj)
		for i := range attrs {
			total += attrSize(&attrs[i])
		}
		out = append(out, jsonEntry{ems, eend, attrs, id, body})
	}
	c.batchTotal = max(total, 1)
	return out, nil
}

// jsonBatchFailures reports each entry of a batch response's Failed list.
func (p *Proxy) jsonBatchFailures(c *call, resp []byte, rms []member, key string) {
	for _, f := range jsonFailedEntries(resp, rms, key) {
		if !c.resent[f.ID] {
			p.reportFailedEntry(c, f.Code, "entry "+f.ID+": "+f.Message, f.SenderFault, 1)
		}
	}
}

// failedEntry is one entry of a batch answer's failures.
type failedEntry struct {
	ID          string `json:"Id"`
	Code        string `json:"Code"`
	Message     string `json:"Message"`
	SenderFault bool   `json:"SenderFault"`
}

// jsonFailedEntries decodes the failures list under key of a JSON batch answer.
func jsonFailedEntries(resp []byte, rms []member, key string) []failedEntry {
	fm := find(rms, key)
	if fm == nil || resp[fm.VS] != '[' {
		return nil
	}
	var failed []failedEntry
	if json.Unmarshal(resp[fm.VS:fm.VE], &failed) != nil {
		return nil
	}
	return failed
}

func (p *Proxy) sqsJSONReceive(c *call, b []byte, ms []member, end int, queue string) ([]edit, respFixer, error) {
	var names []string
	var eds []edit
	nm := find(ms, "MessageAttributeNames")
	if nm != nil && b[nm.VS] == '[' {
		if err := json.Unmarshal(b[nm.VS:nm.VE], &names); err != nil {
			return nil, nil, err
		}
	}
	strip := !wantsAttr(names, ddAttr)
	if strip {
		switch {
		case nm == nil:
			eds = append(eds, appendMember(ms, end, "MessageAttributeNames", []byte(`["`+ddAttr+`"]`)))
		case b[nm.VS] != '[':
			eds = append(eds, edit{S: nm.VS, E: nm.VE, New: []byte(`["` + ddAttr + `"]`)})
		case len(names) == 0:
			eds = append(eds, edit{S: nm.VE - 1, E: nm.VE - 1, New: []byte(`"` + ddAttr + `"`)})
		default:
			eds = append(eds, edit{S: nm.VE - 1, E: nm.VE - 1, New: []byte(`,"` + ddAttr + `"`)})
		}
	}
	e := pathway.Edge{Direction: pathway.In, Type: pathway.TypeSQS, Topic: queue}
	c.edge = e
	fix := func(resp []byte) []byte {
		rms, _, err := objectMembers(resp, 0)
		if err != nil {
			p.answerUndecoded(c, e, err)
			return nil
		}
		msgs, err := arrayObjects(resp, rms, "Messages")
		if err != nil {
			p.answerUndecoded(c, e, err)
			return nil
		}
		var reds []edit
		for _, m := range msgs {
			ems, eend := m.ms, m.End
			attrs, err := jsonMessageAttrs(resp, ems, "MessageAttributes")
			if err != nil {
				p.answerUndecoded(c, e, err)
				continue
			}
			body, _ := jsonString(resp, find(ems, "Body"))
			p.consumeSQS(c, e, body, attrs, !strip)
			if strip {
				if ed, ok := jsonStripDD(resp, ems, m.Start, eend, attrs); ok {
					reds = append(reds, ed)
				}
			}
		}
		if len(reds) == 0 {
			return nil
		}
		return applyEdits(make([]byte, 0, len(resp)), resp, reds)
	}
	return eds, fix, nil
}

// consumeSQS records the consume checkpoint of one received message; handed: its `_datadog` goes
// to the client.
func (p *Proxy) consumeSQS(c *call, e pathway.Edge, body string, attrs []attr, handed bool) {
	if c.traced {
		return // its tracer checkpoints what it consumes
	}
	var dd *attr
	size := len(body)
	for i := range attrs {
		if attrs[i].Name == ddAttr {
			dd = &attrs[i]
		}
		size += attrSize(&attrs[i])
	}
	parent := contextFromAttr(dd)
	fromAttr := !parent.IsZero()
	if !fromAttr {
		parent = contextFromSNSEnvelope(body)
	}
	pt, ctx := p.cp.Checkpoint(parent, c.svcName, e, int64(size), c.now)
	if handed && fromAttr {
		p.handed.Put(parent, c.svcName, ctx)
	}
	p.stats.consumed.Add(1)
	p.add(pt)
}

// jsonStripDD removes `_datadog` from a received message object (at b[start:end+1]) and
// recomputes MD5OfMessageAttributes over what remains.
func jsonStripDD(b []byte, ms []member, start, end int, attrs []attr) (edit, bool) {
	rest := make([]attr, 0, len(attrs))
	found := false
	for _, a := range attrs {
		if a.Name == ddAttr {
			found = true
			continue
		}
		rest = append(rest, a)
	}
	if !found {
		return edit{}, false
	}
	repl := map[string][]byte{}
	if len(rest) == 0 {
		repl["MessageAttributes"] = nil
		repl["MD5OfMessageAttributes"] = nil
	} else {
		am := find(ms, "MessageAttributes")
		ams, aend, err := objectMembers(b, am.VS)
		if err != nil {
			return edit{}, false
		}
		repl["MessageAttributes"] = patchObject(b, ams, am.VS, aend, map[string][]byte{ddAttr: nil})
		repl["MD5OfMessageAttributes"] = appendJSONString(nil, attributesMD5(rest))
	}
	start = skipWS(b, start)
	return edit{S: start, E: end + 1, New: patchObject(b, ms, start, end, repl)}, true
}

// patchObject rebuilds the object at b[open:end+1]: members in repl get the new value (nil
// deletes), members in repl that are absent are appended (in sorted order), all others are copied
// byte for byte.
func patchObject(b []byte, ms []member, open, end int, repl map[string][]byte) []byte {
	out := make([]byte, 0, end-open+64)
	out = append(out, '{')
	n := 0
	seen := map[string]bool{}
	for _, m := range ms {
		r, ok := repl[string(m.Key)]
		seen[string(m.Key)] = true
		if ok && r == nil {
			continue
		}
		if n > 0 {
			out = append(out, ',')
		}
		n++
		if ok {
			out = append(out, b[m.MS:m.VS]...)
			out = append(out, r...)
		} else {
			out = append(out, b[m.MS:m.VE]...)
		}
	}
	keys := make([]string, 0, len(repl))
	for k, v := range repl {
		if !seen[k] && v != nil {
			keys = append(keys, k)
		}
	}
	sortStrings(keys)
	for _, k := range keys {
		if n > 0 {
			out = append(out, ',')
		}
		n++
		out = appendJSONString(out, k)
		out = append(out, ':')
		out = append(out, repl[k]...)
	}
	return append(out, '}')
}

// jsonQueueURLs rewrites queue URLs in GetQueueUrl, CreateQueue, ListQueues and
// ListDeadLetterSourceQueues results to point at the proxy.
func (p *Proxy) jsonQueueURLs(c *call, resp []byte) []byte {
	rms, _, err := objectMembers(resp, 0)
	if err != nil {
		return nil
	}
	var eds []edit
	for _, m := range rms {
		switch string(m.Key) {
		case "QueueUrl":
			if s, ok := jsonString(resp, &m); ok {
				eds = append(eds, edit{S: m.VS, E: m.VE, New: appendJSONString(nil, p.toProxyURL(c, s))})
			}
		case "QueueUrls", "queueUrls":
			if resp[m.VS] != '[' {
				continue
			}
			els, err := arrayElems(resp, m.VS)
			if err != nil {
				return nil
			}
			for _, el := range els {
				mm := member{VS: el[0], VE: el[1]}
				if s, ok := jsonString(resp, &mm); ok {
					eds = append(eds, edit{S: el[0], E: el[1], New: appendJSONString(nil, p.toProxyURL(c, s))})
				}
			}
		}
	}
	if len(eds) == 0 {
		return nil
	}
	return applyEdits(make([]byte, 0, len(resp)+64), resp, eds)
}

// proxyBase is scheme://host of the proxy as this client reached it.
func proxyBase(c *call) string {
	if c.r.TLS != nil {
		return "https://" + c.r.Host
	}
	return "http://" + c.r.Host
}

// toProxyURL rewrites an upstream queue URL to the proxy's host and remembers the original.
func (p *Proxy) toProxyURL(c *call, s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || c.r.Host == "" {
		return s
	}
	out := proxyBase(c) + u.EscapedPath()
	if u.RawQuery != "" {
		out += "?" + u.RawQuery
	}
	if out != s && len(c.r.Host) <= maxRememberedHost {
		p.qurls.put(out, s)
	}
	return out
}

// maxRememberedHost: URLs handed out under a longer Host (no DNS name is) are not remembered, so
// 10,000 of them cannot hold a megabyte-long Host each; toUpstreamURL maps them back by host.
const maxRememberedHost = 300

// toUpstreamURL maps a queue URL that points at the proxy back to the upstream one.
func (p *Proxy) toUpstreamURL(c *call, s string) (string, bool) {
	if v, ok := p.qurls.get(s); ok {
		return v, true
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Host, c.r.Host) {
		return s, false
	}
	base := p.up[c.service]
	if base == nil {
		return s, false
	}
	u.Scheme, u.Host = base.Scheme, base.Host
	return u.String(), true
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
