package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestSIGHUPDuringFinalFlush: SIGHUP's default action ends the process. stop() cancels the
// SIGHUP reloads with bg, and a SIGHUP during the last DSM flush (up to 5 s, plus 5 s for the
// error tracker's) killed the process with the buckets unsent: logrotate's `kill -HUP`, or a
// supervisor's reload while the pod terminates, was enough. The child's Agent never answers.
func TestSIGHUPDuringFinalFlush(t *testing.T) {
	if os.Getenv("DSMPROXY_SIGHUP_CHILD") == "1" {
		agentAddr, _ := silentListener(t) // an Agent that accepts and never answers
		cfg := &Config{AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:1"}}, Admin: AdminConfig{Listen: "off"},
			Agent: AgentConfig{URL: "http://" + agentAddr}, DrainTimeout: Duration(100 * time.Millisecond)}
		cfg.Defaults()
		rt, err := start(context.Background(), cfg, zerolog.Nop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		rt.agg.Add(pathway.Point{Service: "orders", EdgeTags: []string{"direction:out", "topic:t", "type:kafka"}, Hash: 1, Time: time.Now().UnixNano()})
		fmt.Println("STOPPING")
		rt.stop()
		fmt.Println("STOPPED")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSIGHUPDuringFinalFlush$", "-test.v")
	cmd.Env = append(os.Environ(), "DSMPROXY_SIGHUP_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	var all strings.Builder
	for {
		line, err := br.ReadString('\n')
		all.WriteString(line)
		if strings.HasPrefix(line, "STOPPING") || err != nil {
			break
		}
	}
	time.Sleep(time.Second) // the drain (100ms) is over; the last flush waits on the Agent
	cmd.Process.Signal(syscall.SIGHUP)
	rest, _ := io.ReadAll(br)
	all.Write(rest)
	err = cmd.Wait()
	if !strings.Contains(all.String(), "STOPPED") {
		t.Errorf("a SIGHUP during the last flush ended the process (%v) before the flush finished; output:\n%s", err, all.String())
	}
}

// TestSIGHUPSaysTheEditedFileIsNotApplied: SIGHUP reloads only TLS files. An operator who edited
// the config file and sent SIGHUP got "no TLS certificates configured, nothing to reload" (or
// "TLS certificates reloaded") and nothing about the file: the edit seemed applied and was not.
func TestSIGHUPSaysTheEditedFileIsNotApplied(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsmproxy.yaml")
	write := func(upstream string) {
		body := "admin: {listen: \"off\"}\nagent: {disabled: true}\namqp:\n  - listen: 127.0.0.1:0\n    upstream: " + upstream + "\n"
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("127.0.0.1:1")
	cfg, err := (&runFlags{config: path}).loadConfig(envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	rt, logs := startLogged(t, cfg)
	defer rt.stop()
	hup := func() string { // the log lines of one SIGHUP, once its reload line is written
		before := strings.Count(logs.String(), "nothing to reload")
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for strings.Count(logs.String(), "nothing to reload") == before {
			time.Sleep(10 * time.Millisecond)
		}
		return logs.String()
	}
	if out := hup(); strings.Contains(out, "not what was read at start") {
		t.Errorf("SIGHUP with the file unchanged warned that it changed:\n%s", out)
	}
	write("127.0.0.1:2")
	if out := hup(); !strings.Contains(out, "not what was read at start") || !strings.Contains(out, `"config":"`+path+`"`) {
		t.Errorf("SIGHUP after the config file was edited did not say the edit is not applied:\n%s", out)
	}
}

// TestSIGHUPChecksTheEditedFile: SIGHUP applies no edit of the config file, so an operator who
// edited it learns at the SIGHUP to restart; a restart with a file the proxy refuses would then
// stop the proxy that was running. So the SIGHUP checks the edited file as check-config would
// (with the flags and environment of the start) and names what a restart would refuse, at
// Error; the configuration of the start stays in force, its front still serving.
func TestSIGHUPChecksTheEditedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsmproxy.yaml")
	const good = "admin: {listen: \"off\"}\nagent: {disabled: true}\namqp:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n"
	write := func(body string) {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(good)
	cfg, err := (&runFlags{config: path}).loadConfig(envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	rt, logs := startLogged(t, cfg)
	defer rt.stop()
	hups := 0
	hup := func() string { // the log lines of one SIGHUP, once its reload line is written
		hups++
		before := len(logs.String())
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for strings.Count(logs.String(), "nothing to reload") < hups {
			time.Sleep(10 * time.Millisecond)
		}
		return logs.String()[before:]
	}
	for _, tc := range []struct {
		name, body string
		want       []string // in the SIGHUP's lines; none: the edit passes
	}{
		{"an edit the proxy takes", strings.Replace(good, "127.0.0.1:1", "127.0.0.1:2", 1), nil},
		{"a mistyped key", good + "servces: []\n", []string{`"level":"error"`, "restart", "servces", "services"}},
		{"a YAML syntax error", good + "kafka:\n  - listen: [oops\n", []string{`"level":"error"`, "restart", "line 7"}},
		{"a services rule that does not compile", good + "services:\n  - {service: s, client_id: '('}\n", []string{`"level":"error"`, "restart", "client_id"}},
		{"nothing to proxy", "admin: {listen: \"off\"}\n", []string{`"level":"error"`, "restart", "nothing to proxy"}},
	} {
		write(tc.body)
		out := hup()
		if !strings.Contains(out, "not what was read at start") && tc.want == nil {
			t.Errorf("%s: the SIGHUP did not say the edit is not applied:\n%s", tc.name, out)
		}
		if tc.want == nil && strings.Contains(out, `"level":"error"`) {
			t.Errorf("%s: an edit a restart would take was reported as refused:\n%s", tc.name, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: the SIGHUP's lines lack %q:\n%s", tc.name, w, out)
			}
		}
	}
	// The configuration of the start still serves. Its upstream refuses, so the front resets
	// each connection it accepts, at times before the dial has returned: a reset is an answer
	// from a listening front (a port nothing listens on refuses the connection instead).
	conn, err := net.Dial("tcp", rt.fronts[0].Addr().String())
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the front stopped listening after SIGHUPs with broken files: %v", err)
	}
	if conn != nil {
		conn.Close()
	}
}
