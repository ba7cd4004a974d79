package kafka

import (
	"errors"
	"fmt"
	"io"
)

// streamWalk is a spanReader over a response passing from src to dst: every byte it reads is
// written on, so that walking a frame of any size holds only buf. Small fields gather in buf and
// go out together; long spans (records) are copied through it. Once !Ok, the walk is over: the
// rest of the frame is for copyRest.
type streamWalk struct {
	src  io.Reader
	dst  io.Writer
	left int    // bytes of the frame not read from src yet
	buf  []byte // [0:out) read and not written yet; [out:end) read ahead, not walked yet
	out  int
	end  int
	bad  bool  // the frame ended inside a field
	err  error // reading src or writing dst failed
}

// newStreamWalk walks the n bytes that follow on src, with head (already read) written first.
func newStreamWalk(src io.Reader, dst io.Writer, n int, head, buf []byte) *streamWalk {
	buf = buf[:cap(buf)]
	w := &streamWalk{src: src, dst: dst, left: n, buf: buf}
	w.out = copy(buf, head)
	w.end = w.out
	return w
}

func (w *streamWalk) Ok() bool { return !w.bad && w.err == nil }

// fill makes at least k bytes (k <= len(buf)/2) stand read ahead, or reports that it cannot.
func (w *streamWalk) fill(k int) bool {
	if !w.Ok() {
		return false
	}
	if w.end-w.out >= k {
		return true
	}
	if len(w.buf)-w.out < k {
		w.flush()
		if w.err != nil {
			return false
		}
	}
	for w.end-w.out < k {
		if w.left == 0 {
			w.bad = true
			return false
		}
		m, err := w.src.Read(w.buf[w.end:min(len(w.buf), w.end+w.left)])
		w.end += m
		w.left -= m
		if err != nil && w.end-w.out < k {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			w.err = err
			return false
		}
	}
	return true
}

// flush writes what was walked and moves what was read ahead to the front of buf.
func (w *streamWalk) flush() {
	if w.out > 0 {
		if _, err := w.dst.Write(w.buf[:w.out]); err != nil {
			w.err = err
			return
		}
	}
	w.end = copy(w.buf, w.buf[w.out:w.end])
	w.out = 0
}

func (w *streamWalk) Uvarint() uint32 {
	var v uint32
	for shift := 0; shift < 35; shift += 7 {
		if !w.fill(1) {
			return 0
		}
		b := w.buf[w.out]
		w.out++
		if shift == 28 && b > 0x0f {
			break // bits past 32 (or a sixth byte): kbin.Uvarint's overflow, the walk's end
		}
		v |= uint32(b&0x7f) << shift
		if b < 0x80 {
			return v
		}
	}
	w.bad = true // no uvarint32
	return 0
}

// maxFieldSpan is the longest span returned as bytes: fixed-size fields (lengths, ids), which
// walkers read or change.
const maxFieldSpan = 16

// Span passes n bytes on. A span of up to maxFieldSpan bytes is returned, still unwritten: the
// caller may read or change it until its next call. Longer ones are copied through buf and
// return nil.
func (w *streamWalk) Span(n int) []byte {
	if n >= 0 && n <= maxFieldSpan {
		if n == 0 || !w.fill(n) {
			return nil
		}
		w.out += n
		return w.buf[w.out-n : w.out]
	}
	for n > 0 && w.Ok() {
		if w.end == w.out && !w.fill(1) {
			return nil
		}
		k := min(n, w.end-w.out)
		w.out += k
		n -= k
		if w.out > len(w.buf)/2 {
			w.flush()
		}
	}
	if n < 0 {
		w.bad = true
	}
	return nil
}

// rest reads the rest of the frame into buf, after what was walked, if it fits, and returns it:
// the caller may change it before copyRest writes it.
func (w *streamWalk) rest() ([]byte, error) {
	if !w.Ok() {
		return nil, w.err
	}
	if w.end-w.out+w.left > len(w.buf)-w.out {
		w.flush()
		if w.err != nil {
			return nil, w.err
		}
		if w.end+w.left > len(w.buf) {
			return nil, fmt.Errorf("%d bytes after the walked part, over the %d held back", w.end+w.left, len(w.buf))
		}
	}
	if !w.fill(w.end - w.out + w.left) {
		return nil, w.err
	}
	return w.buf[w.out:w.end], nil
}

// copyRest writes everything read and copies what is left of the frame from src to dst.
func (w *streamWalk) copyRest() error {
	if w.err != nil {
		return w.err
	}
	w.out = w.end
	w.flush()
	for w.err == nil && w.left > 0 {
		m, err := w.src.Read(w.buf[:min(len(w.buf), w.left)])
		w.left -= m
		if m > 0 {
			if _, werr := w.dst.Write(w.buf[:m]); werr != nil {
				return werr
			}
		}
		if err != nil && w.left > 0 {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return w.err
}
