package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	if colorTerminal(devNull) {
		t.Errorf("%s, a character device, is taken for a terminal", os.DevNull)
	}
	tty, leader := openTerminal(t)
	if tty == nil {
		return
	}
	// run's own logger, with the terminal as stderr: its ring buffer is no terminal, but stderr is.
	log, closeLog, err := newRunLogger(&Config{Log: LogConfig{Level: "info", Format: "console"}}, tty)
	if err != nil {
		t.Fatal(err)
	}
	log.Warn().Msg("hello")
	closeLog()
	leader.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	for buf := make([]byte, 4096); !bytes.Contains(got, []byte("hello")); {
		n, err := leader.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("reading the terminal: %v (so far %q)", err, got)
		}
	}
	if !bytes.Contains(got, []byte("\x1b[")) {
		t.Errorf("run's console log on a terminal has no colours: %q", got)
	}
	t.Setenv("NO_COLOR", "1")
	if colorTerminal(tty) {
		t.Error("NO_COLOR is set, and a terminal still gets colours")
	}
}
