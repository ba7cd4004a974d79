package kafka

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestShutdownDrains: a long-polling fetch in flight when Shutdown starts still gets its response,
// and Shutdown returns once it is delivered.
func TestShutdownDrains(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "drain")
	cl := kgoClient(t, p)
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	produceKgo(t, ctx, cl, topic, testRecords(1, time.UnixMilli(1700000300000)))
	cl.Close()
	leader := c.LeaderFor(topic, 0)
	addr, ok := p.NodeAddr(leader)
	if !ok {
		t.Fatalf("no listener for leader %d", leader)
	}
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fetch := kmsg.NewPtrFetchRequest()
	fetch.Version = 11
	fetch.MaxWaitMillis = 1500
	fetch.MinBytes = 1
	fetch.MaxBytes = 1 << 20
	fetch.ReplicaID = -1
	fetch.Topics = []kmsg.FetchRequestTopic{{Topic: topic, Partitions: []kmsg.FetchRequestTopicPartition{{Partition: 0, FetchOffset: 1, PartitionMaxBytes: 1 << 20, CurrentLeaderEpoch: -1, LogStartOffset: -1}}}}
	if _, err := conn.Write(requestFrame(fetch, 42)); err != nil {
		t.Fatal(err)
	}
	// Shutdown only after the request is known to be in flight upstream.
	waitFor(t, "fetch in flight", func() bool { return p.inflight() > 0 })
	shut := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- p.Shutdown(sctx)
	}()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	frame, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("in-flight fetch lost during shutdown: %v", err)
	}
	if corr := int32(binary.BigEndian.Uint32(frame[4:])); corr != 42 {
		t.Fatalf("correlation id %d", corr)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// TestDrainFinishesAPartlyReadRequest: a drain that starts while a request is half sent waits for
// the rest of it, forwards it and delivers its answer before the connection closes.
func TestDrainFinishesAPartlyReadRequest(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	openNodes(t, conn)
	req := requestFrame(emptyMetadata(), 77)
	if _, err := conn.Write(req[:6]); err != nil { // the size and part of the header
		t.Fatal(err)
	}
	waitFor(t, "the proxy to serve the connection", func() bool { return p.sessionCount() == 1 })
	shut := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- p.Shutdown(sctx)
	}()
	waitFor(t, "the drain to start", func() bool { return p.anyDraining() || p.sessionCount() == 0 })
	if _, err := conn.Write(req[6:]); err != nil {
		t.Fatalf("the rest of the request: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	frame, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("a request sent across the start of the drain was lost: %v", err)
	}
	if corr := int32(binary.BigEndian.Uint32(frame[4:])); corr != 77 {
		t.Fatalf("correlation id %d", corr)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func (p *Proxy) sessionCount() int {
	n := 0
	p.sessions.Range(func(any, any) bool { n++; return true })
	return n
}

func (p *Proxy) anyDraining() bool {
	found := false
	p.sessions.Range(func(k, _ any) bool {
		found = found || k.(*session).draining.Load()
		return !found
	})
	return found
}

// TestDrainEndsWithABusyClient: a client that never stops sending (a pipelining producer faster
// than the proxy) always leaves bytes unread; the drain still ends soon, after what the client
// had sent when it began, and answers everything it forwarded.
func TestDrainEndsWithABusyClient(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	openNodes(t, conn)
	meta := emptyMetadata()
	go func() {
		for i := int32(1); ; i++ {
			if _, err := conn.Write(requestFrame(meta, i)); err != nil {
				return
			}
		}
	}()
	var answered atomic.Int64
	readerDone := make(chan error, 1)
	go func() {
		for want := int32(1); ; want++ {
			frame, err := readFrame(conn, DefaultMaxFrameBytes)
			if err != nil {
				readerDone <- err
				return
			}
			if got := int32(binary.BigEndian.Uint32(frame[4:])); got != want {
				readerDone <- fmt.Errorf("answer %d has correlation id %d", want, got)
				return
			}
			answered.Add(1)
		}
	}()
	waitFor(t, "traffic", func() bool { return answered.Load() > 1000 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("the drain of a busy client ran to its deadline: %v", err)
	}
	// Every answer before the close came whole and in order: it ended in EOF, not a reset.
	if err := <-readerDone; !errors.Is(err, io.EOF) {
		t.Errorf("after %d answers the client read %v, want EOF", answered.Load(), err)
	}
}

// TestDrainForwardsWhatTLSHolds: two requests in one TLS record reach the proxy before the drain
// begins; after the first, the second is in the TLS layer's buffer, where the kernel's count of
// unread bytes cannot see it. Both are forwarded, over TLS as over plain TCP.
func TestDrainForwardsWhatTLSHolds(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", useTLS), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			srvTLS, _ := testpki.ServerTLS(t)
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					accepted <- nil
					return
				}
				if useTLS {
					tc := tls.Server(c, srvTLS)
					if tc.Handshake() != nil {
						accepted <- nil
						return
					}
					c = tc
				}
				accepted <- c
			}()
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			var client net.Conn = raw
			if useTLS {
				tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				client = tc
			}
			server := <-accepted
			if server == nil {
				t.Fatal("accept or handshake failed")
			}
			defer server.Close()
			hb := kmsg.NewPtrHeartbeatRequest()
			if _, err := client.Write(append(requestFrame(hb, 1), requestFrame(hb, 2)...)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the bytes in the proxy's socket", func() bool { return proxy.Unread(server) > 0 })

			p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, Log: zerolog.Nop()})
			if err != nil {
				t.Fatal(err)
			}
			up, upEnd := net.Pipe()
			forwarded := make(chan int, 1)
			go func() {
				n := 0
				for {
					up.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := readFrame(up, DefaultMaxFrameBytes); err != nil {
						forwarded <- n
						return
					}
					n++
				}
			}()
			s := &session{p: p, c: &proxy.Conn{ID: 1, Protocol: "kafka", Client: server, Upstream: upEnd, Log: zerolog.Nop()},
				log: zerolog.Nop(), idle: make(chan struct{}, 1), room: make(chan struct{}, 1), respClosed: make(chan struct{})}
			s.info.Store(&clientInfo{})
			s.draining.Store(true) // as serve's watcher does when the drain begins
			server.SetReadDeadline(time.Now())
			if err := s.requests(); !isTimeout(err) {
				t.Errorf("requests ended with %v, want the drain's timeout", err)
			}
			upEnd.Close()
			if n := <-forwarded; n != 2 {
				t.Errorf("%d of the 2 requests sent before the drain were forwarded", n)
			}
		})
	}
}

// TestDrainEndsWithAStalledUnreadRequest: a drain that finds a client stalled half-way through a
// request relayed unread (the frame budget taken) ends after drainGrace, as for a request read
// whole: the broker has only part of that request and will never answer it, so the drain must
// not wait for its answer until drain_timeout. An answer to a complete request sent before it
// still comes.
func TestDrainEndsWithAStalledUnreadRequest(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, func(cfg *Config) { cfg.FrameBudgetBytes = 1 })
	conn := rawClient(t, p)
	openNodes(t, conn) // node listeners cannot open once Shutdown has begun
	frame := bigProduceFrame(3 << 20)
	first := append(requestFrame(emptyMetadata(), 5), frame[:len(frame)/2]...)
	if _, err := conn.Write(first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the request relayed unread", func() bool { return p.Stats().UnreadRequests == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("the drain waited for an answer to a request the broker has only part of: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("no answer to the complete request sent before: %v", err)
	}
	if corr := int32(binary.BigEndian.Uint32(resp[4:])); corr != 5 {
		t.Fatalf("answer's correlation id %d, want 5", corr)
	}
}

// TestDrainDeliversAnAnswerBeingWritten: a drain that begins while a big fetch response is being
// written to a client that reads slowly lets the write finish before it ends the connection. The
// request behind that answer has left the proxy's queue already; a drain that took the empty
// queue for "nothing in flight" half-closed the connection in the middle of the answer.
func TestDrainDeliversAnAnswerBeingWritten(t *testing.T) {
	// Well over what the sockets between client and proxy hold (default buffers, autotuned up to
	// 6 MiB received and 4 MiB sent): the client reads nothing until the drain has begun. (A
	// small SO_RCVBUF would not do: loopback's 64 KiB segments never fit the window it opens,
	// and the rest would crawl on zero-window probes.)
	const total = 32 << 20
	topic := uniqueTopic(t, "drain-answer")
	c, _ := startCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	value := bytes.Repeat([]byte("v"), 256<<10)
	recs := make([]*kgo.Record, total/len(value))
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Value: value}
	}
	cl := kgoClient(t, p, kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	conn, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := wholeFetch(topic, 2*total)
	if _, err := conn.Write(requestFrame(req, 5)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first bytes of the fetch response", func() bool { return proxy.Unread(conn) > 0 })

	shut := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		shut <- p.Shutdown(sctx)
	}()
	// The drain either waits for the answer or (the defect) has ended the session under it.
	waitFor(t, "the drain to reach the answer in flight", func() bool { return p.sessionCount() == 0 || p.awaitingAnswers() })
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	frame, err := readFrame(conn, 4*total)
	if err != nil {
		t.Fatalf("the fetch answer being written when the drain began was cut: %v", err)
	}
	if corr := int32(binary.BigEndian.Uint32(frame[4:])); corr != 5 || len(frame) < total {
		t.Fatalf("answer: correlation id %d, %d bytes; want 5, over %d", corr, len(frame), total)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func (p *Proxy) awaitingAnswers() bool {
	found := false
	p.sessions.Range(func(k, _ any) bool {
		found = found || k.(*session).awaitingAnswers.Load()
		return !found
	})
	return found
}
