package kafka

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kmsg"
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
	conn, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	meta := kmsg.NewPtrMetadataRequest()
	meta.Version = 1
	meta.Topics = []kmsg.MetadataRequestTopic{}
	// A first Metadata opens the node listeners: a drain opens none, and a Metadata answer naming
	// a node without one closes the connection.
	if _, err := conn.Write(requestFrame(meta, 76)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := readFrame(conn, DefaultMaxFrameBytes); err != nil {
		t.Fatal(err)
	}
	req := requestFrame(meta, 77)
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
