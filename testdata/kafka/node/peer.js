// A Kafka client of another language for protocols/kafka tests: kafkajs produces the records it
// reads as JSON from stdin, then consumes them in a group, commits, and prints each record it
// received as a JSON line (bytes in base64, null as null; a header is {k, v}).
// Usage: node peer.js BROKER TOPIC GROUP none|gzip|snappy plain|idempotent|transactional < records.json
// PEER_STEPS=produce or =consume runs one step only (the consumer then reads as many records as
// stdin holds); PEER_CLIENT_ID replaces both clients' ids (kafkajs-producer, kafkajs-consumer).
'use strict';
const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs');

// snappy is a plugin in kafkajs (kafkajs-snappy, on snappyjs): registered, it also lets the
// consumer read snappy batches.
CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy');
const codecs = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP, snappy: CompressionTypes.Snappy };

// kafkajs logs through console.info by default, which is stdout: the test reads stdout.
const toStderr = () => ({ namespace, level, log }) => {
  if (level <= logLevel.WARN) process.stderr.write(`${namespace}: ${log.message}\n`);
};

const b64 = (b) => (b === null || b === undefined ? null : Buffer.from(b).toString('base64'));
const buf = (s) => (s === null ? null : Buffer.from(s, 'base64'));

async function main() {
  const [broker, topic, group, codec, mode] = process.argv.slice(2);
  const records = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const kafka = (clientId) => new Kafka({ clientId, brokers: [broker], logLevel: logLevel.WARN, logCreator: toStderr });

  const steps = process.env.PEER_STEPS || 'produce,consume';
  const id = (own) => process.env.PEER_CLIENT_ID || own;
  if (steps.includes('produce')) await produce(kafka(id('kafkajs-producer')), topic, codec, mode, group, records);
  if (steps.includes('consume')) await consume(kafka(id('kafkajs-consumer')), topic, group, records.length);
}

async function produce(kafka, topic, codec, mode, group, records) {
  const txn = mode === 'transactional';
  const producer = kafka.producer({
    idempotent: mode !== 'plain', maxInFlightRequests: mode !== 'plain' ? 1 : undefined,
    transactionalId: txn ? `kafkajs-txn-${topic}` : undefined,
    allowAutoTopicCreation: true,
  });
  await producer.connect();
  const batch = {
    topic,
    acks: -1,
    compression: codecs[codec],
    messages: records.map((r) => ({
      key: buf(r.key), value: buf(r.value), timestamp: String(r.ts),
      headers: Object.fromEntries(r.headers.map(({ k, v }) => [k, buf(v)])),
    })),
  };
  if (txn) {
    // As a consume-transform-produce loop ends a transaction: the output records and the
    // offsets it read (of another group, here a fixed offset 5 of partition 0) commit together.
    const t = await producer.transaction();
    await t.send(batch);
    await t.sendOffsets({ consumerGroupId: `${group}-txn`, topics: [{ topic, partitions: [{ partition: 0, offset: '5' }] }] });
    await t.commit();
  } else {
    await producer.send(batch);
  }
  await producer.disconnect();
}

async function consume(kafka, topic, group, n) {
  const consumer = kafka.consumer({ groupId: group, maxWaitTimeInMs: 100 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const next = new Map();
  let seen = 0;
  await new Promise((resolve, reject) => {
    consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        const headers = Object.entries(message.headers || {}).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => ({ k, v: b64(x) })));
        console.log(JSON.stringify({
          partition, offset: Number(message.offset), ts: Number(message.timestamp),
          key: b64(message.key), value: b64(message.value), headers,
        }));
        next.set(partition, Math.max(next.get(partition) || 0, Number(message.offset) + 1));
        if (++seen === n) resolve();
      },
    }).catch(reject);
  });
  await consumer.commitOffsets([...next].map(([partition, offset]) => ({ topic, partition, offset: String(offset) })));
  await consumer.disconnect();
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
