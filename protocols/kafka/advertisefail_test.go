package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestAdvertiseFailureLogBounded: while a broker node's listener cannot open (another process
// holds its address), every client's Metadata answer leaves the node out, and clients ask again
// many times a second. The answers' Error lines are bounded as the per-connection failures are
// (the first 10, then every 1000th, with the running total); the rest go to Debug. The total is
// in Stats too, as the README says /stats counts every such refusal.
func TestAdvertiseFailureLogBounded(t *testing.T) {
	c, _ := startCluster(t)
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) {
		cfg.NodeAddrs = map[int32]string{0: blocker.Addr().String(), 1: "127.0.0.1:0", 2: "127.0.0.1:0"}
		cfg.Log = zerolog.New(&logs).Level(zerolog.InfoLevel)
	})
	waitFor(t, "the proxy to report node 0's listener", func() bool { return p.Problem() != nil })
	const tries = 30
	for range tries {
		cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.RequestRetries(0))
		if err != nil {
			t.Fatal(err)
		}
		req := kmsg.NewPtrMetadataRequest()
		resp, err := req.RequestWith(context.Background(), cl)
		if err != nil {
			t.Fatalf("metadata: %v", err)
		}
		for _, b := range resp.Brokers {
			if b.NodeID == 0 {
				t.Errorf("the answer names node 0, which has no listener, at %s:%d", b.Host, b.Port)
			}
		}
		cl.Close()
	}
	lines := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "cannot advertise a broker node") {
			lines++
		}
	}
	if lines == 0 || lines > 10 {
		t.Errorf("%d log lines for %d answers that left node 0 out, want 1..10:\n%s", lines, tries, logs.String())
	}
	if !strings.Contains(logs.String(), `"advertise_failures_total":1,`) {
		t.Errorf("the lines do not carry the running total:\n%s", logs.String())
	}
	if got := p.Stats().AdvertiseFailures; got < tries {
		t.Errorf("Stats().AdvertiseFailures = %d after %d answers that left node 0 out", got, tries)
	}
}

// TestAdvertiseFailureLevels: an answer naming a node without a listener is an Error while the
// proxy runs (an address taken, a port out of range), and Debug once a drain has begun, when a
// node that appears gets no listener on purpose.
func TestAdvertiseFailureLevels(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("node 4: %w", errNotRunning), `"level":"debug"`},
		{errors.New("listen tcp 127.0.0.1:19096: bind: address already in use"), `"level":"error"`},
	} {
		var buf bytes.Buffer
		s := &session{p: &Proxy{}, log: zerolog.New(&buf)}
		s.advertiseFailed(&pending{key: int16(kmsg.Metadata)}, errors.Join(tc.err))
		if !strings.Contains(buf.String(), tc.want) {
			t.Errorf("%v: logged %s, want %s", tc.err, buf.String(), tc.want)
		}
	}
}

// TestLeftOutCoordinatorNotBrokerError: a FindCoordinator answer naming a node whose listener
// cannot open is turned into COORDINATOR_NOT_AVAILABLE by the proxy (the node is left out, as a
// broker that is down). That code is the proxy's, told at Error and in AdvertiseFailures, not an
// answer of the broker's: the broker found the coordinator, so no broker error event may blame it
// (the Metadata answers that leave the node out are not tracked either).
func TestLeftOutCoordinatorNotBrokerError(t *testing.T) {
	c, _ := startCluster(t)
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	p := startProxy(t, c, func(cfg *Config) {
		cfg.NodeAddrs = map[int32]string{0: blocker.Addr().String(), 1: "127.0.0.1:0", 2: "127.0.0.1:0"}
	})
	waitFor(t, "the proxy to report node 0's listener", func() bool { return p.Problem() != nil })
	ctx := testCtx(t)
	direct, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	for _, v := range []int16{3, 4} { // one coordinator, and the batched form (KIP-699)
		versions := kversion.Stable()
		versions.SetMaxKeyVersion(int16(kmsg.FindCoordinator), v)
		cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.RequestRetries(0), kgo.MaxVersions(versions))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		group := ""
		for i := 0; group == ""; i++ { // a group node 0 coordinates
			g := fmt.Sprintf("left-out-%d-%d", v, i)
			req := kmsg.NewPtrFindCoordinatorRequest()
			req.CoordinatorKey, req.CoordinatorKeys = g, []string{g}
			resp, err := req.RequestWith(ctx, direct.SeedBrokers()[0])
			if err != nil {
				t.Fatal(err)
			}
			if id := resp.NodeID; len(resp.Coordinators) > 0 {
				id = resp.Coordinators[0].NodeID
				if id == 0 {
					group = g
				}
			} else if id == 0 {
				group = g
			}
		}
		req := kmsg.NewPtrFindCoordinatorRequest()
		req.CoordinatorKey, req.CoordinatorKeys = group, []string{group}
		resp, err := req.RequestWith(ctx, cl.SeedBrokers()[0])
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if resp.Version != v {
			t.Fatalf("answered at v%d, want v%d", resp.Version, v)
		}
		code := resp.ErrorCode
		if v >= 4 {
			code = resp.Coordinators[0].ErrorCode
		}
		if code != kerr.CoordinatorNotAvailable.Code {
			t.Fatalf("v%d: the client got code %d for a group of node 0, want COORDINATOR_NOT_AVAILABLE", v, code)
		}
	}
	// The events are reported before the answer is forwarded: none can come later.
	if got := p.errs.where(func(e errtrack.Event) bool { return e.Operation == "FindCoordinator" }); len(got) != 0 {
		t.Errorf("broker error events for the proxy's own COORDINATOR_NOT_AVAILABLE: %+v", got)
	}
}
