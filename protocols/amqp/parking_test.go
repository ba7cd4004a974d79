package amqp

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestIdleConnectionsHoldNoBuffers: connections that wait (idle consumers, a publisher between
// bursts) hold none of their relay buffers, and messages still flow when traffic comes back:
// every one of 60 publishes is delivered once, with its body, to consumers that sat parked.
func TestIdleConnectionsHoldNoBuffers(t *testing.T) {
	h := startProxy(t, nil)
	q := declareQueue(t, dial(t, directURL, "park-setup", 0), unique("park"))
	held := func() int64 { return h.p.Stats().RelayBuffers }
	got := make(chan string, 100)
	for i := range 4 {
		ch := channel(t, dial(t, h.url, fmt.Sprintf("park-consumer-%d", i), 0))
		msgs, err := ch.Consume(q, "", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range msgs {
				got <- string(m.Body)
			}
		}()
	}
	pub := channel(t, dial(t, h.url, "park-publisher", 0))
	waitFor(t, "every idle connection to give its relay buffers back", func() bool { return held() == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want := map[string]bool{}
	for round := range 3 {
		for i := range 20 {
			body := fmt.Sprintf("round %d message %d", round, i)
			want[body] = true
			if err := pub.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{Body: []byte(body)}); err != nil {
				t.Fatal(err)
			}
		}
		for range 20 {
			select {
			case b := <-got:
				if !want[b] {
					t.Fatalf("delivered %q: not published, or delivered twice", b)
				}
				delete(want, b)
			case <-ctx.Done():
				t.Fatalf("round %d: %d messages not delivered", round, len(want))
			}
		}
		waitFor(t, fmt.Sprintf("the connections to park again after round %d", round), func() bool { return held() == 0 })
	}
}
