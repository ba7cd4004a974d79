package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// cleanupGrace is how long a workload that was given up on may take to close its connections
// and stop its children. amqp091's Channel.Close takes no context and can wait for ever: seen
// here after ConsumeWithContext's context ended, directly against RabbitMQ with no proxy (1 of
// 3 tries), which would otherwise hold the run for ever after --timeout.
const cleanupGrace = time.Minute

// giveUpAfter runs work with a context that ends after timeout (or with parent). It returns
// work's result, or, when work has not returned cleanupGrace after its context ended, an error
// that says so; work then runs on, abandoned, until the process exits (which closes the
// children's stdin, and they stop).
func giveUpAfter[T any](parent context.Context, timeout, grace time.Duration, work func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	type outcome struct {
		v   T
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		v, err := work(ctx)
		done <- outcome{v, err}
	}()
	select {
	case o := <-done:
		return o.v, o.err
	case <-ctx.Done():
	}
	select {
	case o := <-done:
		return o.v, o.err
	case <-time.After(grace):
		var zero T
		why := fmt.Sprintf("gave up after --timeout %v", timeout)
		if parent.Err() != nil {
			why = "interrupted"
		}
		return zero, fmt.Errorf("%s, and closing the workload's connections had not ended %v later: a broker or the proxy stopped answering (%w)", why, grace, ctx.Err())
	}
}

// exitHooks are undo steps that must run even when a workload is abandoned (giveUpAfter):
// RabbitMQ, a system service, gets its own CPU affinity back.
type exitHooks struct {
	mu    sync.Mutex
	hooks map[int]func()
	next  int
}

var atExit exitHooks

// add registers undo and returns a function that runs it at most once (for a defer) and
// unregisters it.
func (e *exitHooks) add(undo func()) func() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.hooks == nil {
		e.hooks = map[int]func(){}
	}
	id := e.next
	e.next++
	var once sync.Once
	run := func() { once.Do(undo) }
	e.hooks[id] = run
	return func() {
		e.mu.Lock()
		delete(e.hooks, id)
		e.mu.Unlock()
		run()
	}
}

// run runs every hook still registered.
func (e *exitHooks) run() {
	e.mu.Lock()
	hooks := e.hooks
	e.hooks = nil
	e.mu.Unlock()
	for _, h := range hooks {
		h()
	}
}
