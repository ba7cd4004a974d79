package main

import (
	"context"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestStartNamesWhereStatsGo: the start lines say where DSM stats go (the Agent's URL, as
// resolved from config and DD_ variables, or nowhere but the admin pages), so an operator does not
// have to wait for the first flush's outcome to see which Agent the proxy will use.
func TestStartNamesWhereStatsGo(t *testing.T) {
	for _, tc := range []struct {
		name     string
		disabled bool
		want     []string
	}{
		{"agent", false, []string{`"agent":"http://127.0.0.1:9"`, "DSM stats go to the Datadog Agent"}},
		{"no agent", true, []string{"no Datadog Agent", "/dsm"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{Admin: AdminConfig{Listen: "off"}, AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9"}}}
			cfg.Agent.URL, cfg.Agent.Disabled = "http://127.0.0.1:9", tc.disabled
			cfg.Defaults()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			var logs syncbuf.Buffer
			rt, err := start(context.Background(), cfg, zerolog.New(&logs), nil)
			if err != nil {
				t.Fatal(err)
			}
			rt.stop()
			line := ""
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, tc.want[1]) {
					line = l
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("no start line with %s; logs:\n%s", w, logs.String())
				}
			}
		})
	}
}
