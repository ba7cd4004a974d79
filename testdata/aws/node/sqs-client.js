// A second SQS client nobody here wrote: @aws-sdk/client-sqs (JS v3, JSON protocol, body MD5
// validation on). Reads AWS_ENDPOINT_URL_SQS and the usual credential variables; argv[2] is the
// queue name. Sends one message with an attribute, a batch of two, receives, prints JSON results.
const { SQSClient, CreateQueueCommand, SendMessageCommand, SendMessageBatchCommand, ReceiveMessageCommand } = require("@aws-sdk/client-sqs");
(async () => {
  const c = new SQSClient({ region: "us-east-1" });
  const q = await c.send(new CreateQueueCommand({ QueueName: process.argv[2] }));
  const s = await c.send(new SendMessageCommand({ QueueUrl: q.QueueUrl, MessageBody: "from node", MessageAttributes: { who: { DataType: "String", StringValue: "node" } } }));
  const b = await c.send(new SendMessageBatchCommand({ QueueUrl: q.QueueUrl, Entries: [
    { Id: "n1", MessageBody: "batch 1" },
    { Id: "n2", MessageBody: "batch 2", MessageAttributes: { n: { DataType: "Number", StringValue: "2" } } },
  ] }));
  const got = [];
  for (let i = 0; i < 5 && got.length < 3; i++) {
    const r = await c.send(new ReceiveMessageCommand({ QueueUrl: q.QueueUrl, MaxNumberOfMessages: 10, MessageAttributeNames: ["who", "n"], WaitTimeSeconds: 1 }));
    got.push(...(r.Messages || []));
  }
  process.stdout.write(JSON.stringify({ queueUrl: q.QueueUrl, send: s, batch: b, received: got }) + "\n");
})().catch((e) => { process.stderr.write(`node sqs client failed: ${e.name}: ${e.message}\n`); process.exit(1); });
