package main

import (
	"strings"
	"sync"
	"testing"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// releaseOn is the demo's stdout: it lets w's writes go once the demo says it is stopping, that
// is once its services ran their traffic through the proxy while w was stalled.
type releaseOn struct {
	syncbuf.Buffer
	w    *stalledWriter
	once sync.Once
}

func (r *releaseOn) Write(p []byte) (int, error) {
	n, err := r.Buffer.Write(p)
	if strings.Contains(r.Buffer.String(), "stopping:") {
		r.once.Do(func() { close(r.w.release) })
	}
	return n, err
}

// TestDemoRunsWhileItsLogStalls: the demo's proxy logs through the same dropping buffer as run's,
// so a stalled stderr (a paused pager on `make demo 2>&1 | less`) does not hold it or its
// traffic. It wrote to stderr directly, and stopped at its first log line.
func TestDemoRunsWhileItsLogStalls(t *testing.T) {
	w := &stalledWriter{release: make(chan struct{})}
	out := &releaseOn{w: w}
	// Debug: each client connection logs as it is identified, on its data path.
	err := cmdDemo([]string{"--duration", "3s", "--flush", "1s", "--sqs=false", "--amqp-upstream", "off", "--log-level", "debug"}, out, w)
	if err != nil {
		t.Fatalf("demo with a stalled stderr: %v\n%s", err, out.String())
	}
	// The pipeline's last consumer got records through the proxy before the demo stopped, so
	// before stderr took a line.
	s := out.String()
	before, _, ok := strings.Cut(s, "stopping:")
	if !ok || !strings.Contains(before, "direction:in group:mailer") {
		t.Errorf("no consume by mailer reached the Agent before the demo stopped:\n%s", s)
	}
}
