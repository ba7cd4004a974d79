package errtrack_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/protocols/amqp"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestAMQPErrorsReachCollector provokes real RabbitMQ errors through the AMQP proxy: a mandatory
// publish nothing is bound for (Basic.Return: a lost message) and a publish to a missing exchange
// (Channel.Close 404). Both reach /errors with their edges and counts, and the Agent as spans.
func TestAMQPErrorsReachCollector(t *testing.T) {
	const rabbit = "127.0.0.1:5672"
	if c, err := net.DialTimeout("tcp", rabbit, 2*time.Second); err != nil {
		t.Fatalf("RabbitMQ does not answer on %s: start it with `rabbitmq-server -detached` (%v)", rabbit, err)
	} else {
		c.Close()
	}
	var logs bytes.Buffer
	agent := &errtrack.FakeAgent{}
	agentSrv := httptest.NewServer(agent)
	defer agentSrv.Close()
	col := errtrack.New(errtrack.Config{Log: zerolog.New(&logs), Agent: errtrack.AgentConfig{Enabled: true, URL: agentSrv.URL}})
	p, err := amqp.New(amqp.Config{Listen: "127.0.0.1:0", Upstream: rabbit, Env: "test", Errors: col,
		Services: &proxy.Services{Default: "default-svc"}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	startFront(t, ctx, p)

	conn, err := amqp091.DialConfig("amqp://guest:guest@"+p.Addr().String()+"/", amqp091.Config{Properties: amqp091.Table{"connection_name": "shipping"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	// 1. Mandatory, to a routing key nothing is bound for: the broker returns it.
	if err := ch.PublishWithContext(ctx, "amq.direct", fmt.Sprintf("nobody-%d", time.Now().UnixNano()), true, false, amqp091.Publishing{Body: []byte("parcel")}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-returns:
		if r.ReplyCode != 312 {
			t.Fatalf("return code %d, want 312 NO_ROUTE", r.ReplyCode)
		}
	case <-ctx.Done():
		t.Fatal("no Basic.Return from the broker")
	}
	// 2. To an exchange that does not exist: the broker closes the channel with 404.
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	missing := fmt.Sprintf("no-such-exchange-%d", time.Now().UnixNano())
	_ = ch.PublishWithContext(ctx, missing, "k", false, false, amqp091.Publishing{Body: []byte("parcel")})
	select {
	case e := <-closed:
		if e == nil || e.Code != 404 {
			t.Fatalf("channel close %v, want 404", e)
		}
	case <-ctx.Done():
		t.Fatal("the broker did not close the channel")
	}

	view := httptest.NewServer(col.View())
	defer view.Close()
	var doc errtrack.ViewJSON
	find := func(cat, name string) *errtrack.GroupJSON {
		for i := range doc.Groups {
			if g := &doc.Groups[i]; g.Category == cat && g.Name == name && g.Protocol == "amqp" {
				return g
			}
		}
		return nil
	}
	// The close is reported as the proxy relays it; wait for it with a generous bound.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		doc = getView(t, view.URL)
		if find("broker_error", "NOT_FOUND") != nil || time.Now().After(deadline) {
			break
		}
	}
	noRoute := find("lost_message", "NO_ROUTE")
	if noRoute == nil || noRoute.Service != "shipping" || noRoute.Operation != "Basic.Publish" || noRoute.Count != 1 || noRoute.Messages != 1 ||
		!strings.Contains(noRoute.Edge, "exchange:amq.direct") {
		t.Errorf("NO_ROUTE group: %+v (all: %+v)", noRoute, doc.Groups)
	}
	notFound := find("broker_error", "NOT_FOUND")
	if notFound == nil || notFound.Code != 404 || notFound.Service != "shipping" || !strings.Contains(notFound.Edge, "exchange:"+missing) {
		t.Errorf("NOT_FOUND group: %+v (all: %+v)", notFound, doc.Groups)
	}
	lostOK := false
	for _, l := range doc.Lost {
		lostOK = lostOK || (l.Service == "shipping" && strings.Contains(l.Edge, "exchange:amq.direct") && l.Messages == 1)
	}
	if !lostOK {
		t.Errorf("lost per edge: %+v", doc.Lost)
	}

	if err := col.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, sp := range agent.Spans() {
		types[sp["meta"].(map[string]any)["error.type"].(string)] = true
	}
	for _, want := range []string{"amqp.lost_message.NO_ROUTE", "amqp.broker_error.NOT_FOUND"} {
		if !types[want] {
			t.Errorf("no %s span at the Agent; got %v", want, types)
		}
	}
	if !strings.Contains(logs.String(), "NO_ROUTE") {
		t.Errorf("no log line for NO_ROUTE:\n%s", logs.String())
	}
}
