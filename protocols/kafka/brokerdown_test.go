package kafka

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestBrokerRestartClientRetries: while the cluster is down, a client's connections to the proxy
// are reset, as direct ones are refused, and kgo retries until the cluster is back; a clean close
// instead made kgo fail the buffered records ("broker closed the connection immediately ... is
// TLS missing?") where a direct producer lost none. kfake restarts on the same ports with new
// topic ids, so the client stays at Kafka 2.4, before topic ids (a direct client would fail too).
func TestBrokerRestartClientRetries(t *testing.T) {
	var ports []int
	reserve := func() {
		ports = ports[:0]
		for range 3 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			n, _ := strconv.Atoi(port)
			ports = append(ports, n)
			ln.Close()
		}
	}
	g := &brokerGuard{}
	start := func() (*kfake.Cluster, error) {
		return kfake.NewCluster(kfake.NumBrokers(3), kfake.Ports(ports...), kfake.ListenFn(g.listen), kfake.AllowAutoTopicCreation())
	}
	// A port given back may be taken by another package's test before kfake binds it: new ones.
	var c *kfake.Cluster
	var err error
	for range 5 {
		reserve()
		if c, err = start(); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		t.Fatalf("kfake on the reserved ports: %v", err)
	}
	p := startProxy(t, c, nil)
	ctx, cancel := context.WithTimeout(testCtx(t), 2*time.Minute)
	defer cancel()
	topic := uniqueTopic(t, "broker-restart")
	opts := []kgo.Opt{kgo.AllowAutoTopicCreation(), kgo.MaxVersions(kversion.V2_4_0()), kgo.DefaultProduceTopic(topic),
		kgo.DisableIdempotentWrite()} // a restarted kfake knows no producer ids
	if err := kgoClient(t, p, opts...).ProduceSync(ctx, &kgo.Record{Value: []byte("before")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// A client that starts while the cluster is down (one whose connections the close cut could
	// see that close as a direct one would).
	cl := kgoClient(t, p, opts...)
	done := make(chan error, 1)
	go func() { done <- cl.ProduceSync(ctx, &kgo.Record{Value: []byte("while down")}).FirstErr() }()
	// Many resets: kgo must keep retrying through them (it backs off, so this takes seconds).
	// That each is a reset, not a clean close, the proxy package's tests check.
	for deadline := time.Now().Add(90 * time.Second); p.Stats().DialFailures < 20; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d resets in 90 s while the cluster was down, want 20", p.Stats().DialFailures)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the record failed while the cluster was down: %v", err)
	default:
	}
	// Back on the same ports; one may be some other connection's for a moment.
	for i := 0; ; i++ {
		if c, err = start(); err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || i == 50 {
			t.Fatalf("kfake back on its ports: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(c.Close)
	if err := <-done; err != nil {
		t.Fatalf("the record failed once the cluster was back: %v", err)
	}
	g.check(t)
}

// TestBrokerResetReachesClient: a broker that resets its connection while a request waits for its
// answer, the first on that connection after ApiVersions, resets the client's connection to the
// proxy too. kgo retries a request cut by a reset, as it does direct; a clean close there made kgo
// fail it ("broker closed the connection immediately after a request was issued ... is SASL
// missing?"), and when that request is a producer's metadata load, the buffered records with it.
func TestBrokerResetReachesClient(t *testing.T) {
	c, g := startCluster(t)
	p := startProxy(t, c, nil)
	topic := uniqueTopic(t, "broker-reset")
	// Hold the client's Metadata for the topic (the proxy's own ones go on) until the reset.
	arrived, release := make(chan struct{}), make(chan struct{})
	var held atomic.Bool
	c.ControlKey(kmsg.Metadata.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		named := func(mt kmsg.MetadataRequestTopic) bool { return mt.Topic != nil && *mt.Topic == topic }
		if !slices.ContainsFunc(req.(*kmsg.MetadataRequest).Topics, named) {
			return nil, nil, false
		}
		c.DropControl()
		// DropControl takes effect when this returns: a retried Metadata that arrives while
		// this one sleeps comes here too, and goes on.
		if !held.CompareAndSwap(false, true) {
			return nil, nil, false
		}
		close(arrived)
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	c.KeepControl()
	cl := kgoClient(t, p) // a new client: its connection has answered nothing but ApiVersions
	ctx, cancel := context.WithTimeout(testCtx(t), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req := kmsg.NewPtrMetadataRequest()
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = &topic
		req.Topics = append(req.Topics, mt)
		_, err := req.RequestWith(ctx, cl)
		done <- err
	}()
	select {
	case <-arrived:
	case err := <-done:
		t.Fatalf("the metadata request ended before the broker held it: %v", err)
	}
	g.resetAll()
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the metadata request cut by the broker's reset failed, want it retried: %v", err)
	}
	g.check(t)
}

// TestBrokerCutLogged: a broker that ends a connection (a clean close or a reset, as one that
// crashes or restarts does) while a request on it waits for its answer is told at Warn, with the
// connection's fields and the requests it left unanswered: the client sees the connection end and
// retries, and without the line the log showed nothing until the next dials failed. A broker that
// ends idle connections (connections.max.idle.ms) cuts no request, and is no Warn.
func TestBrokerCutLogged(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reset bool
		held  bool // a Metadata request waits for its answer when the broker ends the connection
	}{
		{"close with a request waiting", false, true},
		{"reset with a request waiting", true, true},
		{"close when idle", false, false},
		{"reset when idle", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, g := startCluster(t)
			var logs syncbuf.Buffer
			p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
			topic := uniqueTopic(t, "broker-cut")
			arrived, release := make(chan struct{}), make(chan struct{})
			var held atomic.Bool
			c.ControlKey(kmsg.Metadata.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
				named := func(mt kmsg.MetadataRequestTopic) bool { return mt.Topic != nil && *mt.Topic == topic }
				if !tc.held || !slices.ContainsFunc(req.(*kmsg.MetadataRequest).Topics, named) {
					return nil, nil, false
				}
				c.DropControl()
				if !held.CompareAndSwap(false, true) {
					return nil, nil, false
				}
				close(arrived)
				c.SleepControl(func() { <-release })
				return nil, nil, false
			})
			c.KeepControl()
			cl := kgoClient(t, p, kgo.RequestRetries(0))
			ctx := testCtx(t)
			if err := cl.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			if tc.held {
				go func() {
					req := kmsg.NewPtrMetadataRequest()
					mt := kmsg.NewMetadataRequestTopic()
					mt.Topic = &topic
					req.Topics = append(req.Topics, mt)
					_, err := req.RequestWith(ctx, cl)
					done <- err
				}()
				<-arrived
			}
			if tc.reset {
				g.resetAll()
			} else {
				g.closeAll()
			}
			close(release)
			if tc.held {
				<-done // answered on a retry or failed: the client's business
			}
			const told = "the broker ended the connection with requests unanswered"
			if !tc.held {
				waitFor(t, "the client connections to end", func() bool { return p.Stats().OpenConnections == 0 })
				if strings.Contains(logs.String(), told) {
					t.Fatalf("idle connections the broker ended were told at Warn:\n%s", logs.String())
				}
				return
			}
			waitFor(t, "the cut told", func() bool { return strings.Contains(logs.String(), told) })
			for _, line := range strings.Split(logs.String(), "\n") {
				if !strings.Contains(line, told) {
					continue
				}
				for _, want := range []string{`"level":"warn"`, `"conn":`, `"client":`, `"upstream":`, `"unanswered":1`, `"requests":["Metadata v`} {
					if !strings.Contains(line, want) {
						t.Errorf("the line lacks %s: %s", want, line)
					}
				}
				if strings.Contains(line, "SASL") { // the connection had its answers: no missing login
					t.Errorf("the cut of a connection that was answered hints at SASL: %s", line)
				}
			}
			g.check(t)
		})
	}
}
