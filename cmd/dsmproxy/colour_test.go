package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsoleLogColours: the console log format colours its lines only for a terminal (the one
// stderr reaches, decided before stderr is wrapped), never for a buffer, a file or a pipe, and
// never with NO_COLOR set.
func TestConsoleLogColours(t *testing.T) {
	t.Setenv("NO_COLOR", "") // as unset: zerolog reads it too
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, tc := range []struct {
		name string
		w    io.Writer
	}{{"buffer", &bytes.Buffer{}}, {"file", f}, {"pipe", w}} {
		if colorTerminal(tc.w) {
			t.Errorf("a %s is taken for a terminal", tc.name)
		}
	}
	for _, color := range []bool{false, true} {
		var buf bytes.Buffer
		log, err := newLogger(&Config{Log: LogConfig{Level: "info", Format: "console"}}, &buf, color)
		if err != nil {
			t.Fatal(err)
		}
		log.Warn().Str("listen", "127.0.0.1:1").Msg("hello")
		if got := strings.Contains(buf.String(), "\x1b["); got != color || !strings.Contains(buf.String(), "hello") {
			t.Errorf("color=%v: console line %q", color, buf.String())
		}
	}
	if tty := openTerminal(t); tty != nil {
		if !colorTerminal(tty) {
			t.Error("a terminal is not taken for one")
		}
		t.Setenv("NO_COLOR", "1")
		if colorTerminal(tty) {
			t.Error("NO_COLOR is set, and a terminal still gets colours")
		}
	}
}
