package proxy

import "time"

// idleTick is how often the reaper looks: a quarter of the timeout, so a connection is closed at
// most 25% late, within bounds that keep the scan cheap for long timeouts and exact for tests.
func idleTick(timeout time.Duration) time.Duration {
	return min(max(timeout/4, 5*time.Millisecond), time.Second)
}

// reapLoop closes idle connections until the listener drains. One goroutine per listener scans the
// registry; the data path only stamps an atomic timestamp, it never touches deadlines or timers.
func (l *Listener) reapLoop() {
	t := time.NewTicker(idleTick(l.cfg.IdleTimeout))
	defer t.Stop()
	for {
		select {
		case <-l.drain:
			return
		case <-t.C:
			l.reapIdle()
		}
	}
}

// reapIdle closes both sides of every connection that moved no byte either way for IdleTimeout.
func (l *Listener) reapIdle() {
	now := l.elapsed()
	limit := int64(l.cfg.IdleTimeout)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		t := c.tracked
		if t == nil || now-t.last.Load() < limit || c.idleClosed.Swap(true) {
			continue
		}
		c.Log.Info().Dur("idle_timeout", l.cfg.IdleTimeout).
			Msg("closing connection: no bytes either way for the idle timeout")
		c.closeBoth()
	}
}
