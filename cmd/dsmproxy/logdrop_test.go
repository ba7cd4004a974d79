package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

// stalledWriter blocks its first Write until released, as a full pipe to a log shipper does.
type stalledWriter struct {
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { <-w.release })
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestDroppedLogLinesJSON: with log.format json every line a log shipper reads is JSON, the one
// that counts the lines dropped while the output stalled included (it was plain text, which a
// JSON pipeline drops or flags), at Warn, with the count as a field.
func TestDroppedLogLinesJSON(t *testing.T) {
	w := &stalledWriter{release: make(chan struct{})}
	log, closeLog, err := newRunLogger(&Config{Log: LogConfig{Level: "info", Format: "json"}}, w)
	if err != nil {
		t.Fatal(err)
	}
	for range 30000 { // the ring holds 10,000 while the writer is stalled
		log.Info().Msg("busy")
	}
	close(w.release)
	closeLog()
	w.mu.Lock()
	out := w.buf.String()
	w.mu.Unlock()
	found := false
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("a line that is not JSON: %q", line)
		}
		if n, ok := m["dropped"].(float64); ok && n > 0 && m["level"] == "warn" {
			found = true
		}
	}
	if !found {
		t.Errorf("no Warn line counts the dropped lines")
	}
}
