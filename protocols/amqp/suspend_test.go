package amqp

// Tests that hold a RabbitMQ process still (sys:suspend through rabbitmqctl eval) to reach
// orderings a fast broker seldom shows: confirms out of order, a CloseOk that takes a while.

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// rabbitEval runs an Erlang expression in the local broker (rabbitmqctl eval).
func rabbitEval(t *testing.T, expr string) string {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "eval", expr).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl eval %s: %v\n%s", expr, err, out)
	}
	return strings.TrimSpace(string(out))
}

// waitConnState waits until RabbitMQ lists the connection the client named name (its
// connection_name property) in state.
func waitConnState(t *testing.T, name, state string) {
	t.Helper()
	var out []byte
	for range 50 {
		var err error
		out, err = exec.Command("rabbitmqctl", "list_connections", "-q", "--no-table-headers", "state", "client_properties").CombinedOutput()
		if err != nil {
			t.Fatalf("rabbitmqctl list_connections: %v\n%s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == state && strings.Contains(l, `{"connection_name","`+name+`"}`) {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("connection %s never %s; rabbitmqctl lists:\n%s", name, state, out)
}

func queuePidExpr(q string) string {
	return fmt.Sprintf(`{ok,Q}=rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>,queue,<<"%s">>)), amqqueue:get_pid(Q)`, q)
}

// TestNackAfterSingleAcks: RabbitMQ confirms one by one (multiple=false) while an older publish
// is unconfirmed, here for longer than the proxy's ring of publishes remembers; once that one is
// confirmed, a later nack comes with multiple=true. The client sees one nacked publish, and the
// proxy must count one lost message, not every publish acked one by one before it.
func TestNackAfterSingleAcks(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "nack-after-single-acks", 0)
	slow := declareQueue(t, c, unique("slow"))
	fast := declareQueue(t, c, unique("fast"))
	ch := channel(t, c)
	rej, err := ch.QueueDeclare(unique("rejecting"), false, true, true, false, amqp091.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	pid := queuePidExpr(slow)
	rabbitEval(t, pid+", sys:suspend(amqqueue:get_pid(Q)).")
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			rabbitEval(t, pid+", sys:resume(amqqueue:get_pid(Q)).")
		}
	}
	t.Cleanup(resume)
	ctx := context.Background()
	publish := func(q string) *amqp091.DeferredConfirmation {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, amqp091.Publishing{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		return dc
	}
	wait := func(dc *amqp091.DeferredConfirmation) bool {
		select {
		case <-dc.Done():
		case <-time.After(30 * time.Second):
			t.Fatalf("no confirm for publish %d", dc.DeliveryTag)
		}
		ok, _ := dc.WaitContext(ctx)
		return ok
	}
	first := publish(slow) // held unconfirmed while its queue is suspended
	const n = 1500
	var dcs []*amqp091.DeferredConfirmation
	for range n {
		dcs = append(dcs, publish(fast))
	}
	for _, dc := range dcs {
		if !wait(dc) {
			t.Fatalf("publish %d to %s nacked", dc.DeliveryTag, fast)
		}
	}
	resume()
	if !wait(first) {
		t.Fatal("first publish nacked")
	}
	if wait(publish(rej.Name)) {
		t.Fatal("publish to the rejecting queue was acked")
	}
	// The proxy counts a nack after forwarding it, before it reads the broker's next frame: once
	// a later confirm is here, the nack is counted.
	if !wait(publish(fast)) {
		t.Fatal("last publish nacked")
	}
	lost := 0
	for _, e := range h.errs.events() {
		if e.Name == "NACK" {
			t.Logf("NACK event: edge %v, %d messages: %s", e.Edge, e.Messages, e.Message)
			lost += e.Messages
		}
	}
	if lost != 1 {
		t.Errorf("%d lost messages reported for 1 nacked publish (of %d published, %d acked)", lost, n+2, n+1)
	}
}

// TestDrainLetsAClosingClientFinish: a client that has sent Connection.Close and waits for the
// broker's CloseOk when the proxy starts a drain still gets that CloseOk (the broker takes a
// while: here its channels are suspended for 3 s), not a dropped socket; without the proxy its
// Close returns nil.
func TestDrainLetsAClosingClientFinish(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "closing-at-drain", 0)
	channel(t, c)
	rabbitEval(t, `[sys:suspend(P) || P <- rabbit_channel:list()], ok.`)
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			rabbitEval(t, `[catch sys:resume(P) || P <- rabbit_channel:list()], ok.`)
		}
	}
	t.Cleanup(resume)
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	// The broker has the Close (so the proxy has passed it on) when it lists the connection closing.
	waitConnState(t, "closing-at-drain", "closing")
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		h.p.Shutdown(ctx)
	}()
	defer func() { <-drained }()
	// The broker answers later than any short fixed wait would allow (closeWait bounded this wait
	// until it failed under load, where rabbitmqctl alone took over 2 s).
	time.Sleep(closeWait + time.Second)
	resume()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("client's Connection.Close during a drain: %v (want the broker's CloseOk)", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("client's Close never returned")
	}
}
