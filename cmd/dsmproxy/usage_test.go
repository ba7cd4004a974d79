package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestFlagMistakes: a mistyped flag or command is answered in a few lines that name it, the one
// it most likely meant, and where every flag is listed, not followed by the whole --help, whose
// 45 lines scrolled the mistake off a terminal.
func TestFlagMistakes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"run, mistyped flag", []string{"run", "--kafak", "127.0.0.1:19092=k:9092"}, 2,
			[]string{"unknown flag --kafak", "did you mean --kafka?", "dsmproxy run --help"}},
		{"check-config, mistyped flag", []string{"check-config", "--agenturl", "http://a:8126"}, 2,
			[]string{"unknown flag --agenturl", "did you mean --agent-url?", "dsmproxy check-config --help"}},
		{"run, the demo's flag", []string{"run", "--amqp-upstream", "x"}, 2,
			[]string{"unknown flag --amqp-upstream", "dsmproxy run --help"}},
		{"demo, mistyped flag", []string{"demo", "--duraton", "1m"}, 2,
			[]string{"unknown flag --duraton", "did you mean --duration?", "dsmproxy demo --help"}},
		{"probe, mistyped flag", []string{"probe", "--timout", "1s"}, 2,
			[]string{"unknown flag --timout", "did you mean --timeout?", "dsmproxy probe --help"}},
		{"run, flag without its value", []string{"run", "--kafka"}, 2,
			[]string{"flag needs an argument: --kafka", "dsmproxy run --help"}},
		{"run, extra argument", []string{"run", "kafka"}, 2,
			[]string{`unexpected argument "kafka"`, "dsmproxy run --help"}},
		{"mistyped command", []string{"runn"}, 2,
			[]string{`unknown command "runn": did you mean run?`, "Usage:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := mainArgs(tc.args, &out, &errb)
			msg := errb.String()
			if code != tc.code {
				t.Errorf("%v: exit %d, want %d; stderr:\n%s", tc.args, code, tc.code, msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("%v: stderr does not say %q:\n%s", tc.args, w, msg)
				}
			}
			if tc.args[0] != "runn" && (strings.Contains(msg, "Usage:") || strings.Count(msg, "\n") > 3) {
				t.Errorf("%v: stderr is more than the mistake and a pointer to --help:\n%s", tc.args, msg)
			}
		})
	}
}

// TestHandledErrorsValueWarned: DD_ERROR_TRACKING_HANDLED_ERRORS turns error spans on only for
// user, third_party or all (as dd-trace-py reads it); a value such as true, which a user sets
// expecting them on, is said to leave them off instead of being dropped without a word.
func TestHandledErrorsValueWarned(t *testing.T) {
	for _, tc := range []struct {
		value string
		warn  bool
	}{
		{"true", true},
		{"1", true},
		{"all", false},
		{"user", false},
		{"false", false},
		{"", false},
	} {
		t.Run(tc.value, func(t *testing.T) {
			t.Setenv("DD_ERROR_TRACKING_HANDLED_ERRORS", tc.value)
			var out, errb bytes.Buffer
			code := mainArgs([]string{"check-config", "--amqp", "127.0.0.1:5673=127.0.0.1:5672", "--admin", "off"}, &out, &errb)
			warned := strings.Contains(errb.String(), "DD_ERROR_TRACKING_HANDLED_ERRORS") &&
				strings.Contains(errb.String(), "error spans stay off")
			if code != 0 || warned != tc.warn || strings.Contains(out.String(), "warning") != tc.warn {
				t.Errorf("DD_ERROR_TRACKING_HANDLED_ERRORS=%q: exit %d, warned %v (want %v); stdout %q, stderr %q",
					tc.value, code, warned, tc.warn, out.String(), errb.String())
			}
		})
	}
}

// TestVersionCommand: `dsmproxy version` prints the version; `version --help` printed it too
// instead of saying what the command does, and an argument it does not take was ignored.
func TestVersionCommand(t *testing.T) {
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"version"}, 0, "dsmproxy " + version + "\n", ""},
		{[]string{"--version"}, 0, "dsmproxy " + version + "\n", ""},
		{[]string{"version", "--help"}, 0, "Usage: dsmproxy version", ""},
		{[]string{"version", "-h"}, 0, "Usage: dsmproxy version", ""},
		{[]string{"version", "--short"}, 2, "", "unknown flag --short"},
		{[]string{"version", "now"}, 2, "", `unexpected argument "now"`},
	} {
		var out, errb bytes.Buffer
		code := mainArgs(tc.args, &out, &errb)
		if code != tc.code || !strings.HasPrefix(out.String(), tc.stdout) || !strings.Contains(errb.String(), tc.stderr) ||
			(tc.stdout == "" && out.Len() > 0) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d, stdout beginning %q, stderr saying %q",
				tc.args, code, out.String(), errb.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}
