package proxy

import (
	"context"
	"sync"
	"sync/atomic"
)

// WrongUpstreams remembers, per upstream address as configured, why the latest answer a front got
// from it showed it is not the front's kind of server (another protocol, silence where a broker
// speaks at once, or a close where an HTTP server answers). A TCP dial cannot tell, so readiness
// asks this. The zero value is ready to use.
type WrongUpstreams struct {
	any atomic.Bool // some address is recorded: Answered's fast path
	mu  sync.Mutex
	m   map[string]error
}

// Wrong records why addr is not the front's kind of server.
func (w *WrongUpstreams) Wrong(addr string, why error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]error{}
	}
	w.m[addr] = why
	w.any.Store(true)
}

// Answered records that addr answered as the front's kind of server. Cheap when nothing is
// recorded: every connection's first answer calls it.
func (w *WrongUpstreams) Answered(addr string) {
	if !w.any.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, addr)
	w.any.Store(len(w.m) > 0)
}

// Why is what was recorded for addr, or nil.
func (w *WrongUpstreams) Why(addr string) error {
	if !w.any.Load() {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.m[addr]
}

// Recheck is Why, asking addr again with check first when something is recorded for it, so that
// an upstream put right is seen ready without a client's connection (which readiness keeps
// away). check speaks the protocol's opening to addr: nil when it answered as the front's kind
// of server (recorded as Answered), else why not (recorded). An error of check's dial or of ctx
// says nothing of the protocol and keeps what was recorded.
func (w *WrongUpstreams) Recheck(ctx context.Context, addr string, check func(ctx context.Context, addr string) (wrong, err error)) error {
	if w.Why(addr) == nil {
		return nil
	}
	wrong, err := check(ctx, addr)
	switch {
	case err != nil:
		return w.Why(addr)
	case wrong != nil:
		w.Wrong(addr, wrong)
		return wrong
	}
	w.Answered(addr)
	return nil
}
