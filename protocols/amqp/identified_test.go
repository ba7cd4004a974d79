package amqp

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestClientIdentifiedOncePerClient: a client that opens a connection per message (a PHP or
// script publisher) is identified at Info on its first connection and at Debug on the next ones,
// as the Kafka front does. Every connection logged an Info line: 5,000 short amqp091 connections
// in a soak run wrote 5,000 identical lines. Another name gets its own Info line.
func TestClientIdentifiedOncePerClient(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs).Level(zerolog.DebugLevel) })
	names := []string{"orders-api", "orders-api", "orders-api", "orders-api", "billing"}
	for _, name := range names {
		c := dial(t, h.url, name, 0)
		channel(t, c)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	levels := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["message"] == "amqp client identified" {
			name, _ := m["connection_name"].(string)
			level, _ := m["level"].(string)
			levels[name] = append(levels[name], level)
			if m["service"] != name || m["conn"] == nil {
				t.Errorf("identified line without its service or connection: %v", m)
			}
		}
	}
	want := map[string][]string{"orders-api": {"info", "debug", "debug", "debug"}, "billing": {"info"}}
	for name, w := range want {
		if strings.Join(levels[name], ",") != strings.Join(w, ",") {
			t.Errorf("%s identified at %v, want %v", name, levels[name], w)
		}
	}
}
