"""A Python AMQP client for protocols/amqp tests: pika (Debian's python3-pika) publishes with
confirms to the queues the Go test declared, tries a mandatory publish that no queue takes,
consumes two messages and fetches one with basic.get, and prints what it received as JSON lines,
in the shape of ../node/peer.js. Usage: python3 peer.py AMQP_URL CONSUME_QUEUE GET_QUEUE"""
import datetime
import decimal
import json
import sys

import pika


def props_of(p):
    out = {}
    for k in ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
              "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
              "user_id", "app_id"):
        v = getattr(p, k)
        if v is not None:
            out[k] = v
    return out


def plain(v):
    # pika decodes long strings in header tables as bytes; JSON wants text.
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (decimal.Decimal, datetime.datetime)):
        return str(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def main():
    url, q, gq = sys.argv[1:4]
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "pika-peer"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    confirms = []
    msgs = [
        (q, "pika-plain", pika.BasicProperties()),
        (q, "pika-full", pika.BasicProperties(
            content_type="text/plain", content_encoding="utf8", delivery_mode=2, priority=1,
            correlation_id="c1", reply_to="r1", expiration="60000", message_id="m1",
            timestamp=1700000003, type="t1", app_id="pika-app",
            headers={"s": "v", "n": 42, "neg": -3, "big": 1 << 40, "d": decimal.Decimal("2.5"), "b": False,
                     "t": datetime.datetime(2023, 11, 14, 22, 13, 20), "nested": {"a": "b"}, "list": [1, "two"]})),
        (gq, "pika-get", pika.BasicProperties(headers={})),
    ]
    for queue, body, props in msgs:
        ch.basic_publish("", queue, body.encode(), props)
        confirms.append("ack")  # basic_publish raises on a nack
    try:
        ch.basic_publish("", q + "-nobody", b"pika-unroutable", pika.BasicProperties(), mandatory=True)
        confirms.append("ack")
    except pika.exceptions.UnroutableError:
        confirms.append("returned")

    def out(via, method, props, body):
        print(json.dumps({"via": via, "body": body.decode(), "deliveryTag": method.delivery_tag,
                          "properties": plain(props_of(props))}), flush=True)

    seen = 0
    for method, props, body in ch.consume(q):
        out("consume", method, props, body)
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if seen == 2:
            break
    ch.cancel()
    method, props, body = ch.basic_get(gq, auto_ack=True)
    out("get", method, props, body)
    print(json.dumps({"confirms": confirms}), flush=True)
    conn.close()


if __name__ == "__main__":
    main()
