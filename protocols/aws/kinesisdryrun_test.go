package aws

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// TestKinesisDryRunIsNoError: Kinesis answers a request with `DryRun` that would succeed with a
// 400 DryRunOperationException, having written and read nothing
// (https://docs.aws.amazon.com/streams/latest/dev/kds-dryrun-validation.html). That is the dry
// run's success: no error of the stream, and no record lost. kinesis-local does not know DryRun,
// so the verifier gives the service's answer.
func TestKinesisDryRunIsNoError(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "dry", nil)
	up.setIntercept(func(body string) (int, string) {
		if strings.Contains(body, `"DryRun":true`) {
			return http.StatusBadRequest, `{"__type":"DryRunOperationException","message":"The request would have succeeded, but the DryRun flag is set."}`
		}
		return 0, ""
	})
	stream := awssdk.String("dry")
	dry := awssdk.Bool(true)
	calls := map[string]func() error{
		"PutRecord": func() error {
			_, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: []byte(`{"n":1}`), PartitionKey: awssdk.String("k"), DryRun: dry})
			return err
		},
		"PutRecords": func() error {
			_, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: stream, DryRun: dry, Records: []ktypes.PutRecordsRequestEntry{
				{Data: []byte(`{"n":2}`), PartitionKey: awssdk.String("k")}, {Data: []byte(`{"n":3}`), PartitionKey: awssdk.String("k")}}})
			return err
		},
		"GetShardIterator": func() error {
			_, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: stream, ShardId: awssdk.String("shardId-000000000000"),
				ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon, DryRun: dry})
			return err
		},
	}
	for op, call := range calls {
		if err := call(); !errors.As(err, new(*ktypes.DryRunOperationException)) {
			t.Fatalf("%s with DryRun: %v, want the service's DryRunOperationException", op, err)
		}
	}
	for _, ev := range tp.ev.all() {
		t.Errorf("a dry run tracked as %s %s on %s (%d messages): %s", ev.Category, ev.Name, ev.Edge, ev.Messages, ev.Message)
	}
	if n := len(tp.rec.withTags("type:kinesis")); n != 0 {
		t.Errorf("%d checkpoints for dry runs, want none", n)
	}
}
