package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestFrameBufferGrowsWithTheData: a request frame's size prefix alone does not allocate the
// size it claims; a frame that does arrive is read whole.
func TestFrameBufferGrowsWithTheData(t *testing.T) {
	claim := binary.BigEndian.AppendUint32(nil, 100<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readFrame(bytes.NewReader(append(claim, "only this"...)), DefaultMaxFrameBytes)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a frame cut short was read")
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Errorf("a 100 MiB size prefix with 9 bytes behind it allocated %d bytes", grew)
	}
	body := bytes.Repeat([]byte("f"), 3<<20+5)
	in := append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	frame, err := readFrame(bytes.NewReader(in), DefaultMaxFrameBytes)
	if err != nil || !bytes.Equal(frame, in) {
		t.Fatalf("a whole 3 MiB frame: %d bytes, %v", len(frame), err)
	}
}

// TestFrameCutShortIsNotAClose: a frame that ends early is an error, not the clean close an
// io.EOF reads as, wherever it ends: right after its size prefix, at a step of the buffer's
// growth, or within one.
func TestFrameCutShortIsNotAClose(t *testing.T) {
	for _, sent := range []int{0, proxy.GrowFrom - 4, proxy.GrowFrom - 4 + 10, 3 * proxy.GrowFrom} {
		in := binary.BigEndian.AppendUint32(nil, 4<<20)
		in = append(in, bytes.Repeat([]byte("f"), sent)...)
		_, err := readFrame(bytes.NewReader(in), DefaultMaxFrameBytes)
		if !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			t.Errorf("%d bytes of 4 MiB: %v, want io.ErrUnexpectedEOF and not io.EOF", sent, err)
		}
	}
}

// stalledConn holds back what the broker sends until released: a broker slow to answer.
type stalledConn struct {
	net.Conn
	release chan struct{}
	closed  chan struct{}
	once    sync.Once
}

func (c *stalledConn) Read(b []byte) (int, error) {
	select {
	case <-c.release:
	case <-c.closed:
	}
	return c.Conn.Read(b)
}

func (c *stalledConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestRequestsAwaitingAnswersAreBounded: a client that keeps sending requests the proxy answers
// itself (ApiVersions of a version from the future) behind one the broker has not answered yet,
// without reading, has its connection closed once too many wait; before, they queued without end.
func TestRequestsAwaitingAnswersAreBounded(t *testing.T) {
	c, _ := startCluster(t)
	release := make(chan struct{})
	defer close(release)
	p := startProxy(t, c, func(cfg *Config) {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySourceIP)}}
		cfg.Listener.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &stalledConn{Conn: nc, release: release, closed: make(chan struct{})}, nil
		}
	})
	conn := rawClient(t, p)
	f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("flooder"))
	out := f.AppendRequest(nil, kmsg.NewPtrMetadataRequest(), 1) // forwarded; its answer is held
	for i := int32(0); i < 2*maxQueuedRequests+100; i++ {
		av := kmsg.NewPtrApiVersionsRequest()
		av.Version = 99
		out = append(out, f.AppendRequest(nil, av, 2+i)...)
	}
	go conn.Write(out) // the proxy stops reading once it closes: the write may block until then
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the connection stayed open with more requests awaiting answers than the limit")
	}
}
