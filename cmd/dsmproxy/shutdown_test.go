package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// stubFront is a front reduced to its Shutdown, to see how the runtime drives several.
type stubFront struct {
	shutdown func(ctx context.Context) error
}

func (stubFront) Start(context.Context) error          { return nil }
func (f stubFront) Shutdown(ctx context.Context) error { return f.shutdown(ctx) }
func (stubFront) Addr() net.Addr                       { return &net.TCPAddr{} }

// TestFrontsDrainTogether: a front that cannot drain (it holds on until the deadline) does not
// delay the others' drain; being cut at the deadline is no error, any other failure is, named.
func TestFrontsDrainTogether(t *testing.T) {
	asked, deadline := make(chan struct{}), make(chan struct{})
	rt := &runtime{fronts: []namedFront{
		{front: stubFront{func(context.Context) error { <-deadline; return context.DeadlineExceeded }}, protocol: "kafka", listen: ":9092"},
		{front: stubFront{func(context.Context) error { close(asked); return nil }}, protocol: "aws", listen: ":4566"},
		{front: stubFront{func(context.Context) error { return errors.New("listener already closed") }}, protocol: "amqp", listen: ":5673"},
	}}
	done := make(chan []error, 1)
	go func() { done <- rt.shutdownFronts(context.Background()) }()
	select {
	case <-asked:
	case <-time.After(30 * time.Second):
		t.Fatal("the aws front was not asked to drain while the kafka front was draining")
	}
	close(deadline)
	var failed []string
	for _, err := range <-done {
		if err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) != 1 || !strings.Contains(failed[0], "amqp front :5673: listener already closed") {
		t.Errorf("errors %q, want only the amqp front's", failed)
	}
}
