package aws

import (
	"testing"
)

// TestTruncatedAnswerTracked: every answer the proxy reads for checkpoints (which entries were
// stored, which messages came back) or rewrites (the attributes' MD5) is, when it cannot be read,
// passed on as it came and counted in DecodeErrors. A batch whose answer went unread got no produce
// checkpoints, and nothing said so. The answers are the recorded emulator answers cut in half.
func TestTruncatedAnswerTracked(t *testing.T) {
	for _, tc := range []struct {
		service, wireName, op string
		w                     wire
	}{
		{"sqs", "json10", "SendMessage", wireJSON10},
		{"sqs", "json10", "SendMessageBatch", wireJSON10},
		{"sqs", "json10", "ReceiveMessage", wireJSON10},
		{"sqs", "query", "SendMessage", wireQuery},
		{"sqs", "query", "SendMessageBatch", wireQuery},
		{"sqs", "query", "ReceiveMessage", wireQuery},
		{"sns", "query", "PublishBatch", wireQuery},
		{"kinesis", "json11", "PutRecords", wireJSON11},
		{"kinesis", "json11", "GetRecords", wireJSON11},
	} {
		t.Run(tc.service+"/"+tc.wireName+"/"+tc.op, func(t *testing.T) {
			rr, ok := captured(t, tc.service, tc.wireName)[tc.op]
			if !ok {
				t.Fatalf("no captured %s %s %s", tc.service, tc.wireName, tc.op)
			}
			p := fuzzProxy(t, true)
			c := fuzzCall(tc.service, tc.op, tc.w, rr[0])
			_, fix := p.rewriteRequest(c)
			if fix == nil {
				t.Fatal("no answer reader for the captured request")
			}
			if out := fix(rr[1][:len(rr[1])/2]); out != nil {
				t.Errorf("a truncated answer was rewritten: %q", out)
			}
			if n := p.Stats().DecodeErrors; n != 1 {
				t.Errorf("DecodeErrors %d after a truncated answer, want 1", n)
			}
		})
	}
}
