// A second AMQP client for protocols/amqp tests: amqplib publishes with confirms to the queues the
// Go test declared, consumes them and fetches one with basic.get, and prints what it received as
// JSON lines. Usage: node peer.js AMQP_URL CONSUME_QUEUE GET_QUEUE
'use strict';
const amqp = require('amqplib');

async function main() {
  const [url, q, gq] = process.argv.slice(2);
  const conn = await amqp.connect(url, { clientProperties: { connection_name: 'node-peer' } });
  const ch = await conn.createConfirmChannel();
  const confirms = [];
  const msgs = [
    [q, 'node-plain', {}],
    [q, 'node-full', {
      contentType: 'text/plain', contentEncoding: 'utf8', deliveryMode: 2, priority: 1,
      correlationId: 'c1', replyTo: 'r1', expiration: '60000', messageId: 'm1', timestamp: 1700000002,
      type: 't1', appId: 'node-app', headers: { s: 'v', n: 42, neg: -3, f: 2.5, b: false, nested: { a: 'b' }, list: [1, 'two'] },
    }],
    [gq, 'node-get', { headers: {} }],
  ];
  for (const [queue, body, props] of msgs) {
    ch.publish('', queue, Buffer.from(body), props, (err) => confirms.push(err ? 'nack' : 'ack'));
  }
  await ch.waitForConfirms();
  const out = (tag, m) => console.log(JSON.stringify({
    via: tag, body: m.content.toString(), deliveryTag: m.fields.deliveryTag, properties: m.properties,
  }));
  const cons = await conn.createChannel();
  let seen = 0;
  await new Promise((resolve) => {
    cons.consume(q, (m) => {
      out('consume', m);
      cons.ack(m);
      if (++seen === 2) resolve();
    });
  });
  const got = await cons.get(gq, { noAck: true });
  out('get', got);
  console.log(JSON.stringify({ confirms }));
  await conn.close();
}

main().catch((err) => { console.error(err); process.exit(1); });
