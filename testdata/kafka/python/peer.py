"""A pure-Python Kafka client for protocols/kafka tests: kafka-python (Debian's python3-kafka)
produces the records it reads as JSON from stdin (the shape ../node/peer.js reads), then reads
them back in a consumer group, committing, or with assign() and seek() and no group, and prints
each record it received as a JSON line (bytes in base64, null as null; a header is {k, v}).
Usage: python3 peer.py BROKER TOPIC GROUP none|gzip|lz4 create|produce|group|assign < records.json
create makes TOPIC (3 partitions) with the admin client: kafka-python asks Metadata v1, whose
topics kfake does not create automatically (only v4 and up say it may). group consumes in GROUP and commits; assign reads every partition from offset 0 without a group.
The consumers read as many records as stdin holds. PEER_API_VERSION=0.11.0 (say; three parts, as kafka-python compares tuples) sets the producer's and
consumers' api_version instead of the one kafka-python infers from ApiVersions (2.5, so Produce
v7): 0.11.0, 1.0.0, 1.1.0 and 2.0.0 send Produce v3, v4, v5 and v6."""
import base64
import json
import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

DEADLINE = time.monotonic() + 45  # below the Go test's 60 s, so a stuck peer says where it was


def api_version():
    v = os.environ.get("PEER_API_VERSION")
    return {} if not v else {"api_version": tuple(int(x) for x in v.split("."))}


def b64(b):
    return None if b is None else base64.b64encode(b).decode()


def raw(s):
    return None if s is None else base64.b64decode(s)


def create(broker, topic):
    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="python-admin")
    for t, code, msg in admin.create_topics([NewTopic(topic, 3, 1)]).topic_errors:
        if code != 0:
            sys.exit("create topic %s: error %d %s" % (t, code, msg))
    admin.close()


def produce(broker, topic, codec, records):
    # kafka-python 2.0.2 has no idempotent producer (enable_idempotence came in 2.1): acks=all
    # with one request in flight is its strongest setting. Its send() takes bytes header values
    # only, no null one.
    producer = KafkaProducer(bootstrap_servers=broker, client_id="python-orders", acks="all",
                             compression_type=None if codec == "none" else codec,
                             max_in_flight_requests_per_connection=1, linger_ms=5, max_block_ms=20000,
                             **api_version())
    futures = [producer.send(topic, key=raw(r["key"]), value=raw(r["value"]), timestamp_ms=r["ts"],
                             headers=[(h["k"], raw(h["v"])) for h in r["headers"]]) for r in records]
    producer.flush(timeout=DEADLINE - time.monotonic())
    for f in futures:
        f.get(timeout=1)  # raises the produce error, if any
    producer.close()


def emit(m):
    print(json.dumps({"partition": m.partition, "offset": m.offset, "ts": m.timestamp,
                      "key": b64(m.key), "value": b64(m.value),
                      "headers": [{"k": k, "v": b64(v)} for k, v in m.headers]}), flush=True)


def read(consumer, n):
    seen = 0
    while seen < n:
        if time.monotonic() > DEADLINE:
            sys.exit("kafka-python read %d of %d records" % (seen, n))
        for msgs in consumer.poll(timeout_ms=200).values():
            for m in msgs:
                emit(m)
                seen += 1


def consume_group(broker, topic, group, n):
    consumer = KafkaConsumer(topic, bootstrap_servers=broker, group_id=group, client_id="python-billing",
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100,
                             **api_version())
    read(consumer, n)
    consumer.commit()
    consumer.close()


def consume_assigned(broker, topic, n):
    consumer = KafkaConsumer(bootstrap_servers=broker, client_id="python-audit", fetch_max_wait_ms=100,
                             **api_version())
    parts = None
    while not parts:
        if time.monotonic() > DEADLINE:
            sys.exit("kafka-python found no partitions of " + topic)
        parts = consumer.partitions_for_topic(topic)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    read(consumer, n)
    consumer.close()


def main():
    broker, topic, group, codec, step = sys.argv[1:6]
    records = json.load(sys.stdin)
    if step == "create":
        create(broker, topic)
    elif step == "produce":
        produce(broker, topic, codec, records)
    elif step == "group":
        consume_group(broker, topic, group, len(records))
    elif step == "assign":
        consume_assigned(broker, topic, len(records))
    else:
        sys.exit("unknown step " + step)


if __name__ == "__main__":
    main()
