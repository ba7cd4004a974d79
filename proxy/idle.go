package proxy

import "time"

// clockTick is how often a listener's coarse clock advances and idle connections are looked for:
// an eighth of the idle timeout (bounded so long timeouts stay cheap and tests stay quick), or a
// second when there is no timeout and the clock only dates registry entries.
func clockTick(idle time.Duration) time.Duration {
	if idle <= 0 {
		return time.Second
	}
	return min(max(idle/8, 5*time.Millisecond), time.Second)
}

// tickLoop drives the coarse clock until the listener drains. Reads and writes only copy the coarse
// clock into an atomic stamp; reading the real clock on every call cost ~100 ns on this VM, and
// refreshing deadlines would cost a timer update per call.
func (l *Listener) tickLoop() {
	t := time.NewTicker(l.tickEvery)
	defer t.Stop()
	for {
		select {
		case <-l.drain:
			return
		case <-t.C:
			l.tick()
		}
	}
}

// tick advances the coarse clock and closes idle connections.
func (l *Listener) tick() {
	now := l.elapsed()
	l.coarse.Store(now)
	if l.cfg.IdleTimeout > 0 {
		l.reapIdle(now)
	}
}

// reapIdle closes both sides of every connection that moved no byte either way for IdleTimeout. A
// stamp may be up to one tick older than the activity it records, so one tick of slack keeps the
// timeout from ever firing early; it fires at most two ticks (a quarter of the timeout) late.
func (l *Listener) reapIdle(now int64) {
	limit := int64(l.cfg.IdleTimeout + l.tickEvery)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		t := c.tracked
		if t == nil || now-t.last.Load() < limit || c.idleClosed.Swap(true) {
			continue
		}
		c.Log.Info().Stringer("idle_timeout", l.cfg.IdleTimeout).
			Msg("closing connection: no bytes either way for the idle timeout")
		c.closeBoth()
	}
}
