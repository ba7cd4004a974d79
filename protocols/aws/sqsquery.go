package aws

import (
	"github.com/dsmproxy/dsmproxy/pathway"
)

// queryInject adds `_datadog` to the attributes under prefix (or replaces an existing one).
func queryInject(f *form, prefix string, attrs []qattr, carrier []byte, binary bool) {
	n := len(attrs) + 1
	for _, a := range attrs {
		if a.Name == ddAttr {
			n = a.N
		}
	}
	p := prefix + itoa(n) + "."
	f.set(p+"Name", ddAttr)
	// A replaced attribute keeps one value: a String one the service would read instead of a new
	// Binary one (or the other way round) is the old context.
	if binary {
		f.set(p+"Value.DataType", "Binary")
		f.set(p+"Value.BinaryValue", encodeB64(carrier))
		f.del(p + "Value.StringValue")
	} else {
		f.set(p+"Value.DataType", "String")
		f.set(p+"Value.StringValue", string(carrier))
		f.del(p + "Value.BinaryValue")
	}
}

func plainAttrs(q []qattr) []attr {
	out := make([]attr, len(q))
	for i := range q {
		out[i] = q[i].attr
	}
	return out
}

// queryQueue maps a QueueUrl parameter back to upstream and returns the queue name.
func (p *Proxy) queryQueue(c *call) string {
	f := c.form
	s := f.get("QueueUrl")
	if s == "" {
		return queueFromPath(c)
	}
	if up, changed := p.toUpstreamURL(c, s); changed {
		f.set("QueueUrl", up)
		return queueName(up)
	}
	return queueName(s)
}

func (p *Proxy) sqsQuery(c *call) ([]byte, respFixer, error) {
	f := c.form
	queue := p.queryQueue(c)
	if queue == "" {
		queue = f.get("QueueName") // GetQueueUrl, CreateQueue
	}
	c.edge = sqsEdge(c.op, queue)
	var fix respFixer
	switch c.op {
	case "SendMessage":
		fix = p.sqsQuerySend(c, queue)
	case "SendMessageBatch":
		fix = p.sqsQuerySendBatch(c, queue)
	case "ReceiveMessage":
		fix = p.sqsQueryReceive(c, queue)
	case "GetQueueUrl", "CreateQueue", "ListQueues", "ListDeadLetterSourceQueues":
		fix = func(resp []byte) []byte { return p.xmlQueueURLs(c, resp) }
	case "DeleteMessageBatch", "ChangeMessageVisibilityBatch":
		fix = func(resp []byte) []byte {
			if root, err := parseXML(resp); err == nil {
				for _, e := range root.findAll("BatchResultErrorEntry", nil) {
					p.reportEntryError(c, e.childText("Code"), "entry "+e.childText("Id")+": "+e.childText("Message"), e.childText("SenderFault") == "true")
				}
			}
			return nil
		}
	}
	if !f.changed() {
		return nil, fix, nil
	}
	return f.encode(), fix, nil
}

func (p *Proxy) sqsQuerySend(c *call, queue string) respFixer {
	f := c.form
	attrs := f.queryAttrs("MessageAttribute.")
	e := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: queue}
	pa := plainAttrs(attrs)
	pt, carrier, _ := p.prepareOut(c, e, len(f.get("MessageBody")), pa, "String")
	msg := outMsg{OrigMD5: attributesMD5(pa), Point: pt}
	if carrier != nil {
		queryInject(f, "MessageAttribute.", attrs, carrier, false)
		msg.Injected = true
		p.stats.injected.Add(1)
	}
	return func(resp []byte) []byte {
		p.produced(c, msg.Point)
		if !msg.Injected {
			return nil
		}
		root, err := parseXML(resp)
		if err != nil {
			p.answerUndecoded(c, e, err) // its MD5OfMessageAttributes is the injected attribute's
			return nil
		}
		res := root.find("SendMessageResult")
		if res == nil {
			return nil
		}
		return applyEdits(nil, resp, xmlFixMD5(res, msg.OrigMD5))
	}
}

// xmlFixMD5 sets or removes MD5OfMessageAttributes in a send result element.
func xmlFixMD5(res *xnode, orig string) []edit {
	m := res.child("MD5OfMessageAttributes")
	switch {
	case m == nil && orig == "":
		return nil
	case m == nil:
		return []edit{{S: res.InEnd, E: res.InEnd, New: []byte("<MD5OfMessageAttributes>" + orig + "</MD5OfMessageAttributes>")}}
	case orig == "":
		return []edit{{S: m.Start, E: m.End}}
	}
	return []edit{{S: m.InStart, E: m.InEnd, New: []byte(orig)}}
}

func (p *Proxy) sqsQuerySendBatch(c *call, queue string) respFixer {
	f := c.form
	e := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: queue}
	msgs := map[string]*outMsg{}
	for _, en := range queryEntries(c, "SendMessageBatchRequestEntry.", "MessageBody", "MessageAttribute.") {
		pa := plainAttrs(en.attrs)
		pt, carrier, _ := p.prepareOut(c, e, en.bodyLen, pa, "String")
		m := &outMsg{ID: en.id, OrigMD5: attributesMD5(pa), Point: pt}
		if carrier != nil {
			queryInject(f, en.attrPrefix, en.attrs, carrier, false)
			m.Injected = true
			p.stats.injected.Add(1)
		}
		msgs[en.id] = m
	}
	c.out = msgs
	return func(resp []byte) []byte {
		root, err := parseXML(resp)
		if err != nil {
			p.answerUndecoded(c, e, err) // which entries were stored is unknown: no checkpoints
			return nil
		}
		var eds []edit
		for _, ent := range root.findAll("SendMessageBatchResultEntry", nil) {
			m := msgs[ent.childText("Id")]
			if m == nil {
				continue
			}
			p.produced(c, m.Point)
			if m.Injected {
				eds = append(eds, xmlFixMD5(ent, m.OrigMD5)...)
			}
		}
		p.xmlBatchFailures(c, root, "BatchResultErrorEntry")
		if len(eds) == 0 {
			return nil
		}
		return applyEdits(make([]byte, 0, len(resp)), resp, eds)
	}
}

// xmlBatchFailures reports each failed entry of a Query batch response.
func (p *Proxy) xmlBatchFailures(c *call, root *xnode, name string) {
	for _, f := range root.findAll(name, nil) {
		if c.resent[f.childText("Id")] {
			continue
		}
		p.reportFailedEntry(c, f.childText("Code"), "entry "+f.childText("Id")+": "+f.childText("Message"), f.childText("SenderFault") == "true", 1)
	}
}

func (p *Proxy) sqsQueryReceive(c *call, queue string) respFixer {
	f := c.form
	var names []string
	for n := 1; ; n++ {
		v, ok := f.vals["MessageAttributeName."+itoa(n)]
		if !ok {
			break
		}
		names = append(names, v)
	}
	strip := !wantsAttr(names, ddAttr)
	if strip {
		f.set("MessageAttributeName."+itoa(len(names)+1), ddAttr)
	}
	e := pathway.Edge{Direction: pathway.In, Type: pathway.TypeSQS, Topic: queue}
	c.edge = e
	return func(resp []byte) []byte {
		root, err := parseXML(resp)
		if err != nil {
			p.answerUndecoded(c, e, err)
			return nil
		}
		var eds []edit
		for _, m := range root.findAll("Message", nil) {
			attrs, nodes := xmlMessageAttrs(m)
			p.consumeSQS(c, e, m.childText("Body"), attrs, !strip)
			if !strip {
				continue
			}
			var rest []attr
			var dd *xnode
			for i := range attrs {
				if attrs[i].Name == ddAttr {
					dd = nodes[i]
					continue
				}
				rest = append(rest, attrs[i])
			}
			if dd == nil {
				continue
			}
			eds = append(eds, edit{S: dd.Start, E: dd.End})
			if md := m.child("MD5OfMessageAttributes"); md != nil {
				if len(rest) == 0 {
					eds = append(eds, edit{S: md.Start, E: md.End})
				} else {
					eds = append(eds, edit{S: md.InStart, E: md.InEnd, New: []byte(attributesMD5(rest))})
				}
			}
		}
		if len(eds) == 0 {
			return nil
		}
		return applyEdits(make([]byte, 0, len(resp)), resp, eds)
	}
}

// xmlMessageAttrs reads the MessageAttribute elements of a received message.
func xmlMessageAttrs(m *xnode) ([]attr, []*xnode) {
	var attrs []attr
	var nodes []*xnode
	for _, k := range m.Kids {
		if k.Name != "MessageAttribute" {
			continue
		}
		v := k.child("Value")
		if v == nil {
			continue
		}
		a := attr{Name: k.childText("Name"), DataType: v.childText("DataType")}
		if s := v.child("StringValue"); s != nil {
			txt := s.Text
			a.String = &txt
		} else if b := v.child("BinaryValue"); b != nil {
			a.Binary, _ = decodeB64(b.Text)
		}
		attrs = append(attrs, a)
		nodes = append(nodes, k)
	}
	return attrs, nodes
}

// xmlQueueURLs points every QueueUrl element of a result at the proxy.
func (p *Proxy) xmlQueueURLs(c *call, resp []byte) []byte {
	root, err := parseXML(resp)
	if err != nil {
		return nil
	}
	var eds []edit
	for _, q := range root.findAll("QueueUrl", nil) {
		eds = append(eds, edit{S: q.InStart, E: q.InEnd, New: xmlEscape(p.toProxyURL(c, q.Text))})
	}
	if len(eds) == 0 {
		return nil
	}
	return applyEdits(make([]byte, 0, len(resp)+64), resp, eds)
}

// queryEntry is one entry of a Query batch.
type queryEntry struct {
	id, attrPrefix string
	bodyLen        int
	attrs          []qattr
}

// queryEntries decodes the entries of a Query batch (entryPrefix 1..N) and sets the batch's total
// payload on c.
func queryEntries(c *call, entryPrefix, bodyKey, attrPrefix string) []queryEntry {
	f := c.form
	var out []queryEntry
	total := 0
	for n := 1; ; n++ {
		pre := entryPrefix + itoa(n) + "."
		id, ok := f.vals[pre+"Id"]
		if !ok {
			break
		}
		en := queryEntry{id: id, attrPrefix: pre + attrPrefix, bodyLen: snsBodySize(f.vals[pre+bodyKey], f.vals[pre+"Subject"])} // SQS entries have no Subject
		en.attrs = f.queryAttrs(en.attrPrefix)
		total += en.bodyLen
		for i := range en.attrs {
			total += attrSize(&en.attrs[i].attr)
		}
		out = append(out, en)
	}
	c.batchTotal = max(total, 1)
	return out
}
