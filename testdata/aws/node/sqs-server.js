// local-aws-sqs (SQS JSON and Query) on 127.0.0.1, ephemeral port; prints "LISTENING <port>".
const { createSqsServer } = require("local-aws-sqs");
createSqsServer({ port: 0, hostname: "127.0.0.1", emulateQueueCreationLifecycle: false }).then((srv) => {
  process.stdout.write(`LISTENING ${srv.address().port}\n`);
});
