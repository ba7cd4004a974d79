package kafka

import (
	"crypto/rand"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// cuttingListener wraps a kfake listener: while armed, the first answer of at least cutFrom
// bytes a broker writes is cut in half and its connection closed, as a broker that crashes in
// the middle of a big Fetch answer leaves it.
type cuttingListener struct {
	net.Listener
	armed *atomic.Bool
}

const cutFrom = 256 << 10

func (l cuttingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &cuttingConn{Conn: c, armed: l.armed}, nil
}

type cuttingConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c *cuttingConn) Write(b []byte) (int, error) {
	if len(b) >= cutFrom && c.armed.CompareAndSwap(true, false) {
		n, _ := c.Conn.Write(b[:len(b)/2])
		c.Conn.Close()
		return n, net.ErrClosed
	}
	return c.Conn.Write(b)
}

// TestStreamedFetchCutIsABrokerCut: a Fetch answer big enough to be forwarded as it arrives
// (streamed, or relayed unobserved when the frame budget is taken) that the broker cuts off is a
// broker cut like any answer cut short: told at Warn with the Fetch it left unanswered, and
// counted in BrokerCuts. Taken out of the queue before its bytes came, it was left out of the
// unanswered requests, and the stream's end (io.EOF) read as a clean close: nothing was logged.
func TestStreamedFetchCutIsABrokerCut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		budget int64 // Config.FrameBudgetBytes (0: the default)
	}{
		{"streamed", 0},
		{"relayed unobserved", 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1), kfake.AllowAutoTopicCreation(),
				kfake.ListenFn(func(network, addr string) (net.Listener, error) {
					ln, err := net.Listen(network, addr)
					return cuttingListener{Listener: ln, armed: &armed}, err
				}))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			var logs syncbuf.Buffer
			p := startProxy(t, c, func(cfg *Config) {
				cfg.Log = zerolog.New(&logs)
				cfg.FrameBudgetBytes = tc.budget
			})
			ctx := testCtx(t)
			topic := uniqueTopic(t, "fetch-cut")
			const n = 40
			recs := make([]*kgo.Record, n)
			for i := range recs {
				v := make([]byte, 16<<10)
				rand.Read(v) // not compressed away: the answer stays over cutFrom
				recs[i] = &kgo.Record{Topic: topic, Value: v}
			}
			if err := kgoClient(t, p).ProduceSync(ctx, recs...).FirstErr(); err != nil {
				t.Fatal(err)
			}
			armed.Store(true)
			cl := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			pollN(t, ctx, cl, n) // the client retries the cut fetch on a new connection
			if armed.Load() {
				t.Fatal("no answer was cut: the test cut nothing")
			}
			const told = "the broker ended the connection with requests unanswered"
			waitFor(t, "the cut told", func() bool { return p.Stats().BrokerCuts > 0 && strings.Contains(logs.String(), told) })
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, told) {
					for _, want := range []string{`"level":"warn"`, `"requests":["Fetch v`, "unexpected EOF"} {
						if !strings.Contains(line, want) {
							t.Errorf("the line lacks %s: %s", want, line)
						}
					}
				}
			}
		})
	}
}
