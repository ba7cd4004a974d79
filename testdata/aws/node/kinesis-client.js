// A Kinesis client nobody here wrote: @aws-sdk/client-kinesis (JS v3, JSON 1.1), which sends every
// call over HTTP/2 (its default NodeHttp2Handler; h2c to an http:// endpoint). Reads
// AWS_ENDPOINT_URL_KINESIS and the usual credential variables; argv[2] is the stream name. Creates
// a one-shard stream, puts a JSON record, then a JSON one and a binary one in a batch, reads the
// shard from its start and prints JSON results (data in base64).
const { KinesisClient, CreateStreamCommand, DescribeStreamCommand, PutRecordCommand, PutRecordsCommand, GetShardIteratorCommand, GetRecordsCommand } = require("@aws-sdk/client-kinesis");
(async () => {
  const c = new KinesisClient({ region: "us-east-1" });
  const StreamName = process.argv[2];
  await c.send(new CreateStreamCommand({ StreamName, ShardCount: 1 }));
  let shard;
  for (let i = 0; i < 100 && !shard; i++) {
    const d = await c.send(new DescribeStreamCommand({ StreamName }));
    if (d.StreamDescription.StreamStatus === "ACTIVE") shard = d.StreamDescription.Shards[0].ShardId;
    else await new Promise((r) => setTimeout(r, 100));
  }
  const put = await c.send(new PutRecordCommand({ StreamName, Data: Buffer.from('{"from":"node"}'), PartitionKey: "n1" }));
  const batch = await c.send(new PutRecordsCommand({ StreamName, Records: [
    { Data: Buffer.from('{"batch":1}'), PartitionKey: "n2" },
    { Data: Buffer.from([0xf3, 0x89, 0x9a, 0xc2, 0x00]), PartitionKey: "n3" },
  ] }));
  const it = await c.send(new GetShardIteratorCommand({ StreamName, ShardId: shard, ShardIteratorType: "TRIM_HORIZON" }));
  const got = [];
  for (let next = it.ShardIterator, i = 0; i < 20 && got.length < 3; i++) {
    const r = await c.send(new GetRecordsCommand({ ShardIterator: next }));
    got.push(...r.Records.map((x) => ({ partitionKey: x.PartitionKey, data: Buffer.from(x.Data).toString("base64") })));
    next = r.NextShardIterator;
  }
  process.stdout.write(JSON.stringify({ shardId: put.ShardId, sequenceNumber: put.SequenceNumber, failed: batch.FailedRecordCount, records: got }) + "\n");
  c.destroy();
})().catch((e) => { process.stderr.write(`node kinesis client failed: ${e.name}: ${e.message}\n`); process.exit(1); });
