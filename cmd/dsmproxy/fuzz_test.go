package main

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzParseConfig: no config file, however malformed, makes the parser (and the error messages
// it builds by walking the file beside the Config type) panic; it gives a config or an error.
// An error names only lines the file has; a config accepted, printed and read again is the
// same config (its printed form is a fixed point).
func FuzzParseConfig(f *testing.F) {
	example, err := os.ReadFile("testdata/dsmproxy.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, s := range []string{
		"kafka: {sasl: {mechanism: PLAIN}}\n",
		"kafka:\n  - {listen: lots, max_conns: lots, bootstrap: [a:1]}\n",
		"x: &a [1]\nkafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:1]\n    sasl: *a\n",
		"services: [[a], [b]]\n",
		"aws:\n  - listen: 127.0.0.1:1\n    upstreams: {sqs: [x]}\n    client_keys: {a: b}\n",
		"kafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:1]\n    node_addrs: {x: [1], 2: {a: b}}\n",
		"<<: {env: x}\nlog: hello\n",
		"aws:\n  - listen: 127.0.0.1:1\n    <<: [{max_conns: lots}, *b]\n",
		"- 1\n- 2\n",
		"drain_timeout: [1]\n",
		"drain_timeout: 1m30s\nagent: {flush_interval: 2s}\nkafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:1]\n    topic_limit_wait: 0s\n    upstream_tls: {enabled: true}\n",
		"kafka:\n  - listen: 127.0.0.1:1\n    bootstrap: [a:1]\n    tls:\n",
		"env: x\n---\nenv: y\n",
		"kafka: [\n",
		"env: 'x\n\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(b)
		if err != nil {
			n := bytes.Count(b, []byte("\n"))
			if len(b) > 0 && b[len(b)-1] != '\n' {
				n++
			}
			for _, l := range errorLines(err) {
				if l < 0 || l > n {
					t.Fatalf("%q: the error names line %d of a file of %d lines: %v", b, l, n, err)
				}
			}
			return
		}
		if cfg == nil {
			t.Fatal("no config and no error")
		}
		printed := printConfig(t, cfg)
		again, err := ParseConfig(printed)
		if err != nil {
			t.Fatalf("%q read as a config printed as\n%s\nwhich reads as an error: %v", b, printed, err)
		}
		if reprinted := printConfig(t, again); !bytes.Equal(reprinted, printed) {
			t.Fatalf("%q read as a config printed as\n%s\nwhich reads as a config printed as\n%s", b, printed, reprinted)
		}
	})
}

// errorLines are the file lines err (or the errors it joins or wraps) names.
func errorLines(err error) []int {
	var ce *configError
	switch e := err.(type) {
	case interface{ Unwrap() []error }:
		var out []int
		for _, x := range e.Unwrap() {
			out = append(out, errorLines(x)...)
		}
		return out
	case *configError:
		return []int{e.line}
	}
	if errors.As(err, &ce) {
		return []int{ce.line}
	}
	return nil
}

// printConfig is cfg as YAML, without the keys it leaves unset (null: an empty tls: is refused).
func printConfig(t *testing.T, cfg *Config) []byte {
	t.Helper()
	var n yaml.Node
	if err := n.Encode(cfg); err != nil {
		t.Fatal(err)
	}
	dropNulls(&n)
	out, err := yaml.Marshal(&n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func dropNulls(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		kept := n.Content[:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			if v := n.Content[i+1]; v.Kind != yaml.ScalarNode || v.ShortTag() != "!!null" {
				kept = append(kept, n.Content[i], v)
			}
		}
		n.Content = kept
	}
	for _, k := range n.Content {
		dropNulls(k)
	}
}
