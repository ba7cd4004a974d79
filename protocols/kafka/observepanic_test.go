package kafka

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestObserverPanicIsLogged: a fetch observation that panics costs that response's observation
// only, with a log line on the connection's logger that has the stack, and a decode error.
func TestObserverPanicIsLogged(t *testing.T) {
	s := offlineSession(t)
	var logs syncbuf.Buffer
	log := zerolog.New(&logs).With().Uint64("conn", 7).Logger()
	// A body start past the frame's end: no response the proxy queues looks like this.
	s.p.observeOne(observeJob{frame: make([]byte, 16), start: 64, version: 12, client: s.info.Load(), log: &log})
	out := logs.String()
	if !strings.Contains(out, `"conn":7`) || !strings.Contains(out, "panicked") || !strings.Contains(out, "observeFetch") {
		t.Errorf("log: %s", out)
	}
	if st := s.p.Stats(); st.DecodeErrors != 1 {
		t.Errorf("decode errors %d, want 1", st.DecodeErrors)
	}
}
