// The full AMQP scenario for protocols/amqp tests, driven by Node's amqplib (peer.js is the short
// one). It declares three queues and a direct, a topic and a fanout exchange bound to them, then
// on a confirm channel of connection "node-pub" publishes to the default and the three named
// exchanges, one message that already carries a dd-pathway-ctx-base64 header, and one mandatory
// message to the direct exchange with a routing key bound to nothing (the broker returns it). On
// connection "node-sub" it consumes the first two queues on two channels and fetches the third
// with basic.get. It prints what it received as JSON lines.
//
// Usage: node scenario.js CONFIG_JSON, where CONFIG_JSON is
//
//	{"url": "amqp://...", "queues": [q1, q2, q3], "exchanges": [direct, topic, fanout], "existing": "<header value>"}
//
// Queue and exchange names are printed as their roles (Q1, DIRECT, ...) so that a run against the
// broker and one through the proxy, with other names, print the same.
//
// amqplib decodes a headers table into an object, where a repeated key would collapse into one.
// To see how many pathway entries the table really held, the script wraps amqplib's decoder of
// top-level tables (lib/codec.js decodeFields, loaded before amqplib so lib/defs.js picks up the
// wrapper) and counts the entries in the raw bytes; each delivery prints that count as ctxEntries.
'use strict';
const path = require('node:path');

const CTX_KEY = 'dd-pathway-ctx-base64';
const CTX_ENTRIES = Symbol('ctxEntries');
// A table entry is a shortstr key followed by the value's type tag: 'S' for a longstr.
const ctxEntry = Buffer.concat([Buffer.from([CTX_KEY.length]), Buffer.from(CTX_KEY), Buffer.from('S')]);

const codec = require(path.join(path.dirname(require.resolve('amqplib')), 'lib', 'codec.js'));
const decodeFields = codec.decodeFields;
codec.decodeFields = (slice) => {
  const fields = decodeFields(slice);
  let n = 0;
  for (let i = slice.indexOf(ctxEntry); i >= 0; i = slice.indexOf(ctxEntry, i + 1)) n++;
  Object.defineProperty(fields, CTX_ENTRIES, { value: n, enumerable: false });
  return fields;
};
const amqp = require('amqplib');

function richHeaders(n) {
  return {
    s: 'text', n, short: -300, int: 1 << 20, long: 2 ** 40, neg: -3, f: 2.5, b: true, nul: null,
    t: { inner: 'v', deep: { x: 1 } }, arr: ['a', 2, { k: 'v' }], bytes: Buffer.from([0, 1, 2, 0xce]),
    ts: { '!': 'timestamp', value: 1700000000 }, dec: { '!': 'decimal', value: { places: 2, digits: 12345 } },
  };
}

function fullProps(body, headers) {
  const p = {
    contentType: 'application/json', contentEncoding: 'gzip', deliveryMode: 2, priority: 3,
    correlationId: 'corr-' + body, replyTo: 'reply-q', expiration: '600000', messageId: 'id-' + body,
    timestamp: 1700000001, type: 'order.created', userId: 'guest', appId: 'orders-app',
  };
  if (headers !== undefined) p.headers = headers;
  return p;
}

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const [q1, q2, q3] = cfg.queues;
  const [direct, topic, fanout] = cfg.exchanges;
  const roles = new Map([[q1, 'Q1'], [q2, 'Q2'], [q3, 'Q3'], [direct, 'DIRECT'], [topic, 'TOPIC'], [fanout, 'FANOUT']]);
  const role = (name) => (roles.has(name) ? roles.get(name) : name);
  const print = (line) => console.log(JSON.stringify(line));
  const describe = (kind, via, m) => {
    const h = m.properties.headers;
    const fields = { ...m.fields };
    for (const k of ['exchange', 'routingKey']) if (k in fields) fields[k] = role(fields[k]);
    if ('consumerTag' in fields) fields.consumerTag = fields.consumerTag === 'consumer-a' ? 'consumer-a' : 'server-named';
    return {
      kind, via, body: m.content.length > 100 ? `big-${m.content.length}` : m.content.toString(), fields,
      properties: m.properties,
      // -1: the headers table was decoded without the wrapper, so the count is unknown.
      ctxEntries: h === undefined ? 0 : (h[CTX_ENTRIES] ?? -1),
    };
  };

  const pub = await amqp.connect(cfg.url, { clientProperties: { connection_name: 'node-pub' } });
  const setup = await pub.createChannel();
  for (const q of cfg.queues) await setup.assertQueue(q, { durable: false, autoDelete: false });
  await setup.assertExchange(direct, 'direct', { durable: false, autoDelete: false });
  await setup.assertExchange(topic, 'topic', { durable: false, autoDelete: false });
  await setup.assertExchange(fanout, 'fanout', { durable: false, autoDelete: false });
  await setup.bindQueue(q1, direct, 'k');
  await setup.bindQueue(q1, topic, 'a.*');
  await setup.bindQueue(q2, fanout, '');
  await setup.close();

  const ch = await pub.createConfirmChannel();
  const returned = new Promise((resolve) => {
    ch.on('return', (m) => {
      print(describe('return', 'return', m));
      resolve();
    });
  });
  const msgs = [
    ['', q1, 'plain-default', {}],
    ['', q1, 'full-default', fullProps('full-default', richHeaders(1))],
    [direct, 'k', 'full-direct', fullProps('full-direct')],
    [topic, 'a.b', 'full-topic', fullProps('full-topic', { only: 'one' })],
    [fanout, '', 'plain-fanout', { headers: {} }],
    [fanout, 'ignored', 'full-fanout', fullProps('full-fanout', richHeaders(2))],
    ['', q3, 'get-1', fullProps('get-1', richHeaders(3))],
    ['', q3, 'get-2', {}],
    ['', q3, 'x'.repeat(300000), {}], // several body frames
    ['', q1, 'has-ctx', { headers: { [CTX_KEY]: cfg.existing, x: 'y' } }],
    [direct, 'nowhere', 'returned', { ...fullProps('returned', { r: 1 }), mandatory: true }],
  ];
  const confirms = [];
  msgs.forEach(([ex, rk, body, props], i) => {
    ch.publish(ex, rk, Buffer.from(body), props, (err) => { confirms[i] = err ? 'nack' : 'ack'; });
  });
  await ch.waitForConfirms();
  await returned;

  const sub = await amqp.connect(cfg.url, { clientProperties: { connection_name: 'node-sub' } });
  const chA = await sub.createChannel();
  const chB = await sub.createChannel();
  let seenA = 0;
  let seenB = 0;
  await new Promise((resolve, reject) => {
    const done = () => { if (seenA === 5 && seenB === 2) resolve(); };
    chA.consume(q1, (m) => {
      print(describe('delivery', 'a', m));
      chA.ack(m);
      seenA++;
      done();
    }, { consumerTag: 'consumer-a' }).catch(reject);
    chB.consume(q2, (m) => {
      print(describe('delivery', 'b', m));
      chB.ack(m);
      seenB++;
      done();
    }).catch(reject);
  });
  const chC = await sub.createChannel();
  for (let i = 0; i < 3; i++) {
    const m = await chC.get(q3, { noAck: true });
    if (!m) throw new Error(`basic.get ${i + 1} on ${q3}: queue empty`);
    print(describe('delivery', 'get', m));
  }
  print({ kind: 'empty-get', ok: (await chC.get(q3, { noAck: true })) !== false });
  print({ kind: 'confirms', confirms });
  await sub.close();
  await pub.close();
}

main().catch((err) => { console.error(err); process.exit(1); });
