package amqp

import (
	"bufio"
	"io"
	"sync"
	"sync/atomic"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// A connection's four relay buffers (a reader and a writer each way, bufSize each) come from
// these pools and go back while the connection idles: a reader whose side has nothing to read
// gives its buffer back and waits on the socket (proxy.Parkable), and the writer it feeds gives
// back its own, flushed. Consumers and publishers often sit idle for minutes, and the buffers
// were most of an idle connection's memory.
var (
	readBufs  = sync.Pool{New: func() any { return new([bufSize]byte) }}
	writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

// bufCount counts the relay buffers a front's connections hold (Stats.RelayBuffers); nil counts
// nothing.
type bufCount struct{ n *atomic.Int64 }

func (c bufCount) add(d int64) {
	if c.n != nil {
		c.n.Add(d)
	}
}

func (c bufCount) getRead() *[bufSize]byte {
	c.add(1)
	return readBufs.Get().(*[bufSize]byte)
}

func (c bufCount) putRead(b *[bufSize]byte) {
	c.add(-1)
	readBufs.Put(b)
}

// connReader is a buffered reader of one side of a connection, with bufio.Reader's methods the
// frame reader needs. With a Parkable source it holds no buffer while it waits for that side.
type connReader struct {
	buf  *[bufSize]byte // nil while parked, and before the first read
	r, w int
	err  error // a read error that came with bytes, returned by the next fill

	src  io.Reader
	park proxy.Parkable // nil: src's reads wait, holding the buffer
	tee  io.Writer      // sees every byte read (tests' taps); nil for none
	held bufCount
	// onPark is called before a wait without a buffer: the writer this side feeds, flushed by
	// then, gives its buffer back.
	onPark func()
	// ended: pump met the end of this side between two frames, so what it forwarded ended
	// with a whole frame.
	ended bool
}

// newConnReader reads src, parking on park when it is not nil.
func newConnReader(src io.Reader, park proxy.Parkable) *connReader {
	return &connReader{src: src, park: park}
}

// Buffered is the number of bytes that can be read without reading the source.
func (b *connReader) Buffered() int { return b.w - b.r }

// fill reads the source once more, after what is buffered.
func (b *connReader) fill() error {
	if b.err != nil {
		err := b.err
		b.err = nil
		return err
	}
	if b.buf == nil && b.park == nil {
		b.buf = b.held.getRead()
	}
	if b.r > 0 {
		copy(b.buf[:], b.buf[b.r:b.w])
		b.w -= b.r
		b.r = 0
	}
	if b.w == bufSize {
		return bufio.ErrBufferFull
	}
	var n int
	var err error
	if b.park != nil {
		n, err = b.park.ReadParked(b)
	} else {
		// As bufio.Reader: give up on a source that returns nothing, many times over.
		for range 100 {
			if n, err = b.src.Read(b.buf[b.w:]); n > 0 || err != nil {
				break
			}
		}
		if n == 0 && err == nil {
			return io.ErrNoProgress
		}
	}
	if n == 0 {
		return err
	}
	if b.tee != nil {
		b.tee.Write(b.buf[b.w : b.w+n])
	}
	b.w += n
	b.err = err
	return nil
}

// Buf implements proxy.ParkBuffer.
func (b *connReader) Buf() []byte {
	if b.buf == nil {
		b.buf = b.held.getRead()
	}
	return b.buf[b.w:]
}

// Park implements proxy.ParkBuffer: an empty buffer goes back while the socket has nothing.
func (b *connReader) Park() {
	if b.w == 0 && b.buf != nil {
		b.held.putRead(b.buf)
		b.buf = nil
	}
	if b.onPark != nil {
		b.onPark()
	}
}

// Peek returns the next n bytes (n <= bufSize) without consuming them; fewer, with the error,
// when the source ends or fails first.
func (b *connReader) Peek(n int) ([]byte, error) {
	for b.w-b.r < n {
		if err := b.fill(); err != nil {
			if b.buf == nil {
				return nil, err
			}
			return b.buf[b.r:b.w], err
		}
	}
	return b.buf[b.r : b.r+n], nil
}

// Read reads what is buffered into p, reading the source once first if nothing is.
func (b *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.r == b.w {
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}

// ReadByte reads one byte.
func (b *connReader) ReadByte() (byte, error) {
	if b.r == b.w {
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	c := b.buf[b.r]
	b.r++
	return c, nil
}

// Discard skips n bytes, which must be buffered.
func (b *connReader) Discard(n int) { b.r += n }

// release gives the buffer back; the connection is done with the reader.
func (b *connReader) release() {
	if b.buf != nil {
		b.held.putRead(b.buf)
		b.buf = nil
	}
	b.r, b.w = 0, 0
}

// connWriter is a bufio.Writer to one side of a connection that gives its buffer back when it is
// flushed and the reader feeding it waits (park), and takes one again at the next write.
type connWriter struct {
	bw   *bufio.Writer // nil while parked
	dst  io.Writer
	held bufCount
}

func newConnWriter(dst io.Writer) *connWriter { return &connWriter{dst: dst} }

func (w *connWriter) get() *bufio.Writer {
	if w.bw == nil {
		w.held.add(1)
		w.bw = writeBufs.Get().(*bufio.Writer)
		w.bw.Reset(w.dst)
	}
	return w.bw
}

func (w *connWriter) Write(p []byte) (int, error) { return w.get().Write(p) }
func (w *connWriter) WriteByte(c byte) error      { return w.get().WriteByte(c) }

// Flush writes what is buffered.
func (w *connWriter) Flush() error {
	if w.bw == nil {
		return nil
	}
	return w.bw.Flush()
}

// park gives the buffer back if nothing is in it (a failed flush leaves bytes, and the error).
func (w *connWriter) park() {
	if w.bw != nil && w.bw.Buffered() == 0 {
		w.release()
	}
}

// release gives the buffer back, with whatever is in it: the connection is done with the writer.
func (w *connWriter) release() {
	if w.bw != nil {
		w.bw.Reset(nil)
		writeBufs.Put(w.bw)
		w.bw = nil
		w.held.add(-1)
	}
}
