package aws

import (
	"bytes"
	"strings"
	"testing"
)

// TestRewritesOnlyInsert: a send's rewrite of captured real client bodies only inserts (the
// `_datadog` attribute); every byte the client wrote is still there, in order.
func TestRewritesOnlyInsert(t *testing.T) {
	p := fuzzProxy(t, false)
	cases := []struct {
		service, wireName, op string
		w                     wire
	}{
		{"sqs", "json10", "SendMessage", wireJSON10}, {"sqs", "json10", "SendMessageBatch", wireJSON10},
		{"sqs", "json10", "ReceiveMessage", wireJSON10}, {"sqs", "query", "SendMessage", wireQuery},
		{"sqs", "query", "SendMessageBatch", wireQuery}, {"sqs", "query", "ReceiveMessage", wireQuery},
		{"sns", "query", "Publish", wireQuery}, {"sns", "query", "PublishBatch", wireQuery},
	}
	for _, tc := range cases {
		rr := captured(t, tc.service, tc.wireName)[tc.op]
		c := fuzzCall(tc.service, tc.op, tc.w, rr[0])
		body, _ := p.rewriteRequest(c)
		if bytes.Equal(body, rr[0]) {
			t.Errorf("%s %s: nothing injected", tc.service, tc.op)
			continue
		}
		if !isSubsequence(rr[0], body) {
			t.Errorf("%s %s: client bytes changed:\n%s\n->\n%s", tc.service, tc.op, rr[0], body)
		}
		if !bytes.Contains(body, []byte(ddAttr)) {
			t.Errorf("%s %s: no _datadog in %s", tc.service, tc.op, body)
		}
	}
}

func isSubsequence(sub, s []byte) bool {
	i := 0
	for j := 0; j < len(s) && i < len(sub); j++ {
		if s[j] == sub[i] {
			i++
		}
	}
	return i == len(sub)
}

// TestSNSWithoutTopicUntouched: an SMS publish (PhoneNumber, no topic) goes through as it is.
func TestSNSWithoutTopicUntouched(t *testing.T) {
	p := fuzzProxy(t, false)
	req := []byte("Action=Publish&Version=2010-03-31&PhoneNumber=%2B15555550100&Message=hi")
	body, fix := p.rewriteRequest(fuzzCall("sns", "Publish", wireQuery, req))
	if !bytes.Equal(body, req) || fix != nil {
		t.Fatalf("SMS publish rewritten: %s", body)
	}
	if strings.Contains(string(body), ddAttr) {
		t.Fatal("_datadog added to an SMS")
	}
}
