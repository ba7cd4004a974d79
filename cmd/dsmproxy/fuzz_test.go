package main

import (
	"os"
	"testing"
)

// FuzzParseConfig: no config file, however malformed, makes the parser (and the error messages
// it builds by walking the file beside the Config type) panic; it gives a config or an error.
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
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(b)
		if err == nil && cfg == nil {
			t.Fatal("no config and no error")
		}
	})
}
