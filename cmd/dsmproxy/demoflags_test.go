package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestDemoRateRefused: a --rate the demo cannot produce at is refused with what to give, before
// anything starts. 0 and -5 used to run at 1 order a second while the banner said "0 orders/s"
// or "-5 orders/s", and 2000000000 made a ticker of no interval, which panics.
func TestDemoRateRefused(t *testing.T) {
	for _, rate := range []string{"0", "-5", "2000000000"} {
		err := cmdDemo([]string{"--rate", rate, "--duration", "1ms", "--sqs=false", "--amqp-upstream", "off"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--rate "+rate) || !strings.Contains(err.Error(), "1 to 1000000") {
			t.Errorf("--rate %s: %v, want it refused with the range to give", rate, err)
		}
	}
}

// TestDemoAMQPOffSaysSo: with --amqp-upstream off the banner says the AMQP part was turned off,
// not "no RabbitMQ answers on off", as if "off" were an address that did not answer.
func TestDemoAMQPOffSaysSo(t *testing.T) {
	var out syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- runDemo(ctx, demoOptions{rate: 10, flush: time.Second, logLevel: "error", amqpUpstream: "off"}, &out, io.Discard)
	}()
	for !strings.Contains(out.String(), "pipeline:") {
		select {
		case err := <-done:
			t.Fatalf("the demo ended (%v) before its banner:\n%s", err, out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if s := out.String(); strings.Contains(s, "answers on off") || !strings.Contains(s, "--amqp-upstream off") {
		t.Errorf("the banner does not say --amqp-upstream off turned the AMQP part off:\n%s", s)
	}
}

// TestDemoShortDurationRunsTraffic: --duration counts from when the services start. It used to
// count from the process start, and `demo --duration 1ms` failed with "creating the demo's
// audit-log topic: context deadline exceeded" before any traffic.
func TestDemoShortDurationRunsTraffic(t *testing.T) {
	var out syncbuf.Buffer
	err := cmdDemo([]string{"--duration", "1ms", "--sqs=false", "--amqp-upstream", "off"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("demo --duration 1ms: %v\n%s", err, out.String())
	}
	if s := out.String(); !strings.Contains(s, "pipeline:") || !strings.Contains(s, "stopping:") {
		t.Errorf("demo --duration 1ms did not start the pipeline and stop it:\n%s", s)
	}
	if err := cmdDemo([]string{"--duration", "-1s"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--duration -1s") {
		t.Errorf("--duration -1s: %v, want it refused", err)
	}
}
