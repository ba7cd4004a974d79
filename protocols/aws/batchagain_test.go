package aws

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestSQSBatchEntriesSentAgain: batch entries that fit their queue (1 KiB here) only without
// `_datadog` are refused with it while the batch's other entries are stored; the proxy sends them
// again without it in a batch of their own and merges the answers, so the client sees what a
// direct batch gets: every such entry stored, an entry too big on its own failed with SQS's
// reason, and MD5s that match what it sent (the SDKs check them). In both wire forms. A FIFO
// batch, refused whole, is sent again whole, in its order.
func TestSQSBatchEntriesSentAgain(t *testing.T) {
	tp, up, cl, _, ctx := sqsSetup(t, "own-limit-batch-base", nil)
	small := func(name string, attrs map[string]string) string { return smallQueue(ctx, t, cl, name, attrs) }
	near := strings.Repeat("n", 1000)   // fits 1024 alone, not with _datadog
	tooBig := strings.Repeat("b", 2000) // fits neither way
	ids := func(s []types.SendMessageBatchResultEntry, f []types.BatchResultErrorEntry) (ok, failed []string) {
		for _, e := range s {
			ok = append(ok, awssdk.ToString(e.Id))
		}
		for _, e := range f {
			failed = append(failed, awssdk.ToString(e.Id))
		}
		slices.Sort(ok)
		slices.Sort(failed)
		return ok, failed
	}

	qb := small("own-limit-batch", nil)
	bm, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &qb, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("near1"), MessageBody: &near},
		{Id: awssdk.String("short"), MessageBody: awssdk.String("short")},
		{Id: awssdk.String("big"), MessageBody: &tooBig},
		{Id: awssdk.String("near2"), MessageBody: awssdk.String(near[:960]),
			MessageAttributes: map[string]types.MessageAttributeValue{"k": {DataType: awssdk.String("String"), StringValue: awssdk.String("v")}}},
	}})
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	ok, failed := ids(bm.Successful, bm.Failed)
	if !slices.Equal(ok, []string{"near1", "near2", "short"}) || !slices.Equal(failed, []string{"big"}) {
		t.Fatalf("batch answered %v stored, %v failed; want near1 near2 short, big", ok, failed)
	}
	if f := bm.Failed[0]; !f.SenderFault || !strings.Contains(awssdk.ToString(f.Message), "Message must be shorter than 1024") {
		t.Errorf("the entry too big on its own failed with %+v, want SQS's size refusal", f)
	}
	for _, e := range bm.Successful {
		if id := awssdk.ToString(e.Id); id == "near2" && awssdk.ToString(e.MD5OfMessageAttributes) != attributesMD5([]attr{{Name: "k", DataType: "String", String: awssdk.String("v")}}) {
			t.Errorf("near2 answered MD5OfMessageAttributes %q, not the client's", awssdk.ToString(e.MD5OfMessageAttributes))
		}
	}
	st := tp.Stats()
	if st.SentAgain != 1 || st.Injected != 1 {
		t.Errorf("stats %+v: want 1 sent again and 1 injected (short)", st)
	}
	if n := len(tp.ev.named("queue_size_limit")); n != 3 {
		t.Errorf("%d queue_size_limit skips, want 3 (near1, near2, big)", n)
	}
	lost := 0
	for _, ev := range tp.ev.all() {
		if ev.Category == errtrack.LostMessage && ev.Edge.Topic == "own-limit-batch" {
			lost += ev.Messages
			if !strings.Contains(ev.Message, "entry big:") {
				t.Errorf("an entry reported lost that the client got stored: %s", ev.Message)
			}
		}
	}
	if lost != 1 {
		t.Errorf("%d messages reported lost, want 1 (big, once)", lost)
	}
	checkUpstreamURLs(t, tp, up)
	got := receiveAll(ctx, t, cl, qb, 3, []string{"All"})
	if len(got) != 3 {
		t.Fatalf("%d messages stored, want 3", len(got))
	}
	for _, m := range got {
		_, carries := m.MessageAttributes[ddAttr]
		if body := awssdk.ToString(m.Body); carries != (body == "short") {
			t.Errorf("a %d-byte message stored with _datadog %v", len(body), carries)
		}
	}
	if n := len(tp.rec.withTags("direction:out", "topic:own-limit-batch")); n != 3 {
		t.Errorf("%d produce checkpoints, want 3", n)
	}

	// The queue's limit is known now: such entries go without _datadog at once.
	bm, err = cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &qb, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("a"), MessageBody: &near}, {Id: awssdk.String("b"), MessageBody: awssdk.String("short")},
	}})
	if err != nil || len(bm.Successful) != 2 {
		t.Fatalf("second batch: %v %+v", err, bm)
	}
	if st := tp.Stats(); st.SentAgain != 1 {
		t.Errorf("%d sent again after the second batch, want still 1", st.SentAgain)
	}

	// The Query form (Debian's awscli); the entries sent again are the first and the third, so
	// they are numbered again.
	aws := newCLI(t, tp.url)
	qq := small("own-limit-batch-query", nil)
	var out struct {
		Successful []struct{ Id, MD5OfMessageBody string }
		Failed     []struct{ Id, Message string }
	}
	aws.run(ctx, &out, "sqs", "send-message-batch", "--queue-url", qq, "--entries",
		`[{"Id":"q1","MessageBody":"`+near+`"},{"Id":"q2","MessageBody":"short"},{"Id":"q3","MessageBody":"`+near[:990]+`"}]`)
	var qok []string
	for _, e := range out.Successful {
		qok = append(qok, e.Id)
	}
	slices.Sort(qok)
	if !slices.Equal(qok, []string{"q1", "q2", "q3"}) || len(out.Failed) != 0 {
		t.Errorf("Query batch answered %v stored, %+v failed; want q1 q2 q3 stored", qok, out.Failed)
	}
	if st := tp.Stats(); st.SentAgain != 2 {
		t.Errorf("%d sent again after the Query batch, want 2", st.SentAgain)
	}
	checkUpstreamURLs(t, tp, up)
	if got := receiveAll(ctx, t, cl, qq, 3, []string{"All"}); len(got) != 3 {
		t.Errorf("%d Query-sent messages stored, want 3", len(got))
	}

	// FIFO: SQS refuses the whole batch (the emulator does), so nothing is stored and the whole
	// batch goes again without _datadog, in its order.
	qf := small("own-limit-batch.fifo", map[string]string{"FifoQueue": "true", "ContentBasedDeduplication": "true"})
	g := awssdk.String("g")
	bm, err = cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &qf, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("first"), MessageBody: &near, MessageGroupId: g},
		{Id: awssdk.String("after"), MessageBody: awssdk.String("after"), MessageGroupId: g},
	}})
	if err != nil {
		t.Fatalf("FIFO batch: %v", err)
	}
	if ok, failed := ids(bm.Successful, bm.Failed); len(ok) != 2 || len(failed) != 0 {
		t.Errorf("FIFO batch answered %v stored, %v failed; want both stored", ok, failed)
	}
	if st := tp.Stats(); st.SentAgain != 3 {
		t.Errorf("%d sent again after the FIFO batch, want 3", st.SentAgain)
	}
	var order []string
	for _, m := range receiveAll(ctx, t, cl, qf, 2, []string{"All"}) {
		order = append(order, awssdk.ToString(m.Body)[:5])
	}
	if !slices.Equal(order, []string{"nnnnn", "after"}) {
		t.Errorf("FIFO group received as %v, want the batch's order", order)
	}
}

// TestBatchEntriesOverQueueLimit: which refused entries are sent again. Only those the proxy gave
// `_datadog` and refused for size, and none of a FIFO queue's (the group's later entries are
// stored already).
func TestBatchEntriesOverQueueLimit(t *testing.T) {
	refusal := `{"Failed":[` +
		`{"Id":"a","Code":"InvalidParameterValue","Message":"One or more parameters are invalid. Reason: Message must be shorter than 1024 bytes.","SenderFault":true},` +
		`{"Id":"b","Code":"InvalidParameterValue","Message":"One or more parameters are invalid. Reason: Message must be shorter than 1024 bytes.","SenderFault":true},` +
		`{"Id":"c","Code":"InvalidParameterValue","Message":"Value x for parameter DelaySeconds is invalid.","SenderFault":true}]}`
	for _, tc := range []struct {
		queue string
		want  []string
	}{{"orders", []string{"a"}}, {"orders.fifo", nil}} {
		p := &Proxy{sizes: newQueueLimits()}
		c := &call{r: httptest.NewRequest("POST", "http://sqs.local/", nil), service: ServiceSQS, wire: wireJSON10,
			op: "SendMessageBatch", injected: 2, edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: tc.queue},
			out: map[string]*outMsg{"a": {ID: "a", Injected: true}, "b": {ID: "b"}, "c": {ID: "c", Injected: true}}}
		var got []string
		for id := range p.batchEntriesOverQueueLimit(c, []byte(refusal)) {
			got = append(got, id)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: sent again %v, want %v", tc.queue, got, tc.want)
		}
	}
}

// TestMergeBatchAnswers: the entries sent again replace their first failures; everything else of
// the first answer stays as the service wrote it.
func TestMergeBatchAnswers(t *testing.T) {
	again := map[string]bool{"b": true, "c": true}
	for _, tc := range []struct {
		name    string
		w       wire
		a, b    string
		want    string
		wantErr bool
	}{{
		name: "json",
		w:    wireJSON10,
		a:    `{"Successful":[{"Id":"a","MessageId":"1"}],"Failed":[{"Id":"b","Code":"X"},{"Id":"z","Code":"Y"},{"Id":"c","Code":"X"}]}`,
		b:    `{"Successful":[{"Id":"b","MessageId":"2"}],"Failed":[{"Id":"c","Code":"Z"}]}`,
		want: `{"Successful":[{"Id":"a","MessageId":"1"},{"Id":"b","MessageId":"2"}],"Failed":[{"Id":"z","Code":"Y"},{"Id":"c","Code":"Z"}]}`,
	}, {
		// local-aws-sqs leaves out an empty list, SQS may too
		name: "json without Successful",
		w:    wireJSON10,
		a:    `{"Failed":[{"Id":"b","Code":"X"},{"Id":"c","Code":"X"}]}`,
		b:    `{"Successful":[{"Id":"b"},{"Id":"c"}]}`,
		want: `{"Failed":[],"Successful":[{"Id":"b"},{"Id":"c"}]}`,
	}, {
		name: "json without Failed",
		w:    wireJSON10,
		a:    `{}`, b: `{}`, wantErr: true,
	}, {
		name: "json not an object",
		w:    wireJSON10,
		a:    `[]`, b: `{}`, wantErr: true,
	}, {
		name: "xml",
		w:    wireQuery,
		a: `<SendMessageBatchResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><SendMessageBatchResult>` +
			`<SendMessageBatchResultEntry><Id>a</Id></SendMessageBatchResultEntry>` +
			`<BatchResultErrorEntry><Id>b</Id><Code>X</Code></BatchResultErrorEntry>` +
			`<BatchResultErrorEntry><Id>z</Id><Code>Y</Code></BatchResultErrorEntry>` +
			`<BatchResultErrorEntry><Id>c</Id><Code>X</Code></BatchResultErrorEntry>` +
			`</SendMessageBatchResult><ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata></SendMessageBatchResponse>`,
		b: `<SendMessageBatchResponse><SendMessageBatchResult>` +
			`<SendMessageBatchResultEntry><Id>b</Id></SendMessageBatchResultEntry>` +
			`<BatchResultErrorEntry><Id>c</Id><Code>Z</Code></BatchResultErrorEntry>` +
			`</SendMessageBatchResult><ResponseMetadata><RequestId>r2</RequestId></ResponseMetadata></SendMessageBatchResponse>`,
		want: `<SendMessageBatchResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><SendMessageBatchResult>` +
			`<SendMessageBatchResultEntry><Id>a</Id></SendMessageBatchResultEntry>` +
			`<BatchResultErrorEntry><Id>z</Id><Code>Y</Code></BatchResultErrorEntry>` +
			`<SendMessageBatchResultEntry><Id>b</Id></SendMessageBatchResultEntry>` +
			`<BatchResultErrorEntry><Id>c</Id><Code>Z</Code></BatchResultErrorEntry>` +
			`</SendMessageBatchResult><ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata></SendMessageBatchResponse>`,
	}, {
		name: "xml without a result",
		w:    wireQuery,
		a:    `<SendMessageBatchResponse/>`, b: `<SendMessageBatchResponse/>`, wantErr: true,
	}} {
		got, err := mergeBatchAnswers(tc.w, []byte(tc.a), []byte(tc.b), again)
		if (err != nil) != tc.wantErr || string(got) != tc.want {
			t.Errorf("%s: got %s (%v), want %s", tc.name, got, err, tc.want)
		}
	}
}

// TestBatchSubset: the body sent again holds the refused entries only, as the client encoded
// them; Query entries are numbered again from 1.
func TestBatchSubset(t *testing.T) {
	ids := map[string]bool{"x": true, "z": true}
	c := &call{wire: wireJSON10, body: []byte(`{"QueueUrl":"u","Entries":[{"Id":"x","MessageBody":"1"}, {"Id":"y","MessageBody":"2"},{"Id":"z","MessageBody":"3","MessageAttributes":{"k":{"DataType":"String","StringValue":"v"}}}]}`)}
	got, err := batchSubset(c, ids)
	if want := `{"QueueUrl":"u","Entries":[{"Id":"x","MessageBody":"1"},{"Id":"z","MessageBody":"3","MessageAttributes":{"k":{"DataType":"String","StringValue":"v"}}}]}`; err != nil || string(got) != want {
		t.Errorf("JSON: %s (%v), want %s", got, err, want)
	}
	c = &call{wire: wireQuery, body: []byte("Action=SendMessageBatch&QueueUrl=u%2Fq" +
		"&SendMessageBatchRequestEntry.1.Id=x&SendMessageBatchRequestEntry.1.MessageBody=a%20b" +
		"&SendMessageBatchRequestEntry.2.Id=y&SendMessageBatchRequestEntry.2.MessageBody=c" +
		"&SendMessageBatchRequestEntry.3.Id=z&SendMessageBatchRequestEntry.3.MessageBody=d" +
		"&SendMessageBatchRequestEntry.3.MessageAttribute.1.Name=k&Version=2012-11-05")}
	got, err = batchSubset(c, ids)
	want := "Action=SendMessageBatch&QueueUrl=u%2Fq" +
		"&SendMessageBatchRequestEntry.1.Id=x&SendMessageBatchRequestEntry.1.MessageBody=a%20b" +
		"&SendMessageBatchRequestEntry.2.Id=z&SendMessageBatchRequestEntry.2.MessageBody=d" +
		"&SendMessageBatchRequestEntry.2.MessageAttribute.1.Name=k&Version=2012-11-05"
	if err != nil || string(got) != want {
		t.Errorf("Query: %s (%v), want %s", got, err, want)
	}
}

// TestSQSBatchSentAgainFails: when the send again fails (the service errs, or answers without
// naming the entries), the client gets the first answer, its refused entries failed there and reported lost once each;
// their `_datadog` is not counted as injected.
func TestSQSBatchSentAgainFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		answer string
	}{
		{"server error", 500, `{"__type":"com.amazonaws.sqs#InternalError","message":"We encountered an internal error."}`},
		{"refused", 400, `{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}`},
		{"answer names none", 200, `{"Successful":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp, up, cl, _, ctx := sqsSetup(t, "again-fails-base", nil)
			qurl := smallQueue(ctx, t, cl, "again-fails", nil)
			batches := 0
			up.setIntercept(func(body string) (int, string) {
				if strings.Contains(body, `"Entries"`) {
					if batches++; batches == 2 {
						return tc.status, tc.answer
					}
				}
				return 0, ""
			})
			near := strings.Repeat("n", 1000)
			bm, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &qurl, Entries: []types.SendMessageBatchRequestEntry{
				{Id: awssdk.String("near"), MessageBody: &near}, {Id: awssdk.String("short"), MessageBody: awssdk.String("short")},
			}})
			if err != nil {
				t.Fatalf("batch: %v", err)
			}
			if len(bm.Failed) != 1 || awssdk.ToString(bm.Failed[0].Id) != "near" || len(bm.Successful) != 1 {
				t.Fatalf("batch answered %+v, want near failed (the first answer)", bm)
			}
			if batches != 2 {
				t.Fatalf("%d batches reached the upstream, want 2", batches)
			}
			lost := 0
			for _, ev := range tp.ev.all() {
				if ev.Category == errtrack.LostMessage {
					lost += ev.Messages
				}
			}
			if lost != 1 {
				t.Errorf("%d messages reported lost, want 1 (near, once)", lost)
			}
			if st := tp.Stats(); st.Injected != 1 || st.SentAgain != 1 {
				t.Errorf("stats %+v: want 1 injected (short) and 1 sent again", st)
			}
		})
	}
}
