package amqp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// scenarioLine is one JSON line printed by testdata/amqp/node/scenario.js.
type scenarioLine struct {
	Kind       string         `json:"kind"` // delivery, return, empty-get, confirms
	Via        string         `json:"via"`  // a, b (consumer channels), get, return
	Body       string         `json:"body"`
	Fields     map[string]any `json:"fields"`
	Properties map[string]any `json:"properties"`
	CtxEntries int            `json:"ctxEntries"` // pathway entries in the raw headers table
	OK         bool           `json:"ok"`
	Confirms   []string       `json:"confirms"`
}

// nodeScenario is what amqplib saw in one run of scenario.js.
type nodeScenario struct {
	queues, exchanges [3]string
	deliveries        map[string]scenarioLine // by body
	order             map[string][]string     // bodies in arrival order, by channel (a, b, get)
	returns           []scenarioLine
	confirms          []string
	emptyGetOK        bool
}

// runNodeScenario runs scenario.js against url with fresh queue and exchange names (deleted when
// the test ends); existing is the pathway header value the has-ctx message carries.
func runNodeScenario(t *testing.T, url, existing string) nodeScenario {
	t.Helper()
	s := nodeScenario{
		queues:     [3]string{unique("node-sq1"), unique("node-sq2"), unique("node-sq3")},
		exchanges:  [3]string{unique("node-direct"), unique("node-topic"), unique("node-fanout")},
		deliveries: map[string]scenarioLine{},
		order:      map[string][]string{},
	}
	for _, q := range s.queues {
		t.Cleanup(func() {
			cleanupBroker(t, func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
		})
	}
	for _, x := range s.exchanges {
		t.Cleanup(func() {
			cleanupBroker(t, func(ch *amqp091.Channel) error { return ch.ExchangeDelete(x, false, false) })
		})
	}
	cfg, err := json.Marshal(map[string]any{"url": url, "queues": s.queues, "exchanges": s.exchanges, "existing": existing})
	if err != nil {
		t.Fatal(err)
	}
	// The deadline only bounds a broken run (a message that never arrives); nothing is timed.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "scenario.js", string(cfg))
	cmd.Dir = nodeDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node scenario.js against %s: %v\nstderr:\n%s\nstdout:\n%s", url, err, stderr.String(), out)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l scenarioLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("scenario.js output %q: %v", sc.Text(), err)
		}
		switch l.Kind {
		case "delivery":
			if _, dup := s.deliveries[l.Body]; dup {
				t.Errorf("%s: %q delivered twice", url, l.Body)
			}
			s.deliveries[l.Body] = l
			s.order[l.Via] = append(s.order[l.Via], l.Body)
		case "return":
			s.returns = append(s.returns, l)
		case "empty-get":
			s.emptyGetOK = l.OK
		case "confirms":
			s.confirms = l.Confirms
		default:
			t.Fatalf("scenario.js printed an unknown line %q", sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}

// headersOf is the line's headers table (an empty one when amqplib reported none).
func headersOf(l scenarioLine) map[string]any {
	h, _ := l.Properties["headers"].(map[string]any)
	if h == nil {
		h = map[string]any{}
	}
	return h
}

// sansCtx is the line without the pathway header: what must be the same with and without the proxy.
func (l scenarioLine) sansCtx() scenarioLine {
	h := map[string]any{}
	for k, v := range headersOf(l) {
		if k != pathway.HeaderKey {
			h[k] = v
		}
	}
	p := map[string]any{}
	for k, v := range l.Properties {
		p[k] = v
	}
	p["headers"] = h
	l.Properties = p
	l.CtxEntries = 0
	return l
}

func tagKey(tags []string) string { return strings.Join(tags, ",") }

// TestAmqplibScenarioThroughProxy runs the scenario of TestAmqp091ThroughProxyMatchesDirect with
// Node's amqplib: publishes to the default, a direct, a topic and a fanout exchange, a mandatory
// unroutable publish, a message that already carries a pathway context, consumes on two channels
// and gets. amqplib must receive through the proxy what it receives directly, plus exactly one
// pathway header; the return, the checkpoints and the counters must be what was sent.
func TestAmqplibScenarioThroughProxy(t *testing.T) {
	needNode(t)
	h := startProxy(t, nil)
	env := h.p.cfg.Env
	// A context an upstream service wrote, which the proxy must leave alone.
	_, up := pathway.NewCheckpointer(env, 0).Checkpoint(pathway.Context{}, "upstream-svc",
		pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: unique("upstream")}, 0, time.Now().Add(-time.Minute))
	existing := up.String()
	existingCtx, err := pathway.DecodeBase64String(existing)
	if err != nil || existingCtx.Hash != up.Hash {
		t.Fatalf("existing context %q: %v", existing, err)
	}

	direct := runNodeScenario(t, directURL, existing)
	prox := runNodeScenario(t, h.url, existing)

	// What amqplib sees: the same with and without the proxy, except for the pathway header.
	wantConfirms := slices.Repeat([]string{"ack"}, 11)
	if !reflect.DeepEqual(direct.confirms, wantConfirms) || !reflect.DeepEqual(prox.confirms, wantConfirms) {
		t.Errorf("confirms: direct %v, through the proxy %v, want %v", direct.confirms, prox.confirms, wantConfirms)
	}
	if direct.emptyGetOK || prox.emptyGetOK {
		t.Errorf("Basic.Get on the emptied queue returned a message (direct %v, proxy %v)", direct.emptyGetOK, prox.emptyGetOK)
	}
	if !reflect.DeepEqual(direct.order, prox.order) {
		t.Errorf("arrival order per channel differs:\ndirect %v\nproxy  %v", direct.order, prox.order)
	}
	if len(direct.deliveries) != 10 || len(prox.deliveries) != 10 {
		t.Fatalf("%d deliveries direct, %d through the proxy, want 10", len(direct.deliveries), len(prox.deliveries))
	}
	if len(direct.returns) != 1 || len(prox.returns) != 1 {
		t.Fatalf("%d returns direct, %d through the proxy, want 1", len(direct.returns), len(prox.returns))
	}
	type pair struct{ d, p scenarioLine }
	lines := map[string]pair{"return": {direct.returns[0], prox.returns[0]}}
	for body, d := range direct.deliveries {
		p, ok := prox.deliveries[body]
		if !ok {
			t.Errorf("%q: not delivered through the proxy", body)
			continue
		}
		lines[body] = pair{d, p}
	}
	for name, l := range lines {
		if a, b := l.d.sansCtx(), l.p.sansCtx(); !reflect.DeepEqual(a, b) {
			t.Errorf("%s: amqplib saw a different message through the proxy:\ndirect %+v\nproxy  %+v", name, a, b)
		}
	}

	// Where each message went: its queue (by index, -1 = returned) and its publish edge tags
	// (nil = it carried a context, so it has no publish point).
	q, x := prox.queues, prox.exchanges
	defQ1 := []string{"direction:out", "topic:" + q[0], "type:rabbitmq"}
	defQ3 := []string{"direction:out", "topic:" + q[2], "type:rabbitmq"}
	toDirect := []string{"direction:out", "exchange:" + x[0], "has_routing_key:true", "type:rabbitmq"}
	toTopic := []string{"direction:out", "exchange:" + x[1], "has_routing_key:true", "type:rabbitmq"}
	toFanoutNoKey := []string{"direction:out", "exchange:" + x[2], "has_routing_key:false", "type:rabbitmq"}
	toFanoutKey := []string{"direction:out", "exchange:" + x[2], "has_routing_key:true", "type:rabbitmq"}
	type route struct {
		queue int
		pub   []string
	}
	routes := map[string]route{
		"plain-default": {0, defQ1}, "full-default": {0, defQ1}, "full-direct": {0, toDirect}, "full-topic": {0, toTopic},
		"has-ctx": {0, nil}, "plain-fanout": {1, toFanoutNoKey}, "full-fanout": {1, toFanoutKey},
		"get-1": {2, defQ3}, "get-2": {2, defQ3}, "big-300000": {2, defQ3}, "return": {-1, toDirect},
	}
	pubHash := func(tags []string) uint64 {
		return pathway.HashPathway(pathway.HashNode("node-pub", env, tags), 0)
	}

	// Headers: directly, none has a pathway entry but has-ctx; through the proxy, every message
	// has exactly one, the existing one unchanged, the others the context of their publish point.
	for name, l := range lines {
		r, ok := routes[name]
		if !ok {
			t.Errorf("unexpected message %q", name)
			continue
		}
		wantDirect := 0
		if r.pub == nil {
			wantDirect = 1
		}
		if l.d.CtxEntries != wantDirect {
			t.Errorf("%s: %d pathway entries in the headers received directly, want %d", name, l.d.CtxEntries, wantDirect)
		}
		if l.p.CtxEntries != 1 {
			t.Errorf("%s: %d pathway entries in the headers received through the proxy, want exactly 1 (headers %v)", name, l.p.CtxEntries, headersOf(l.p))
		}
		v, _ := headersOf(l.p)[pathway.HeaderKey].(string)
		if r.pub == nil {
			if v != existing {
				t.Errorf("%s: the existing pathway header became %q through the proxy, want it unchanged: %q", name, v, existing)
			}
			continue
		}
		got, err := pathway.DecodeBase64String(v)
		if err != nil {
			t.Errorf("%s: pathway header %q through the proxy: %v", name, v, err)
		} else if got.Hash != pubHash(r.pub) {
			t.Errorf("%s: pathway header hash %x, want %x, the publish on %v", name, got.Hash, pubHash(r.pub), r.pub)
		}
	}

	// The return, as amqplib reported it and as the proxy did.
	ret := prox.returns[0]
	if ret.Body != "returned" || ret.Fields["replyCode"] != float64(312) || ret.Fields["replyText"] != "NO_ROUTE" ||
		ret.Fields["exchange"] != "DIRECT" || ret.Fields["routingKey"] != "nowhere" {
		t.Errorf("amqplib 'return' through the proxy: %+v", ret)
	}
	if got := ret.sansCtx().Properties["headers"]; !reflect.DeepEqual(got, map[string]any{"r": float64(1)}) {
		t.Errorf("returned message headers %v, want r:1 plus the pathway header", got)
	}
	t.Logf("amqplib 'return' through the proxy: replyCode %v replyText %v headers %v", ret.Fields["replyCode"], ret.Fields["replyText"], headersOf(ret))
	wantEv := errtrack.Event{
		Category: errtrack.LostMessage, Protocol: "amqp", Operation: "Basic.Publish", Code: 312, Name: "NO_ROUTE",
		Message: `returned by the broker: NO_ROUTE (routing key "nowhere")`, Service: "node-pub", Partition: -1, Messages: 1,
		Edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Exchange: x[0], HasRoutingKey: pathway.RoutingKeyTrue},
	}
	evs := h.errs.events()
	if len(evs) != 1 {
		t.Errorf("%d error events, want the one NO_ROUTE return: %+v", len(evs), evs)
	}
	var reported bool
	for _, e := range evs {
		e.Time = time.Time{}
		if reflect.DeepEqual(e, wantEv) {
			reported = true
		}
	}
	if !reported {
		t.Errorf("no NO_ROUTE error event naming exchange %s for the returned message:\ngot  %+v\nwant %+v", x[0], evs, wantEv)
	}

	// Publish points: the exact edge tags, one per publish without a context, no parent, but
	// none for the returned one: its confirm channel's ack came after the return, and what the
	// broker refused is not counted as produced.
	pts := h.rec.points()
	wantPub := map[string]int{}
	for _, r := range routes {
		if r.pub != nil && r.queue >= 0 {
			wantPub[tagKey(r.pub)]++
		}
	}
	gotPub := map[string]int{}
	for _, p := range with(pts, "direction:out") {
		gotPub[tagKey(p.EdgeTags)]++
		if p.Service != "node-pub" || p.ParentHash != 0 || p.Hash != pubHash(p.EdgeTags) {
			t.Errorf("publish point %v: service %q parent %x hash %x, want node-pub, no parent, hash %x",
				p.EdgeTags, p.Service, p.ParentHash, p.Hash, pubHash(p.EdgeTags))
		}
	}
	if !reflect.DeepEqual(gotPub, wantPub) {
		t.Errorf("publish points by edge tags:\ngot  %v\nwant %v", gotPub, wantPub)
	}

	// Consume points: per queue, one per message consumed, each the child of the publish of a
	// message routed to that queue (or of the existing context), in the same numbers.
	wantParents := [3][]uint64{}
	for _, r := range routes {
		switch {
		case r.queue < 0:
		case r.pub == nil:
			wantParents[r.queue] = append(wantParents[r.queue], existingCtx.Hash)
		default:
			wantParents[r.queue] = append(wantParents[r.queue], pubHash(r.pub))
		}
	}
	ins := with(pts, "direction:in")
	for i, queue := range q {
		inTags := []string{"direction:in", "topic:" + queue, "type:rabbitmq"}
		node := pathway.HashNode("node-sub", env, inTags)
		var parents []uint64
		for _, p := range ins {
			if !slices.Equal(p.EdgeTags, inTags) {
				continue
			}
			if !slices.Contains(wantParents[i], p.ParentHash) {
				t.Errorf("consume point on %s has parent %x, which is no publish routed to it nor the existing context (want one of %x)",
					queue, p.ParentHash, wantParents[i])
			}
			if p.Service != "node-sub" || p.Hash != pathway.HashPathway(node, p.ParentHash) {
				t.Errorf("consume point on %s: service %q hash %x", queue, p.Service, p.Hash)
			}
			parents = append(parents, p.ParentHash)
		}
		slices.Sort(parents)
		slices.Sort(wantParents[i])
		if !slices.Equal(parents, wantParents[i]) {
			t.Errorf("consume points on %s have parents %x, want %x", queue, parents, wantParents[i])
		}
	}
	if len(ins) != 10 {
		for _, p := range ins {
			t.Logf("consume point %v parent %x", p.EdgeTags, p.ParentHash)
		}
		t.Errorf("%d consume points, want 10", len(ins))
	}

	want := Stats{Connections: 2, Published: 11, Injected: 10, ExistingContext: 1, Consumed: 10, Returns: 1}
	if st := h.p.Stats(); st != want {
		t.Errorf("stats:\ngot  %+v\nwant %+v", st, want)
	}
	if t.Failed() {
		t.Logf("queues %v exchanges %v", q, x)
	}
}
