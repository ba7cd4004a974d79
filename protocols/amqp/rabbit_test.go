package amqp

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// sent is one message of the scenario and where it was published.
type sent struct {
	exchange, key string
	msg           amqp091.Publishing
}

// outcome is what a client saw in one scenario run.
type outcome struct {
	confirms   []amqp091.Confirmation
	returns    []amqp091.Return
	deliveries map[string]amqp091.Delivery // by body
	tagsA      []uint64                    // delivery tags, consumer channel A
	tagsB      []uint64                    // consumer channel B
	getTags    []uint64
	queues     [3]string
	exchanges  [3]string
}

func richHeaders(i int) amqp091.Table {
	return amqp091.Table{
		"s": "text", "i32": int32(-7), "i64": int64(1) << 40, "b": true, "f": 1.5, "n": i,
		"t":   amqp091.Table{"inner": "v", "deep": amqp091.Table{"x": int32(1)}},
		"arr": []any{"a", int32(2), amqp091.Table{"k": "v"}}, "bytes": []byte{0, 1, 2, 0xCE},
		"ts": time.Unix(1700000000, 0), "dec": amqp091.Decimal{Scale: 2, Value: 12345},
	}
}

func fullProps(body string, headers amqp091.Table) amqp091.Publishing {
	return amqp091.Publishing{
		Headers: headers, ContentType: "application/json", ContentEncoding: "gzip", DeliveryMode: 2, Priority: 3,
		CorrelationId: "corr-" + body, ReplyTo: "reply-q", Expiration: "600000", MessageId: "id-" + body,
		Timestamp: time.Unix(1700000001, 0), Type: "order.created", UserId: "guest", AppId: "orders-app",
		Body: []byte(body),
	}
}

// runScenario publishes to the default, direct, topic and fanout exchanges with confirms and a
// mandatory unroutable publish, then consumes with Basic.Consume on two channels and Basic.Get.
// existing is a pathway header value one message already carries ("" = none).
func runScenario(t *testing.T, url, existing string) outcome {
	t.Helper()
	pubConn := dial(t, url, "orders-pub-3", 0)
	conConn := dial(t, url, "billing", 0)
	var o outcome
	o.queues = [3]string{declareQueue(t, pubConn, unique("dsm-q1")), declareQueue(t, pubConn, unique("dsm-q2")), declareQueue(t, pubConn, unique("dsm-q3"))}
	o.exchanges = [3]string{unique("dsm-direct"), unique("dsm-topic"), unique("dsm-fanout")}
	declareExchange(t, pubConn, o.exchanges[0], "direct", o.queues[0], "k")
	declareExchange(t, pubConn, o.exchanges[1], "topic", o.queues[0], "a.*")
	declareExchange(t, pubConn, o.exchanges[2], "fanout", o.queues[1], "")

	msgs := []sent{
		{"", o.queues[0], amqp091.Publishing{Body: []byte("plain-default")}},
		{"", o.queues[0], fullProps("full-default", richHeaders(1))},
		{o.exchanges[0], "k", fullProps("full-direct", nil)},
		{o.exchanges[1], "a.b", fullProps("full-topic", amqp091.Table{"only": "one"})},
		{o.exchanges[2], "", amqp091.Publishing{Body: []byte("plain-fanout"), Headers: amqp091.Table{}}},
		{o.exchanges[2], "ignored", fullProps("full-fanout", richHeaders(2))},
		{"", o.queues[2], fullProps("get-1", richHeaders(3))},
		{"", o.queues[2], amqp091.Publishing{Body: []byte("get-2"), Priority: 0, ContentType: ""}},
		{"", o.queues[2], amqp091.Publishing{Body: make([]byte, 300000)}}, // several body frames
	}
	if existing != "" {
		msgs = append(msgs, sent{"", o.queues[0], amqp091.Publishing{Body: []byte("has-ctx"), Headers: amqp091.Table{pathway.HeaderKey: existing, "x": "y"}}})
	}
	ch := channel(t, pubConn)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 64))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 4))
	ctx := context.Background()
	for _, m := range msgs {
		if err := ch.PublishWithContext(ctx, m.exchange, m.key, false, false, m.msg); err != nil {
			t.Fatal(err)
		}
	}
	// Mandatory and unroutable: the broker returns it, then confirms it.
	if err := ch.PublishWithContext(ctx, o.exchanges[0], "nowhere", true, false, fullProps("returned", amqp091.Table{"r": int32(1)})); err != nil {
		t.Fatal(err)
	}
	for range len(msgs) + 1 {
		select {
		case c := <-confirms:
			o.confirms = append(o.confirms, c)
		case <-time.After(30 * time.Second):
			t.Fatalf("confirms: got %d of %d", len(o.confirms), len(msgs)+1)
		}
	}
	select {
	case r := <-returns:
		o.returns = append(o.returns, r)
	case <-time.After(30 * time.Second):
		t.Fatal("no Basic.Return for the mandatory unroutable publish")
	}

	o.deliveries = map[string]amqp091.Delivery{}
	chA, chB := channel(t, conConn), channel(t, conConn)
	da, err := chA.Consume(o.queues[0], "consumer-a", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, err := chB.Consume(o.queues[1], "", false, false, false, false, nil) // server-named tag
	if err != nil {
		t.Fatal(err)
	}
	want := 4 + 2 // q1 and q2 messages
	if existing != "" {
		want++
	}
	for len(o.tagsA)+len(o.tagsB) < want {
		select {
		case d := <-da:
			o.tagsA = append(o.tagsA, d.DeliveryTag)
			o.deliveries[string(d.Body)] = d
			d.Ack(false)
		case d := <-db:
			o.tagsB = append(o.tagsB, d.DeliveryTag)
			o.deliveries[string(d.Body)] = d
			d.Ack(false)
		case <-time.After(30 * time.Second):
			t.Fatalf("consumed %d of %d", len(o.tagsA)+len(o.tagsB), want)
		}
	}
	chC := channel(t, conConn)
	for range 3 {
		d, ok, err := chC.Get(o.queues[2], true)
		if err != nil || !ok {
			t.Fatalf("Basic.Get: ok=%v err=%v", ok, err)
		}
		o.getTags = append(o.getTags, d.DeliveryTag)
		key := string(d.Body)
		if len(d.Body) > 100 {
			key = fmt.Sprintf("big-%d", len(d.Body))
		}
		o.deliveries[key] = d
	}
	if _, ok, err := chC.Get(o.queues[2], true); ok || err != nil {
		t.Fatalf("Basic.Get on an empty queue: ok=%v err=%v", ok, err)
	}
	return o
}

// props is a delivery's properties as the client decoded them, without the pathway header.
func props(d amqp091.Delivery) []any {
	return []any{withoutCtx(d.Headers), d.ContentType, d.ContentEncoding, d.DeliveryMode, d.Priority, d.CorrelationId,
		d.ReplyTo, d.Expiration, d.MessageId, d.Timestamp.Unix(), d.Type, d.UserId, d.AppId, d.Exchange, d.RoutingKey, d.Redelivered}
}

func TestAmqp091ThroughProxyMatchesDirect(t *testing.T) {
	h := startProxy(t, nil)
	existing := "10nVzXmeKoDApcX0zV/ApcX0zV8="
	direct := runScenario(t, directURL, existing)
	prox := runScenario(t, h.url, existing)

	if !reflect.DeepEqual(direct.confirms, prox.confirms) {
		t.Errorf("confirms differ:\ndirect %v\nproxy  %v", direct.confirms, prox.confirms)
	}
	for _, tags := range [][2][]uint64{{direct.tagsA, prox.tagsA}, {direct.tagsB, prox.tagsB}, {direct.getTags, prox.getTags}} {
		if !reflect.DeepEqual(tags[0], tags[1]) {
			t.Errorf("delivery tags differ: direct %v proxy %v", tags[0], tags[1])
		}
	}
	if len(prox.returns) != 1 || prox.returns[0].ReplyCode != 312 || string(prox.returns[0].Body) != "returned" {
		t.Errorf("returns through the proxy: %+v", prox.returns)
	}
	if len(prox.deliveries) != len(direct.deliveries) {
		t.Fatalf("%d deliveries through the proxy, %d direct", len(prox.deliveries), len(direct.deliveries))
	}
	for body, dd := range direct.deliveries {
		pd, ok := prox.deliveries[body]
		if !ok {
			t.Errorf("message %q not delivered through the proxy", body)
			continue
		}
		if string(pd.Body) != string(dd.Body) {
			t.Errorf("%q: body differs", body)
		}
		a, b := props(dd), props(pd)
		a[13], b[13], a[14], b[14] = "", "", "", "" // exchange and queue names differ between the two runs
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%q: properties differ:\ndirect %#v\nproxy  %#v", body, a, b)
		}
		if _, ok := dd.Headers[pathway.HeaderKey]; ok && body != "has-ctx" {
			t.Errorf("%q: direct delivery carries a pathway header", body)
		}
		v, ok := pd.Headers[pathway.HeaderKey].(string)
		if !ok {
			t.Errorf("%q: no pathway header through the proxy (headers %v)", body, pd.Headers)
			continue
		}
		if body == "has-ctx" && v != existing {
			t.Errorf("existing pathway header changed: %q", v)
		}
		if _, err := pathway.DecodeBase64String(v); err != nil {
			t.Errorf("%q: pathway header %q: %v", body, v, err)
		}
	}

	// DSM: every publish but the one with a context has an out point; every consume chains to it.
	pts := h.rec.points()
	q1, q2, q3 := prox.queues[0], prox.queues[1], prox.queues[2]
	outs := map[string][]pathway.Point{
		"default": with(pts, "direction:out", "topic:"+q1, "type:rabbitmq"),
		"direct":  with(pts, "direction:out", "exchange:"+prox.exchanges[0], "has_routing_key:true", "type:rabbitmq"),
		"topic":   with(pts, "direction:out", "exchange:"+prox.exchanges[1], "has_routing_key:true", "type:rabbitmq"),
		"fanout0": with(pts, "direction:out", "exchange:"+prox.exchanges[2], "has_routing_key:false", "type:rabbitmq"),
		"get":     with(pts, "direction:out", "topic:"+q3, "type:rabbitmq"),
	}
	// One publish to the direct exchange came back (mandatory, unroutable): its confirm channel's
	// ack follows the return, and it is not counted as produced.
	wantOut := map[string]int{"default": 2, "direct": 1, "topic": 1, "fanout0": 1, "get": 3}
	for k, n := range wantOut {
		if len(outs[k]) != n {
			t.Errorf("%s publish points: %d, want %d (%v)", k, len(outs[k]), n, outs[k])
		}
	}
	for _, p := range with(pts, "direction:out") {
		if p.Service != "orders-pub" || p.ParentHash != 0 {
			t.Errorf("publish point service %q parent %x, want the connection_name without its counter (orders-pub-3) and no parent", p.Service, p.ParentHash)
		}
	}
	outHashes := map[uint64]bool{}
	for _, p := range with(pts, "direction:out") {
		outHashes[p.Hash] = true
	}
	existingCtx, _ := pathway.DecodeBase64String(existing)
	ins := map[string]int{}
	for _, p := range with(pts, "direction:in", "type:rabbitmq") {
		ins[hasTag(p, "topic:")]++
		if p.Service != "billing" {
			t.Errorf("consume point service %q, want billing", p.Service)
		}
		if !outHashes[p.ParentHash] && p.ParentHash != existingCtx.Hash {
			t.Errorf("consume point %v parent %x is no publish point", p.EdgeTags, p.ParentHash)
		}
	}
	if ins["topic:"+q1] != 5 || ins["topic:"+q2] != 2 || ins["topic:"+q3] != 3 {
		t.Errorf("consume points per queue: %v", ins)
	}
	// Basic.Get: each GetOk's parent is the publish to that queue, not just any publish.
	getHashes := map[uint64]bool{}
	for _, p := range outs["get"] {
		getHashes[p.Hash] = true
	}
	for _, p := range with(pts, "direction:in", "topic:"+q3) {
		if !getHashes[p.ParentHash] {
			t.Errorf("GetOk consume point on %s has parent %x, not the hash of a publish to it", q3, p.ParentHash)
		}
	}
	st := h.p.Stats()
	if st.ExistingContext != 1 || st.Injected != 10 || st.Returns != 1 || st.Consumed != 10 || st.UnknownQueue != 0 || st.DecodeErrors != 0 {
		t.Errorf("stats %+v", st)
	}
	var returned bool
	for _, e := range h.errs.events() {
		if e.Name == "NO_ROUTE" && e.Code == 312 && e.Edge.Exchange == prox.exchanges[0] && e.Operation == "Basic.Publish" {
			returned = true
		}
	}
	if !returned {
		t.Errorf("no NO_ROUTE error event for the returned message: %+v", h.errs.events())
	}
	// Sizes: body plus the headers table with the pathway entry, the same on both sides.
	for _, p := range append(outs["topic"], with(pts, "direction:in", "topic:"+q1)...) {
		if p.PayloadSize != int64(len("full-topic"))+int64(len("\x04only")+1+4+3)+int64(ctxEntryLen(pathway.Base64Len)) && hasTag(p, "direction:") == "direction:out" {
			t.Errorf("topic publish size %d", p.PayloadSize)
		}
	}
	sizes := map[int64]int{}
	for _, p := range with(pts, "type:rabbitmq") {
		if p.ParentHash != existingCtx.Hash {
			sizes[p.PayloadSize]++
		}
	}
	for size, n := range sizes {
		if n%2 != 0 {
			t.Errorf("%d points of %d bytes: publish and consume sizes of a message differ (%v)", n, size, sizes)
		}
	}
	keys := make([]string, 0, len(ins))
	for k := range ins {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	t.Logf("consume points per queue: %v", keys)
}
