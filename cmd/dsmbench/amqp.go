package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/protocols/amqp"
)

func newAMQPFront(upstream string, m monitoring) (front, error) {
	return amqp.New(amqp.Config{
		Listen: "127.0.0.1:0", Upstream: upstream, Env: "bench",
		Checkpointer: m.cp, Observer: m.agg, Errors: m.errs, Services: m.svc, Log: zerolog.Nop(),
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
	pp, err := startProxy("amqp", u.Host, stderr)
	if err != nil {
		return nil, err
	}
	defer pp.stop()
	viaProxy := *u
	viaProxy.Host = pp.addr
	urls := []string{o.amqpURL, viaProxy.String()}
	fmt.Fprintf(stderr, "amqp: %d messages of %d B published (confirms off and on) and consumed, direct and through the proxy...\n", o.amqpMsgs, o.size)
	var pubOff, pubOn, cons, pubHdr rounds
	for round := 0; round < o.rounds; round++ {
		for i, target := range urls {
			r, err := amqpRun(ctx, target, o, pp.cpu)
			if err != nil {
				return nil, fmt.Errorf("amqp via %s: %w", []string{"direct", "proxy"}[i], err)
			}
			pubOff.add(i, r.off)
			pubOn.add(i, r.on)
			cons.add(i, r.cons)
			pubHdr.add(i, r.appHeader)
		}
	}
	rss := pp.peakRSS()
	return []row{
		pubOff.row("amqp", "publish, confirms off", rss, false),
		pubOn.row("amqp", "publish, confirms on", rss, false),
		cons.row("amqp", "consume (2 queues)", rss, false),
		pubHdr.row("amqp", "publish with an app header", rss, false),
	}, nil
}

// amqpPhases is one amqpRun's results.
type amqpPhases struct {
	off, on, cons result
	// appHeader publishes (confirms off) messages that already carry an application header. A
	// bare message has no properties at all, and RabbitMQ parses a headers table only where
	// there is one, so on bare messages the header the proxy adds costs the broker itself: a
	// direct publisher that set the pathway header on its own published 22.3k msg/s against
	// 26.3k without it in the next run, on 2 vCPUs. Once messages carry headers anyway,
	// that cost is paid on both paths, and this row shows the proxy's own.
	appHeader result
}

// appHeaders is the application header of the appHeader phase.
var appHeaders = amqp091.Table{"x-tenant": "acme"}

// amqpRun publishes o.amqpMsgs messages to one queue without confirms and to another with
// confirms (from o.concurrency channels), consumes both queues, then publishes o.amqpMsgs
// messages with an application header to a third (see amqpPhases).
// cpu reads the proxy process's CPU; each phase records its own share.
func amqpRun(ctx context.Context, target string, o options, cpu func() time.Duration) (r amqpPhases, err error) {
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
	qOff, qOn, qHdr := fmt.Sprintf("bench-off-%d", stamp), fmt.Sprintf("bench-on-%d", stamp), fmt.Sprintf("bench-hdr-%d", stamp)
	defer func() {
		for _, q := range []string{qOff, qOn, qHdr} {
			_, _ = setup.QueueDelete(q, false, false, false)
		}
	}()
	for _, q := range []string{qOff, qOn, qHdr} {
		if _, err := setup.QueueDeclare(q, false, true, false, false, nil); err != nil {
			return r, err
		}
	}
	body := benchValue(o.size)
	c0 := cpu()
	if r.off, err = amqpPublish(ctx, conn, qOff, body, nil, false, o); err != nil {
		return r, err
	}
	c1 := cpu()
	if r.on, err = amqpPublish(ctx, conn, qOn, body, nil, true, o); err != nil {
		return r, err
	}
	c2 := cpu()
	if r.cons, err = amqpConsume(ctx, conn, []string{qOff, qOn}, 2*o.amqpMsgs, o.size); err != nil {
		return r, err
	}
	c3 := cpu()
	if r.appHeader, err = amqpPublish(ctx, conn, qHdr, body, appHeaders, false, o); err != nil {
		return r, err
	}
	r.off.proxyCPU, r.on.proxyCPU, r.cons.proxyCPU, r.appHeader.proxyCPU = c1-c0, c2-c1, c3-c2, cpu()-c3
	return r, nil
}

func amqpPublish(ctx context.Context, conn *amqp091.Connection, queue string, body []byte, headers amqp091.Table, confirms bool, o options) (result, error) {
	per := o.amqpMsgs / o.concurrency
	lat := newLatencies(o.amqpMsgs)
	errc := make(chan error, o.concurrency)
	var wg sync.WaitGroup
	watch := startWatch()
	for w := 0; w < o.concurrency; w++ {
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
			for i := 0; i < per; i++ {
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
	n := per * o.concurrency
	r := result{msgs: n, bytes: int64(n * len(body))}
	watch.stop(&r)
	select {
	case err := <-errc:
		return result{}, err
	default:
	}
	r.p50, r.p99 = lat.quantile(0.5), lat.quantile(0.99)
	return r, nil
}

func amqpConsume(ctx context.Context, conn *amqp091.Connection, queues []string, n, size int) (result, error) {
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
		d, err := ch.ConsumeWithContext(ctx, q, "", true, false, false, false, nil)
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
		case <-merged:
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
