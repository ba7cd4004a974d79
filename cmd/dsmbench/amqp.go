package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/amqp"
)

func newAMQPFront(upstream string, m monitoring) (front, error) {
	return amqp.New(amqp.Config{
		Listen: "127.0.0.1:0", Upstream: upstream, Env: "bench",
		// The "with ctx" phases publish messages that already carry a pathway context; the proxy
		// must checkpoint them and replace it (the default leaves such messages alone).
		RespectExistingContext: new(bool),
		Checkpointer:           m.cp,
		Observer:               m.agg,
		Errors:                 m.errs,
		Services:               m.svc,
		Log:                    zerolog.Nop(),
	})
}

// benchAMQP publishes (confirms off, then on) and consumes the same messages directly against
// RabbitMQ and through the proxy, alternating rounds.
func benchAMQP(ctx context.Context, o options, stderr io.Writer) ([]row, error) {
	u, err := url.Parse(o.amqpURL)
	if err != nil {
		return nil, fmt.Errorf("--amqp-url: %w", err)
	}
	if c, err := net.DialTimeout("tcp", u.Host, time.Second); err != nil {
		fmt.Fprintf(stderr, "amqp: no RabbitMQ answers at %s (start it with `rabbitmq-server -detached`); skipped\n", u.Host)
		return nil, nil
	} else {
		c.Close()
	}
	if len(o.pinned) > 0 {
		// RabbitMQ is a system service, not dsmbench's child: without this it would run on the
		// proxy's CPU too, and --pin would not give the proxy a CPU of its own.
		if restore, err := pinBroker(u.Host, o.pinned, stderr); err == nil {
			defer atExit.add(restore)()
		} else {
			fmt.Fprintf(stderr, "amqp: RabbitMQ not pinned, it may run on the proxy's CPU: %v\n", err)
		}
	}
	pp, err := startProxy("amqp", u.Host, stderr)
	if err != nil {
		return nil, err
	}
	defer pp.stop()
	via := func(addr string) string {
		v := *u
		v.Host = addr
		return v.String()
	}
	paths := []benchPath{{name: "direct", target: o.amqpURL}, {name: "proxy", target: via(pp.addr), proc: pp}}
	if o.relay {
		rp, err := startRelay(u.Host, stderr)
		if err != nil {
			return nil, err
		}
		defer rp.stop()
		paths = append(paths, benchPath{name: "relay", target: via(rp.addr), proc: rp})
	}
	fmt.Fprintf(stderr, "amqp: %d messages of %d B published (confirms off and on) and consumed, direct and through the proxy...\n", o.amqpMsgs, o.size)
	var pubOff, pubOn, cons, ctxOff, ctxOn, acked rounds
	for round := 0; round < o.rounds; round++ {
		for _, i := range roundOrder(round, len(paths)) {
			p := paths[i]
			r, err := amqpRun(ctx, p.target, i == pathProxy, o, p.proc.cpu)
			if err != nil {
				return nil, fmt.Errorf("amqp via %s: %w", p.name, err)
			}
			pubOff.add(i, r.off)
			pubOn.add(i, r.on)
			cons.add(i, r.cons)
			ctxOff.add(i, r.ctxOff)
			ctxOn.add(i, r.ctxOn)
			acked.add(i, r.acked)
		}
		for _, r := range []*rounds{&pubOff, &pubOn, &cons, &ctxOff, &ctxOn, &acked} {
			r.endRound()
		}
	}
	rss := pp.peakRSS()
	return []row{
		pubOff.row("amqp", "publish, confirms off", rss, false),
		pubOn.row("amqp", "publish, confirms on", rss, false),
		cons.row("amqp", "consume (2 queues)", rss, false),
		ctxOff.row("amqp", "publish with ctx, confirms off", rss, false),
		ctxOn.row("amqp", "publish with ctx, confirms on", rss, false),
		acked.row("amqp", "consume with ctx, acked", rss, false),
	}, nil
}

// amqpPhases is one amqpRun's results.
type amqpPhases struct {
	off, on, cons result
	// ctxOff and ctxOn publish messages that already carry dd-pathway-ctx-base64, as a traced
	// publisher sends them, and the bench's proxy replaces it with its own. RabbitMQ then gets
	// the same headers table on both paths. On bare messages it does not: the entry the proxy
	// adds costs the broker itself (one publisher connection on 2 vCPUs, direct: RabbitMQ 3.10
	// took 55-67k msg/s carrying the entry against 66-92k bare, in alternating runs), so these
	// rows show the proxy's own cost apart from the broker's.
	ctxOff, ctxOn result
	// acked consumes the ctx queues as most consumers do, acknowledging every message with a
	// prefetch of 1000, where consume takes the bare ones with automatic acks. Without acks
	// RabbitMQ pushes as fast as the socket drains, and consume runs faster through any hop, the
	// relay included (README); with acks every message also sends a frame back through the hop,
	// as a real consumer's do. Both paths read messages with the same headers table.
	acked result
}

// amqpRun publishes o.amqpMsgs bare messages to one queue without confirms and to another with
// confirms (from o.concurrency channels), consumes both queues, then publishes o.amqpMsgs
// messages that carry a pathway context to two more, without and with confirms (see
// amqpPhases). viaProxy says whether target is the proxy, which must have replaced the context.
// cpu reads the proxy process's CPU; each phase records its own share.
func amqpRun(ctx context.Context, target string, viaProxy bool, o options, cpu func() time.Duration) (r amqpPhases, err error) {
	conn, err := amqp091.DialConfig(target, amqp091.Config{Properties: amqp091.Table{"connection_name": "bench"}})
	if err != nil {
		return r, err
	}
	defer conn.Close()
	setup, err := conn.Channel()
	if err != nil {
		return r, err
	}
	stamp := time.Now().UnixNano()
	qOff, qOn := fmt.Sprintf("bench-off-%d", stamp), fmt.Sprintf("bench-on-%d", stamp)
	qCtxOff, qCtxOn := fmt.Sprintf("bench-ctx-off-%d", stamp), fmt.Sprintf("bench-ctx-on-%d", stamp)
	queues := []string{qOff, qOn, qCtxOff, qCtxOn}
	defer func() {
		for _, q := range queues {
			_, _ = setup.QueueDelete(q, false, false, false)
		}
	}()
	for _, q := range queues {
		if _, err := setup.QueueDeclare(q, false, true, false, false, nil); err != nil {
			return r, err
		}
	}
	body := benchValue(o.size)
	now := time.Now()
	sent := pathway.Context{Hash: 0x5eed_cafe_f00d_beef, PathwayStart: now, EdgeStart: now}.String()
	traced := amqp091.Table{pathway.HeaderKey: sent}
	consume := func() (result, error) {
		return amqpConsume(ctx, conn, []string{qOff, qOn}, 2*o.amqpMsgs, o.size, false)
	}
	publish := func(queue string, headers amqp091.Table, confirms bool) func() (result, error) {
		return func() (result, error) { return amqpPublish(ctx, conn, queue, body, headers, confirms, o) }
	}
	for _, ph := range []struct {
		res *result
		run func() (result, error)
	}{
		{&r.off, publish(qOff, nil, false)},
		{&r.on, publish(qOn, nil, true)},
		{&r.cons, consume},
		{&r.ctxOff, publish(qCtxOff, traced, false)},
		{&r.ctxOn, publish(qCtxOn, traced, true)},
	} {
		c0 := cpu()
		if *ph.res, err = ph.run(); err != nil {
			return r, err
		}
		ph.res.proxyCPU = cpu() - c0
	}
	// The "with ctx" rows mean something only if the proxy did replace the context. One message
	// of each queue is read here; acked takes the rest.
	for _, q := range []string{qCtxOff, qCtxOn} {
		m, ok, err := setup.Get(q, true)
		if err != nil || !ok {
			return r, fmt.Errorf("reading back a message of %s: ok=%v, %v", q, ok, err)
		}
		got, _ := m.Headers[pathway.HeaderKey].(string)
		if replaced := got != sent; replaced != viaProxy {
			return r, fmt.Errorf("%s: a message published with %s=%q arrived with %q", q, pathway.HeaderKey, sent, got)
		}
	}
	c0 := cpu()
	if r.acked, err = amqpConsume(ctx, conn, []string{qCtxOff, qCtxOn}, 2*o.amqpMsgs-2, o.size, true); err != nil {
		return r, err
	}
	r.acked.proxyCPU = cpu() - c0
	return r, nil
}

func amqpPublish(ctx context.Context, conn *amqp091.Connection, queue string, body []byte, headers amqp091.Table, confirms bool, o options) (result, error) {
	per, rem := o.amqpMsgs/o.concurrency, o.amqpMsgs%o.concurrency
	lat := newLatencies(o.amqpMsgs)
	errc := make(chan error, o.concurrency)
	var wg sync.WaitGroup
	watch := startWatch()
	for w := 0; w < o.concurrency; w++ {
		mine := per
		if w < rem { // every message is sent, so the consume phases find them all
			mine++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, err := conn.Channel()
			if err != nil {
				errc <- err
				return
			}
			defer ch.Close()
			if confirms {
				if err := ch.Confirm(false); err != nil {
					errc <- err
					return
				}
			}
			var pending []*amqp091.DeferredConfirmation
			var sent []time.Time
			for i := 0; i < mine; i++ {
				t0 := time.Now()
				dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp091.Publishing{Headers: headers, Body: body})
				if err != nil {
					errc <- err
					return
				}
				if confirms {
					pending, sent = append(pending, dc), append(sent, t0)
					// Keep a window of 200 unconfirmed, as a pipelining publisher would.
					if len(pending) >= 200 {
						if !pending[0].Wait() {
							errc <- fmt.Errorf("publish nacked")
							return
						}
						lat.add(time.Since(sent[0]))
						pending, sent = pending[1:], sent[1:]
					}
				} else {
					lat.add(time.Since(t0))
				}
			}
			for i, dc := range pending {
				if !dc.Wait() {
					errc <- fmt.Errorf("publish nacked")
					return
				}
				lat.add(time.Since(sent[i]))
			}
		}()
	}
	wg.Wait()
	n := o.amqpMsgs
	select {
	case err := <-errc:
		return result{}, err
	default:
	}
	if !confirms {
		// A publisher without confirms is done once its frames are written, which through the
		// proxy can be before RabbitMQ has read them; the rate is the broker's intake either way.
		if err := awaitQueued(ctx, conn, queue, n); err != nil {
			return result{}, err
		}
	}
	r := result{msgs: n, bytes: int64(n * len(body))}
	watch.stop(&r)
	r.p50, r.p99 = lat.quantile(0.5), lat.quantile(0.99)
	return r, nil
}

// awaitQueued waits until queue holds at least n messages.
func awaitQueued(ctx context.Context, conn *amqp091.Connection, queue string, n int) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	last, since := -1, time.Now()
	for {
		q, err := ch.QueueDeclarePassive(queue, false, true, false, false, nil)
		if err != nil {
			return err
		}
		if q.Messages >= n {
			return nil
		}
		if q.Messages != last {
			last, since = q.Messages, time.Now()
		} else if time.Since(since) > 30*time.Second {
			return fmt.Errorf("%s: %d of %d published messages queued, then no more for 30 s", queue, q.Messages, n)
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// amqpConsume reads n messages from queues on one channel with a prefetch of 1000, acknowledging
// each when ack is set and with automatic acks otherwise.
func amqpConsume(ctx context.Context, conn *amqp091.Connection, queues []string, n, size int, ack bool) (result, error) {
	ch, err := conn.Channel()
	if err != nil {
		return result{}, err
	}
	defer ch.Close()
	if err := ch.Qos(1000, 0, false); err != nil {
		return result{}, err
	}
	merged := make(chan amqp091.Delivery, 1000)
	for _, q := range queues {
		d, err := ch.ConsumeWithContext(ctx, q, "", !ack, false, false, false, nil)
		if err != nil {
			return result{}, err
		}
		go func() {
			for m := range d {
				merged <- m
			}
		}()
	}
	watch := startWatch()
	got := 0
	for got < n {
		select {
		case m := <-merged:
			if ack {
				if err := m.Ack(false); err != nil {
					return result{}, err
				}
			}
			got++
		case <-time.After(30 * time.Second):
			return result{}, fmt.Errorf("consumed %d of %d messages, then nothing for 30 s", got, n)
		case <-ctx.Done():
			return result{}, ctx.Err()
		}
	}
	r := result{msgs: got, bytes: int64(got * size)}
	watch.stop(&r)
	return r, nil
}

// pinBroker moves the process listening at hostport (on this machine) to cpus.
func pinBroker(hostport string, cpus []int, stderr io.Writer) (restore func(), err error) {
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return nil, err
	}
	pid, err := listenerPID(n)
	if err != nil {
		return nil, err
	}
	if restore, err = pinProcess(strconv.Itoa(pid), cpus); err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "amqp: RabbitMQ (pid %d) on CPUs %v for the AMQP runs\n", pid, cpus)
	return restore, nil
}
