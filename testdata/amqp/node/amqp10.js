// An AMQP 1.0 client (rhea) connecting to HOST PORT, as RabbitMQ 4 and its amqp1_0 plugin
// serve on the 0-9-1 port: it prints how the connection ended and exits 0.
//   node amqp10.js HOST PORT
const rhea = require('rhea');

const [host, port] = process.argv.slice(2);
const c = rhea.connect({ host, port: Number(port), username: 'guest', password: 'guest', reconnect: false });
let done = false;
const end = (what) => {
  if (done) return;
  done = true;
  console.log(JSON.stringify({ ended: what }));
  process.exit(0);
};
c.on('connection_open', () => end('open'));
c.on('connection_error', (ctx) => end(String(ctx.connection.get_error())));
c.on('protocol_error', (err) => end(String(err)));
c.on('error', (err) => end(String(err)));
c.on('disconnected', (ctx) => end('disconnected: ' + String(ctx.error)));
