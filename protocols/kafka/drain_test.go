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
