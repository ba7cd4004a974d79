package kafka

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// The proxy dials brokers from this source address; any broker connection from elsewhere is a
// client that bypassed the proxy.
const proxySourceIP = "127.0.0.2"

// recorder is a test Observer.
type recorder struct {
	mu      sync.Mutex
	points  []pathway.Point
	offsets []pathway.Offset
}

func (r *recorder) Add(p pathway.Point) bool {
	r.mu.Lock()
	r.points = append(r.points, p)
	r.mu.Unlock()
	return true
}

func (r *recorder) Offset(o pathway.Offset) bool {
	r.mu.Lock()
	r.offsets = append(r.offsets, o)
	r.mu.Unlock()
	return true
}

// snapshot returns the checkpoints and offsets so far, a point of Count n as n points of Count 0:
// tests check checkpoints, however the proxy grouped them.
func (r *recorder) snapshot() ([]pathway.Point, []pathway.Offset) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var pts []pathway.Point
	for _, p := range r.points {
		n := p.Checkpoints()
		p.Count = 0
		for range n {
			pts = append(pts, p)
		}
	}
	return pts, append([]pathway.Offset(nil), r.offsets...)
}

// raw returns the points as the observer got them.
func (r *recorder) raw() []pathway.Point {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]pathway.Point(nil), r.points...)
}

// errRecorder is a test errtrack.Reporter.
type errRecorder struct {
	mu     sync.Mutex
	events []errtrack.Event
}

func (r *errRecorder) Report(e errtrack.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *errRecorder) byCategory(c errtrack.Category) []errtrack.Event {
	return r.where(func(e errtrack.Event) bool { return e.Category == c })
}

func (r *errRecorder) byName(name string) []errtrack.Event {
	return r.where(func(e errtrack.Event) bool { return e.Name == name })
}

func (r *errRecorder) where(keep func(errtrack.Event) bool) []errtrack.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []errtrack.Event
	for _, e := range r.events {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// brokerGuard wraps kfake's listeners and remembers every connection that did not come from the
// proxy's source address.
type brokerGuard struct {
	mu       sync.Mutex
	accepted int
	direct   []string
	conns    []net.Conn
}

// closeAll closes every broker connection accepted so far, as a broker closing idle ones does.
func (g *brokerGuard) closeAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		c.Close()
	}
	g.conns = nil
}

// resetAll resets every broker connection accepted so far, as a broker host that drops them
// does (SO_LINGER 0).
func (g *brokerGuard) resetAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		if d, ok := c.(*directConn); ok {
			c = d.Conn
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	g.conns = nil
}

func (g *brokerGuard) listen(network, addr string) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return &guardedListener{Listener: ln, g: g}, nil
}

type guardedListener struct {
	net.Listener
	g *brokerGuard
}

func (l *guardedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		l.g.mu.Lock()
		l.g.accepted++
		l.g.conns = append(l.g.conns, c)
		if host != proxySourceIP {
			l.g.direct = append(l.g.direct, c.RemoteAddr().String()+" -> "+l.Addr().String())
			c = &directConn{Conn: c, g: l.g, at: len(l.g.direct) - 1}
		}
		l.g.mu.Unlock()
	}
	return c, err
}

// directConn is a connection that bypassed the proxy: the client id of its first request is added
// to its entry in the guard's list, which names the client when the check fails.
type directConn struct {
	net.Conn
	g    *brokerGuard
	at   int    // index in g.direct
	head []byte // the first request's bytes so far, until its header is read
	done bool
}

func (c *directConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.done || n == 0 {
		return n, err
	}
	c.head = append(c.head, b[:n]...)
	if len(c.head) < 14 { // size, api key, version, correlation id, client id length
		return n, err
	}
	id, l := "null", int(int16(binary.BigEndian.Uint16(c.head[12:14])))
	if l >= 0 {
		if len(c.head) < 14+l {
			return n, err
		}
		id = fmt.Sprintf("%q", c.head[14:14+l])
	}
	c.g.mu.Lock()
	c.g.direct[c.at] += fmt.Sprintf(" (api key %d, client id %s)", int16(binary.BigEndian.Uint16(c.head[4:6])), id)
	c.g.mu.Unlock()
	c.head, c.done = nil, true
	return n, err
}

// check fails the test if any client reached a broker without the proxy.
func (g *brokerGuard) check(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.direct) > 0 {
		t.Errorf("clients connected to real broker ports directly: %v", g.direct)
	}
	if g.accepted == 0 {
		t.Errorf("no broker connection at all went through the proxy")
	}
}

// startCluster starts a 3-broker kfake cluster behind a brokerGuard.
func startCluster(t *testing.T, opts ...kfake.Opt) (*kfake.Cluster, *brokerGuard) {
	t.Helper()
	g := &brokerGuard{}
	opts = append([]kfake.Opt{kfake.NumBrokers(3), kfake.ListenFn(g.listen), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(3)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c, g
}

type testProxy struct {
	*Proxy
	rec  *recorder
	errs *errRecorder
}

// startProxy runs a Proxy in front of c on ephemeral ports, dialing from proxySourceIP.
func startProxy(t *testing.T, c *kfake.Cluster, mod func(*Config)) *testProxy {
	t.Helper()
	return startProxyWith(t, c, mod, nil)
}

// startProxyWith is startProxy with a hook that runs on the Proxy before it starts (setting
// unexported fields such as tap on a running proxy would race its connections).
func startProxyWith(t *testing.T, c *kfake.Cluster, mod func(*Config), beforeStart func(*Proxy)) *testProxy {
	t.Helper()
	rec, errs := &recorder{}, &errRecorder{}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySourceIP)}, Timeout: 5 * time.Second}
	log := zerolog.Nop()
	if os.Getenv("KAFKA_PROXY_LOG") != "" {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}
	var bootstrap []string
	if c != nil { // else mod names it
		bootstrap = c.ListenAddrs()
	}
	cfg := Config{
		Listen:    "127.0.0.1:0",
		Bootstrap: bootstrap,
		Env:       "test",
		Observer:  rec,
		Errors:    errs,
		Services:  &proxy.Services{Default: "default-svc"},
		Log:       log,
		Listener:  proxy.ListenerConfig{Dial: d.DialContext},
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if beforeStart != nil {
		beforeStart(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx); err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := p.Shutdown(sctx); err != nil {
			t.Logf("shutdown: %v", err)
		}
		cancel()
	})
	return &testProxy{Proxy: p, rec: rec, errs: errs}
}

// waitFor polls cond until it holds or the deadline passes (a correctness bound, not a timing
// assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func uniqueTopic(t *testing.T, prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)
}

// rawClient dials p's bootstrap listener for a test that writes frames by hand; it is closed
// when the test ends.
func rawClient(t *testing.T, p *testProxy) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// topicID asks cl's cluster for topic's id, which requests of the versions that name topics by
// id need.
func topicID(t *testing.T, ctx context.Context, cl *kgo.Client, topic string) [16]byte {
	t.Helper()
	md := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = &topic
	md.Topics = append(md.Topics, mt)
	mr, err := md.RequestWith(ctx, cl)
	if err != nil || len(mr.Topics) != 1 {
		t.Fatalf("metadata of %s: %v", topic, err)
	}
	return mr.Topics[0].TopicID
}

// emptyMetadata is the smallest Metadata request (v1, no topics): its answer names the brokers.
func emptyMetadata() *kmsg.MetadataRequest {
	meta := kmsg.NewPtrMetadataRequest()
	meta.Version = 1
	meta.Topics = []kmsg.MetadataRequestTopic{}
	return meta
}

// openNodes sends conn's first Metadata and reads the answer, which opens the node listeners:
// a drain opens none, and an answer naming a node without one leaves it out.
func openNodes(t *testing.T, conn net.Conn) {
	t.Helper()
	if _, err := conn.Write(requestFrame(emptyMetadata(), 0)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := readFrame(conn, DefaultMaxFrameBytes); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Time{})
}

// answeredLimits makes p's produce requests wait for their topics' first size limits as long as
// it takes, for tests that need the answer in, however loaded the machine.
func answeredLimits(p *testProxy) { p.limits.wait.Store(int64(time.Minute)) }
