// fauxqs (SQS JSON + SNS with fan-out to SQS) on 127.0.0.1, ephemeral port; prints "LISTENING <port>".
import("fauxqs").then(({ startFauxqs }) =>
  startFauxqs({ port: 0, host: "127.0.0.1", logger: false }).then((srv) => {
    process.stdout.write(`LISTENING ${srv.port}\n`);
  }),
);
