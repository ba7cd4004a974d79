package aws

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// The 10-attribute and size limits per entry of a Query-protocol batch: SQS SendMessageBatch sent
// by the AWS CLI to local-aws-sqs, SNS PublishBatch sent by aws-sdk-go-v2 to fauxqs. Each case is
// one batch; what reached the emulator is read back from the upstream check's recorded bodies and
// compared entry by entry with what the client sent: exactly the entries marked to carry
// `_datadog` carry one, every other entry arrives as the client sent it, the batch succeeds as a
// whole, and each skipped entry is one skip (stats and one ProxySkip event named for its limit).
//
// A batch has a size limit too (SQS and SNS: the sum of its messages' sizes; prepareOut holds it
// to the same MaxMessageBytes), so an entry near the size limit leaves room for `_datadog` in
// at most one entry of its batch: the entries are checked in order and the first that fits gets
// it. An entry that on its own is too big for `_datadog` is in a batch with no room for anyone's.

// blEntry is one batch entry: its body, its String attributes as the client sends them, and the
// limit it must be skipped for ("" = it must carry `_datadog`).
type blEntry struct {
	id    string
	body  string
	attrs map[string]string
	skip  string
}

// blSize is an entry's size as the proxy and the services count it: body plus each attribute's
// name, DataType and value.
func blSize(e blEntry) int {
	n := len(e.body)
	for k, v := range e.attrs {
		n += len(k) + len("String") + len(v)
	}
	return n
}

// blFill returns a body that brings the batch of others plus one entry with attrs to total bytes.
func blFill(total int, attrs map[string]string, others ...blEntry) string {
	n := total - blSize(blEntry{attrs: attrs})
	for _, o := range others {
		n -= blSize(o)
	}
	return strings.Repeat("z", n)
}

// blDDExtra is what one injected `_datadog` adds to a message's size: name, DataType and the
// carrier (SNS: base64 of it, Binary). It is computed from the proxy's own carrier encoding, for
// a context of today's timestamps, so the sizes below do not hard-code it.
func blDDExtra(binary bool) int {
	now := time.Now()
	c := carrierJSON(nil, pathway.Context{Hash: 0x0123456789abcdef, PathwayStart: now, EdgeStart: now})
	if binary {
		return len(ddAttr) + len("Binary") + base64.StdEncoding.EncodedLen(len(c))
	}
	return len(ddAttr) + len("String") + len(c)
}

type blCase struct {
	name    string
	entries []blEntry
}

// blCases are the batches both services are tested with; extra is blDDExtra for the service,
// limit the size `_datadog` must fit under (SNS keeps snsSizeMargin free).
func blCases(extra, limit int) []blCase {
	ten := map[string]string{}
	for i := range MaxAttributes {
		ten[fmt.Sprint("a", i)] = "v"
	}
	// nine of the client's own and a `_datadog` without a pathway (a tracer's trace headers only):
	// the proxy adds the pathway in place, the entry stays at 10 attributes.
	tenWithDD := map[string]string{ddAttr: `{"x-datadog-trace-id":"7"}`}
	for i := range MaxAttributes - 1 {
		tenWithDD[fmt.Sprint("a", i)] = "v"
	}

	normal := blEntry{id: "normal", body: "normal entry"}
	tenE := blEntry{id: "ten", body: "ten attributes", attrs: ten, skip: "attribute_limit"}
	// the batch with `_datadog` in one entry fits (extra/2 to spare), in two it does not
	roomForOne := limit - extra - extra/2
	nearBatch := blEntry{id: "near", attrs: map[string]string{"kind": "big"}, skip: "batch_size_limit"}
	nearBatch.body = blFill(roomForOne, nearBatch.attrs, normal, tenE)
	// on its own 10 bytes under the limit: too big for `_datadog`, and the batch has no room left
	atLimit := blEntry{id: "atlimit", skip: "size_limit"}
	atLimit.body = blFill(limit-10, nil, blEntry{body: "normal entry"})

	return []blCase{
		{"ten attributes beside normal entries", []blEntry{
			{id: "first", body: "plain"},
			tenE,
			{id: "second", body: "one attribute", attrs: map[string]string{"kind": "k"}},
		}},
		{"ten attributes counting the client's own _datadog", []blEntry{
			{id: "tendd", body: "nine and _datadog", attrs: tenWithDD},
			tenE,
		}},
		{"ten attributes and a near-limit entry beside a normal entry", []blEntry{normal, tenE, nearBatch}},
		{"an entry too big for _datadog leaves no room in its batch", []blEntry{
			{id: "normal", body: "normal entry", skip: "batch_size_limit"},
			atLimit,
		}},
	}
}

// blWire is where a Query batch puts its entries: entries under entryPrefix 1..N, each with Id,
// its body under bodyKey and its attributes under attrInfix 1..M.
type blWire struct {
	service, op, entryPrefix, bodyKey, attrInfix string
	binary                                       bool // `_datadog` is Binary (SNS), else String (SQS)
}

var (
	blSQSQuery = blWire{"sqs", "SendMessageBatch", "SendMessageBatchRequestEntry.", "MessageBody", "MessageAttribute.", false}
	blSNSQuery = blWire{"sns", "PublishBatch", "PublishBatchRequestEntries.member.", "Message", "MessageAttributes.entry.", true}
)

// blUpstreamBatch returns the form of the one op request the upstream check received since
// request from.
func blUpstreamBatch(t *testing.T, up *verifier, from int, w blWire) url.Values {
	t.Helper()
	bodies, _ := up.seen()
	var sent []url.Values
	for _, b := range bodies[from:] {
		vals, err := url.ParseQuery(b)
		if err != nil {
			t.Fatalf("upstream body is not a Query form: %v", err)
		}
		if vals.Get("Action") == w.op {
			sent = append(sent, vals)
		}
	}
	if len(sent) != 1 {
		t.Fatalf("upstream received %d %s requests, want 1", len(sent), w.op)
	}
	return sent[0]
}

// blCheckUpstream checks every entry of the batch the upstream received against what the client
// sent, and returns the pathway contexts of the entries that carry `_datadog`.
func blCheckUpstream(t *testing.T, vals url.Values, w blWire, entries []blEntry) []pathway.Context {
	t.Helper()
	byID := map[string]string{} // entry id -> its prefix in the form
	for n := 1; ; n++ {
		pre := w.entryPrefix + fmt.Sprint(n) + "."
		if !vals.Has(pre + "Id") {
			break
		}
		byID[vals.Get(pre+"Id")] = pre
	}
	if len(byID) != len(entries) {
		t.Errorf("upstream %s has %d entries, the client sent %d", w.op, len(byID), len(entries))
	}
	var ctxs []pathway.Context
	for _, e := range entries {
		where := fmt.Sprintf("%s entry %q", w.op, e.id)
		pre, ok := byID[e.id]
		if !ok {
			t.Errorf("%s: not in the upstream request", where)
			continue
		}
		if got := vals.Get(pre + w.bodyKey); got != e.body {
			t.Errorf("%s: body upstream is %d bytes, the client sent %d (changed in transit)", where, len(got), len(e.body))
		}
		var dd []snsFormAttr
		user := map[string]string{}
		attrs := snsFormAttrs(vals, pre+w.attrInfix)
		for _, a := range attrs {
			if a.name == ddAttr {
				dd = append(dd, a)
				continue
			}
			if a.dataType != "String" || !a.hasString || a.hasBinary {
				t.Errorf("%s: client attribute %s arrived as %+v, sent as a String", where, a.name, a)
			}
			user[a.name] = a.stringValue
		}
		clientDD, clientHasDD := e.attrs[ddAttr]
		want := 0
		for k, v := range e.attrs {
			if k == ddAttr {
				continue
			}
			want++
			if got, ok := user[k]; !ok || got != v {
				t.Errorf("%s: client attribute %s = %q upstream (present %v), sent %q", where, k, got, ok, v)
			}
		}
		if len(user) != want {
			t.Errorf("%s: upstream has %d attributes besides %s, the client sent %d", where, len(user), ddAttr, want)
		}
		wantAttrs := len(e.attrs)
		if e.skip == "" && !clientHasDD {
			wantAttrs++
		}
		if len(attrs) != wantAttrs {
			t.Errorf("%s: %d attributes upstream, want %d", where, len(attrs), wantAttrs)
		}
		// Id, body, and Name, Value.DataType and one value per attribute: nothing else under the entry
		keys := 0
		for k := range vals {
			if strings.HasPrefix(k, pre) {
				keys++
			}
		}
		if wk := 2 + 3*wantAttrs; keys != wk {
			t.Errorf("%s: %d form keys under %s upstream, want %d", where, keys, pre, wk)
		}
		if e.skip != "" {
			switch {
			case clientHasDD && (len(dd) != 1 || dd[0].stringValue != clientDD || dd[0].dataType != "String"):
				t.Errorf("%s (over the %s): the client's %s changed upstream: %+v", where, e.skip, ddAttr, dd)
			case !clientHasDD && len(dd) != 0:
				t.Errorf("%s (over the %s): upstream it carries %d %s attribute(s), want it unmodified", where, e.skip, len(dd), ddAttr)
			}
			continue
		}
		if len(dd) != 1 {
			t.Errorf("%s: %d %s attributes upstream, want 1", where, len(dd), ddAttr)
			continue
		}
		var carrier map[string]any
		var ctx pathway.Context
		if w.binary {
			carrier, ctx = snsCheckCarrier(t, where, dd[0].dataType, dd[0].hasString, dd[0].binaryValue, dd[0].hasBinary)
		} else {
			if dd[0].dataType != "String" || !dd[0].hasString || dd[0].hasBinary {
				t.Errorf("%s: %s arrived as %+v, want a String attribute", where, ddAttr, dd[0])
			}
			if err := json.Unmarshal([]byte(dd[0].stringValue), &carrier); err != nil {
				t.Errorf("%s: %s %q is not a JSON carrier: %v", where, ddAttr, dd[0].stringValue, err)
			}
			if ctx = contextFromCarrier([]byte(dd[0].stringValue)); ctx.IsZero() {
				t.Errorf("%s: %s %q carries no pathway context", where, ddAttr, dd[0].stringValue)
			}
		}
		if clientHasDD && carrier != nil && carrier["x-datadog-trace-id"] != "7" {
			t.Errorf("%s: the carrier %v lost the client's x-datadog-trace-id", where, carrier)
		}
		ctxs = append(ctxs, ctx)
	}
	return ctxs
}

// blCheckProxy checks what the proxy counted and reported for one batch to topic: one produce
// point per entry (every entry succeeded), the carriers' hashes among them, the stats, and one
// ProxySkip event per skipped entry named for its limit, and no other event.
func blCheckProxy(t *testing.T, tp *testProxy, w blWire, topic string, entries []blEntry, ctxs []pathway.Context) {
	t.Helper()
	wantSkips := map[string]int{}
	injected := 0
	for _, e := range entries {
		if e.skip == "" {
			injected++
		} else {
			wantSkips[e.skip]++
		}
	}
	if st := tp.Stats(); st.Injected != uint64(injected) || st.Skipped != uint64(len(entries)-injected) {
		t.Errorf("stats: %d injected, %d skipped; want %d and %d", st.Injected, st.Skipped, injected, len(entries)-injected)
	}
	tp.ev.mu.Lock()
	evs := append([]errtrack.Event(nil), tp.ev.ev...)
	tp.ev.mu.Unlock()
	gotSkips := map[string]int{}
	for _, ev := range evs {
		if ev.Category != errtrack.ProxySkip {
			t.Errorf("unexpected %s event %s: %s", ev.Category, ev.Name, ev.Message)
			continue
		}
		gotSkips[ev.Name]++
		if ev.Operation != w.op || ev.Protocol != w.service || ev.Edge.Topic != topic || ev.Messages != 1 {
			t.Errorf("skip event %s: operation %q, protocol %q, topic %q, %d messages; want %s, %s, %s, 1",
				ev.Name, ev.Operation, ev.Protocol, ev.Edge.Topic, ev.Messages, w.op, w.service, topic)
		}
	}
	if fmt.Sprint(gotSkips) != fmt.Sprint(wantSkips) {
		t.Errorf("skip events by name %v, want %v (one per skipped entry)", gotSkips, wantSkips)
	}
	prod := tp.rec.withTags("direction:out", "topic:"+topic, "type:"+w.service)
	if len(prod) != len(entries) {
		t.Errorf("%d produce points, want %d (one per successful entry)", len(prod), len(entries))
	}
	hashes := map[uint64]bool{}
	for _, p := range prod {
		hashes[p.Hash] = true
	}
	for _, c := range ctxs {
		if !c.IsZero() && !hashes[c.Hash] {
			t.Errorf("a carrier's hash %d is none of the produce points'", c.Hash)
		}
	}
}

func blIDs(entries []blEntry) string {
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.id)
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// TestBatchLimitsSQSQuery: SendMessageBatch in the Query protocol (the Debian AWS CLI) through the
// proxy to local-aws-sqs. The queues have MaximumMessageSize 262144, so the emulator itself also
// refuses an entry pushed over 256 KiB, and it refuses an entry with 11 attributes.
func TestBatchLimitsSQSQuery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	up := sqsPeer(t)
	for i, tc := range blCases(blDDExtra(false), DefaultMaxMessageBytes) {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
			aws := newCLI(t, tp.url)
			queue := fmt.Sprint("batchlimits-", i)
			var cq struct{ QueueUrl string }
			aws.run(ctx, &cq, "sqs", "create-queue", "--queue-name", queue, "--attributes", fmt.Sprint("MaximumMessageSize=", DefaultMaxMessageBytes))
			type cliValue struct{ DataType, StringValue string } // cliAttr would send an empty BinaryValue
			type cliEntry struct {
				Id                string
				MessageBody       string
				MessageAttributes map[string]cliValue `json:",omitempty"`
			}
			var in []cliEntry
			for _, e := range tc.entries {
				ce := cliEntry{Id: e.id, MessageBody: e.body}
				for k, v := range e.attrs {
					if ce.MessageAttributes == nil {
						ce.MessageAttributes = map[string]cliValue{}
					}
					ce.MessageAttributes[k] = cliValue{DataType: "String", StringValue: v}
				}
				in = append(in, ce)
			}
			raw, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			// a file: a 256 KiB body is over the kernel's limit for one command-line argument
			file := filepath.Join(t.TempDir(), "entries.json")
			if err := os.WriteFile(file, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			from := up.count()
			var out struct {
				Successful []struct{ Id, MD5OfMessageAttributes string }
				Failed     []struct{ Id, Code, Message string }
			}
			aws.run(ctx, &out, "sqs", "send-message-batch", "--queue-url", cq.QueueUrl, "--entries", "file://"+file)
			var okIDs []string
			for _, s := range out.Successful {
				okIDs = append(okIDs, s.Id)
			}
			sort.Strings(okIDs)
			if len(out.Failed) != 0 || strings.Join(okIDs, ",") != blIDs(tc.entries) {
				t.Errorf("batch result: successful %v, failed %+v; want every entry (%s) successful", okIDs, out.Failed, blIDs(tc.entries))
			}
			// the client sees the MD5 of its own attributes, injected or not
			for _, s := range out.Successful {
				for _, e := range tc.entries {
					if e.id != s.Id {
						continue
					}
					var mine []attr
					for k, v := range e.attrs {
						mine = append(mine, attr{Name: k, DataType: "String", String: sp(v)})
					}
					if w := attributesMD5(mine); s.MD5OfMessageAttributes != w {
						t.Errorf("entry %q: MD5OfMessageAttributes %q, want the client's %q", s.Id, s.MD5OfMessageAttributes, w)
					}
				}
			}
			ctxs := blCheckUpstream(t, blUpstreamBatch(t, up, from, blSQSQuery), blSQSQuery, tc.entries)
			blCheckProxy(t, tp, blSQSQuery, queue, tc.entries, ctxs)
		})
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestBatchLimitsSNSPublishBatch: PublishBatch in the Query protocol (aws-sdk-go-v2) through the
// proxy to fauxqs, whose SNS checks neither the attribute count nor the batch size: what the
// upstream received is the whole check.
func TestBatchLimitsSNSPublishBatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	up := snsPeer(t)
	for i, tc := range blCases(blDDExtra(true), DefaultMaxMessageBytes-snsSizeMargin) {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
			sn := snsClient(tp.url, "")
			name := fmt.Sprint("batchlimits-", i)
			topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: &name})
			if err != nil {
				t.Fatalf("CreateTopic: %v", err)
			}
			var in []snstypes.PublishBatchRequestEntry
			for _, e := range tc.entries {
				pe := snstypes.PublishBatchRequestEntry{Id: awssdk.String(e.id), Message: awssdk.String(e.body)}
				for k, v := range e.attrs {
					if pe.MessageAttributes == nil {
						pe.MessageAttributes = map[string]snstypes.MessageAttributeValue{}
					}
					pe.MessageAttributes[k] = snsStrAttr(v)
				}
				in = append(in, pe)
			}
			from := up.count()
			out, err := sn.PublishBatch(ctx, &sns.PublishBatchInput{TopicArn: topic.TopicArn, PublishBatchRequestEntries: in})
			if err != nil {
				t.Fatalf("PublishBatch: %v", err)
			}
			var okIDs []string
			for _, s := range out.Successful {
				okIDs = append(okIDs, awssdk.ToString(s.Id))
			}
			sort.Strings(okIDs)
			if len(out.Failed) != 0 || strings.Join(okIDs, ",") != blIDs(tc.entries) {
				t.Errorf("batch result: successful %v, %d failed; want every entry (%s) successful", okIDs, len(out.Failed), blIDs(tc.entries))
			}
			ctxs := blCheckUpstream(t, blUpstreamBatch(t, up, from, blSNSQuery), blSNSQuery, tc.entries)
			blCheckProxy(t, tp, blSNSQuery, name, tc.entries, ctxs)
		})
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}
