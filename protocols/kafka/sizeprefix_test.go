package kafka

import (
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestSizePrefixAloneAllocatesLittle: a request's size prefix, with a few bytes behind it and
// then nothing (a client that stalls, or sends a byte a second), does not make the proxy allocate
// the size it claims. Each such connection took 1.25 MiB as soon as a prefix of up to 1 MiB came
// (unbounded, as max_conns is by default), or 1 MiB for a larger one until the frame budget was
// taken: 300 of them held 270 MB of heap in a soak run. The buffer now grows with the bytes that
// arrive.
func TestSizePrefixAloneAllocatesLittle(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("stalls"))
	apiVersions := f.AppendRequest(nil, kmsg.NewPtrApiVersionsRequest(), 1)
	const conns = 40
	for _, claim := range []uint32{maxReusedFrame - 4, maxReusedFrame, 8 << 20} {
		t.Run(fmt.Sprintf("claims %d bytes", claim), func(t *testing.T) {
			// A Produce v3 request header claiming that size: the size prefix, key, version,
			// correlation id and client id, then nothing.
			head := binary.BigEndian.AppendUint32(nil, claim)
			head = binary.BigEndian.AppendUint16(head, uint16(kmsg.Produce))
			head = binary.BigEndian.AppendUint16(head, 3)
			head = binary.BigEndian.AppendUint32(head, 2)
			head = binary.BigEndian.AppendUint16(head, 6)
			head = append(head, "stalls"...)
			// The connections of the case before have gone (their goroutines end as they see EOF).
			waitFor(t, "no request to be underway", func() bool { return requestsUnderway() == 0 })
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for range conns {
				conn := rawClient(t, p)
				if _, err := conn.Write(apiVersions); err != nil {
					t.Fatal(err)
				}
				// Its answer: the connection is set up and the proxy waits for the next request.
				var sz [4]byte
				if _, err := io.ReadFull(conn, sz[:]); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(conn, make([]byte, binary.BigEndian.Uint32(sz[:]))); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.Write(head); err != nil {
					t.Fatal(err)
				}
			}
			// Each connection's request goroutine has read the size prefix and waits for the rest.
			waitFor(t, "every connection to wait inside its request", func() bool { return requestsUnderway() >= conns })
			runtime.GC()
			runtime.ReadMemStats(&after)
			if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 16<<20 {
				t.Errorf("%d connections that each sent a size prefix of %d bytes and 14 bytes hold %d bytes of heap", conns, claim, grew)
			}
		})
	}
}

// requestsUnderway counts the proxy's goroutines reading a request past its size prefix.
func requestsUnderway() int {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "kafka.(*session).readRequest") && !strings.Contains(g, "kafka.readFrameSize") {
			n++
		}
	}
	return n
}
