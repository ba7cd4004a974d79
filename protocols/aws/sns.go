package aws

import (
	"github.com/dsmproxy/dsmproxy/pathway"
)

// SNS carries `_datadog` as a Binary attribute: subscription filter policies silently fail on a
// String attribute holding JSON, which is why the tracers use Binary too.

func snsTopic(get func(string) string) string {
	arn := get("TopicArn")
	if arn == "" {
		arn = get("TargetArn")
	}
	return topicName(arn)
}

// snsManageEdge is the edge the errors of a call managing a topic (Subscribe,
// GetTopicAttributes...) are reported on: the topic's, with no direction, as SQS's queue calls.
func snsManageEdge(topic string) pathway.Edge {
	if topic == "" {
		return pathway.Edge{}
	}
	return pathway.Edge{Type: pathway.TypeSNS, Topic: topic}
}

func (p *Proxy) snsQuery(c *call) ([]byte, respFixer, error) {
	f := c.form
	e := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSNS, Topic: snsTopic(f.get)}
	if e.Topic == "" {
		return nil, nil, nil // SMS to a PhoneNumber: no topic to name, and SMS attributes are AWS's own
	}
	var fix respFixer
	switch c.op {
	default:
		c.edge = snsManageEdge(e.Topic)
	case "Publish":
		attrs := f.queryAttrs("MessageAttributes.entry.")
		pt, carrier, _ := p.prepareOut(c, e, snsBodySize(f.get("Message"), f.get("Subject")), plainAttrs(attrs), "Binary")
		if carrier != nil {
			queryInject(f, "MessageAttributes.entry.", attrs, carrier, true)
			p.stats.injected.Add(1)
		}
		fix = func([]byte) []byte { p.produced(c, pt); return nil }
	case "PublishBatch":
		pts := map[string]pathway.Point{}
		for _, en := range queryEntries(c, "PublishBatchRequestEntries.member.", "Message", "MessageAttributes.entry.") {
			pt, carrier, _ := p.prepareOut(c, e, en.bodyLen, plainAttrs(en.attrs), "Binary")
			if carrier != nil {
				queryInject(f, en.attrPrefix, en.attrs, carrier, true)
				p.stats.injected.Add(1)
			}
			pts[en.id] = pt
		}
		fix = func(resp []byte) []byte {
			root, err := parseXML(resp)
			if err != nil {
				p.answerUndecoded(c, e, err) // the batch was published: its checkpoints are lost
				return nil
			}
			if s := root.find("Successful"); s != nil {
				for _, m := range s.findAll("member", nil) {
					if pt, ok := pts[m.childText("Id")]; ok {
						p.produced(c, pt)
					}
				}
			}
			if fl := root.find("Failed"); fl != nil {
				p.xmlBatchFailures(c, fl, "member")
			}
			return nil
		}
	}
	if !f.changed() {
		return nil, fix, nil
	}
	return f.encode(), fix, nil
}

func (p *Proxy) snsJSON(c *call) ([]byte, respFixer, error) {
	if c.op != "Publish" && c.op != "PublishBatch" {
		if ms, _, err := objectMembers(c.body, 0); err == nil {
			c.edge = snsManageEdge(snsTopic(func(k string) string { s, _ := jsonString(c.body, find(ms, k)); return s }))
		}
		return nil, nil, nil
	}
	b := c.body
	ms, end, err := objectMembers(b, 0)
	if err != nil {
		return nil, nil, err
	}
	get := func(k string) string { s, _ := jsonString(b, find(ms, k)); return s }
	e := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSNS, Topic: snsTopic(get)}
	if e.Topic == "" {
		return nil, nil, nil
	}
	var eds []edit
	entry := func(ems []member, eend int) (pathway.Point, error) {
		attrs, err := jsonMessageAttrs(b, ems, "MessageAttributes")
		if err != nil {
			return pathway.Point{}, err
		}
		msg, _ := jsonString(b, find(ems, "Message"))
		subj, _ := jsonString(b, find(ems, "Subject"))
		pt, carrier, _ := p.prepareOut(c, e, snsBodySize(msg, subj), attrs, "Binary")
		if carrier != nil {
			more, err := jsonInjectEdits(b, ems, eend, "MessageAttributes", carrier, true)
			if err != nil {
				return pt, err
			}
			eds = append(eds, more...)
			p.stats.injected.Add(1)
		}
		return pt, nil
	}
	var fix respFixer
	if c.op == "Publish" {
		pt, err := entry(ms, end)
		if err != nil {
			return nil, nil, err
		}
		fix = func([]byte) []byte { p.produced(c, pt); return nil }
	} else {
		pts := map[string]pathway.Point{}
		if em := find(ms, "PublishBatchRequestEntries"); em != nil {
			els, err := arrayElems(b, em.VS)
			if err != nil {
				return nil, nil, err
			}
			ents, err := jsonEntries(c, b, els, "Message")
			if err != nil {
				return nil, nil, err
			}
			for _, en := range ents {
				if pts[en.id], err = entry(en.ms, en.end); err != nil {
					return nil, nil, err
				}
			}
		}
		fix = func(resp []byte) []byte {
			rms, _, err := objectMembers(resp, 0)
			if err != nil {
				p.answerUndecoded(c, e, err)
				return nil
			}
			ok, _ := arrayObjects(resp, rms, "Successful")
			for _, o := range ok {
				id, _ := jsonString(resp, find(o.ms, "Id"))
				if pt, ok := pts[id]; ok {
					p.produced(c, pt)
				}
			}
			p.jsonBatchFailures(c, resp, rms, "Failed")
			return nil
		}
	}
	if len(eds) == 0 {
		return nil, fix, nil
	}
	return applyEdits(make([]byte, 0, len(b)+128), b, eds), fix, nil
}

// snsBodySize is the message part of an SNS publish's payload size. dd-trace-go counts Message
// alone, dd-trace-py Message and Subject (dsm-protocol.md 3.4). The proxy counts the Subject too:
// it travels with the message (in the JSON envelope SQS and HTTP subscribers get, and as an
// email's subject). A Go-traced publisher of the same messages shows len(Subject) fewer bytes.
func snsBodySize(msg, subject string) int { return len(msg) + len(subject) }
