package amqp

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// typicalHeader is a content header as clients send it: content type, persistent delivery, a
// message id and a small headers table.
func typicalHeader() []byte {
	return contentPayload(1024, flagContentType|flagHeaders|0x1000|0x0080, sstr("application/json"),
		table(entry("tenant", 'S', lstr([]byte("acme"))), entry("attempt", 'I', []byte{0, 0, 0, 1}), entry("trace", 'S', lstr([]byte("0af7651916cd43dd8448eb211c80319c")))),
		[]byte{2}, sstr("msg-00000001"))
}

// BenchmarkSpliceHeader: parse a content header and splice the pathway entry (goal: >= 3 million
// headers/s per core).
func BenchmarkSpliceHeader(b *testing.B) {
	for name, p := range map[string][]byte{"with-table": typicalHeader(), "no-table": contentPayload(1024, flagContentType, sstr("text/plain"))} {
		b.Run(name, func(b *testing.B) {
			val := testCtx.AppendBase64(nil)
			dst := make([]byte, 0, 512)
			b.ReportAllocs()
			for b.Loop() {
				h, err := parseContentHeader(p)
				if err != nil {
					b.Fatal(err)
				}
				dst = spliceHeader(dst[:0], p, &h, val)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "headers/s")
		})
	}
}

// publishStream is n publishes of 1 KiB (method, content header, body frame) on channel 1.
func publishStream(n int) []byte { return publishStreamOf(n, typicalHeader()) }

// BenchmarkFrameSplitter: split a stream of publish frames in memory.
func BenchmarkFrameSplitter(b *testing.B) {
	stream := publishStream(1000)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		for rest := stream; len(rest) > 0; {
			_, next, err := splitFrame(rest)
			if err != nil {
				b.Fatal(err)
			}
			rest = next
		}
	}
}

// BenchmarkClientPath: the whole client-to-broker path (read, split, checkpoint, splice, write)
// over 1000 publishes of 1 KiB.
func BenchmarkClientPath(b *testing.B) {
	stream := publishStream(1000)
	s := offlineSession(b, nil)
	r := bytes.NewReader(stream)
	br := newConnReader(r, nil)
	w := newConnWriter(io.Discard)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(stream)
		br.r, br.w = 0, 0
		if err := s.fromClient(br, w); err != io.EOF {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "msg/s")
}

// BenchmarkRabbit compares publish (confirms on and off) and consume rates of 1 KiB messages
// against the local RabbitMQ, direct and through the proxy, alternating the two paths per
// operation so load on a shared machine hits both alike. Publishes without confirms measure how
// fast the client hands messages off (the proxy's buffers absorb the broker's flow control), so
// compare the confirm and consume rates.
func BenchmarkRabbit(b *testing.B) {
	h := startProxy(b, func(c *Config) { c.Observer = nil }) // the recorder would measure itself
	body := make([]byte, 1024)
	paths := []struct{ name, url string }{{"direct", directURL}, {"proxy", h.url}}
	for _, confirm := range []bool{false, true} {
		for _, path := range paths {
			name := "publish/" + path.name
			if confirm {
				name = "publish-confirm/" + path.name
			}
			b.Run(name, func(b *testing.B) { benchPublish(b, path.url, body, confirm) })
		}
	}
	for _, path := range paths {
		b.Run("consume/"+path.name, func(b *testing.B) { benchConsume(b, path.url, body) })
	}
}

func benchPublish(b *testing.B, url string, body []byte, confirm bool) {
	c := dial(b, url, "bench", 0)
	q := declareQueue(b, c, unique("bench"))
	ch := channel(b, c)
	var confirms chan amqp091.Confirmation
	if confirm {
		ch.Confirm(false)
		confirms = ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if err := ch.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{Body: body}); err != nil {
			b.Fatal(err)
		}
		if confirm {
			<-confirms // one in flight at a time, as a synchronous publisher does
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}

func benchConsume(b *testing.B, url string, body []byte) {
	c := dial(b, url, "bench", 0)
	q := declareQueue(b, c, unique("bench"))
	ch := channel(b, c)
	ctx := context.Background()
	n := b.N
	for range n {
		if err := ch.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, "queue filled", func() bool {
		qi, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		return err == nil && qi.Messages == n
	})
	ch.Qos(1000, 0, false)
	b.ResetTimer()
	start := time.Now()
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		d := <-ds
		if (i+1)%100 == 0 || i == n-1 {
			d.Ack(true)
		}
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "msg/s")
}
