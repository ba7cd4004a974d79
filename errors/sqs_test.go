package errtrack_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/sqsserver"
	"github.com/dsmproxy/dsmproxy/protocols/aws"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestSQSErrorsReachView sends through the real AWS proxy, with the AWS SDK for Go, to goaws (an
// SQS server nobody here wrote, in process) a SendMessage and a SendMessageBatch of three to a
// queue that does not exist, and checks that GET /errors groups them as broker errors and lost
// messages on the queue's edge, counted per message, and that they reach a fake Agent as error
// spans. (A batch with one failing entry needs a server that fails single entries: that case is
// TestSQSFailedBatchEntry in protocols/aws, against npm's local-aws-sqs.)
func TestSQSErrorsReachView(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sqsSrv, err := sqsserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer sqsSrv.Close()

	agent := &errtrack.FakeAgent{}
	agentSrv := httptest.NewServer(agent)
	defer agentSrv.Close()
	col := errtrack.New(errtrack.Config{Log: zerolog.New(io.Discard), Agent: errtrack.AgentConfig{Enabled: true, URL: agentSrv.URL}})
	creds := credentials.NewStaticCredentialsProvider("test-key", "test-secret", "")
	p, err := aws.New(aws.Config{Listen: "127.0.0.1:0", Upstream: sqsSrv.URL(), Region: "us-east-1", Env: "test",
		Errors: col, Services: &proxy.Services{Default: "default-svc"}, Credentials: creds, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	startFront(t, ctx, p)
	cl := sqs.NewFromConfig(awssdk.Config{Region: "us-east-1", Credentials: creds, AppID: "refunds-api"},
		func(o *sqs.Options) { o.BaseEndpoint = awssdk.String("http://" + p.Addr().String()) })

	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("refunds")})
	if err != nil {
		t.Fatalf("CreateQueue through the proxy: %v", err)
	}
	missing := strings.TrimSuffix(*cq.QueueUrl, "refunds") + "refundz"
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &missing, MessageBody: awssdk.String("r-1")}); err == nil {
		t.Fatal("SendMessage to a missing queue succeeded")
	}
	entries := []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("a"), MessageBody: awssdk.String("r-2")},
		{Id: awssdk.String("b"), MessageBody: awssdk.String("r-3")},
		{Id: awssdk.String("c"), MessageBody: awssdk.String("r-4")},
	}
	if _, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &missing, Entries: entries}); err == nil {
		t.Fatal("SendMessageBatch to a missing queue succeeded")
	}
	// The queue that exists still works through the same proxy.
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String("ok")}); err != nil {
		t.Fatalf("SendMessage to the queue that exists: %v", err)
	}

	view := httptest.NewServer(col.View())
	defer view.Close()
	doc := getView(t, view.URL)
	const edge = "direction:out,topic:refundz,type:sqs"
	const code = "AWS.SimpleQueueService.NonExistentQueue"
	find := func(cat, op string) *errtrack.GroupJSON {
		for i := range doc.Groups {
			g := &doc.Groups[i]
			if g.Category == cat && g.Operation == op && g.Protocol == "sqs" {
				return g
			}
		}
		return nil
	}
	for _, want := range []struct {
		cat, op  string
		messages int64
	}{
		{"broker_error", "SendMessage", 1},
		{"lost_message", "SendMessage", 1},
		{"broker_error", "SendMessageBatch", 3},
		{"lost_message", "SendMessageBatch", 3},
	} {
		g := find(want.cat, want.op)
		if g == nil {
			t.Errorf("no %s %s group in /errors: %+v", want.cat, want.op, doc.Groups)
			continue
		}
		if g.Name != code || g.Code != 400 || g.Retriable || g.Service != "refunds-api" || g.Edge != edge || g.Count != 1 || g.Messages != want.messages {
			t.Errorf("%s %s group: %+v", want.cat, want.op, *g)
		}
	}
	if len(doc.Groups) != 4 {
		t.Errorf("%d groups, want 4: %+v", len(doc.Groups), doc.Groups)
	}
	if len(doc.Lost) != 1 || doc.Lost[0].Edge != edge || doc.Lost[0].Messages != 4 {
		t.Errorf("lost per edge: %+v, want 4 messages on %s", doc.Lost, edge)
	}

	if err := col.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	spans := agent.Spans()
	if len(spans) != 4 {
		t.Errorf("%d spans at the Agent, want one per group (4)", len(spans))
	}
	var lost map[string]any
	for _, sp := range spans {
		if sp["meta"].(map[string]any)["error.type"] == "sqs.lost_message."+code {
			lost = sp
		}
	}
	if lost == nil {
		t.Fatalf("no sqs lost-message span among %v", spans)
	}
	meta := lost["meta"].(map[string]any)
	if lost["service"] != "refunds-api" || lost["resource"] != edge || fmt.Sprint(lost["error"]) != "1" ||
		!strings.Contains(meta["events"].(string), `"exception.type":"sqs.lost_message.`+code+`"`) {
		t.Errorf("lost span: %v", lost)
	}
}
