// The RabbitMQ Java client (Debian's librabbitmq-client-java 5.0.0) as a peer of the
// protocols/amqp tests, in the shape of ../python/peer.py: it prints what it received as JSON
// lines, queues and exchanges named by their role, so a direct run and a proxied run compare.
// It checks every message it gets back against what it published, byte for byte (body) and
// field by field with its type (properties and headers), leaving out dd-pathway-ctx-base64.
//
//   java Peer scenario URL DEFAULT DIRECT TOPIC GET TX CANCEL DIRECT_EXCHANGE TOPIC_EXCHANGE
//     the Go test declared the queues and exchanges and bound DIRECT to DIRECT_EXCHANGE with
//     "java-direct", TOPIC to TOPIC_EXCHANGE with "java.*.event".
//   java Peer plain PUBLISH_URL CONSUME_URL QUEUE
//     publishes two messages without properties (no headers table) at PUBLISH_URL and consumes
//     them at CONSUME_URL; after the cancel, publishes a third and gets it there.
// PEER_NIO=1 and PEER_FRAME_MAX=N in the environment change how it connects.
import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.ConfirmListener;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.LongString;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.Collections;
import java.util.Date;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentSkipListSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

public final class Peer {
    static final String CTX = "dd-pathway-ctx-base64";
    // Generous: a wait that ends here is a failure, not a measurement.
    static final long WAIT_SECONDS = 60;

    record Sent(byte[] body, AMQP.BasicProperties props) {}

    static final Map<String, Sent> sent = new ConcurrentHashMap<>();
    static final Map<String, String> roles = new HashMap<>();
    static final List<String> problems = Collections.synchronizedList(new ArrayList<>());

    public static void main(String[] args) {
        try {
            switch (args[0]) {
                case "scenario" -> scenario(Arrays.copyOfRange(args, 1, args.length));
                case "plain" -> plain(args[1], args[2], args[3]);
                default -> throw new IllegalArgumentException("mode " + args[0]);
            }
        } catch (Throwable e) {
            e.printStackTrace();
            System.exit(1); // the client's threads would keep the JVM up
        }
        System.exit(0);
    }

    static Connection connect(String url, String name) throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        // The Java client reads "amqp://host/" as the vhost "", where the Go tests mean "/".
        f.setUri(url.endsWith("/") ? url.substring(0, url.length() - 1) : url);
        f.setAutomaticRecoveryEnabled(false);
        f.setTopologyRecoveryEnabled(false);
        // PEER_NIO=1: the client's NIO frame handler instead of its default blocking one.
        if ("1".equals(System.getenv("PEER_NIO"))) {
            f.useNio();
        }
        // PEER_FRAME_MAX: the frame_max to ask for (default 0: the broker's, 131072).
        String fm = System.getenv("PEER_FRAME_MAX");
        if (fm != null) {
            f.setRequestedFrameMax(Integer.parseInt(fm));
        }
        return f.newConnection(name);
    }

    static void scenario(String[] a) throws Exception {
        String url = a[0], qDefault = a[1], qDirect = a[2], qTopic = a[3], qGet = a[4], qTx = a[5],
                qCancel = a[6], exDirect = a[7], exTopic = a[8];
        String[] names = {"default", "direct", "topic", "get", "tx", "cancel", "direct-exchange", "topic-exchange"};
        for (int i = 0; i < names.length; i++) {
            roles.put(a[1 + i], names[i]);
            roles.put(a[1 + i] + "-nobody", names[i] + "-nobody");
        }
        Connection conn = connect(url, "java-peer");
        int frameMax = conn.getFrameMax();

        List<Map<String, Object>> returns = Collections.synchronizedList(new ArrayList<>());
        CountDownLatch returned = new CountDownLatch(3);

        // Publisher confirms, waited for with waitForConfirmsOrDie.
        Channel pub = conn.createChannel();
        pub.confirmSelect();
        pub.addReturnListener((code, text, ex, rk, props, body) -> {
            returns.add(received("return", "confirm", code, text, ex, rk, props, body));
            returned.countDown();
        });
        publish(pub, "", qDefault, false, "plain", null, null);
        publish(pub, "", qDefault, false, "full", fullProps(), null);
        publish(pub, exDirect, "java-direct", false, "direct-props", new AMQP.BasicProperties.Builder()
                .contentType("application/json").contentEncoding("identity").deliveryMode(1).priority(9)
                .correlationId("corr-direct").replyTo("reply-direct").messageId("m-direct").build(), null);
        publish(pub, exTopic, "java.orders.event", false, "topic-headers",
                new AMQP.BasicProperties.Builder().headers(headers("topic")).build(), null);
        byte[] large = new byte[3 * frameMax + 123]; // body frames of frame_max, and a short one
        new Random(42).nextBytes(large);
        publish(pub, "", qDefault, false, "large", new AMQP.BasicProperties.Builder()
                .headers(table("size", large.length)).build(), large);
        publish(pub, "", qDefault, false, "empty-body", new AMQP.BasicProperties.Builder()
                .contentType("application/octet-stream").build(), new byte[0]); // a header frame, no body frame
        publish(pub, "", qGet, false, "get", new AMQP.BasicProperties.Builder().headers(new HashMap<>()).build(), null);
        publish(pub, "", qCancel, false, "before-cancel", null, null);
        pub.waitForConfirmsOrDie(WAIT_SECONDS * 1000);
        // Mandatory publishes no queue takes come back as Basic.Return, then are acked.
        publish(pub, "", qDefault + "-nobody", true, "returned-default", new AMQP.BasicProperties.Builder()
                .headers(headers("returned")).messageId("m-returned").build(), null);
        publish(pub, exDirect, "nobody", true, "returned-direct", null, null);
        pub.waitForConfirmsOrDie(WAIT_SECONDS * 1000);
        int syncConfirmed = (int) pub.getNextPublishSeqNo() - 1;

        // Publisher confirms, listened to asynchronously.
        Channel async = conn.createChannel();
        async.confirmSelect();
        ConcurrentSkipListSet<Long> outstanding = new ConcurrentSkipListSet<>();
        AtomicInteger acked = new AtomicInteger(), nacked = new AtomicInteger();
        CountDownLatch allConfirmed = new CountDownLatch(1);
        async.addConfirmListener(new ConfirmListener() {
            public void handleAck(long tag, boolean multiple) { settle(tag, multiple, acked); }

            public void handleNack(long tag, boolean multiple) { settle(tag, multiple, nacked); }

            void settle(long tag, boolean multiple, AtomicInteger n) {
                var done = multiple ? outstanding.headSet(tag, true) : outstanding.subSet(tag, true, tag, true);
                n.addAndGet(done.size());
                done.clear();
                if (outstanding.isEmpty()) {
                    allConfirmed.countDown();
                }
            }
        });
        for (int i = 0; i < 10; i++) {
            outstanding.add(async.getNextPublishSeqNo());
            publish(async, exTopic, "java.async.event", false, "async-" + i,
                    new AMQP.BasicProperties.Builder().headers(table("i", i)).build(), null);
        }
        await(allConfirmed, "the asynchronous confirms");

        // Transactions: committed, rolled back, and a commit with a mandatory publish returned.
        Channel tx = conn.createChannel();
        tx.addReturnListener((code, text, ex, rk, props, body) -> {
            returns.add(received("return", "tx", code, text, ex, rk, props, body));
            returned.countDown();
        });
        tx.txSelect();
        publish(tx, "", qTx, false, "tx-1", null, null);
        publish(tx, "", qTx, false, "tx-2", new AMQP.BasicProperties.Builder().headers(headers("tx")).build(), null);
        tx.txCommit();
        publish(tx, "", qTx, false, "tx-rolled-back", null, null);
        tx.txRollback();
        publish(tx, "", qTx, false, "tx-3", new AMQP.BasicProperties.Builder().type("tx").build(), null);
        publish(tx, "", qTx + "-nobody", true, "tx-returned", null, null);
        tx.txCommit();
        await(returned, "the returns");

        // Consumers with manual acks, one channel each, prefetch 2.
        Map<String, List<Map<String, Object>>> deliveries = new TreeMap<>();
        Map<String, CountDownLatch> done = new LinkedHashMap<>();
        Map<String, String> tags = new HashMap<>();
        Map<String, Channel> chans = new HashMap<>();
        Object[][] consumers = {{"c1", qDefault, 4}, {"c2", qDirect, 1}, {"c3", qTopic, 11}, {"c4", qCancel, 1}};
        CountDownLatch cancelled = new CountDownLatch(1);
        for (Object[] c : consumers) {
            String name = (String) c[0], queue = (String) c[1];
            Channel ch = conn.createChannel();
            ch.basicQos(2);
            List<Map<String, Object>> got = Collections.synchronizedList(new ArrayList<>());
            CountDownLatch l = new CountDownLatch((Integer) c[2]);
            deliveries.put(name, got);
            done.put(name, l);
            chans.put(name, ch);
            tags.put(name, ch.basicConsume(queue, false, new DefaultConsumer(ch) {
                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                    Map<String, Object> m = received("deliver", name, 0, null, env.getExchange(), env.getRoutingKey(), props, body);
                    m.put("deliveryTag", env.getDeliveryTag());
                    m.put("redelivered", env.isRedeliver());
                    got.add(m);
                    try {
                        getChannel().basicAck(env.getDeliveryTag(), false);
                    } catch (Exception e) {
                        problems.add(name + " ack: " + e);
                    }
                    l.countDown();
                }

                @Override
                public void handleCancelOk(String tag) {
                    cancelled.countDown();
                }
            }));
        }
        for (var e : done.entrySet()) {
            await(e.getValue(), "consumer " + e.getKey());
        }
        // A cancelled consumer gets nothing more: what is published next waits for basic.get.
        chans.get("c4").basicCancel(tags.get("c4"));
        await(cancelled, "cancel-ok");
        publish(pub, "", qCancel, false, "after-cancel", null, null);
        pub.waitForConfirmsOrDie(WAIT_SECONDS * 1000);
        syncConfirmed++;

        List<Map<String, Object>> gets = new ArrayList<>();
        Channel g = conn.createChannel();
        for (String q : List.of(qGet, qTx, qTx, qTx, qCancel)) {
            GetResponse r = g.basicGet(q, false);
            if (r == null) {
                problems.add("basic.get " + role(q) + ": empty");
                continue;
            }
            Envelope env = r.getEnvelope();
            Map<String, Object> m = received("get", role(q), 0, null, env.getExchange(), env.getRoutingKey(), r.getProps(), r.getBody());
            m.put("deliveryTag", env.getDeliveryTag());
            m.put("messageCount", r.getMessageCount());
            gets.add(m);
            g.basicAck(env.getDeliveryTag(), false);
        }
        boolean empty = g.basicGet(qTx, true) == null;

        for (var e : deliveries.entrySet()) {
            List<Map<String, Object>> got = new ArrayList<>(e.getValue());
            got.sort((x, y) -> Long.compare((Long) x.get("deliveryTag"), (Long) y.get("deliveryTag")));
            got.forEach(Peer::print);
        }
        gets.forEach(Peer::print);
        List<Map<String, Object>> rs = new ArrayList<>(returns);
        rs.sort((x, y) -> ((String) x.get("body")).compareTo((String) y.get("body")));
        rs.forEach(Peer::print);
        Map<String, Object> sum = new TreeMap<>();
        sum.put("kind", "summary");
        sum.put("frameMax", frameMax);
        sum.put("syncConfirmed", syncConfirmed);
        sum.put("asyncAcked", acked.get());
        sum.put("asyncNacked", nacked.get());
        sum.put("cancelOk", cancelled.getCount() == 0);
        sum.put("deliveredAfterCancel", deliveries.get("c4").size() - 1);
        sum.put("getEmpty", empty);
        sum.put("problems", new ArrayList<>(problems));
        print(sum);
        for (Channel ch : List.of(pub, async, tx, g)) {
            ch.close();
        }
        for (Channel ch : chans.values()) {
            ch.close();
        }
        conn.close();
    }

    static void plain(String pubURL, String consURL, String q) throws Exception {
        roles.put(q, "queue");
        Connection pc = connect(pubURL, "java-plain-publisher");
        Channel p = pc.createChannel();
        p.confirmSelect();
        for (int i = 0; i < 2; i++) {
            publish(p, "", q, false, "plain-" + i, null, null);
        }
        p.waitForConfirmsOrDie(WAIT_SECONDS * 1000);

        Connection cc = connect(consURL, "java-plain-consumer");
        Channel c = cc.createChannel();
        c.basicQos(1);
        List<Map<String, Object>> got = Collections.synchronizedList(new ArrayList<>());
        CountDownLatch two = new CountDownLatch(2), cancelled = new CountDownLatch(1);
        String tag = c.basicConsume(q, false, new DefaultConsumer(c) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                Map<String, Object> m = received("deliver", "consumer", 0, null, env.getExchange(), env.getRoutingKey(), props, body);
                m.put("deliveryTag", env.getDeliveryTag());
                m.put("headersTable", props.getHeaders() != null);
                got.add(m);
                try {
                    getChannel().basicAck(env.getDeliveryTag(), false);
                } catch (Exception e) {
                    problems.add("ack: " + e);
                }
                two.countDown();
            }

            @Override
            public void handleCancelOk(String tag) {
                cancelled.countDown();
            }
        });
        await(two, "two deliveries");
        c.basicCancel(tag);
        await(cancelled, "cancel-ok");
        // The third waits in the queue for basic.get.
        publish(p, "", q, false, "plain-2", null, null);
        p.waitForConfirmsOrDie(WAIT_SECONDS * 1000);
        GetResponse r = c.basicGet(q, false);
        got.forEach(Peer::print);
        if (r == null) {
            problems.add("basic.get: empty");
        } else {
            Envelope env = r.getEnvelope();
            Map<String, Object> m = received("get", "queue", 0, null, env.getExchange(), env.getRoutingKey(), r.getProps(), r.getBody());
            m.put("deliveryTag", env.getDeliveryTag());
            m.put("headersTable", r.getProps().getHeaders() != null);
            print(m);
            c.basicAck(env.getDeliveryTag(), false);
        }
        Map<String, Object> sum = new TreeMap<>();
        sum.put("kind", "summary");
        sum.put("deliveries", got.size());
        sum.put("problems", new ArrayList<>(problems));
        print(sum);
        c.close();
        cc.close();
        pc.close();
    }

    static void await(CountDownLatch l, String what) throws Exception {
        if (!l.await(WAIT_SECONDS, TimeUnit.SECONDS)) {
            throw new IllegalStateException("timed out waiting for " + what + "; problems so far: " + problems);
        }
    }

    // publish sends a message named name (its body is the name, or body when given) and
    // remembers it for the checks.
    static void publish(Channel ch, String ex, String rk, boolean mandatory, String name,
                        AMQP.BasicProperties props, byte[] body) throws Exception {
        byte[] b = body != null ? body : name.getBytes(StandardCharsets.UTF_8);
        sent.put(name, new Sent(b, props));
        ch.basicPublish(ex, rk, mandatory, props, b);
    }

    // nameOf finds the message a body belongs to.
    static String nameOf(byte[] body) {
        for (var e : sent.entrySet()) {
            if (Arrays.equals(e.getValue().body(), body)) {
                return e.getKey();
            }
        }
        return "unknown (" + body.length + " bytes)";
    }

    static Map<String, Object> headers(String tag) {
        Map<String, Object> nested = new LinkedHashMap<>();
        nested.put("tenant", "acme");
        nested.put("depth", table("level", 2, "list", List.of("x", 1L)));
        Map<String, Object> h = new LinkedHashMap<>();
        h.put("tag", tag);
        h.put("int", 42);
        h.put("neg", -7);
        h.put("long", 1L << 40);
        h.put("bool", true);
        h.put("bytes", new byte[]{(byte) 0xCE, 0, 1, (byte) 0xff});
        h.put("decimal", new BigDecimal("12.345"));
        h.put("double", 2.5d);
        h.put("float", 1.25f);
        h.put("byte", (byte) -8);
        h.put("short", (short) -1600);
        h.put("timestamp", new Date(1700000000000L));
        h.put("void", null);
        h.put("nested", nested);
        h.put("array", List.of("a", 1, 2L, true, table("in", "array"), List.of()));
        h.put("empty", new HashMap<>());
        h.put("unicode", "h\u00e9llo \u2603");
        return h;
    }

    // table is a headers table in the order given (Map.of's order changes from one JVM to the next).
    static Map<String, Object> table(Object... kv) {
        Map<String, Object> t = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            t.put((String) kv[i], kv[i + 1]);
        }
        return t;
    }

    static AMQP.BasicProperties fullProps() {
        return new AMQP.BasicProperties.Builder()
                .contentType("text/plain").contentEncoding("utf-8").headers(headers("full")).deliveryMode(2)
                .priority(5).correlationId("corr-1").replyTo("reply-q").expiration("60000").messageId("m-1")
                .timestamp(new Date(1700000003000L)).type("java.full").userId("guest").appId("java-app")
                .build();
    }

    static String role(String name) {
        return roles.getOrDefault(name, name);
    }

    // received describes a message the peer got back, after checking it against what it sent.
    static Map<String, Object> received(String kind, String via, int code, String text, String ex, String rk,
                                        AMQP.BasicProperties props, byte[] body) {
        String name = nameOf(body);
        Map<String, Object> m = new TreeMap<>();
        m.put("kind", kind);
        m.put("via", via);
        if (code != 0) {
            m.put("replyCode", code);
            m.put("replyText", text);
        }
        m.put("exchange", role(ex));
        m.put("routingKey", role(rk));
        m.put("body", name);
        m.put("size", body.length);
        m.put("sha256", sha256(body));
        m.put("properties", props(props, true));
        Sent s = sent.get(name);
        if (s == null) {
            problems.add(kind + " via " + via + ": a body the peer did not publish");
        } else {
            Object want = props(s.props(), false), got = props(props, false);
            if (!want.equals(got)) {
                problems.add(kind + " " + name + " via " + via + ": properties " + got + ", published " + want);
            }
        }
        return m;
    }

    // props renders properties with the type of every header value; keepCtx keeps the pathway
    // header (for the Go test to check), else it is left out.
    static Map<String, Object> props(AMQP.BasicProperties p, boolean keepCtx) {
        Map<String, Object> m = new TreeMap<>();
        if (p == null) {
            return m;
        }
        put(m, "contentType", p.getContentType());
        put(m, "contentEncoding", p.getContentEncoding());
        if (p.getHeaders() != null) {
            Map<String, Object> h = new TreeMap<>(p.getHeaders());
            if (!keepCtx) {
                // What the peer compares with what it published: the pathway header the proxy
                // adds, and a table it adds for it, are left out (the Go test checks both).
                h.remove(CTX);
            }
            if (keepCtx || !h.isEmpty()) {
                m.put("headers", typed(h));
            }
        }
        put(m, "deliveryMode", p.getDeliveryMode());
        put(m, "priority", p.getPriority());
        put(m, "correlationId", p.getCorrelationId());
        put(m, "replyTo", p.getReplyTo());
        put(m, "expiration", p.getExpiration());
        put(m, "messageId", p.getMessageId());
        put(m, "timestamp", p.getTimestamp() == null ? null : p.getTimestamp().getTime() / 1000);
        put(m, "type", p.getType());
        put(m, "userId", p.getUserId());
        put(m, "appId", p.getAppId());
        put(m, "clusterId", p.getClusterId());
        return m;
    }

    static void put(Map<String, Object> m, String k, Object v) {
        if (v != null) {
            m.put(k, v);
        }
    }

    // typed renders a field value as {type code: value}, as the AMQP field table holds it.
    @SuppressWarnings("unchecked")
    static Object typed(Object v) {
        Map<String, Object> m = new TreeMap<>();
        if (v == null) {
            m.put("V", null);
        } else if (v instanceof String || v instanceof LongString) {
            m.put("S", v.toString());
        } else if (v instanceof Integer) {
            m.put("I", v);
        } else if (v instanceof Long) {
            m.put("l", v.toString());
        } else if (v instanceof Boolean) {
            m.put("t", v);
        } else if (v instanceof Byte) {
            m.put("b", v);
        } else if (v instanceof Short) {
            m.put("s", v);
        } else if (v instanceof Float) {
            m.put("f", v.toString());
        } else if (v instanceof Double) {
            m.put("d", v.toString());
        } else if (v instanceof BigDecimal d) {
            m.put("D", d.toPlainString() + "/" + d.scale());
        } else if (v instanceof Date d) {
            m.put("T", d.getTime() / 1000);
        } else if (v instanceof byte[] b) {
            m.put("x", Base64.getEncoder().encodeToString(b));
        } else if (v instanceof Map) {
            Map<String, Object> t = new TreeMap<>();
            for (var e : ((Map<String, Object>) v).entrySet()) {
                t.put(e.getKey(), typed(e.getValue()));
            }
            m.put("F", t);
        } else if (v instanceof List) {
            List<Object> l = new ArrayList<>();
            for (Object x : (List<Object>) v) {
                l.add(typed(x));
            }
            m.put("A", l);
        } else {
            m.put("?" + v.getClass().getName(), v.toString());
        }
        return m;
    }

    static String sha256(byte[] b) {
        try {
            StringBuilder sb = new StringBuilder();
            for (byte x : MessageDigest.getInstance("SHA-256").digest(b)) {
                sb.append(String.format("%02x", x));
            }
            return sb.toString();
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    static synchronized void print(Map<String, Object> m) {
        StringBuilder sb = new StringBuilder();
        json(sb, m);
        System.out.println(sb);
        System.out.flush();
    }

    @SuppressWarnings("unchecked")
    static void json(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof String s) {
            sb.append('"');
            for (char c : s.toCharArray()) {
                switch (c) {
                    case '"' -> sb.append("\\\"");
                    case '\\' -> sb.append("\\\\");
                    default -> {
                        if (c < 0x20 || c > 0x7e) {
                            sb.append(String.format("\\u%04x", (int) c));
                        } else {
                            sb.append(c);
                        }
                    }
                }
            }
            sb.append('"');
        } else if (v instanceof Number || v instanceof Boolean) {
            sb.append(v);
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (var e : ((Map<String, Object>) v).entrySet()) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                json(sb, e.getKey());
                sb.append(':');
                json(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof List) {
            sb.append('[');
            boolean first = true;
            for (Object x : (List<Object>) v) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                json(sb, x);
            }
            sb.append(']');
        } else {
            json(sb, v.toString());
        }
    }
}
