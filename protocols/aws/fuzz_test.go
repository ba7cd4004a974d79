package aws

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// captured are real client requests and emulator answers recorded by the tests
// (DSMPROXY_AWS_CAPTURE), the fuzzers' seeds.
func captured(t testing.TB, service, wireName string) map[string][2][]byte {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "testdata", "aws", "captured")
	reqs, _ := filepath.Glob(filepath.Join(dir, service+"-*-"+wireName+".req"))
	if len(reqs) == 0 {
		t.Fatalf("no captured %s %s traffic in %s", service, wireName, dir)
	}
	out := map[string][2][]byte{}
	for _, r := range reqs {
		op := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(r), service+"-"), "-"+wireName+".req")
		req, _ := os.ReadFile(r)
		resp, _ := os.ReadFile(strings.TrimSuffix(r, ".req") + ".resp")
		out[op] = [2][]byte{req, resp}
	}
	return out
}

func fuzzProxy(t testing.TB, inject bool) *Proxy {
	p, err := New(Config{Listen: "127.0.0.1:0", TrustClients: true, Upstream: "http://127.0.0.1:9",
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), KinesisInjectData: inject})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func fuzzCall(service, op string, w wire, body []byte) *call {
	r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:4566/", bytes.NewReader(body))
	c := &call{r: r, wire: w, service: service, op: op, body: body, now: time.Unix(1_790_000_000, 0), svcName: "svc"}
	if w == wireQuery {
		f, err := parseForm(body)
		if err != nil {
			return nil
		}
		c.form = f
	}
	return c
}

var jsonOps = []string{"SendMessage", "SendMessageBatch", "ReceiveMessage", "GetQueueUrl", "ListQueues", "Publish", "PublishBatch",
	"PutRecord", "PutRecords", "GetShardIterator", "GetRecords"}

// FuzzJSONRewrite drives the JSON request and response rewriters (SQS JSON 1.0, SNS JSON, Kinesis
// JSON 1.1): valid JSON in must give valid JSON out, and nothing may panic.
func FuzzJSONRewrite(f *testing.F) {
	for _, svc := range []struct{ name, wire string }{{"sqs", "json10"}, {"kinesis", "json11"}} {
		for op, rr := range captured(f, svc.name, svc.wire) {
			for i, o := range jsonOps {
				if o == op {
					f.Add(uint8(i), rr[0], rr[1])
				}
			}
		}
	}
	p := fuzzProxy(f, true)
	f.Fuzz(func(t *testing.T, opIdx uint8, req, resp []byte) {
		op := jsonOps[int(opIdx)%len(jsonOps)]
		svc, w := ServiceSQS, wireJSON10
		switch {
		case strings.HasPrefix(op, "Publish"):
			svc, w = ServiceSNS, wireJSON11
		case strings.Contains(op, "Record") || op == "GetShardIterator":
			svc, w = ServiceKinesis, wireJSON11
		}
		c := fuzzCall(svc, op, w, req)
		body, fix := p.rewriteRequest(c)
		if json.Valid(req) && !json.Valid(body) {
			t.Fatalf("%s: valid request %q became invalid %q", op, req, body)
		}
		if fix != nil {
			out := fix(resp)
			if out != nil && json.Valid(resp) && !json.Valid(out) {
				t.Fatalf("%s: valid response %q became invalid %q", op, resp, out)
			}
		}
	})
}

var queryOps = []string{"SendMessage", "SendMessageBatch", "ReceiveMessage", "CreateQueue", "ListQueues", "Publish", "PublishBatch"}

// FuzzQueryRewrite drives the Query-form request rewriters and the XML response rewriters: the
// client's own parameters keep their values, and well-formed XML stays well-formed.
func FuzzQueryRewrite(f *testing.F) {
	for _, svc := range []string{"sqs", "sns"} {
		for op, rr := range captured(f, svc, "query") {
			for i, o := range queryOps {
				if o == op {
					f.Add(uint8(i), rr[0], rr[1])
				}
			}
		}
	}
	p := fuzzProxy(f, false)
	f.Fuzz(func(t *testing.T, opIdx uint8, req, resp []byte) {
		op := queryOps[int(opIdx)%len(queryOps)]
		svc := ServiceSQS
		if strings.HasPrefix(op, "Publish") {
			svc = ServiceSNS
		}
		c := fuzzCall(svc, op, wireQuery, req)
		if c == nil {
			return
		}
		orig := map[string]string{}
		for k, v := range c.form.vals {
			orig[k] = v
		}
		body, fix := p.rewriteRequest(c)
		nf, err := parseForm(body)
		if err != nil {
			t.Fatalf("%s: rewritten form %q does not parse: %v", op, body, err)
		}
		for k, v := range orig {
			if nf.vals[k] != v && !strings.Contains(k, "MessageAttribute") && k != "QueueUrl" {
				t.Fatalf("%s: parameter %q changed from %q to %q", op, k, v, nf.vals[k])
			}
		}
		if fix != nil {
			out := fix(resp)
			if out != nil {
				if _, err := parseXML(resp); err == nil {
					if _, err := parseXML(out); err != nil {
						t.Fatalf("%s: well-formed response became malformed: %v\n%s", op, err, out)
					}
				}
			}
		}
	})
}

// FuzzXMLTree checks the element ranges the XML rewriters cut by.
func FuzzXMLTree(f *testing.F) {
	for _, rr := range captured(f, "sqs", "query") {
		f.Add(rr[1])
	}
	f.Add([]byte(`<a><b/><c>x&#xD;y</c></a>`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		root, err := parseXML(doc)
		if err != nil {
			return
		}
		var walk func(n *xnode)
		walk = func(n *xnode) {
			for _, k := range n.Kids {
				if !(0 <= k.Start && k.Start <= k.InStart && k.InStart <= k.InEnd && k.InEnd <= k.End && k.End <= len(doc)) {
					t.Fatalf("bad ranges %+v in %q", k, doc)
				}
				walk(k)
			}
		}
		walk(root)
	})
}

// FuzzMergeBatchAnswers merges arbitrary upstream batch answers. The merge is an error, or, from
// well-formed answers, a well-formed one that holds each entry exactly once: a's results, then
// b's; a's failures but those of the entries sent again, then b's. A JSON answer's other members
// are kept as they were. (JSON with a key twice in an object is left out: which one counts is
// the reader's choice.)
func FuzzMergeBatchAnswers(f *testing.F) {
	f.Add([]byte(`{"Successful":[{"Id":"a"}],"Failed":[{"Id":"b"}]}`), []byte(`{"Successful":[{"Id":"b"}]}`), false)
	f.Add([]byte(`{"Successful":[{"Id":"a","MessageId":"m1"}],"Failed":[{"Id":"b","Code":"c"},{"Id":"c"},{"Id":"\u0062"}],"x":{"y":[1]}}`),
		[]byte(`{"Successful":[{"Id":"b","MessageId":"m2"}],"Failed":[{"Id":"c"}]}`), false)
	f.Add([]byte(`{"Failed":[{"Id":"b"}]}`), []byte(`{"Failed":null,"Successful":[]}`), false)
	f.Add([]byte(`<R><SendMessageBatchResult><BatchResultErrorEntry><Id>b</Id></BatchResultErrorEntry></SendMessageBatchResult></R>`),
		[]byte(`<R><SendMessageBatchResult><SendMessageBatchResultEntry><Id>b</Id></SendMessageBatchResultEntry></SendMessageBatchResult></R>`), true)
	f.Add([]byte(`<R xmlns="q"><SendMessageBatchResult><SendMessageBatchResultEntry><Id>a</Id></SendMessageBatchResultEntry>`+
		`<BatchResultErrorEntry><Id>b</Id><Code>x</Code></BatchResultErrorEntry><BatchResultErrorEntry><Id>c</Id></BatchResultErrorEntry>`+
		`</SendMessageBatchResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></R>`),
		[]byte(`<R><SendMessageBatchResult><BatchResultErrorEntry><Id>&#98;</Id></BatchResultErrorEntry><Other/></SendMessageBatchResult></R>`), true)
	again := map[string]bool{"b": true}
	f.Fuzz(func(t *testing.T, a, b []byte, query bool) {
		w := wireJSON10
		if query {
			w = wireQuery
		}
		got, err := mergeBatchAnswers(w, a, b, again)
		if err != nil {
			return
		}
		if query {
			checkMergedXML(t, a, b, got, again)
		} else {
			checkMergedJSON(t, a, b, got, again)
		}
	})
}

// checkMergedJSON: got, the merge of the JSON answers a and b, as FuzzMergeBatchAnswers says.
func checkMergedJSON(t *testing.T, a, b, got []byte, again map[string]bool) {
	if !json.Valid(a) || !json.Valid(b) || jsonDupKeys(a) || jsonDupKeys(b) {
		return
	}
	if !json.Valid(got) {
		t.Fatalf("merged %q and %q into invalid JSON %q", a, b, got)
	}
	var am, bm, gm map[string]json.RawMessage
	if json.Unmarshal(a, &am) != nil || json.Unmarshal(b, &bm) != nil {
		return // the merge took a JSON value other than an object
	}
	if err := json.Unmarshal(got, &gm); err != nil {
		t.Fatalf("merged %q and %q into %q, no object: %v", a, b, got, err)
	}
	list := func(m map[string]json.RawMessage, key string, drop map[string]bool) []string {
		var elems []json.RawMessage
		_ = json.Unmarshal(m[key], &elems) // null or left out: none
		var out []string
		for _, e := range elems {
			var entry struct{ Id json.RawMessage }
			var id string
			if drop != nil && json.Unmarshal(e, &entry) == nil && json.Unmarshal(entry.Id, &id) == nil && drop[id] {
				continue
			}
			out = append(out, compactJSON(t, e))
		}
		return out
	}
	for _, key := range []string{"Successful", "Failed"} {
		drop := again
		if key == "Successful" {
			drop = nil
		}
		want := append(list(am, key, drop), list(bm, key, nil)...)
		if have := list(gm, key, nil); !slices.Equal(have, want) {
			t.Fatalf("merged %q and %q: %s holds %q, want %q", a, b, key, have, want)
		}
	}
	for k, v := range am {
		if k != "Successful" && k != "Failed" && compactJSON(t, gm[k]) != compactJSON(t, v) {
			t.Fatalf("merged %q and %q: member %q became %s", a, b, k, gm[k])
		}
	}
	for k := range gm {
		if _, ok := am[k]; !ok && k != "Successful" && k != "Failed" {
			t.Fatalf("merged %q and %q: member %q was not in the first answer", a, b, k)
		}
	}
}

func compactJSON(t *testing.T, v []byte) string {
	var buf bytes.Buffer
	if len(v) > 0 {
		if err := json.Compact(&buf, v); err != nil {
			t.Fatalf("%q: %v", v, err)
		}
	}
	return buf.String()
}

// jsonDupKeys reports whether an object in the valid JSON doc names a key twice.
func jsonDupKeys(doc []byte) bool {
	d := json.NewDecoder(bytes.NewReader(doc))
	type frame struct {
		keys  map[string]bool
		inObj bool
		key   bool // the next token of an object is a key
	}
	var stack []*frame
	for {
		tok, err := d.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.inObj && top.key {
			if k, ok := tok.(string); ok {
				if top.keys[k] {
					return true
				}
				top.keys[k] = true
				top.key = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, inObj: true, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].inObj {
			stack[len(stack)-1].key = true // a value ended
		}
	}
}

// checkMergedXML: got, the merge of the Query answers a and b, as FuzzMergeBatchAnswers says.
func checkMergedXML(t *testing.T, a, b, got []byte, again map[string]bool) {
	if !xmlWellFormed(a) || !xmlWellFormed(b) {
		return
	}
	if !xmlWellFormed(got) {
		t.Fatalf("merged %q and %q into malformed XML %q", a, b, got)
	}
	entries := func(doc []byte, drop map[string]bool, only bool) []string {
		root, err := parseXML(doc)
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		var out []string
		for _, k := range root.find("SendMessageBatchResult").Kids {
			isEntry := k.Name == "SendMessageBatchResultEntry" || k.Name == "BatchResultErrorEntry"
			if only && !isEntry {
				continue
			}
			var e struct {
				ID []string `xml:"Id"`
			}
			if drop != nil && k.Name == "BatchResultErrorEntry" && xml.Unmarshal(doc[k.Start:k.End], &e) == nil && len(e.ID) > 0 && drop[e.ID[0]] {
				continue
			}
			out = append(out, string(doc[k.Start:k.End]))
		}
		return out
	}
	want := append(entries(a, again, false), entries(b, nil, true)...)
	if have := entries(got, nil, false); !slices.Equal(have, want) {
		t.Fatalf("merged %q and %q: the result holds %q, want %q", a, b, have, want)
	}
}

// xmlWellFormed: encoding/xml reads doc to its end, every element closed as opened.
func xmlWellFormed(doc []byte) bool {
	d := xml.NewDecoder(bytes.NewReader(doc))
	d.Strict = true
	for {
		_, err := d.Token()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
}

// FuzzBatchSubset cuts arbitrary client batch bodies down to the entries named "a" and "c": no
// panic, and a Query body keeps exactly the entries so named, numbered from 1.
func FuzzBatchSubset(f *testing.F) {
	f.Add([]byte(`{"QueueUrl":"u","Entries":[{"Id":"a","MessageBody":"1"},{"Id":"b","MessageBody":"2"}]}`), false)
	f.Add([]byte("Action=SendMessageBatch&SendMessageBatchRequestEntry.1.Id=b&SendMessageBatchRequestEntry.2.Id=a&SendMessageBatchRequestEntry.2.MessageBody=x"), true)
	ids := map[string]bool{"a": true, "c": true}
	f.Fuzz(func(t *testing.T, body []byte, query bool) {
		c := &call{wire: wireJSON10, body: body}
		if query {
			c.wire = wireQuery
		}
		got, err := batchSubset(c, ids)
		if err != nil || !query {
			return
		}
		in, _ := parseForm(body)
		out, err := parseForm(got)
		if err != nil {
			t.Fatalf("subset %q of %q does not parse: %v", got, body, err)
		}
		want := 0
		for n := 1; ; n++ {
			id, ok := in.vals[queryBatchEntry+itoa(n)+".Id"]
			if !ok {
				break
			}
			if ids[id] {
				want++
			}
		}
		for n := 1; n <= want; n++ {
			if !ids[out.vals[queryBatchEntry+itoa(n)+".Id"]] {
				t.Fatalf("subset %q of %q: entry %d is %q", got, body, n, out.vals[queryBatchEntry+itoa(n)+".Id"])
			}
		}
		if _, ok := out.vals[queryBatchEntry+itoa(want+1)+".Id"]; ok {
			t.Fatalf("subset %q of %q has more than the %d entries named", got, body, want)
		}
	})
}

// FuzzSNSEnvelope: an SQS message whose body is an SNS notification (non-raw delivery), taken
// out of a ReceiveMessage answer by the proxy. The client gets the body byte for byte and every
// other member of the message as it was, but for the message's own `_datadog` attribute (taken
// out, with MD5OfMessageAttributes made again over the rest); the answer stays valid JSON. The
// consume's parent is that attribute's context, or else the one in the envelope's
// MessageAttributes: a context put in as SNS puts it (the last member, Binary or String) into
// any JSON object is read back.
func FuzzSNSEnvelope(f *testing.F) {
	c := pathway.Context{Hash: 7, PathwayStart: time.UnixMilli(1), EdgeStart: time.UnixMilli(2)}
	f.Add(`{"Type":"Notification","Message":"m","MessageAttributes":{"_datadog":{"Type":"Binary","Value":"`+
		base64.StdEncoding.EncodeToString(carrierJSON(nil, c))+`"}}}`, uint64(0), uint8(0))
	f.Add(`{"MessageAttributes":{"_datadog":{"Type":"String","Value":"{}"}}}`, uint64(9), uint8(1))
	f.Add(`{"Type":"Notification","MessageId":"i","TopicArn":"arn:aws:sns:us-east-1:1:t","Message":"{\"a\":1}",`+
		`"Timestamp":"2026-01-01T00:00:00.000Z","SignatureVersion":"1","MessageAttributes":{"k":{"Type":"String","Value":"v"}}}`, uint64(1<<63), uint8(2))
	f.Add(`{"Message":"x"}`, uint64(5), uint8(5))
	f.Add(`not json`, uint64(5), uint8(6))
	var obs pointsObserver
	p, err := New(Config{Listen: "127.0.0.1:0", TrustClients: true, Upstream: "http://127.0.0.1:9",
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), Observer: &obs})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string, hash uint64, mode uint8) {
		// mode&3: 1 puts a Binary `_datadog` into the envelope, 2 a String one; mode&4: the
		// message has a `_datadog` attribute of its own (raw delivery's, or the proxy's).
		put := pathway.Context{Hash: hash | 1, PathwayStart: time.UnixMilli(1_700_000_000_000), EdgeStart: time.UnixMilli(1_700_000_000_500)}
		if kind := mode & 3; kind == 1 || kind == 2 {
			var ok bool
			if body, ok = putEnvelopeContext(body, put, kind == 1); !ok {
				return
			}
			if got := contextFromSNSEnvelope(body); got.Hash != put.Hash || !got.PathwayStart.Equal(put.PathwayStart) || !got.EdgeStart.Equal(put.EdgeStart) {
				t.Fatalf("context %+v put into the envelope %q, read %+v", put, body, got)
			}
		}
		own := pathway.Context{Hash: 0xfeed, PathwayStart: time.UnixMilli(1_700_000_000_000), EdgeStart: time.UnixMilli(1_700_000_000_000)}
		attrs := map[string]any{"k": map[string]string{"DataType": "String", "StringValue": "v"}}
		if mode&4 != 0 {
			attrs[ddAttr] = map[string]string{"DataType": "String", "StringValue": string(carrierJSON(nil, own))}
		}
		msg := map[string]any{"MessageId": "m", "ReceiptHandle": "r", "MD5OfBody": "x", "Body": body, "MessageAttributes": attrs,
			"MD5OfMessageAttributes": "y", "Attributes": map[string]string{"SentTimestamp": "1"}}
		if !utf8.ValidString(body) {
			return // no SQS message: json.Marshal would change it
		}
		resp, err := json.Marshal(map[string]any{"Messages": []any{msg}})
		if err != nil {
			t.Fatal(err)
		}
		cl := fuzzCall(ServiceSQS, "ReceiveMessage", wireJSON10, []byte(`{"QueueUrl":"http://127.0.0.1:4566/000000000000/q"}`))
		_, fix := p.rewriteRequest(cl)
		if fix == nil {
			t.Fatal("a ReceiveMessage request left no answer to read")
		}
		obs.take()
		out := fix(resp)
		if out == nil {
			out = resp
		}
		if !json.Valid(out) {
			t.Fatalf("the answer %q became invalid JSON %q", resp, out)
		}
		var got struct{ Messages []map[string]any }
		if err := json.Unmarshal(out, &got); err != nil || len(got.Messages) != 1 {
			t.Fatalf("the answer %q became %q: %v", resp, out, err)
		}
		gm := got.Messages[0]
		if gm["Body"] != body {
			t.Fatalf("the body %q reached the client as %q", body, gm["Body"])
		}
		wantAttrs := map[string]any{"k": map[string]any{"DataType": "String", "StringValue": "v"}}
		if !reflect.DeepEqual(gm["MessageAttributes"], wantAttrs) {
			t.Fatalf("the message's attributes reached the client as %v, want %v", gm["MessageAttributes"], wantAttrs)
		}
		for k, v := range msg {
			if k == "MessageAttributes" || k == "MD5OfMessageAttributes" || k == "Body" {
				continue
			}
			if fmt.Sprint(gm[k]) != fmt.Sprint(v) {
				t.Fatalf("member %s reached the client as %v, not %v", k, gm[k], v)
			}
		}
		if len(gm) != len(msg) {
			t.Fatalf("the message reached the client with members %v, sent %v", gm, msg)
		}
		pts := obs.take()
		if len(pts) != 1 {
			t.Fatalf("%d consume checkpoints for one message", len(pts))
		}
		want := contextFromSNSEnvelope(body).Hash
		switch {
		case mode&4 != 0:
			want = own.Hash
		case mode&3 == 1, mode&3 == 2:
			want = put.Hash
		}
		if pts[0].ParentHash != want {
			t.Fatalf("the consume's parent is %x, want %x", pts[0].ParentHash, want)
		}
	})
}

// putEnvelopeContext puts ctx into the JSON object env as SNS delivers a `_datadog` message
// attribute, in a MessageAttributes member after all others (a JSON reader takes the last of a
// key given twice); false when env is no JSON object.
func putEnvelopeContext(env string, ctx pathway.Context, binary bool) (string, bool) {
	var obj map[string]json.RawMessage
	if json.Unmarshal([]byte(env), &obj) != nil || obj == nil {
		return "", false
	}
	typ, val := "String", string(carrierJSON(nil, ctx))
	if binary {
		typ, val = "Binary", base64.StdEncoding.EncodeToString([]byte(val))
	}
	attr, _ := json.Marshal(map[string]any{ddAttr: map[string]string{"Type": typ, "Value": val}})
	end := strings.LastIndexByte(env, '}')
	sep := ","
	if len(obj) == 0 {
		sep = ""
	}
	return env[:end] + sep + `"MessageAttributes":` + string(attr) + env[end:], true
}

// pointsObserver keeps the checkpoints a proxy takes.
type pointsObserver struct {
	mu  sync.Mutex
	pts []pathway.Point
}

func (o *pointsObserver) Add(pt pathway.Point) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pts = append(o.pts, pt)
	return true
}

func (o *pointsObserver) Offset(pathway.Offset) bool { return true }

// take returns the checkpoints kept so far and forgets them.
func (o *pointsObserver) take() []pathway.Point {
	o.mu.Lock()
	defer o.mu.Unlock()
	pts := o.pts
	o.pts = nil
	return pts
}

// FuzzAuthorization parses SigV4 Authorization headers and verifies requests carrying them.
func FuzzAuthorization(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AKID/20261122/us-east-1/sqs/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=" + strings.Repeat("ab", 32))
	f.Add("AWS4-HMAC-SHA256 Credential=a/b/c/d/e,SignedHeaders=,Signature=")
	f.Fuzz(func(t *testing.T, h string) {
		a, err := parseAuthorization(h)
		if err != nil {
			return
		}
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:4566/q?a=b", nil)
		r.Header.Set("Authorization", h)
		r.Header.Set("X-Amz-Date", "20261122T000000Z")
		if verifySigV4(r, &a, "secret", nil, time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC), time.Minute) == nil {
			t.Fatalf("random signature %q verified", h)
		}
	})
}

// FuzzKinesisDataRoundTrip: data the proxy injects into is restored byte for byte on GetRecords.
func FuzzKinesisDataRoundTrip(f *testing.F) {
	f.Add([]byte(`{"a":1}`))
	f.Add([]byte("{ }\n"))
	f.Add([]byte(`{"x":{"y":[1,2]}, "z":"}"}`))
	p := fuzzProxy(f, true)
	f.Fuzz(func(t *testing.T, data []byte) {
		req := []byte(`{"StreamName":"s","PartitionKey":"k","Data":"` + base64.StdEncoding.EncodeToString(data) + `"}`)
		c := fuzzCall(ServiceKinesis, "PutRecord", wireJSON11, req)
		body, _ := p.rewriteRequest(c)
		var put struct{ Data []byte }
		if err := json.Unmarshal(body, &put); err != nil {
			t.Fatalf("rewritten PutRecord %q: %v", body, err)
		}
		if bytes.Equal(put.Data, data) {
			return // not injected
		}
		resp := []byte(`{"Records":[{"Data":"` + base64.StdEncoding.EncodeToString(put.Data) + `","PartitionKey":"k","SequenceNumber":"1"}],"NextShardIterator":"i"}`)
		gc := fuzzCall(ServiceKinesis, "GetRecords", wireJSON11, []byte(`{"ShardIterator":"i0"}`))
		_, fix := p.rewriteRequest(gc)
		out := fix(resp)
		var got struct{ Records []struct{ Data []byte } }
		if err := json.Unmarshal(out, &got); err != nil || len(got.Records) != 1 {
			t.Fatalf("GetRecords rewrite %q: %v", out, err)
		}
		if !bytes.Equal(got.Records[0].Data, data) {
			t.Fatalf("consumer sees %q, producer sent %q", got.Records[0].Data, data)
		}
	})
}

// FuzzCBOR decodes arbitrary bytes as a Kinesis CBOR body, and the CBOR rewriter path with them:
// a request goes upstream byte for byte as it came, and an answer the GetRecords path rewrites
// still decodes, to the same document but for its records' Data, the only members it may change.
func FuzzCBOR(f *testing.F) {
	f.Add(cborEnc(nil, map[string]any{"StreamName": "s", "Data": []byte("{}"), "PartitionKey": "k"}, false))
	f.Add(cborEnc(nil, map[string]any{"Records": []any{map[string]any{"Data": []byte{1}, "PartitionKey": "k"}}}, true))
	f.Add([]byte{0xbf, 0x61, 0x61, 0x5f, 0x41, 0x00, 0xff, 0xff})
	f.Add([]byte{0xf9, 0x3c, 0x00})
	// GetRecords answers whose records carry the `_datadog` the proxy adds, which it takes out.
	withCtx := []byte(`{"a":1,"_datadog":{"dd-pathway-ctx-base64":"` + string(pathway.Context{Hash: 7}.AppendBase64(nil)) + `"}}`)
	for _, indef := range []bool{false, true} {
		f.Add(cborEnc(nil, map[string]any{"NextShardIterator": "i", "Records": []any{
			map[string]any{"Data": withCtx, "PartitionKey": "k", "SequenceNumber": "1"},
			map[string]any{"Data": base64.StdEncoding.EncodeToString(withCtx), "PartitionKey": "k"},
			map[string]any{"Data": []byte("{}"), "PartitionKey": "withCtx"}}}, indef))
	}
	p := fuzzProxy(f, false)
	f.Fuzz(func(t *testing.T, b []byte) {
		cborDecode(b)
		for _, op := range []string{"PutRecords", "GetRecords"} {
			c := fuzzCall(ServiceKinesis, op, wireCBOR, b)
			body, fix := p.rewriteRequest(c)
			if !bytes.Equal(body, b) {
				t.Fatalf("%s: CBOR request %x went upstream as %x", op, b, body)
			}
			if fix == nil {
				continue
			}
			out := fix(b)
			if out == nil {
				continue
			}
			if op != "GetRecords" {
				t.Fatalf("%s: answer %x rewritten to %x", op, b, out)
			}
			before, _ := cborDecode(b)
			after, err := cborDecode(out)
			if err != nil {
				t.Fatalf("GetRecords answer %x rewritten to %x, which does not decode: %v", b, out, err)
			}
			if !sameCBOR(withoutData(before), withoutData(after)) {
				t.Fatalf("GetRecords answer %x rewritten to %x: more than records' Data changed", b, out)
			}
		}
	})
}

// withoutData is a decoded GetRecords answer with its records' Data members taken out.
func withoutData(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	recs, ok := m["Records"].([]any)
	if !ok {
		return v
	}
	out := map[string]any{}
	for k, x := range m {
		out[k] = x
	}
	rs := make([]any, len(recs))
	for i, r := range recs {
		rm, ok := r.(map[string]any)
		if !ok {
			rs[i] = r
			continue
		}
		c := map[string]any{}
		for k, x := range rm {
			if k != "Data" {
				c[k] = x
			}
		}
		rs[i] = c
	}
	out["Records"] = rs
	return out
}

// sameCBOR: a and b are the same decoded CBOR value; a NaN is the same as a NaN.
func sameCBOR(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || x != x && y != y)
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameCBOR(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !sameCBOR(v, w) {
				return false
			}
		}
		return true
	case []byte:
		y, ok := b.([]byte)
		return ok && bytes.Equal(x, y)
	}
	return a == b
}

// FuzzCarrierJSON: whatever `_datadog` value a message brings, the carrier the proxy sends is JSON
// whose pathway member decodes to the context put in; a trace carrier's other members survive.
func FuzzCarrierJSON(f *testing.F) {
	for _, s := range []string{``, `{}`, `null`, `"x"`, `{"x-datadog-trace-id":"1"}`,
		`{"dd-pathway-ctx-base64":"old","a":[1,{"b":"}"}]}`, ` { "DD-PATHWAY-CTX-BASE64" : 1 } `, `{"a":1,}`} {
		f.Add([]byte(s))
	}
	ctx := pathway.Context{Hash: 0x0123456789abcdef, PathwayStart: time.Unix(1700000000, 0), EdgeStart: time.Unix(1700000001, 0)}
	f.Fuzz(func(t *testing.T, existing []byte) {
		got := carrierJSON(existing, ctx)
		if !json.Valid(got) {
			t.Fatalf("carrierJSON(%q) = %q, not JSON", existing, got)
		}
		if back := contextFromCarrier(got); back.Hash != ctx.Hash {
			t.Fatalf("carrierJSON(%q) = %q: context hash %x, want %x", existing, got, back.Hash, ctx.Hash)
		}
		if !isCarrier(existing) {
			return
		}
		var in, out map[string]json.RawMessage
		if json.Unmarshal(existing, &in) != nil || json.Unmarshal(got, &out) != nil {
			return // duplicate or odd keys: encoding/json's reading is not the proxy's
		}
		for k, v := range in {
			if strings.EqualFold(k, pathway.HeaderKey) {
				continue
			}
			if w, ok := out[k]; !ok || !bytes.Equal(w, v) {
				t.Fatalf("carrierJSON(%q) = %q lost member %q", existing, got, k)
			}
		}
	})
}
