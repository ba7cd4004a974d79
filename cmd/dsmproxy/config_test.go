package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
	"github.com/dsmproxy/dsmproxy/proxy"
)

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// TestConfigErrors: a bad file is refused with the line and key at fault.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown top key", "env: prod\nkafak:\n  - listen: 127.0.0.1:19092\n", []string{"line 2", "kafak", "unknown key"}},
		{"unknown nested key", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrp: [a:9092]\n", []string{"line 3", "bootstrp", "kafka[0]"}},
		{"unknown inline limit key", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_con: 3\n", []string{"line 4", "max_con"}},
		{"wrong type", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_conns: lots\n", []string{"line 4", "kafka[0].max_conns", "lots"}},
		{"bad duration", "drain_timeout: soon\nkafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n", []string{"line 1", "soon", "duration"}},
		{"bad duration in a front", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    idle_timeout: 30\n", []string{"line 4", "kafka[0].idle_timeout", "duration"}},
		{"syntax", "kafka:\n  - listen: [\n", []string{"line"}},
		{"a tab for indentation", "amqp:\n\t- listen: 127.0.0.1:25673\n", []string{"line 2: ", "indented with a tab"}},
		// yaml.v3 names the line before the list these errors are in, not the line at fault.
		{"a tab on a later line", "amqp:\n  - listen: 127.0.0.1:25673\n\tupstream: 127.0.0.1:5672\n", []string{"line 3: ", "indented with a tab"}},
		{"a key indented less than its entry's", "env: x\nlog:\n  level: info\namqp:\n  - listen: 127.0.0.1:25673\n    upstream: 127.0.0.1:5672\n   max_conns: 3\n", []string{"line 7: did not find expected '-' indicator"}},
		{"a key indented less, in the first list", "amqp:\n  - listen: 127.0.0.1:25673\n   upstream: 127.0.0.1:5672\n", []string{"line 3: did not find expected '-' indicator"}},
		{"a flow list never closed", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092,\n     b:9092\namqp:\n  - listen: 127.0.0.1:25673\n", []string{"line 3: did not find expected ',' or ']'"}},
		// Where the flow opened, whatever yaml.v3's line: it can name one past the file's end.
		{"a flow list never closed on the file's only line", "env: [x\n", []string{"line 1: did not find expected ',' or ']'"}},
		{"a flow list never closed, tagged, on a line with no end", "env: !x [y", []string{"line 1: did not find expected ',' or ']'"}},
		{"a flow mapping never closed before blank lines", "env: x\nlog: {level: info\n\n\n", []string{"line 2: did not find expected ',' or '}'"}},
		{"a flow mapping never closed around a list", "kafka:\n  - {listen: 127.0.0.1:19092,\n     bootstrap: [a:9092]\n", []string{"line 2: did not find expected ',' or '}'"}},
		{"a flow list never closed after quoted brackets", "env: '[x'\nservice: \"{y\" # [z\nkafka: [a, 'b]'\n", []string{"line 3: did not find expected ',' or ']'"}},
		{"a quote never closed", "env: \"prod\namqp:\n  - listen: 127.0.0.1:25673\n    upstream: 127.0.0.1:5672\n", []string{"line 1: found unexpected end of stream"}},
		{"a colon in the first line's value", "env: a: b\namqp:\n  - listen: 127.0.0.1:25673\n", []string{"line 1: mapping values are not allowed in this context"}},
		{"a top key indented", "env: x\nkafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n service: y\n", []string{"line 5: "}},
		{"a front as a mapping", "env: x\nkafka:\n  listen: 127.0.0.1:19092\n  bootstrap: [a:9092]\n", []string{"line 2: key kafka: is a mapping", "must be a list (each entry starting with `- `)"}},
		{"a list as a string", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: a:9092\n", []string{"line 3: key kafka[0].bootstrap: is a string (`a:9092`), but must be a list"}},
		{"a mapping as a list", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    sasl:\n      - PLAIN\n", []string{"line 4: key kafka[0].sasl: is a list, but must be a mapping"}},
		{"every bad value at once", "drain_timeout: abc\nkafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    idle_timeout: -5s\n    max_conns: lots\n", []string{"line 1: key drain_timeout: \"abc\" is not a duration", "line 5: key kafka[0].idle_timeout: \"-5s\" is negative", "line 6: key kafka[0].max_conns: is a string (`lots`)"}},
		{"a list entry's first key", "kafka:\n  - max_conns: lots\n    listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n", []string{"line 2: key kafka[0].max_conns: is a string (`lots`), but must be a whole number"}},
		{"a flow entry", "kafka:\n  - {listen: 127.0.0.1:19092, bootstrap: [a:9092], max_conns: lots}\n", []string{"line 2: key kafka[0].max_conns: is a string (`lots`)"}},
		{"a list where an entry should be", "kafka:\n  - - listen: 127.0.0.1:19092\n", []string{"line 2: key kafka[0]: is a list, but must be a mapping"}},
		{"a list in a rule's first key", "services:\n  - service: [a]\n    match: {client_id: x}\n", []string{"line 2: key services[0].service: is a list, but must be a string"}},
		{"a date", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_conns: 2024-01-01\n", []string{"line 4: key kafka[0].max_conns: is a date (`2024-01-01`), but must be a whole number"}},
		{"a number out of range", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_conns: 99999999999999999999\n", []string{"line 4: key kafka[0].max_conns: is a ", "out of range"}},
		{"the same text in a right and a wrong field", "kafka:\n  - {listen: lots, max_conns: lots, bootstrap: [a:1]}\n", []string{"line 2: key kafka[0].max_conns: is a string (`lots`)"}},
		{"a fine number before a wrong one", "kafka:\n  - {listen: 127.0.0.1:1, bootstrap: [a:1], max_conns: 5, max_frame_bytes: lots}\n", []string{"line 2: key kafka[0].max_frame_bytes: is a string (`lots`)"}},
		{"two wrong values on one line", "admin: {listen: [x], disabled: [y]}\nkafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n", []string{"line 1: key admin.listen: is a list, but must be a string", "line 1: key admin.disabled: is a list, but must be true or false"}},
		{"two wrong list entries on one line", "services: [[a], [b]]\n", []string{"key services[0]: is a list", "key services[1]: is a list"}},
		{"a mapping inside the wrong mapping", "kafka: {sasl: {mechanism: PLAIN}}\n", []string{"line 1: key kafka: is a mapping, but must be a list"}},
		{"a list beside strings", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    sasl: {mechanism: PLAIN, username: [u], password: p}\n", []string{"line 4: key kafka[0].sasl.username: is a list, but must be a string"}},
		{"a merge key", "aws:\n  - listen: 127.0.0.1:1\n    upstream: http://127.0.0.1:2\n    <<: {max_conns: lots}\n", []string{"line 4: key aws[0].max_conns: is a string (`lots`)"}},
		{"an anchor aliased", "kafka:\n  - &x {listen: 127.0.0.1:1, bootstrap: [a:1], max_conns: lots}\n  - *x\n", []string{"key kafka[0].max_conns: is a string", "key kafka[1].max_conns: is a string"}},
		{"numbers with a fraction", "kafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:1]\n    max_conns: 12.5\n  - {listen: 127.0.0.1:3, bootstrap: [a:1], max_frame_bytes: 2.5}\n", []string{"line 4: key kafka[0].max_conns: is a number with a fraction (`12.5`)", "line 5: key kafka[1].max_frame_bytes: is a number with a fraction (`2.5`)"}},
		{"a flag as a word", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    link_consume_produce: maybe\n", []string{"line 4: key kafka[0].link_consume_produce: is a string (`maybe`), but must be true or false"}},
		{"missing bootstrap", "env: x\nkafka:\n  - listen: 127.0.0.1:19092\n", []string{"line 3", "kafka[0].bootstrap"}},
		{"bad listen", "kafka:\n  - listen: nope\n    bootstrap: [a:9092]\n", []string{"line 2", "kafka[0].listen", "host:port"}},
		{"duplicate listen", "kafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:9092]\namqp:\n  - listen: 127.0.0.1:1\n    upstream: b:5672\n", []string{"line 5", "amqp[0].listen", "already used by kafka[0].listen"}},
		{"bad aws upstream", "aws:\n  - listen: 127.0.0.1:4566\n    upstream: sqs.amazonaws.com\n", []string{"line 2", "aws[0].upstream"}},
		{"a rule without a service", "services:\n  - client_id: '^a$'\nkafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:9092]\n", []string{"line 2", "services[0].service", "or traced: true"}},
		{"bad rule regexp", "services:\n  - service: a\n    client_id: '('\nkafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:9092]\n", []string{"line 2", "services[0].client_id"}},
		{"bad agent scheme", "agent:\n  url: ftp://x\nkafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:9092]\n", []string{"agent.url", "scheme"}},
		{"agent url without a scheme", "agent:\n  url: localhost:8126\nkafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:9092]\n", []string{"agent.url", "write http://localhost:8126"}},
		{"agent address without a scheme", "agent:\n  url: 127.0.0.1:8126\nkafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:9092]\n", []string{"agent.url", "write http://127.0.0.1:8126"}},
		{"nothing to proxy", "env: prod\n", []string{"nothing to proxy"}},
		{"listen port out of range", "kafka:\n  - listen: 127.0.0.1:99999\n    bootstrap: [a:9092]\n", []string{"line 2", "kafka[0].listen", "0..65535"}},
		{"missing amqp upstream", "amqp:\n  - listen: 127.0.0.1:25673\n", []string{"line 2", "amqp[0].upstream", "required"}},
		{"unknown key near a known one", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_connections: 3\n", []string{"line 4", "max_connections", "did you mean max_conns?"}},
		{"unknown top key near a known one", "kafak:\n  - listen: 127.0.0.1:19092\n", []string{"line 1", "kafak", "did you mean kafka?"}},
		{"another front's upstream key", "kafka:\n  - listen: 127.0.0.1:19092\n    upstream: a:9092\n", []string{"line 3", "upstream", "did you mean bootstrap?"}},
		{"unknown key in upstream_tls", "amqp:\n  - listen: 127.0.0.1:25673\n    upstream: b:5672\n    upstream_tls: {ca: /ca.pem}\n", []string{"line 4", "ca", "unknown key in amqp[0].upstream_tls: did you mean ca_file?"}},
		{"upstream port 0", "amqp:\n  - listen: 127.0.0.1:25673\n    upstream: 127.0.0.1:0\n", []string{"line 2", "amqp[0].upstream", "1..65535"}},
		{"wildcard kafka listen without advertised_host", "kafka:\n  - listen: 0.0.0.0:19092\n    bootstrap: [a:9092]\n", []string{"line 2", "kafka[0].advertised_host"}},
		{"another front on a broker node's port", "kafka:\n  - listen: 127.0.0.1:25092\n    bootstrap: [a:9092]\namqp:\n  - listen: 127.0.0.1:25093\n    upstream: b:5672\n", []string{"line 2", "kafka[0].node_port_base", "broker node 0", "amqp[0].listen"}},
		{"negative duration", "drain_timeout: -5s\nkafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n", []string{"line 1", "negative"}},
		{"tiny flush interval", "agent:\n  flush_interval: 1ms\nkafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n", []string{"agent.flush_interval"}},
		{"tiny kafka frames", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_frame_bytes: 10\n", []string{"kafka[0].max_frame_bytes"}},
		{"a front on node 0's port from node_port_base", "kafka:\n  - listen: 127.0.0.1:29092\n    bootstrap: [a:9092]\n    node_port_base: 29100\namqp:\n  - listen: 127.0.0.1:29100\n    upstream: b:5672\n", []string{"kafka[0].node_port_base", "broker node 0"}},
		{"localhost and 127.0.0.1 clash", "kafka:\n  - listen: localhost:29092\n    bootstrap: [a:9092]\namqp:\n  - listen: 127.0.0.1:29093\n    upstream: b:5672\n", []string{"kafka[0].node_port_base", "broker node 0"}},
		{"node_addrs leaves node 1 on its default port", "kafka:\n  - listen: 127.0.0.1:29092\n    bootstrap: [a:9092]\n    node_addrs: {0: 127.0.0.1:30000}\namqp:\n  - listen: 127.0.0.1:29094\n    upstream: b:5672\n", []string{"kafka[0].node_port_base", "broker node 1"}},
		{"two Kafka fronts' node ports overlap", "kafka:\n  - listen: 127.0.0.1:29092\n    bootstrap: [a:9092]\n  - listen: 127.0.0.1:29080\n    bootstrap: [b:9092]\n    node_port_base: 29095\n", []string{"kafka[0]'s broker node 2", "kafka[1]'s broker node 0", "29095", "and so would 7 more of their node ports"}},
		{"one port under two names", "amqp:\n  - listen: localhost:29200\n    upstream: b:5672\n  - listen: 127.0.0.1:29200\n    upstream: c:5672\n", []string{"already used by"}},
		{"kafka max_topic_ids negative", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_topic_ids: -1\n", []string{"line 2", "kafka[0].max_topic_ids", ">= 0"}},
		{"kafka max_topic_ids absurd", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_topic_ids: 9223372036854775807\n", []string{"line 2", "kafka[0].max_topic_ids", "over 10000000"}},
		{"kafka topic_limit_wait over its bound", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    topic_limit_wait: 30s\n", []string{"line 2", "kafka[0].topic_limit_wait", "over 5s"}},
		{"kafka sasl mechanism", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    sasl: {mechanism: GSSAPI, username: u, password: p}\n", []string{"line 2", "kafka[0].sasl.mechanism", "GSSAPI"}},
		{"kafka sasl without a user", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    sasl: {mechanism: PLAIN, password: p}\n", []string{"kafka[0].sasl.username"}},
		{"kafka sasl without a password", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    sasl: {mechanism: PLAIN, username: u}\n", []string{"kafka[0].sasl", "one of password and password_file"}},
		{"kafka sasl with two passwords", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    sasl: {mechanism: PLAIN, username: u, password: p, password_file: /f}\n", []string{"kafka[0].sasl", "one of password and password_file"}},
		{"kafka sasl unknown key", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    sasl: {mechanism: PLAIN, user: u, password: p}\n", []string{"line 4", "user", "unknown key in kafka[0].sasl"}},
		{"unknown key in the second front", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n  - listen: 127.0.0.1:19192\n    bootstrapp: [a:9092]\n", []string{"line 5", "unknown key in kafka[1]: did you mean bootstrap?"}},
		{"upstream tls off with a CA", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    upstream_tls:\n      enabled: false\n      ca_file: /ca.pem\n", []string{"kafka[0].upstream_tls", "enabled is false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dsmproxy.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			f := runFlags{config: path}
			_, err := f.loadConfig(envMap(nil))
			if err == nil {
				t.Fatalf("no error for:\n%s", tc.yaml)
			}
			msg := err.Error()
			if strings.Contains(msg, "main.") || strings.Contains(msg, "!!") {
				t.Errorf("error %q names Go types or YAML tags", msg)
			}
			for _, w := range append([]string{path}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

// TestUpstreamTLSOn: unset, enabled follows the other fields; set, it decides.
func TestUpstreamTLSOn(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		name string
		t    *TLSClient
		want bool
	}{
		{"absent", nil, false},
		{"empty", &TLSClient{}, false},
		{"ca only", &TLSClient{CAFile: "ca.pem"}, true},
		{"server name only", &TLSClient{ServerName: "kafka"}, true},
		{"enabled only", &TLSClient{Enabled: &yes}, true},
		{"disabled", &TLSClient{Enabled: &no}, false},
	} {
		if got := tc.t.on(); got != tc.want {
			t.Errorf("%s: on() = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// handledErrors checks whether the handled-error variables turned errors.agent on.
func handledErrors(want bool) func(t *testing.T, c *Config) {
	return func(t *testing.T, c *Config) {
		if got := c.Errors.Agent != nil && *c.Errors.Agent; got != want {
			t.Errorf("errors.agent on: %v, want %v", got, want)
		}
	}
}

// TestConfigPrecedence: flags beat env, env beats file, defaults fill the rest.
func TestConfigPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsmproxy.yaml")
	file := `env: file-env
service: file-svc
version: "1.0"
drain_timeout: 30s
agent:
  url: http://file-agent:8126
log:
  level: debug
kafka:
  - listen: 127.0.0.1:29092
    bootstrap: [file-broker:9092]
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, c *Config)
	}{
		{"file only", nil, nil, func(t *testing.T, c *Config) {
			eq(t, "env", c.Env, "file-env")
			eq(t, "service", c.Service, "file-svc")
			eq(t, "agent", c.Agent.URL, "http://file-agent:8126")
			eq(t, "level", c.Log.Level, "debug")
			eq(t, "format", c.Log.Format, "json")
			eq(t, "admin", c.Admin.Listen, defaultAdmin)
			eq(t, "drain", c.DrainTimeout.D(), 30*time.Second)
			eq(t, "bootstrap", strings.Join(c.Kafka[0].Bootstrap, ","), "file-broker:9092")
		}},
		{"env beats file", map[string]string{"DD_ENV": "env-env", "DD_SERVICE": "env-svc", "DD_VERSION": "2.0", "DD_AGENT_HOST": "agent-host"}, nil, func(t *testing.T, c *Config) {
			eq(t, "env", c.Env, "env-env")
			eq(t, "service", c.Service, "env-svc")
			eq(t, "version", c.Version, "2.0")
			eq(t, "agent", c.Agent.URL, "http://agent-host:8126")
		}},
		{"trace agent url beats host and port", map[string]string{"DD_TRACE_AGENT_URL": "unix:///tmp/apm.sock", "DD_AGENT_HOST": "h", "DD_TRACE_AGENT_PORT": "1"}, nil, func(t *testing.T, c *Config) {
			eq(t, "agent", c.Agent.URL, "unix:///tmp/apm.sock")
		}},
		{"port alone", map[string]string{"DD_TRACE_AGENT_PORT": "9126"}, nil, func(t *testing.T, c *Config) {
			eq(t, "agent", c.Agent.URL, "http://localhost:9126")
		}},
		{"flags beat env", map[string]string{"DD_ENV": "env-env", "DD_TRACE_AGENT_URL": "http://env-agent:8126"},
			[]string{"--env", "flag-env", "--agent-url", "http://flag-agent:8126", "--kafka", "127.0.0.1:19092=b1:9092,b2:9092", "--log-level", "warn", "--drain-timeout", "3s", "--admin", "off"},
			func(t *testing.T, c *Config) {
				eq(t, "env", c.Env, "flag-env")
				eq(t, "agent", c.Agent.URL, "http://flag-agent:8126")
				eq(t, "kafka fronts", len(c.Kafka), 1)
				eq(t, "listen", c.Kafka[0].Listen, "127.0.0.1:19092")
				eq(t, "bootstrap", strings.Join(c.Kafka[0].Bootstrap, ","), "b1:9092,b2:9092")
				eq(t, "level", c.Log.Level, "warn")
				eq(t, "drain", c.DrainTimeout.D(), 3*time.Second)
				eq(t, "admin off", c.adminOff(), true)
			}},
		// dd-trace-py turns handled-error reporting on with either variable, as the proxy does: a
		// fleet configured for the tracer gets the spans, and one that turned it off does not.
		{"handled errors variable", map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": "all"}, nil, handledErrors(true)},
		{"handled errors include variable", map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE": "kafka"}, nil, handledErrors(true)},
		{"handled errors variable empty", map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": ""}, nil, handledErrors(false)},
		{"handled errors variable false", map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS": "false"}, nil, handledErrors(false)},
		{"handled errors include empty", map[string]string{"DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE": " , "}, nil, handledErrors(false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f runFlags
			fs := flag.NewFlagSet("run", flag.ContinueOnError)
			f.register(fs)
			if err := fs.Parse(append([]string{"--config", path}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			c, err := f.loadConfig(envMap(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

// TestFlagsTurnOnWhatTheFileTurnsOff: --admin ADDR and --agent-url URL win over a file that
// disables the admin listener or the Agent (flags > file); --no-agent still wins over both.
func TestFlagsTurnOnWhatTheFileTurnsOff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsmproxy.yaml")
	file := "admin: {disabled: true}\nagent: {disabled: true}\nkafka:\n  - listen: 127.0.0.1:29092\n    bootstrap: [b:9092]\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args           []string
		adminOff, sent bool
	}{
		{nil, true, false},
		{[]string{"--admin", "127.0.0.1:9999", "--agent-url", "http://flag-agent:8126"}, false, true},
		{[]string{"--agent-url", "http://flag-agent:8126", "--no-agent"}, true, false},
	} {
		var f runFlags
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(append([]string{"--config", path}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		c, err := f.loadConfig(envMap(nil))
		if err != nil {
			t.Fatal(err)
		}
		if c.adminOff() != tc.adminOff || c.Agent.Disabled == tc.sent {
			t.Errorf("%q: admin off %v, agent disabled %v; want %v, %v", tc.args, c.adminOff(), c.Agent.Disabled, tc.adminOff, !tc.sent)
		}
	}
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// TestShippedConfigs: the example (quoted by the README) and docker-compose's config are valid and
// show every protocol.
func TestShippedConfigs(t *testing.T) {
	for _, path := range []string{filepath.Join("testdata", "dsmproxy.example.yaml"), filepath.Join("..", "..", "deploy", "dsmproxy.compose.yaml")} {
		f := runFlags{config: path}
		c, err := f.loadConfig(envMap(nil))
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Kafka) == 0 || len(c.AMQP) == 0 || len(c.AWS) == 0 {
			t.Fatalf("%s does not show every protocol: %+v", path, c)
		}
		if _, err := buildServices(c, zerolog.Nop()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTracedRule: the example's traced rule, which names no service, marks its clients traced
// and leaves their name to their client id.
func TestTracedRule(t *testing.T) {
	c, err := (&runFlags{config: filepath.Join("testdata", "dsmproxy.example.yaml")}).loadConfig(envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	s, err := buildServices(c, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   proxy.Identity
		want proxy.Client
	}{
		{proxy.Identity{Protocol: "kafka", ClientID: "reports-2", Described: "reports"}, proxy.Client{Service: "reports", Traced: true}},
		{proxy.Identity{Protocol: "kafka", ClientID: "checkout-1", Described: "checkout"}, proxy.Client{Service: "checkout"}},
	} {
		if got := s.Client(tc.id); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.id.ClientID, got, tc.want)
		}
	}
}

// TestShadowedRulesWarned: a services rule an earlier one always matches first never applies
// (a traced rule under a service rule for the same client_id); check-config and run warn of it.
func TestShadowedRulesWarned(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []ServiceRule
		want  []shadowed
	}{
		{"traced under a service rule for the same client", []ServiceRule{{Service: "r", ClientID: "^reports-"}, {ClientID: "^reports-", Traced: true}}, []shadowed{{1, 0}}},
		{"anything under a catch-all", []ServiceRule{{Service: "all"}, {Service: "b", User: "u"}, {Service: "c", CIDR: "10.0.0.0/8"}}, []shadowed{{1, 0}, {2, 0}}},
		{"a narrower rule first", []ServiceRule{{Service: "k", ClientID: "^x$", Protocol: "kafka"}, {Service: "any", ClientID: "^x$"}}, nil},
		{"the earlier rule more specific in one key", []ServiceRule{{Service: "a", ClientID: "^x$", User: "u"}, {Service: "b", ClientID: "^x$", Protocol: "amqp"}}, nil},
		{"same matchers and more", []ServiceRule{{Service: "a", ClientID: "^x$"}, {Service: "b", ClientID: "^x$", Protocol: "amqp"}}, []shadowed{{1, 0}}},
		{"different regexps", []ServiceRule{{Service: "a", ClientID: "^x"}, {Service: "b", ClientID: "^xy"}}, nil},
	} {
		if got := shadowedRules(tc.rules); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	path := filepath.Join(t.TempDir(), "shadow.yaml")
	yaml := "services:\n  - service: reports\n    client_id: '^reports-'\n  - client_id: '^reports-'\n    traced: true\n" +
		"kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [127.0.0.1:9092]\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := mainArgs([]string{"check-config", "--config", path, "--admin", "off"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "configuration OK with 1 warning(s)") ||
		!strings.Contains(errb.String(), "services rule never applies") || !strings.Contains(errb.String(), "rule=services[1]") ||
		!strings.Contains(errb.String(), "by=services[0]") || !strings.Contains(errb.String(), "line=4") {
		t.Errorf("exit %d, out %q, err %q", code, out.String(), errb.String())
	}
}

// TestHelpDocumentsEverything: run --help names every flag and every variable the binary reads.
func TestHelpDocumentsEverything(t *testing.T) {
	var out, errb bytes.Buffer
	if code := mainArgs([]string{"run", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := out.String()
	if errb.Len() > 0 {
		t.Errorf("run --help wrote to stderr: %q", errb.String())
	}
	var f runFlags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	f.register(fs)
	fs.VisitAll(func(fl *flag.Flag) {
		if !strings.Contains(help, "--"+fl.Name) {
			t.Errorf("run --help does not document --%s", fl.Name)
		}
	})
	for _, v := range []string{"DD_TRACE_AGENT_URL", "DD_AGENT_HOST", "DD_TRACE_AGENT_PORT", "DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_ERROR_TRACKING_HANDLED_ERRORS", "DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE", "NO_COLOR"} {
		if !strings.Contains(help, v) {
			t.Errorf("run --help does not document %s", v)
		}
	}
	// --aws takes one URL; a user with SNS and Kinesis on separate emulators, or whose Kinesis
	// consumes show no parent, needs to know the file keys that do those.
	for _, k := range []string{"upstreams", "kinesis_inject_data"} {
		if !strings.Contains(help, k) {
			t.Errorf("run --help does not say that the config file's %s exists", k)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	var out, errb bytes.Buffer
	code := mainArgs([]string{"check-config", "--kafka", "127.0.0.1:19092=127.0.0.1:9092", "--admin", "off"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "configuration OK") {
		t.Fatalf("exit %d, out %q, err %q", code, out.String(), errb.String())
	}
	if strings.Contains(out.String()+errb.String(), "warning") {
		t.Errorf("a warning for a config without any: %q %q", out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := mainArgs([]string{"check-config", "--kafka", "nonsense"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "LISTEN=BOOTSTRAP") {
		t.Fatalf("bad flag: exit %d, err %q", code, errb.String())
	}
	// What run warns about at start is printed, and the file still passes.
	out.Reset()
	errb.Reset()
	path := filepath.Join(t.TempDir(), "plain.yaml")
	if err := os.WriteFile(path, []byte("kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [127.0.0.1:9092]\n    sasl: {mechanism: PLAIN, username: u, password: p}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code = mainArgs([]string{"check-config", "--config", path, "--admin", "off"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "configuration OK with 1 warning(s)") ||
		!strings.Contains(errb.String(), "WRN kafka front: sasl PLAIN without upstream_tls") {
		t.Errorf("PLAIN without TLS: exit %d, out %q, err %q", code, out.String(), errb.String())
	}
}

// closeRecorder is a stderr that notices being closed, as os.Stderr can be.
type closeRecorder struct {
	bytes.Buffer
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

// TestRunStartFailureIsPrinted: when run cannot start (here a Kafka listener on every interface
// without advertised_host), the reason reaches stderr, which stays open for it.
func TestRunStartFailureIsPrinted(t *testing.T) {
	var out bytes.Buffer
	var errb closeRecorder
	code := mainArgs([]string{"run", "--kafka", "0.0.0.0:0=127.0.0.1:1"}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	if errb.closed {
		t.Error("run closed stderr")
	}
	if !strings.Contains(errb.String(), "dsmproxy run:") || !strings.Contains(errb.String(), "kafka[0].advertised_host") {
		t.Errorf("stderr does not say why run failed:\n%s", errb.String())
	}
}

// TestCheckConfigRefusesWhatRunRefuses: check-config builds every front as run does, so the
// fronts' own checks refuse there too.
func TestCheckConfigRefusesWhatRunRefuses(t *testing.T) {
	trusting := filepath.Join(t.TempDir(), "trusting.yaml")
	if err := os.WriteFile(trusting, []byte("aws:\n  - listen: 0.0.0.0:0\n    upstream: http://127.0.0.1:1\n    trust_clients: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noPassword := filepath.Join(t.TempDir(), "nopassword.yaml")
	if err := os.WriteFile(noPassword, []byte("kafka:\n  - listen: 127.0.0.1:0\n    bootstrap: [127.0.0.1:1]\n    sasl: {mechanism: PLAIN, username: u, password_file: /nonexistent/kafka-password}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kafka", "0.0.0.0:0=127.0.0.1:1"}, "kafka[0].advertised_host"},
		{[]string{"--config", trusting}, "trust_clients on non-loopback listener"},
		{[]string{"--config", noPassword}, "sasl: password_file"},
	} {
		var out bytes.Buffer
		var errb bytes.Buffer
		code := mainArgs(append([]string{"check-config"}, tc.args...), &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("check-config %v: exit %d, stderr %q; want 1 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// TestAWSReadinessUpstreams: /readyz dials every service's endpoint as the AWS front resolved it,
// including AWS's regional ones when no upstream is set (it had nothing to dial then, and the
// front never became ready).
func TestAWSReadinessUpstreams(t *testing.T) {
	sh := shared{cp: pathway.NewCheckpointer("", 0), obs: noObserver{}, errs: errtrack.Discard{}, services: &proxy.Services{}, log: zerolog.Nop()}
	for _, tc := range []struct {
		cfg  AWSConfig
		want []string
	}{
		{AWSConfig{Listen: "127.0.0.1:0", Region: "eu-west-1"},
			[]string{"sqs.eu-west-1.amazonaws.com:443", "sns.eu-west-1.amazonaws.com:443", "kinesis.eu-west-1.amazonaws.com:443"}},
		{AWSConfig{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:4566"}, []string{"127.0.0.1:4566"}},
	} {
		f, err := buildAWS(tc.cfg, sh)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f.upstreams, tc.want) {
			t.Errorf("upstream %q: readiness dials %v, want %v", tc.cfg.Upstream, f.upstreams, tc.want)
		}
	}
}

// TestSameHost: which two listen hosts may clash on one port. 127.0.0.1 and ::1 bind side by side;
// localhost is some loopback address, so it clashes with any.
func TestSameHost(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "::1", false},
		{"::1", "0:0:0:0:0:0:0:1", true},
		{"localhost", "127.0.0.1", true},
		{"localhost", "::1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"0.0.0.0", "127.0.0.1", true},
		{"", "10.0.0.1", true},
		{"10.0.0.1", "10.0.0.2", false},
		{"localhost", "10.0.0.1", false},
	} {
		if got := sameHost(tc.a, tc.b); got != tc.want {
			t.Errorf("sameHost(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
	cfg := &Config{AMQP: []AMQPConfig{{Listen: "127.0.0.1:25673", Upstream: "127.0.0.1:5672"}, {Listen: "[::1]:25673", Upstream: "[::1]:5672"}},
		Admin: AdminConfig{Listen: "off"}}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Errorf("listeners on 127.0.0.1:P and [::1]:P refused: %v", err)
	}
}

// TestDrainTimeoutFlagZero: 0 is what the file's loader reads as unset, so --drain-timeout 0s
// would have become the 15s default, neither the flag's value nor the file's: it is refused.
func TestDrainTimeoutFlagZero(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(f, []byte("drain_timeout: 30s\namqp: [{listen: \"127.0.0.1:25674\", upstream: \"127.0.0.1:5672\"}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rf := runFlags{config: f, drainTimeout: "0s"}
	if _, err := rf.loadConfig(func(string) (string, bool) { return "", false }); err == nil || !strings.Contains(err.Error(), "--drain-timeout") {
		t.Errorf("--drain-timeout 0s: %v, want an error naming the flag", err)
	}
}

// TestAgentURLSecretStaysOut: check-config's summary and a refused Agent URL mask its password.
func TestAgentURLSecretStaysOut(t *testing.T) {
	for _, u := range []string{"ftp://dd:s3cret@agent", "dd:s3cret@agent:8126"} {
		if err := checkAgentURL(u); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("refused URL: %v", err)
		}
	}
	cfg := &Config{Agent: AgentConfig{URL: "http://dd:s3cret@agent:8126"}}
	if d := agentDesc(cfg); strings.Contains(d, "s3cret") {
		t.Errorf("agentDesc = %q", d)
	}
}

// TestConfigErrorSource: a refused value is blamed on where it came from: the file with its line
// (top-level sections included), or the variable or flag that overrode the file.
func TestConfigErrorSource(t *testing.T) {
	const file = "log:\n  level: info\n  format: json\nagent:\n  url: http://localhost:8126\namqp:\n  - listen: 127.0.0.1:25675\n    upstream: 127.0.0.1:5672\n"
	for _, tc := range []struct {
		name    string
		yaml    string
		env     map[string]string
		flags   runFlags
		want    []string
		notFile bool
	}{
		{name: "file, top-level section", yaml: strings.Replace(file, "level: info", "level: loud", 1),
			want: []string{"line 2: key log.level", "loud"}},
		{name: "variable", yaml: file, env: map[string]string{"DD_TRACE_AGENT_URL": "localhost:8126"},
			want: []string{"DD_TRACE_AGENT_URL: key agent.url", "scheme"}, notFile: true},
		// Joined into http://[h]:p, these were refused as `invalid host: ParseAddr("agent:8126")`
		// and `missing ']' in host`, under both variables' names.
		{name: "agent host with a port", yaml: file, env: map[string]string{"DD_AGENT_HOST": "agent:8126"},
			want: []string{"DD_AGENT_HOST: key agent.url", `"agent:8126" has a port`, "DD_TRACE_AGENT_PORT (8126)"}, notFile: true},
		{name: "agent host as a URL", yaml: file, env: map[string]string{"DD_AGENT_HOST": "http://agent"},
			want: []string{"DD_AGENT_HOST: key agent.url", "is a URL", "DD_TRACE_AGENT_URL"}, notFile: true},
		{name: "agent port", yaml: file, env: map[string]string{"DD_AGENT_HOST": "agent", "DD_TRACE_AGENT_PORT": "abc"},
			want: []string{"DD_TRACE_AGENT_PORT: key agent.url", `"abc" is not a port`}, notFile: true},
		{name: "flag", yaml: file, flags: runFlags{logLevel: "verbose"},
			want: []string{"--log-level: key log.level", "verbose"}, notFile: true},
		{name: "listener flag", yaml: file, flags: runFlags{amqp: []string{"127.0.0.1:25676=nope"}},
			want: []string{"--amqp: key amqp[0].upstream"}, notFile: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dsmproxy.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			f := tc.flags
			f.config = path
			_, err := f.loadConfig(envMap(tc.env))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), path) == tc.notFile {
				t.Errorf("error %q: blames the file: %v, want %v", err, !tc.notFile, !tc.notFile)
			}
		})
	}
}

// TestFrontBuildErrorSource: what a front refuses when it is built (a TLS file that does not load)
// names the file, the key under the entry and that key's line; from a listener flag, the flag.
func TestFrontBuildErrorSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsmproxy.yaml")
	yaml := "admin:\n  listen: \"off\"\namqp:\n  - listen: 127.0.0.1:25677\n    upstream: 127.0.0.1:5672\n    tls: {cert_file: /nope.crt, key_file: /nope.key}\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := mainArgs([]string{"check-config", "--config", path}, &out, &errb)
	if want := "config " + path + ": line 6: key amqp[0].tls.cert_file: "; code != 1 || !strings.Contains(errb.String(), want) {
		t.Errorf("exit %d, stderr %q, want it to say %q", code, errb.String(), want)
	}
}

// TestTLSFileErrorKey: a TLS file that does not load is blamed on its own key
// (amqp[0].tls.cert_file), not only on the entry, whichever of a front's TLS files it is.
func TestTLSFileErrorKey(t *testing.T) {
	pki := testpki.New(t, "test CA")
	dir := t.TempDir()
	cert, key, _ := pki.IssueFiles(t, dir, "front", "front")
	otherCert, _, _ := pki.IssueFiles(t, dir, "other", "other")
	ca := pki.WriteCA(t, dir)
	missing, notPEM := filepath.Join(dir, "missing.pem"), filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	amqp := "amqp:\n  - listen: 127.0.0.1:25678\n    upstream: 127.0.0.1:5672\n"
	for _, tc := range []struct {
		name, yaml, key string
	}{
		{"cert_file missing", amqp + "    tls: {cert_file: " + missing + ", key_file: " + key + "}\n", "amqp[0].tls.cert_file"},
		{"cert_file not PEM", amqp + "    tls: {cert_file: " + notPEM + ", key_file: " + key + "}\n", "amqp[0].tls.cert_file"},
		{"key_file missing", amqp + "    tls: {cert_file: " + cert + ", key_file: " + missing + "}\n", "amqp[0].tls.key_file"},
		{"key_file of another certificate", amqp + "    tls: {cert_file: " + otherCert + ", key_file: " + key + "}\n", "amqp[0].tls.key_file"},
		{"client_ca_file missing", amqp + "    tls: {cert_file: " + cert + ", key_file: " + key + ", client_ca_file: " + missing + "}\n", "amqp[0].tls.client_ca_file"},
		{"upstream cert_file missing", amqp + "    upstream_tls: {cert_file: " + missing + ", key_file: " + key + "}\n", "amqp[0].upstream_tls.cert_file"},
		{"upstream key_file not PEM", amqp + "    upstream_tls: {cert_file: " + cert + ", key_file: " + notPEM + "}\n", "amqp[0].upstream_tls.key_file"},
		{"upstream ca_file without certificates", amqp + "    upstream_tls: {ca_file: " + notPEM + "}\n", "amqp[0].upstream_tls.ca_file"},
		{"kafka upstream ca_file missing", "kafka:\n  - listen: 127.0.0.1:25679\n    bootstrap: [127.0.0.1:1]\n    upstream_tls: {ca_file: " + missing + "}\n", "kafka[0].upstream_tls.ca_file"},
		{"aws upstream ca_file missing", "aws:\n  - listen: 127.0.0.1:25680\n    upstream: https://127.0.0.1:1\n    upstream_tls: {ca_file: " + missing + "}\n", "aws[0].upstream_tls.ca_file"},
		{"aws tls cert_file missing", "aws:\n  - listen: 127.0.0.1:25680\n    upstream: https://127.0.0.1:1\n    tls: {cert_file: " + missing + ", key_file: " + key + "}\n", "aws[0].tls.cert_file"},
		{"second entry", amqp + "  - listen: 127.0.0.1:25681\n    upstream: 127.0.0.1:5672\n    upstream_tls: {ca_file: " + ca + ", cert_file: " + cert + ", key_file: " + missing + "}\n", "amqp[1].upstream_tls.key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "dsmproxy.yaml")
			if err := os.WriteFile(path, []byte("admin:\n  listen: \"off\"\n"+tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := mainArgs([]string{"check-config", "--config", path}, &out, &errb)
			if want := "key " + tc.key + ": "; code != 1 || !strings.Contains(errb.String(), want) {
				t.Errorf("exit %d, stderr %q, want it to say %q", code, errb.String(), want)
			}
		})
	}
}

// TestKafkaLogin: the proxy's own Kafka login is built from the config, its password read from
// password_file without the file's trailing newline.
func TestKafkaLogin(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name    string
		cfg     *KafkaSASL
		want    string // mechanism name, "" for none
		message string // PLAIN's first message, when the mechanism is PLAIN
		err     string
	}{
		{"none", nil, "", "", ""},
		{"plain", &KafkaSASL{Mechanism: "plain", Username: "u", Password: "p"}, "PLAIN", "\x00u\x00p", ""},
		{"plain from a file", &KafkaSASL{Mechanism: "PLAIN", Username: "u", PasswordFile: file("pw", "s3cret\r\n")}, "PLAIN", "\x00u\x00s3cret", ""},
		{"scram-256", &KafkaSASL{Mechanism: "SCRAM-SHA-256", Username: "u", Password: "p"}, "SCRAM-SHA-256", "", ""},
		{"scram-512", &KafkaSASL{Mechanism: "scram-sha-512", Username: "u", Password: "p"}, "SCRAM-SHA-512", "", ""},
		{"empty file", &KafkaSASL{Mechanism: "PLAIN", Username: "u", PasswordFile: file("empty", "\n")}, "", "", "password_file: " + filepath.Join(dir, "empty") + " is empty"},
		{"missing file", &KafkaSASL{Mechanism: "PLAIN", Username: "u", PasswordFile: filepath.Join(dir, "absent")}, "", "", "password_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := kafkaLogin(tc.cfg, zerolog.Nop())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if m != nil {
					t.Fatalf("a mechanism %s without sasl", m.Name())
				}
				return
			}
			if m.Name() != tc.want {
				t.Fatalf("mechanism %s, want %s", m.Name(), tc.want)
			}
			if tc.message != "" {
				_, first, err := m.Authenticate(context.Background(), "broker")
				if err != nil || string(first) != tc.message {
					t.Errorf("first message %q (%v), want %q", first, err, tc.message)
				}
			}
		})
	}
}

// TestExpiredCertificateWarned: a certificate that peers would refuse (expired here) is warned
// about when the fronts are built, so check-config prints it and run logs it at start.
func TestExpiredCertificateWarned(t *testing.T) {
	pki := testpki.New(t, "test CA")
	pki.LeafNotAfter = time.Now().Add(-time.Hour)
	dir := t.TempDir()
	certFile, keyFile, _ := pki.IssueFiles(t, dir, "front", "front")
	path := filepath.Join(dir, "tls.yaml")
	cfg := "amqp:\n  - listen: 127.0.0.1:15673\n    upstream: 127.0.0.1:5672\n    tls: {cert_file: " + certFile + ", key_file: " + keyFile + "}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := mainArgs([]string{"check-config", "--config", path, "--admin", "off"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "with 1 warning(s)") || !strings.Contains(errb.String(), "the certificate expired at") ||
		!strings.Contains(errb.String(), "cert_file="+certFile) {
		t.Errorf("exit %d, out %q, err %q", code, out.String(), errb.String())
	}
}

// TestWholeFloatAccepted: a whole number written as a float (1000.0) is taken for an integer key.
func TestWholeFloatAccepted(t *testing.T) {
	cfg, err := ParseConfig([]byte("kafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:1]\n    max_conns: 1000.0\n"))
	if err != nil || cfg.Kafka[0].MaxConns != 1000 {
		t.Fatalf("max_conns: 1000.0 gave %v, %v", cfg, err)
	}
}

// TestReloaderOwners: each front's certificate files are named by the front in reload lines.
func TestReloaderOwners(t *testing.T) {
	pki := testpki.New(t, "test CA")
	dir := t.TempDir()
	certFile, keyFile, _ := pki.IssueFiles(t, dir, "front", "front")
	ca := pki.WriteCA(t, dir)
	cfg := &Config{AMQP: []AMQPConfig{{Listen: "127.0.0.1:15673", Upstream: "127.0.0.1:5671", ListenerLimits: ListenerLimits{
		TLS: &TLSServer{CertFile: certFile, KeyFile: keyFile}, UpstreamTLS: &TLSClient{CAFile: ca}}}}}
	sh := shared{cp: pathway.NewCheckpointer("", 0), obs: noObserver{}, errs: errtrack.Discard{}, services: &proxy.Services{}, log: zerolog.Nop()}
	fronts, err := buildFronts(cfg, sh)
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	for _, r := range fronts[0].reloaders {
		owners = append(owners, r.Owner)
	}
	if want := []string{"amqp 127.0.0.1:15673 tls", "amqp 127.0.0.1:15673 upstream_tls"}; !slices.Equal(owners, want) {
		t.Errorf("reloaders named %q, want %q", owners, want)
	}
}

// TestKafkaPasswordFile: a password_file is read again at every login, so a rotated secret needs
// no restart; a read that fails keeps the password read before and is logged once. The version
// the kafka front compares after a refused login changes with the password, and only then.
func TestKafkaPasswordFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pw")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first\n")
	var logs syncbuf.Buffer
	m, err := kafkaLogin(&KafkaSASL{Mechanism: "PLAIN", Username: "u", PasswordFile: path}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m.(kafka.CredentialVersioner)
	if !ok {
		t.Fatal("a login from a password_file is not a kafka.CredentialVersioner")
	}
	steps := []struct {
		write   *string // nil: remove the file
		pass    string  // in the next login's first message
		changed bool    // the version moved
		log     string  // a line the step adds to the log
	}{
		{ptr("first\n"), "first", false, ""},
		{ptr("second\n"), "second", true, "holds a new password"},
		{nil, "second", false, "cannot be read"},
		{ptr("\n"), "second", false, ""}, // still failing: said once
		{ptr("third"), "third", true, "can be read again"},
	}
	last := v.CredentialVersion()
	for i, st := range steps {
		before := logs.String()
		if st.write == nil {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else {
			write(*st.write)
		}
		_, first, err := m.Authenticate(context.Background(), "broker:9092")
		if want := "\x00u\x00" + st.pass; err != nil || string(first) != want {
			t.Errorf("step %d: first message %q (%v), want %q", i, first, err, want)
		}
		now := v.CredentialVersion()
		if (now != last) != st.changed {
			t.Errorf("step %d: version %d after %d, want changed=%v", i, now, last, st.changed)
		}
		last = now
		added := strings.TrimPrefix(logs.String(), before)
		if st.log == "" && added != "" || !strings.Contains(added, st.log) {
			t.Errorf("step %d logged %q, want a line saying %q", i, added, st.log)
		}
	}
	inline, err := kafkaLogin(&KafkaSASL{Mechanism: "SCRAM-SHA-256", Username: "u", Password: "p"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := inline.(kafka.CredentialVersioner); ok {
		t.Error("an inline password, which cannot change, is a CredentialVersioner")
	}
}

func ptr[T any](v T) *T { return &v }

// validateYAML parses a config file's text, applies the defaults and validates it, as
// check-config does (without the admin listener).
func validateYAML(t *testing.T, text string) error {
	t.Helper()
	cfg, err := ParseConfig([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Disabled = true
	cfg.Defaults()
	return cfg.Validate()
}

// TestKafkaPlainWarning: a PLAIN login without upstream_tls, which sends the proxy's password
// unencrypted, is warned about when the front is built; SCRAM, or PLAIN over TLS, is not.
func TestKafkaPlainWarning(t *testing.T) {
	on := true
	for _, tc := range []struct {
		name string
		sasl *KafkaSASL
		tls  *TLSClient
		warn bool
	}{
		{"plain", &KafkaSASL{Mechanism: "PLAIN", Username: "u", Password: "p"}, nil, true},
		{"plain over tls", &KafkaSASL{Mechanism: "PLAIN", Username: "u", Password: "p"}, &TLSClient{Enabled: &on}, false},
		{"scram", &KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "u", Password: "p"}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			sh := shared{cp: pathway.NewCheckpointer("", 0), obs: noObserver{}, errs: errtrack.Discard{}, services: &proxy.Services{}, log: zerolog.New(&logs)}
			k := KafkaConfig{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, SASL: tc.sasl}
			k.UpstreamTLS = tc.tls
			if _, err := buildKafka(k, sh); err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(logs.String(), "unencrypted"); got != tc.warn {
				t.Errorf("warned %v, want %v:\n%s", got, tc.warn, logs.String())
			}
		})
	}
}

// TestKafkaTopicLimitWait: topic_limit_wait reaches the Kafka front as set, 0s included (no wait),
// and unset leaves the front's default.
func TestKafkaTopicLimitWait(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want *time.Duration
	}{
		{"", nil},
		{"    topic_limit_wait: 0s\n", new(time.Duration)},
		{"    topic_limit_wait: 2s\n", func() *time.Duration { d := 2 * time.Second; return &d }()},
	} {
		c, err := ParseConfig([]byte("kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n" + tc.yaml))
		if err != nil {
			t.Fatal(err)
		}
		got := durationPtr(c.Kafka[0].TopicLimitWait) // as buildKafka hands it to the front
		if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
			t.Errorf("%q: topic_limit_wait %v, want %v", tc.yaml, got, tc.want)
		}
	}
	// The front gets it: one past the front's own bound is refused there (the file's check is
	// bypassed here).
	sh := shared{cp: pathway.NewCheckpointer("", 0), obs: noObserver{}, errs: errtrack.Discard{}, services: &proxy.Services{}, log: zerolog.Nop()}
	over := Duration(6 * time.Second)
	if _, err := buildKafka(KafkaConfig{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, TopicLimitWait: &over}, sh); err == nil || !strings.Contains(err.Error(), "TopicLimitWait") {
		t.Errorf("a front built with topic_limit_wait 6s: %v, want the front's refusal", err)
	}
}

// TestKafkaMaxTopicIDs: max_topic_ids is a key of Kafka fronts, for clusters with more topics
// than the front keeps ids of by default (the proxy warns naming it), and reaches the front.
func TestKafkaMaxTopicIDs(t *testing.T) {
	c, err := ParseConfig([]byte("kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:9092]\n    max_topic_ids: 250000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Kafka[0].MaxTopicIDs; got != 250000 {
		t.Errorf("max_topic_ids %d, want 250000", got)
	}
	sh := shared{cp: pathway.NewCheckpointer("", 0), obs: noObserver{}, errs: errtrack.Discard{}, services: &proxy.Services{}, log: zerolog.Nop()}
	f, err := buildKafka(c.Kafka[0], sh)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.front.(*kafka.Proxy).MaxTopicIDs(); got != 250000 {
		t.Errorf("the front keeps %d topic ids, want 250000", got)
	}
}

// TestKafkaCertNamesAdvertisedHosts: a Kafka front tells clients the host to reach each broker
// node at (advertised_host, node_addrs), and clients check the front's certificate against it.
// A certificate that does not name such a host is warned about when the fronts are built (so
// check-config prints it and run logs it at start); one that names them all is not.
func TestKafkaCertNamesAdvertisedHosts(t *testing.T) {
	pki := testpki.New(t, "test CA")
	dir := t.TempDir()
	wrongCert, wrongKey, _ := pki.IssueFiles(t, dir, "wrong", "proxy", "proxy.internal")
	rightCert, rightKey, _ := pki.IssueFiles(t, dir, "right", "proxy", "kafka-proxy.example", "10.1.2.3")
	for _, tc := range []struct {
		name, cert, key string
		warn            []string
	}{
		{"wrong host", wrongCert, wrongKey, []string{"kafka-proxy.example", "10.1.2.3", "does not name"}},
		{"right hosts", rightCert, rightKey, nil},
	} {
		path := filepath.Join(dir, tc.name+".yaml")
		cfg := "kafka:\n  - listen: 0.0.0.0:0\n    bootstrap: [127.0.0.1:9092]\n    advertised_host: kafka-proxy.example\n" +
			"    node_addrs: {3: \"10.1.2.3:0\"}\n    tls: {cert_file: " + tc.cert + ", key_file: " + tc.key + "}\n"
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		code := mainArgs([]string{"check-config", "--config", path, "--admin", "off"}, &out, &errb)
		if code != 0 {
			t.Fatalf("%s: exit %d, err %q", tc.name, code, errb.String())
		}
		if tc.warn == nil {
			if errb.Len() != 0 || strings.Contains(out.String(), "warning") {
				t.Errorf("%s: warned: out %q, err %q", tc.name, out.String(), errb.String())
			}
			continue
		}
		for _, w := range tc.warn {
			if !strings.Contains(errb.String(), w) {
				t.Errorf("%s: stderr %q does not say %q", tc.name, errb.String(), w)
			}
		}
		if !strings.Contains(out.String(), "with 1 warning(s)") {
			t.Errorf("%s: summary %q", tc.name, out.String())
		}
	}
}

// TestNodePortBaseRange: a node_port_base (or, unset, the listen port + 1) outside 1..65535
// gives no broker node a port it can listen on, so every client fails at its first Metadata:
// check-config and run refuse it, naming the key, instead of finding it node by node at run time.
func TestNodePortBaseRange(t *testing.T) {
	for _, tc := range []struct {
		front string
		ok    bool
	}{
		{"listen: 127.0.0.1:19092\n    node_port_base: 70000", false},
		{"listen: 127.0.0.1:19092\n    node_port_base: -5", false},
		{"listen: 127.0.0.1:65535", false}, // node 0 would be on 65536
		{"listen: 127.0.0.1:19092\n    node_port_base: 65535", true},
		{"listen: 127.0.0.1:19092\n    node_port_base: 29093", true},
		{"listen: 127.0.0.1:0", true}, // tests: ephemeral node ports
	} {
		err := validateYAML(t, "kafka:\n  - "+tc.front+"\n    bootstrap: [127.0.0.1:9092]\n")
		if tc.ok != (err == nil) {
			t.Errorf("%q: %v, want ok: %v", tc.front, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "kafka[0].node_port_base") {
			t.Errorf("%q: %v does not name node_port_base", tc.front, err)
		}
	}
}

// TestNodeAddrsChecked: a node_addrs address that is not host:port with a port 0..65535 is
// refused by check-config and run, naming the key and node in the file's terms.
func TestNodeAddrsChecked(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{`"127.0.0.1:99999"`, false},
		{`"nonsense"`, false},
		{`"127.0.0.1:29095"`, true},
		{`":0"`, true},
	} {
		err := validateYAML(t, "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [127.0.0.1:9092]\n    node_addrs: {1: "+tc.addr+"}\n")
		if tc.ok != (err == nil) {
			t.Errorf("%s: %v, want ok: %v", tc.addr, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "kafka[0].node_addrs.1") {
			t.Errorf("%s: %v does not name node_addrs.1", tc.addr, err)
		}
	}
}

// TestEmptyTLSRefused: a tls: or upstream_tls: key with nothing under it (its keys commented
// out, say) asks for TLS and gives nothing to do it with; read as absent, it ran the front in
// plaintext with "configuration OK". It is refused, naming the key and its line, as tls: {} is.
func TestEmptyTLSRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, key string }{
		{"kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:1]\n    tls:\n      # cert_file: /etc/dsmproxy/tls.pem\n", "kafka[0].tls"},
		{"amqp:\n  - listen: 127.0.0.1:5673\n    upstream: rabbitmq:5671\n    upstream_tls: ~\n", "amqp[0].upstream_tls"},
		{"aws:\n  - listen: 127.0.0.1:4566\n    upstream: https://sqs.us-east-1.amazonaws.com\n    tls:\n", "aws[0].tls"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), "key "+tc.key+": ") || !strings.Contains(err.Error(), "line 4") {
			t.Errorf("%q: %v, want an error naming %s at line 4", tc.yaml, err, tc.key)
		}
	}
	if _, err := ParseConfig([]byte("amqp:\n  - listen: 127.0.0.1:5673\n    upstream: rabbitmq:5671\n    upstream_tls: {enabled: true}\n")); err != nil {
		t.Errorf("upstream_tls with enabled only: %v", err)
	}
}

// TestEmptyListEntryRefused: a "-" with nothing after it (its keys commented out, or indented
// wrong) was dropped by the decoder without a word: the front was missing, check-config said
// "configuration OK", and the entries after it took the numbers and lines of the ones before
// (an error in the third entry named amqp[1] and the second entry's line).
func TestEmptyListEntryRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"amqp:\n  -\n  - listen: 127.0.0.1:29673\n    upstream: 127.0.0.1:5672\n", "line 2: key amqp[0]: is an empty entry"},
		{"kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [a:1]\n  - ~\n", "line 4: key kafka[1]: is an empty entry"},
		{"services:\n  -\n    # service: orders\namqp:\n  - {listen: 127.0.0.1:29673, upstream: 127.0.0.1:5672}\n", "line 2: key services[0]: is an empty entry"},
		{"aws:\n  - listen: 127.0.0.1:4566\n    client_keys:\n      -\n", "line 4: key aws[0].client_keys[0]: is an empty entry"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// TestErrorsIntervalBelowASecondRefused: errors.interval is how often every tracked error group
// is logged (and sent to the Agent as error spans): 10ms, a slip for 10s, would log each group a
// hundred times a second. Below 1s is refused, as agent.flush_interval is; 0 is the default.
func TestErrorsIntervalBelowASecondRefused(t *testing.T) {
	for _, tc := range []struct {
		interval string
		ok       bool
	}{{"10ms", false}, {"999ms", false}, {"1s", true}, {"0s", true}, {"30s", true}} {
		err := validateYAML(t, "errors:\n  interval: "+tc.interval+"\namqp:\n  - listen: 127.0.0.1:15673\n    upstream: 127.0.0.1:5672\n")
		if tc.ok != (err == nil) || err != nil && !strings.Contains(err.Error(), "line 2: key errors.interval") {
			t.Errorf("interval %s: %v, want ok: %v (naming errors.interval at line 2)", tc.interval, err, tc.ok)
		}
	}
}

// TestErrorsMaxFingerprints: errors.max_fingerprints, which the error tracking's Warn lines name
// as the setting to raise when groups are evicted or events not grouped, sets the collector's
// bound; 0 is the default, and a negative value or one over 100,000 is refused.
func TestErrorsMaxFingerprints(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  int // 0: refused
	}{{"5", 5}, {"0", errtrack.DefaultMaxFingerprints}, {"-1", 0}, {"100000", 100000}, {"100001", 0}} {
		text := "errors:\n  max_fingerprints: " + tc.value + "\namqp:\n  - listen: 127.0.0.1:15673\n    upstream: 127.0.0.1:5672\n"
		cfg, err := ParseConfig([]byte(text))
		if err != nil {
			t.Fatalf("%s: %v", tc.value, err)
		}
		cfg.Admin.Disabled = true
		cfg.Defaults()
		err = cfg.Validate()
		if tc.want == 0 {
			if err == nil || !strings.Contains(err.Error(), "line 2: key errors.max_fingerprints") {
				t.Errorf("%s: %v, want a refusal naming errors.max_fingerprints at line 2", tc.value, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.value, err)
		}
		if got := newCollector(cfg, zerolog.Nop()).Snapshot().MaxFingerprints; got != tc.want {
			t.Errorf("%s: the collector keeps %d groups, want %d", tc.value, got, tc.want)
		}
	}
}

// TestKafkaFlagBootstrapSpaces: --kafka LISTEN=a:1, b:2 (a list written as lists usually are)
// gives the brokers without the space; kept, " b:2" passed validation and failed every dial
// with a lookup of " b".
func TestKafkaFlagBootstrapSpaces(t *testing.T) {
	f := runFlags{kafka: listFlag{"127.0.0.1:19092=127.0.0.1:9092, 127.0.0.1:9093 ,kafka-3:9092"}, admin: "off"}
	c, err := f.loadConfig(envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"127.0.0.1:9092", "127.0.0.1:9093", "kafka-3:9092"}; !slices.Equal(c.Kafka[0].Bootstrap, want) {
		t.Errorf("bootstrap %q, want %q", c.Kafka[0].Bootstrap, want)
	}
	f = runFlags{kafka: listFlag{"127.0.0.1:19092=127.0.0.1:9092,,"}, admin: "off"}
	if _, err := f.loadConfig(envMap(nil)); err == nil || !strings.Contains(err.Error(), "kafka[0].bootstrap") {
		t.Errorf("an empty broker in the list: %v, want refused", err)
	}
	// A quoted address in the file keeps its space: refused, not dialed as " kafka-1".
	if err := validateYAML(t, "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [\" kafka-1:9092\"]\n"); err == nil || !strings.Contains(err.Error(), "kafka[0].bootstrap") {
		t.Errorf("bootstrap \" kafka-1:9092\": %v, want refused", err)
	}
}

// TestAgentURLUnparsableSecretStaysOut: an Agent URL that does not parse (its password has a '%',
// '#' or space) is refused without its password, with or without a scheme.
func TestAgentURLUnparsableSecretStaysOut(t *testing.T) {
	for _, u := range []string{"http://dd:s3cret%@agent:8126", "dd:s3cret%@agent:8126", "http://dd:s3cret#x@agent:8126", "dd:s3cret x@agent:8126"} {
		if err := checkAgentURL(u); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("refused URL %q: %v", u, err)
		}
	}
}

// TestNodePortOnBootstrapWarned: a Kafka front listening one port below its broker on the same
// host (a broker on 127.0.0.1:25801, --kafka 127.0.0.1:25800=127.0.0.1:25801) puts broker node
// 0's listener on the broker's own address: it cannot open while the broker runs, and every
// client times out after its first Metadata. check-config said "configuration OK"; it warns now.
// A broker on another host, or on another port of this one, is no such case.
func TestNodePortOnBootstrapWarned(t *testing.T) {
	for _, c := range []struct {
		kafka string
		warn  bool
	}{
		{"127.0.0.1:25800=127.0.0.1:25801,127.0.0.1:25802", true},
		{"localhost:25800=127.0.0.1:25801", true},
		{"127.0.0.1:25800=kafka-1:25801", false},
		{"127.0.0.1:19092=127.0.0.1:9092", false},
	} {
		var out, errb bytes.Buffer
		code := mainArgs([]string{"check-config", "--kafka", c.kafka, "--admin", "off"}, &out, &errb)
		if code != 0 {
			t.Fatalf("%s: exit %d, out %q, err %q", c.kafka, code, out.String(), errb.String())
		}
		warned := strings.Contains(errb.String(), "broker node 0's listener would be on") && strings.Contains(errb.String(), "127.0.0.1:25801")
		if warned != c.warn || strings.Contains(out.String(), "warning") != c.warn {
			t.Errorf("%s: warned %v, want %v: out %q, err %q", c.kafka, warned, c.warn, out.String(), errb.String())
		}
	}
}

// TestCheckAgentURLForms: the URL forms the tracers take from DD_TRACE_AGENT_URL (dd-trace-go
// parses it with url.Parse and keeps any http, https or unix URL) are taken, and what is refused
// gets a hint that would work.
func TestCheckAgentURLForms(t *testing.T) {
	for _, tc := range []struct {
		url      string
		wantErr  string // "" = accepted
		notInErr string
	}{
		{url: "http://agent:8126"},
		{url: "https://agent"},
		{url: "unix:///var/run/datadog/apm.socket"},
		{url: "unix:/var/run/datadog/apm.socket"}, // no authority: url.Parse's Path all the same
		{url: "agent:8126", wantErr: "write http://agent:8126"},
		{url: "unix:apm.socket", wantErr: "has no socket path", notInErr: "http://unix"},
		{url: "unix://", wantErr: "has no socket path"},
		{url: "ftp://agent", wantErr: "scheme must be http, https or unix"},
	} {
		err := checkAgentURL(tc.url)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v, want it accepted", tc.url, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %v, want an error with %q", tc.url, err, tc.wantErr)
		case tc.notInErr != "" && err != nil && strings.Contains(err.Error(), tc.notInErr):
			t.Errorf("%s: %v, should not suggest %q", tc.url, err, tc.notInErr)
		}
	}
}

// TestCheckConfigWarnsOfAReachableAdmin: run warns at start of an admin listener other hosts can
// reach (deploy/dsmproxy.compose.yaml has one), and check-config, which prints run's start
// warnings, says so too; a loopback one is no warning.
func TestCheckConfigWarnsOfAReachableAdmin(t *testing.T) {
	for _, c := range []struct {
		admin string
		warn  bool
	}{
		{"0.0.0.0:28790", true},
		{":28790", true},
		{"[::]:28790", true},
		{"127.0.0.1:28790", false},
		{"localhost:28790", false},
		{"[::1]:28790", false},
		{"off", false},
	} {
		var out, errb bytes.Buffer
		code := mainArgs([]string{"check-config", "--amqp", "127.0.0.1:25673=127.0.0.1:5672", "--admin", c.admin}, &out, &errb)
		if code != 0 {
			t.Fatalf("--admin %s: exit %d, out %q, err %q", c.admin, code, out.String(), errb.String())
		}
		warned := strings.Contains(errb.String(), "admin listener reachable from other hosts")
		if warned != c.warn || strings.Contains(out.String(), "warning") != c.warn {
			t.Errorf("--admin %s: warned %v, want %v: out %q, err %q", c.admin, warned, c.warn, out.String(), errb.String())
		}
	}
}

// TestReloadLinesNameTheFront: a SIGHUP's reload lines carry front, the configuration entry, as
// every line about a front does (README: "Every line a front logs carries front").
func TestReloadLinesNameTheFront(t *testing.T) {
	pki := testpki.New(t, "test CA")
	dir := t.TempDir()
	certFile, keyFile, _ := pki.IssueFiles(t, dir, "front", "front")
	cfg := &Config{AMQP: []AMQPConfig{
		{Listen: "127.0.0.1:15673", Upstream: "127.0.0.1:5672"},
		{Listen: "127.0.0.1:15674", Upstream: "127.0.0.1:5672", ListenerLimits: ListenerLimits{TLS: &TLSServer{CertFile: certFile, KeyFile: keyFile}}}}}
	sh := shared{cp: pathway.NewCheckpointer("", 0), obs: noObserver{}, errs: errtrack.Discard{}, services: &proxy.Services{}, log: zerolog.Nop()}
	fronts, err := buildFronts(cfg, sh)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	proxy.ReloadAll(zerolog.New(&logs), fronts[1].reloaders...)
	var line map[string]any
	if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
		t.Fatalf("%v: %q", err, logs.String())
	}
	if line["message"] != "TLS certificates reloaded" || line["front"] != "amqp[1]" {
		t.Errorf("reload line %v, want front amqp[1]", line)
	}
}

// TestFrontBuildErrorKeyLine: a file a front's key names that cannot be read is blamed on that
// key's own line, not the line its entry starts at: with the README's Kafka SASL block and no
// password file, the error named line 2 (kafka[0]) for password_file on line 7; so did a TLS
// file's, written as a block or inline.
func TestFrontBuildErrorKeyLine(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "absent")
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"README's kafka sasl block", "kafka:\n  - listen: 127.0.0.1:19092\n    bootstrap: [kafka-1:9093]\n    sasl:\n" +
			"      mechanism: SCRAM-SHA-512          # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512\n" +
			"      username: dsmproxy                # needs Describe and DescribeConfigs on the topics\n" +
			"      password_file: " + missing + "   # read at every login; or password:\n",
			"line 7: key kafka[0].sasl.password_file: "},
		{"tls block", "amqp:\n  - listen: 127.0.0.1:25677\n    upstream: 127.0.0.1:5672\n    tls:\n      key_file: " + missing + "\n      cert_file: " + missing + "\n",
			"line 6: key amqp[0].tls.cert_file: "},
		{"second entry, inline", "amqp:\n  - listen: 127.0.0.1:25677\n    upstream: 127.0.0.1:5672\n  - listen: 127.0.0.1:25678\n    upstream: 127.0.0.1:5672\n\n    upstream_tls: {ca_file: " + missing + "}\n",
			"line 7: key amqp[1].upstream_tls.ca_file: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "dsmproxy.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := mainArgs([]string{"check-config", "--config", path}, &out, &errb)
			if want := "config " + path + ": " + tc.want; code != 1 || !strings.Contains(errb.String(), want) {
				t.Errorf("exit %d, stderr %q, want it to say %q", code, errb.String(), want)
			}
		})
	}
}
