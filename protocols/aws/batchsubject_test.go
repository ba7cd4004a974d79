package aws

import (
	"bytes"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
)

// TestSNSBatchLimitCountsSubject: the batch total that decides whether `_datadog` still fits
// under MaxMessageBytes counts each entry's Subject, as its payload size does, in the JSON and
// the Query wire forms alike: a PublishBatch whose messages fit with `_datadog` only without
// their Subjects goes unmodified in both.
func TestSNSBatchLimitCountsSubject(t *testing.T) {
	// Two 700-byte messages, and SNS's Binary `_datadog` adds about 95 bytes each: both fit
	// under the limit (1,590 of 1,650 past the 256 SNS keeps free), but with two 100-byte
	// Subjects (1,600 before any) neither does.
	const limit = 1650 + snsSizeMargin
	arn := "arn:aws:sns:us-east-1:000000000000:batchsubject"
	msg := strings.Repeat("m", 700)
	subject := strings.Repeat("s", 100)
	jsonBody := func(subj string) []byte {
		var b bytes.Buffer
		fmt.Fprintf(&b, `{"TopicArn":%q,"PublishBatchRequestEntries":[`, arn)
		for i := range 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"Id":"e%d","Message":%q`, i, msg)
			if subj != "" {
				fmt.Fprintf(&b, `,"Subject":%q`, subj)
			}
			b.WriteByte('}')
		}
		b.WriteString("]}")
		return b.Bytes()
	}
	queryBody := func(subj string) []byte {
		v := url.Values{"Action": {"PublishBatch"}, "TopicArn": {arn}}
		for i := 1; i <= 2; i++ {
			pre := fmt.Sprintf("PublishBatchRequestEntries.member.%d.", i)
			v.Set(pre+"Id", fmt.Sprintf("e%d", i))
			v.Set(pre+"Message", msg)
			if subj != "" {
				v.Set(pre+"Subject", subj)
			}
		}
		return []byte(v.Encode())
	}
	for _, tc := range []struct {
		name string
		w    wire
		body func(string) []byte
	}{{"json", wireJSON11, jsonBody}, {"query", wireQuery, queryBody}} {
		for _, subj := range []string{"", subject} {
			p, err := New(Config{Listen: "127.0.0.1:0", TrustClients: true, Upstream: "http://127.0.0.1:9", Observer: &recorder{},
				MaxMessageBytes: limit, Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
			if err != nil {
				t.Fatal(err)
			}
			in := tc.body(subj)
			out, _ := p.rewriteRequest(fuzzCall("sns", "PublishBatch", tc.w, in))
			injected := bytes.Contains(out, []byte(ddAttr))
			if want := subj == ""; injected != want {
				t.Errorf("%s, Subject of %d bytes: injected %v, want %v (1,400 bytes of messages and %d of Subjects, a %d-byte batch limit)",
					tc.name, len(subj), injected, want, 2*len(subj), limit)
			}
		}
	}
}
