package aws

import (
	"fmt"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// TestAttributeLimitSkipNamesCount: a message with 11 attributes (SQS refuses it) was told as
// "message already has 10 attributes" in its attribute_limit skip. The sample names the count.
func TestAttributeLimitSkipNamesCount(t *testing.T) {
	tp, _, cl, q, ctx := sqsSetup(t, "elevenattrs", nil)
	for _, n := range []int{10, 11} {
		attrs := map[string]types.MessageAttributeValue{}
		for i := range n {
			attrs[fmt.Sprintf("a%d", i)] = types.MessageAttributeValue{DataType: awssdk.String("String"), StringValue: awssdk.String("v")}
		}
		_, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &q, MessageBody: awssdk.String("many"), MessageAttributes: attrs})
		if (err != nil) != (n > 10) {
			t.Fatalf("SendMessage with %d attributes: %v", n, err)
		}
	}
	evs := tp.ev.named("attribute_limit")
	if len(evs) != 2 {
		t.Fatalf("attribute_limit events %+v, want 2", evs)
	}
	for i, want := range []string{"has 10 attributes", "has 11 attributes"} {
		if !strings.Contains(evs[i].Message, want) {
			t.Errorf("skip %d message %q, want it to say %q", i, evs[i].Message, want)
		}
	}
}
