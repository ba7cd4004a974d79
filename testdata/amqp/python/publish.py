"""pika publishes for protocols/amqp tests (Debian's python3-pika), with frame_max FRAME_MAX:
one message with every basic property and a header table with every field type pika writes
(S, x, t, I, l, D, T, F, A, V), a 1 MiB body (hundreds of body frames), and two messages whose
content header frames are FRAME_MAX-60 and FRAME_MAX-50 bytes: the pathway entry (55 bytes)
fits in the first and would overflow the second. Prints "ok".
Usage: python3 publish.py AMQP_URL QUEUE FRAME_MAX"""
import datetime
import decimal
import sys

import pika


def main():
    url, q, frame_max = sys.argv[1], sys.argv[2], int(sys.argv[3])
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "pika-publisher"}
    params.frame_max = frame_max
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()  # each publish returns once the queue has it
    headers = {"str": "v", "bytes": b"\x00\x01\xce", "yes": True, "no": False, "i32": -7, "i64": -(1 << 40),
               "dec": decimal.Decimal("-12.345"), "ts": datetime.datetime(2023, 11, 14, 22, 13, 20),
               "nested": {"a": {"b": [1, "two", None, {"c": b"x"}]}}, "arr": [True, decimal.Decimal("1.5"), []],
               "void": None, "empty": {}}
    props = pika.BasicProperties(
        content_type="text/plain", content_encoding="utf8", headers=headers, delivery_mode=2, priority=7,
        correlation_id="corr", reply_to="reply", expiration="600000", message_id="mid",
        timestamp=1700000003, type="typ", user_id="guest", app_id="app", cluster_id="cluster")
    ch.basic_publish("", q, b"every property", props)
    ch.basic_publish("", q, bytes(range(256)) * 4096, pika.BasicProperties(headers={"k": "v"}))
    # 35 bytes of frame besides the pad: frame header and end (8), class, weight, body size and
    # flags (14), table length (4), the entry's key, type and length (9).
    for margin in (60, 50):
        pad = "p" * (frame_max - margin - 35)
        ch.basic_publish("", q, b"margin %d" % margin, pika.BasicProperties(headers={"pad": pad}))
    print("ok", flush=True)
    conn.close()


if __name__ == "__main__":
    main()
