package aws

import (
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
)

// TestOverTenAttributesSaysWhoRefuses: a message of 11 attributes is refused by SQS, whatever the
// proxy does, but SNS takes it (its raw deliveries to SQS drop the attributes): the skip's
// message must not tell an SNS publisher that the service will refuse it.
func TestOverTenAttributesSaysWhoRefuses(t *testing.T) {
	for _, tc := range []struct {
		service, op, body, want, not string
	}{
		{"sqs", "SendMessage", `{"QueueUrl":"http://127.0.0.1:4566/000000000000/q","MessageBody":"m","MessageAttributes":{%s}}`,
			"for the service to refuse", "SQS subscriber"},
		{"sns", "Publish", `{"TopicArn":"arn:aws:sns:us-east-1:000000000000:t","Message":"m","MessageAttributes":{%s}}`,
			"over the 10 an SQS subscriber takes", "for the service to refuse"},
	} {
		var attrs []string
		for i := range MaxAttributes + 1 {
			attrs = append(attrs, fmt.Sprintf(`"a%d":{"DataType":"String","StringValue":"v"}`, i))
		}
		ev := &events{}
		p, err := New(Config{Listen: "127.0.0.1:0", TrustClients: true, Upstream: "http://127.0.0.1:9", Observer: &recorder{}, Errors: ev,
			Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
		if err != nil {
			t.Fatal(err)
		}
		w := wireJSON10
		if tc.service == "sns" {
			w = wireJSON11
		}
		p.rewriteRequest(fuzzCall(tc.service, tc.op, w, []byte(fmt.Sprintf(tc.body, strings.Join(attrs, ",")))))
		got := ev.named("attribute_limit")
		if len(got) != 1 {
			t.Fatalf("%s: %d attribute_limit events, want 1", tc.service, len(got))
		}
		if msg := got[0].Message; !strings.Contains(msg, tc.want) || strings.Contains(msg, tc.not) {
			t.Errorf("%s: skip message %q, want it to say %q", tc.service, msg, tc.want)
		}
	}
}
