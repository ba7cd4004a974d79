package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/closedport"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func dial(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// settled waits until the registry counted in and out bytes on the only connection, so its
// activity stamp is stored.
func settled(t *testing.T, l *Listener, in, out uint64) {
	t.Helper()
	waitFor(t, "byte counters", func() bool {
		cs := l.Connections()
		return len(cs) == 1 && cs[0].BytesIn == in && cs[0].BytesOut == out
	})
}

func TestMaxConnsRefusal(t *testing.T) {
	up := startEcho(t, nil)
	l := startListener(t, ListenerConfig{Upstream: up.addr(), MaxConns: 1}, HandlerFunc(relay))
	first := dial(t, l)
	roundTrip(t, first, "one")

	expectReset(t, l.Addr().String())
	if got := l.Refused(); got != 1 {
		t.Fatalf("Refused = %d, want 1", got)
	}
	roundTrip(t, first, "first still served")

	first.Close()
	waitFor(t, "the first connection to leave the registry", func() bool { return l.Conns() == 0 })
	third := dial(t, l)
	roundTrip(t, third, "room again")
}

// TestMaxConnsRefusalLogThrottled: anyone who reaches the port can cause refusals, so only the
// first 10 (and every 1000th) log at Warn; the rest go to Debug, all with the running total.
func TestMaxConnsRefusalLogThrottled(t *testing.T) {
	up := startEcho(t, nil)
	var logs syncbuf.Buffer
	l := startListenerLog(t, ListenerConfig{Upstream: up.addr(), MaxConns: 1}, HandlerFunc(relay), zerolog.New(&logs))
	first := dial(t, l)
	roundTrip(t, first, "one")
	const refusals = 13
	for range refusals {
		expectReset(t, l.Addr().String())
	}
	waitFor(t, "every refusal counted", func() bool { return l.Refused() == refusals })
	levels := map[string]int{}
	var last struct {
		Level        string `json:"level"`
		RefusedTotal uint64 `json:"refused_total"`
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.Contains(line, "listener is at its connection limit") {
			continue
		}
		if err := json.Unmarshal([]byte(line), &last); err != nil {
			t.Fatal(err)
		}
		levels[last.Level]++
	}
	if levels["warn"] != 10 || levels["debug"] != refusals-10 || last.RefusedTotal != refusals {
		t.Fatalf("refusal log lines by level %v, last refused_total %d; want 10 warn, %d debug, total %d\n%s",
			levels, last.RefusedTotal, refusals-10, refusals, logs.String())
	}
}

func TestIdleTimeoutExactClock(t *testing.T) {
	clk := newFakeClock()
	up := startEcho(t, nil)
	const idle = time.Minute
	l := startListener(t, ListenerConfig{Upstream: up.addr(), IdleTimeout: idle, Clock: clk.now}, HandlerFunc(relay))
	tick := l.tickEvery // a stamp may lag by one tick, so the timeout fires after idle+tick
	if tick != time.Second {
		t.Fatalf("tick for a minute's timeout = %v, want 1s", tick)
	}
	c := dial(t, l)
	roundTrip(t, c, "a")
	settled(t, l, 1, 1)

	clk.advance(idle + tick - time.Nanosecond)
	l.tick()
	roundTrip(t, c, "b") // just under: still open, and this traffic restarts the count
	settled(t, l, 2, 2)
	clk.advance(idle + tick - time.Nanosecond)
	l.tick()
	roundTrip(t, c, "c")
	settled(t, l, 3, 3)
	if ci := l.Connections()[0]; ci.Idle != 0 || !ci.Since.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("registry entry %+v: want Idle 0 and Since at the clock's start", ci)
	}

	clk.advance(idle + tick)
	l.tick()
	expectClosed(t, c)
	waitFor(t, "the idle connection to leave the registry", func() bool { return l.Conns() == 0 })
}

func TestIdleTimeoutRealClock(t *testing.T) {
	up := startEcho(t, nil)
	// Long enough that a dial and one echo fit in it on a loaded machine.
	l := startListener(t, ListenerConfig{Upstream: up.addr(), IdleTimeout: time.Second}, HandlerFunc(relay))
	c := dial(t, l)
	roundTrip(t, c, "then silence")
	expectClosed(t, c)
	waitFor(t, "the idle connection to leave the registry", func() bool { return l.Conns() == 0 })
}

// controlledUpstream answers each 4-byte request with "resp" only when release is closed.
func controlledUpstream(t *testing.T, release <-chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		<-release
		c.Write([]byte("resp"))
		io.Copy(io.Discard, c)
	}()
	return ln.Addr().String()
}

func TestDrainWaitsForInFlight(t *testing.T) {
	release := make(chan struct{})
	upAddr := controlledUpstream(t, release)
	inFlight, drainSeen := make(chan struct{}), make(chan struct{})
	h := HandlerFunc(func(_ context.Context, c *Conn) error {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c.Client, buf); err != nil {
			return err
		}
		if _, err := c.Upstream.Write(buf); err != nil {
			return err
		}
		close(inFlight)
		<-c.Draining() // a well-behaved handler takes no new request but finishes this one
		close(drainSeen)
		if _, err := io.ReadFull(c.Upstream, buf); err != nil {
			return err
		}
		_, err := c.Client.Write(buf)
		return err
	})
	var logs syncbuf.Buffer
	l, err := Listen(ListenerConfig{Protocol: "test", Addr: "127.0.0.1:0", Upstream: upAddr}, h, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- l.Serve(context.Background()) }()
	c := dial(t, l)
	if _, err := c.Write([]byte("req1")); err != nil {
		t.Fatal(err)
	}
	<-inFlight

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- l.Shutdown(ctx) }()
	<-drainSeen
	if err := <-served; !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve returned %v, want ErrClosed", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	default:
	}
	if nc, err := net.Dial("tcp", l.Addr().String()); err == nil {
		nc.Close()
		t.Fatal("a draining listener accepted a new connection")
	}

	close(release)
	got := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "resp" {
		t.Fatalf("in-flight response = %q, %v; want resp", got, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v, want nil after the handler finished", err)
	}
	if n := l.Conns(); n != 0 {
		t.Fatalf("%d connections left after Shutdown", n)
	}
	if out := logs.String(); !strings.Contains(out, `"connections":1,"message":"drained: every open connection finished"`) {
		t.Errorf("no drained line with the connection count in the log:\n%s", out)
	}
}

func TestDrainDeadlineForceCloses(t *testing.T) {
	up := startEcho(t, nil)
	returned := make(chan struct{}, 2)
	// This handler ignores Draining: only the force-close at the deadline ends it.
	h := HandlerFunc(func(ctx context.Context, c *Conn) error {
		defer func() { returned <- struct{}{} }()
		return relay(ctx, c)
	})
	var logs syncbuf.Buffer
	l, err := Listen(ListenerConfig{Protocol: "test", Addr: "127.0.0.1:0", Upstream: up.addr()}, h, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := dial(t, l)
	roundTrip(t, c, "busy")
	idle := dial(t, l)
	roundTrip(t, idle, "idle")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the drain deadline", err)
	}
	for range 2 {
		select {
		case <-returned:
		default:
			t.Fatal("Shutdown returned before the force-closed handlers")
		}
	}
	expectClosed(t, c)
	expectClosed(t, idle)
	if n := l.Conns(); n != 0 {
		t.Fatalf("%d connections left after Shutdown", n)
	}
	if out := logs.String(); !strings.Contains(out, `"connections":2,"closed_at_deadline":2,"message":"drain time is up: closing the connections still open"`) {
		t.Errorf("no deadline line with the connection counts in the log:\n%s", out)
	}
}

// TestUpstreamDialFailureClosesClient: with its upstream down, a client's connection is reset, as
// a direct one would be refused: clients retry that, not a clean close (kgo fails its records).
func TestUpstreamDialFailureClosesClient(t *testing.T) {
	dead := closedport.New(t).Addr()
	l := startListener(t, ListenerConfig{Upstream: dead}, HandlerFunc(relay))
	expectReset(t, l.Addr().String())
	expectReset(t, l.Addr().String())
	if n := l.DialFailures(); n != 2 {
		t.Errorf("DialFailures = %d, want 2", n)
	}
}

func TestConnectionsRegistry(t *testing.T) {
	clk := newFakeClock()
	up := startEcho(t, nil)
	l := startListener(t, ListenerConfig{Upstream: up.addr(), Clock: clk.now}, HandlerFunc(relay))
	a := dial(t, l)
	roundTrip(t, a, "12345")
	settled(t, l, 5, 5)
	clk.advance(time.Second)
	l.tick()
	b := dial(t, l)
	roundTrip(t, b, "xy")
	waitFor(t, "two registered connections", func() bool { return len(l.Connections()) == 2 })
	clk.advance(time.Second)
	cs := l.Connections()
	if cs[0].ID >= cs[1].ID {
		t.Fatalf("Connections not ordered by id: %+v", cs)
	}
	if cs[0].Client != a.LocalAddr().String() || cs[1].Client != b.LocalAddr().String() {
		t.Fatalf("clients = %s, %s; want %s, %s", cs[0].Client, cs[1].Client, a.LocalAddr(), b.LocalAddr())
	}
	if cs[0].Idle != 2*time.Second || cs[1].Since.Sub(cs[0].Since) != time.Second || cs[0].Protocol != "test" {
		t.Fatalf("registry %+v: want the first idle 2s and opened 1s before the second", cs)
	}
}

// TestDrainDeadlineCutsADial: a client connected while its upstream dial hangs (a black-holed
// broker); when the drain's time is up the dial is cancelled, not waited for until its timeout.
func TestDrainDeadlineCutsADial(t *testing.T) {
	dialEnded := make(chan error, 1)
	dialing := make(chan struct{})
	l := startListener(t, ListenerConfig{Upstream: "192.0.2.1:9", DialTimeout: 30 * time.Second,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			close(dialing)
			<-ctx.Done()
			dialEnded <- ctx.Err()
			return nil, ctx.Err()
		}}, HandlerFunc(relay))
	dial(t, l)
	<-dialing
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := l.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the drain deadline", err)
	}
	if err := <-dialEnded; !errors.Is(err, context.Canceled) {
		t.Errorf("the dial ended with %v, want it cancelled at the drain deadline", err)
	}
}

// TestIdleTimeoutSparesALongWrite: one write of 6 MiB to a client that reads steadily but
// slowly takes longer than the idle timeout; the connection moves bytes all along and is not
// closed as idle.
func TestIdleTimeoutSparesALongWrite(t *testing.T) {
	up := startEcho(t, nil)
	const size = 6 << 20
	wrote := make(chan error, 1)
	// The write takes 2 s or more and moves a chunk about every 80 ms: only a stall of most of a
	// second on a loaded machine could look idle.
	l := startListener(t, ListenerConfig{Upstream: up.addr(), IdleTimeout: time.Second},
		HandlerFunc(func(ctx context.Context, c *Conn) error {
			_, err := c.Client.Write(make([]byte, size))
			wrote <- err
			return err
		}))
	c := dial(t, l)
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 64<<10)
	for got := 0; got < size; {
		n, err := c.Read(buf)
		got += n
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", got, size, err)
		}
		time.Sleep(20 * time.Millisecond) // at most about 3 MB/s
	}
	if err := <-wrote; err != nil {
		t.Errorf("the write was cut: %v", err)
	}
}

// TestLoggedErrorsAreNotLoggedTwice: a handler that logged why it closes a connection returns
// Logged(err), and the listener then notes the end at Debug; other errors it logs at Warn.
func TestLoggedErrorsAreNotLoggedTwice(t *testing.T) {
	up := startEcho(t, nil)
	for _, tc := range []struct {
		name  string
		err   error
		level string
	}{{"logged", Logged(fmt.Errorf("bad frame: %w", io.ErrUnexpectedEOF)), "debug"}, {"not logged", errors.New("bad frame"), "warn"}} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			l, err := Listen(ListenerConfig{Addr: "127.0.0.1:0", Protocol: "test", Upstream: up.addr()},
				HandlerFunc(func(context.Context, *Conn) error { return tc.err }), zerolog.New(&logs))
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- l.Serve(context.Background()) }()
			defer func() { l.Close(); <-served }()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			c.Read(make([]byte, 1)) // the handler returns at once: the connection closes
			c.Close()
			deadline := time.Now().Add(30 * time.Second)
			for !strings.Contains(logs.String(), "connection closed with") {
				if time.Now().After(deadline) {
					t.Fatalf("no closing line:\n%s", logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			warned := strings.Contains(logs.String(), `"level":"warn"`)
			if tc.level == "debug" && (warned || !strings.Contains(logs.String(), "the error logged before")) ||
				tc.level == "warn" && (!warned || !strings.Contains(logs.String(), "connection closed with error")) {
				t.Errorf("want the closing line at %s:\n%s", tc.level, logs.String())
			}
		})
	}
	if !errors.Is(Logged(io.ErrUnexpectedEOF), io.ErrUnexpectedEOF) || Logged(nil) != nil {
		t.Error("Logged must keep its cause and leave nil alone")
	}
}

// TestLogNth: the first 10 events of a kind are logged loudly, then every 1000th.
func TestLogNth(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		want bool
	}{{1, true}, {10, true}, {11, false}, {999, false}, {1000, true}, {1001, false}, {2000, true}} {
		if got := LogNth(tc.n); got != tc.want {
			t.Errorf("LogNth(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

// TestEachOutageTold: dial failures are a Warn for the first 10 and every 1000th, but also the
// first one after a dial that worked, so that an outage after an earlier one is told.
func TestEachOutageTold(t *testing.T) {
	down := closedport.New(t)
	addr := down.Addr()
	var logs syncbuf.Buffer
	l := startListenerLog(t, ListenerConfig{Upstream: addr}, HandlerFunc(relay), zerolog.New(&logs))
	for range 11 { // the first outage: 10 Warn, 1 Debug
		expectReset(t, l.Addr().String())
	}
	down.Release()
	up, err := net.Listen("tcp", addr) // the broker is back
	if err != nil {
		t.Skipf("the upstream's port was taken meanwhile: %v", err)
	}
	go func() {
		if c, err := up.Accept(); err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	c := dial(t, l)
	roundTrip(t, c, "back")
	c.Close()
	up.Close()
	expectReset(t, l.Addr().String()) // the second outage's first failure
	waitFor(t, "12 dial failures counted", func() bool { return l.DialFailures() == 12 })
	warns := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "upstream dial failed") && strings.Contains(line, `"level":"warn"`) {
			warns++
		}
	}
	if warns != 11 {
		t.Errorf("%d Warn lines for two outages of 11 and 1 failures, want 11", warns)
	}
	// The end of the first outage is told once, at Info; the first dial of all is not an end.
	var back []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "upstream answers again") {
			back = append(back, line)
		}
	}
	if len(back) != 1 || !strings.Contains(back[0], `"level":"info"`) || !strings.Contains(back[0], `"failed_dials":11`) {
		t.Errorf("lines saying the upstream answers again: %q; want one Info line counting the outage's 11 failed dials", back)
	}
}
