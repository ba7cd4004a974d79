package amqp

import (
	"bufio"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestIdentifiedLoginClipped: the login a client names in Connection.StartOk comes before the
// broker accepts it, and may be as long as a frame (max_frame_bytes, 1 MiB). The clients the
// front remembers for 'amqp client identified' (10,000 of them, kept after their connections end)
// and the line itself keep at most 255 bytes of it: remembered whole, every refused login of a
// client that anyone could open stayed in the heap.
func TestIdentifiedLoginClipped(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	const clients, userBytes = 40, 256 << 10
	login := func(i int) {
		user := fmt.Sprintf("%d%s", i, strings.Repeat("u", userBytes))
		// RabbitMQ refuses a StartOk past its frame_max before tuning; the proxy has read it.
		c, err := amqp091.DialConfig("amqp://"+h.p.Addr().String()+"/", amqp091.Config{
			SASL:       []amqp091.Authentication{&amqp091.PlainAuth{Username: user, Password: "guest"}},
			Properties: amqp091.Table{"connection_name": fmt.Sprintf("login-%d", i)},
		})
		if err == nil {
			c.Close()
		}
	}
	login(-1) // the relay's buffers, before the count
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup // each refusal takes RabbitMQ a few seconds: at once
	for i := range clients {
		wg.Go(func() { login(i) })
	}
	wg.Wait()
	lines := func() (n, long int) {
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["message"] == "amqp client identified" {
				n++
				if u, _ := m["user"].(string); len(u) > 255 {
					long++
				}
			}
		}
		return n, long
	}
	waitFor(t, "every client to be identified", func() bool { n, _ := lines(); return n == clients+1 })
	waitFor(t, "the connections to end", func() bool { _, _, _, open := h.p.listenerCounts(); return open == 0 })
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap grew by %d bytes", grew)
	if grew > 4<<20 {
		t.Errorf("%d clients that named logins of %d bytes and ended hold %d bytes of heap", clients, userBytes, grew)
	}
	if _, long := lines(); long > 0 {
		t.Errorf("%d lines 'amqp client identified' name a user over 255 bytes, want none", long)
	}
}
