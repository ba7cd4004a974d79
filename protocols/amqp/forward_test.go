package amqp

import (
	"context"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestForwardedHeadersCheckpointed: a worker that consumes a message and publishes it on with
// the headers it was delivered (a retry, a forward to another queue) sends on the context the
// proxy gave the first publish: no tracer put it there at this hop. The forward is a produce of
// the worker's, checkpointed with the worker's consume as parent (as a tracer links them) and
// given a new context, so the next consumer follows the worker, not the first producer. The
// worker's other headers stay as they were.
func TestForwardedHeadersCheckpointed(t *testing.T) {
	h := startProxy(t, nil)
	pc, fc, sc := dial(t, h.url, "producer", 0), dial(t, h.url, "forwarder", 0), dial(t, h.url, "sink", 0)
	in, out := declareQueue(t, pc, unique("fw-in")), declareQueue(t, pc, unique("fw-out"))
	if err := channel(t, pc).PublishWithContext(context.Background(), "", in, false, false,
		amqp091.Publishing{Headers: amqp091.Table{"app": "v"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	fch := channel(t, fc)
	d := consumeN(t, fch, in, 1)[0]
	if err := fch.PublishWithContext(context.Background(), "", out, false, false,
		amqp091.Publishing{Headers: d.Headers, Body: d.Body}); err != nil {
		t.Fatal(err)
	}
	got := consumeN(t, channel(t, sc), out, 1)[0]
	if got.Headers["app"] != "v" || got.Headers[pathway.HeaderKey] == d.Headers[pathway.HeaderKey] {
		t.Errorf("forwarded headers %v: want app kept and a new context, not the delivered %v", got.Headers, d.Headers[pathway.HeaderKey])
	}
	pts := h.rec.points()
	consumed := with(pts, "direction:in", "topic:"+in)
	forwarded := with(pts, "direction:out", "topic:"+out)
	sunk := with(pts, "direction:in", "topic:"+out)
	if len(consumed) != 1 || len(forwarded) != 1 || len(sunk) != 1 {
		t.Fatalf("%d consume, %d forward and %d sink checkpoints, want 1 each", len(consumed), len(forwarded), len(sunk))
	}
	if forwarded[0].Service != "forwarder" || forwarded[0].ParentHash != consumed[0].Hash || sunk[0].ParentHash != forwarded[0].Hash {
		t.Errorf("forward %+v, sink %+v: want the forward's parent the worker's consume %d and the sink's the forward", forwarded[0], sunk[0], consumed[0].Hash)
	}
}
