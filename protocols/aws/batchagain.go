package aws

import (
	"bytes"
	"errors"
	"net/url"
	"strings"
)

// A SendMessageBatch entry that fits its queue only without `_datadog` is refused by a queue
// whose own MaximumMessageSize is below max_message_bytes, while the batch's other entries are
// stored. Sending such entries again, without `_datadog`, in a batch of their own and merging
// the two answers gives the client the answer a direct batch would have had. A refused entry
// stored nothing, so this cannot duplicate one. A batch refused whole (as FIFO batches are) is
// sent again whole by refusedOverQueueLimit. A FIFO entry refused alone is not sent again: the
// entries after it in its message group are stored already, and storing it after them would
// reorder the group without a word to the client, where a failed entry at least says so.

// errBatchAnswer: a batch answer without the list the merge needs.
var errBatchAnswer = errors.New("batch answer without its list of results or failures")

// sendBatchAgain sends again the entries of c (a SendMessageBatch answered rb) that its queue
// refused with `_datadog`, and returns the merged answer the client gets, already fixed; false
// when there were none or the second send failed (rb then goes on as it is, its failures
// included).
func (p *Proxy) sendBatchAgain(c *call, rb []byte, fix respFixer) ([]byte, bool) {
	ids := p.batchEntriesOverQueueLimit(c, rb)
	if len(ids) == 0 {
		return nil, false
	}
	body, err := batchSubset(c, ids)
	if err != nil {
		return nil, false // it parsed for the rewrite, so it parses again
	}
	c2, err := c.again(body)
	if err != nil {
		return nil, false
	}
	body2, fix2 := p.rewriteRequest(c2)
	// Whatever comes of it, their `_datadog` never reached the queue.
	p.stats.injected.Add(^uint64(len(ids) - 1))
	p.stats.sentAgain.Add(1)
	resp2, rb2, err := p.forward(c2, body2)
	// Where the send again fails, the client gets the first answer, and the first failures are
	// what is reported lost (c.resent stays nil); the second refusal is reported as the
	// service's error only.
	c2.sent = 0
	if err != nil {
		p.log.Warn().Err(err).Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("queue", c.edge.Topic).Int("entries", len(ids)).
			Msg("could not send again the batch entries refused as over their queue's size limit; the client sees them failed")
		return nil, false
	}
	c2.now = p.now()
	if resp2.StatusCode/100 != 2 {
		p.reportUpstreamError(c2, resp2, rb2)
		return nil, false
	}
	if missing := answerLacks(c.wire, rb2, ids); missing != "" {
		p.stats.decodeErr.Add(1)
		p.log.Error().Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("queue", c.edge.Topic).Str("entry", missing).
			Msg("the answer to batch entries sent again does not name them all; the client gets the first answer, which has them failed")
		return nil, false
	}
	c.resent = ids // their first failures are not the client's: not reported
	a := applyFix(fix, rb)
	b := applyFix(fix2, rb2)
	merged, err := mergeBatchAnswers(c.wire, a, b, ids)
	if err != nil {
		// Not seen: both answers were just read. The entries are stored, and the answer says
		// they failed; a client that sends them again stores them twice.
		p.stats.decodeErr.Add(1)
		p.log.Error().Err(err).Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("queue", c.edge.Topic).
			Msg("could not merge the answers of a batch and its entries sent again; the client sees stored entries as failed")
		return a, true
	}
	return merged, true
}

// answerLacks returns an Id of ids that a batch answer names in neither of its lists, "" when it
// names them all (or cannot be read: the merge says so).
func answerLacks(w wire, rb []byte, ids map[string]bool) string {
	named := map[string]bool{}
	if w == wireQuery {
		root, err := parseXML(rb)
		if err != nil {
			return ""
		}
		for _, name := range []string{"SendMessageBatchResultEntry", "BatchResultErrorEntry"} {
			for _, e := range root.findAll(name, nil) {
				named[e.childText("Id")] = true
			}
		}
	} else {
		ms, _, err := objectMembers(rb, 0)
		if err != nil {
			return ""
		}
		for _, key := range []string{"Successful", "Failed"} {
			objs, _ := arrayObjects(rb, ms, key)
			for _, o := range objs {
				id, _ := jsonString(rb, find(o.ms, "Id"))
				named[id] = true
			}
		}
	}
	for id := range ids {
		if !named[id] {
			return id
		}
	}
	return ""
}

// applyFix returns fix's rewrite of resp, or resp when it has none.
func applyFix(fix respFixer, resp []byte) []byte {
	if fix != nil {
		if nb := fix(resp); nb != nil {
			return nb
		}
	}
	return resp
}

// batchEntriesOverQueueLimit returns the Ids of c's entries that were given `_datadog` and
// refused as over their queue's own size limit, which the proxy then knows.
func (p *Proxy) batchEntriesOverQueueLimit(c *call, rb []byte) map[string]bool {
	// The text is looked for first: every batch the proxy gave `_datadog` passes here, and
	// parsing its answer twice (the fixer parses it too) would be for nothing nearly always.
	if c.service != ServiceSQS || c.op != "SendMessageBatch" || c.noInject || c.injected == 0 ||
		strings.HasSuffix(c.edge.Topic, ".fifo") || !bytes.Contains(rb, []byte(sizeRefusal)) {
		return nil
	}
	var ids map[string]bool
	note := func(id, code, msg string) {
		if m := c.out[id]; m != nil && m.Injected && p.sizes.noteRefusal(c, code, msg) {
			if ids == nil {
				ids = map[string]bool{}
			}
			ids[id] = true
		}
	}
	switch c.wire {
	case wireJSON10:
		rms, _, err := objectMembers(rb, 0)
		if err != nil {
			return nil
		}
		for _, f := range jsonFailedEntries(rb, rms, "Failed") {
			note(f.ID, f.Code, f.Message)
		}
	case wireQuery:
		root, err := parseXML(rb)
		if err != nil {
			return nil
		}
		for _, f := range root.findAll("BatchResultErrorEntry", nil) {
			note(f.childText("Id"), f.childText("Code"), f.childText("Message"))
		}
	}
	return ids
}

// batchSubset is c's body as the client sent it, with only the entries named in ids.
func batchSubset(c *call, ids map[string]bool) ([]byte, error) {
	if c.wire == wireQuery {
		return querySubset(c.body, ids)
	}
	b := c.body
	ms, _, err := objectMembers(b, 0)
	if err != nil {
		return nil, err
	}
	em := find(ms, "Entries")
	if em == nil {
		return nil, errBatchAnswer
	}
	elems, err := arrayElems(b, em.VS)
	if err != nil {
		return nil, err
	}
	kept := []byte{'['}
	for _, el := range elems {
		ems, _, err := objectMembers(b, el[0])
		if err != nil {
			return nil, err
		}
		if id, _ := jsonString(b, find(ems, "Id")); ids[id] {
			if len(kept) > 1 {
				kept = append(kept, ',')
			}
			kept = append(kept, b[el[0]:el[1]]...)
		}
	}
	kept = append(kept, ']')
	return applyEdits(make([]byte, 0, len(b)), b, []edit{{S: em.VS, E: em.VE, New: kept}}), nil
}

const queryBatchEntry = "SendMessageBatchRequestEntry."

// querySubset keeps the Query form's entries named in ids, numbered again from 1 (SQS reads
// entries up to the first missing number), and every other pair as the client encoded it.
func querySubset(body []byte, ids map[string]bool) ([]byte, error) {
	f, err := parseForm(body)
	if err != nil {
		return nil, err
	}
	renumber := map[string]string{}
	for n, k := 1, 0; ; n++ {
		id, ok := f.vals[queryBatchEntry+itoa(n)+".Id"]
		if !ok {
			break
		}
		if ids[id] {
			k++
			renumber[itoa(n)] = itoa(k)
		}
	}
	parts := make([]string, 0, len(f.raw))
	for _, pair := range f.raw {
		rk, v, hasValue := strings.Cut(pair, "=")
		k, _ := url.QueryUnescape(rk) // parseForm read it
		rest, ok := strings.CutPrefix(k, queryBatchEntry)
		if !ok {
			parts = append(parts, pair)
			continue
		}
		n, tail, _ := strings.Cut(rest, ".")
		to, keep := renumber[n]
		if !keep {
			continue
		}
		np := url.QueryEscape(queryBatchEntry + to + "." + tail)
		if hasValue {
			np += "=" + v
		}
		parts = append(parts, np)
	}
	return []byte(strings.Join(parts, "&")), nil
}

// mergeBatchAnswers puts b's results (the entries sent again) into a, in place of a's failures
// of the entries named in again.
func mergeBatchAnswers(w wire, a, b []byte, again map[string]bool) ([]byte, error) {
	if w == wireQuery {
		return mergeXMLBatch(a, b, again)
	}
	return mergeJSONBatch(a, b, again)
}

func mergeJSONBatch(a, b []byte, again map[string]bool) ([]byte, error) {
	ams, aend, err := objectMembers(a, 0)
	if err != nil {
		return nil, err
	}
	if find(ams, "Failed") == nil {
		return nil, errBatchAnswer // it held the failures sent again
	}
	bms, _, err := objectMembers(b, 0)
	if err != nil {
		return nil, err
	}
	var eds []edit
	for _, key := range []string{"Successful", "Failed"} {
		list := []byte{'['}
		add := func(doc []byte, ms []member, drop map[string]bool) error {
			m := find(ms, key)
			if m == nil || doc[m.VS] == 'n' {
				return nil
			}
			elems, err := arrayElems(doc, m.VS)
			if err != nil {
				return err
			}
			for _, el := range elems {
				if drop != nil {
					oms, _, err := objectMembers(doc, el[0])
					if err != nil {
						return err
					}
					if id, _ := jsonString(doc, find(oms, "Id")); drop[id] {
						continue
					}
				}
				if len(list) > 1 {
					list = append(list, ',')
				}
				list = append(list, doc[el[0]:el[1]]...)
			}
			return nil
		}
		drop := again
		if key == "Successful" {
			drop = nil
		}
		if err := add(a, ams, drop); err != nil {
			return nil, err
		}
		if err := add(b, bms, nil); err != nil {
			return nil, err
		}
		list = append(list, ']')
		if m := find(ams, key); m != nil {
			eds = append(eds, edit{S: m.VS, E: m.VE, New: list})
		} else {
			eds = append(eds, appendMember(ams, aend, key, list))
		}
	}
	return applyEdits(make([]byte, 0, len(a)+len(b)), a, eds), nil
}

func mergeXMLBatch(a, b []byte, again map[string]bool) ([]byte, error) {
	ra, err := parseXML(a)
	if err != nil {
		return nil, err
	}
	rb, err := parseXML(b)
	if err != nil {
		return nil, err
	}
	res, resB := ra.find("SendMessageBatchResult"), rb.find("SendMessageBatchResult")
	if res == nil || resB == nil || len(res.Kids) == 0 {
		// a has the refused entries, so its result is no empty <SendMessageBatchResult/>
		return nil, errBatchAnswer
	}
	var eds []edit
	for _, k := range res.Kids {
		if k.Name == "BatchResultErrorEntry" && again[k.childText("Id")] {
			eds = append(eds, edit{S: k.Start, E: k.End})
		}
	}
	var ins []byte
	for _, k := range resB.Kids {
		if k.Name == "SendMessageBatchResultEntry" || k.Name == "BatchResultErrorEntry" {
			ins = append(ins, b[k.Start:k.End]...)
		}
	}
	eds = append(eds, edit{S: res.InEnd, E: res.InEnd, New: ins})
	return applyEdits(make([]byte, 0, len(a)+len(ins)), a, eds), nil
}
