package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// Frame types (AMQP 0-9-1 section 4.2.3).
const (
	frameMethod    = 1
	frameHeader    = 2
	frameBody      = 3
	frameHeartbeat = 8
	frameEnd       = 0xCE
)

// frameOverhead is the 7-byte frame header plus the end octet.
const frameOverhead = 8

// protocolHeader is the only protocol header the proxy accepts; it is also what it answers to
// any other one (AMQP 1.0, 0-8, 0-9), which is how a 0-9-1 server refuses a protocol.
var protocolHeader = [8]byte{'A', 'M', 'Q', 'P', 0, 0, 9, 1}

var errFrameEnd = errors.New("frame does not end with 0xCE")

// frame is one frame as it sits in a buffer: Raw is header, payload and end octet.
type frame struct {
	Type    byte
	Channel uint16
	Payload []byte
	Raw     []byte
}

// splitFrame cuts the first frame off b. It returns io.ErrUnexpectedEOF when b holds only part of
// a frame, and an error wrapping errFrameEnd when the end octet is wrong (the stream is broken).
func splitFrame(b []byte) (frame, []byte, error) {
	if len(b) < 7 {
		return frame{}, b, io.ErrUnexpectedEOF
	}
	size := binary.BigEndian.Uint32(b[3:7])
	if len(b) < frameOverhead || uint64(size) > uint64(len(b)-frameOverhead) {
		return frame{}, b, io.ErrUnexpectedEOF
	}
	end := 7 + int(size)
	if b[end] != frameEnd {
		return frame{}, b, fmt.Errorf("%w: type %d channel %d size %d: end octet 0x%02x", errFrameEnd, b[0], binary.BigEndian.Uint16(b[1:3]), size, b[end])
	}
	f := frame{Type: b[0], Channel: binary.BigEndian.Uint16(b[1:3]), Payload: b[7:end:end], Raw: b[: end+1 : end+1]}
	return f, b[end+1:], nil
}

// frameReader reads frames from a buffered stream, in place in the stream's buffer or into one
// reused buffer. Body frames are not buffered: the caller streams them through with copyFrame.
type frameReader struct {
	r   *connReader
	buf []byte
	max int // largest non-body frame payload read into memory
	// again says whether a read error is a wake-up (a drain deadline) after which reading the
	// same frame goes on; nil = never.
	again func(error) bool
}

// header peeks the 7-byte frame header.
func (fr *frameReader) header() (typ byte, ch uint16, size uint32, err error) {
	h, err := fr.r.Peek(7)
	if err != nil {
		if errors.Is(err, io.EOF) && len(h) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, 0, err
	}
	return h[0], binary.BigEndian.Uint16(h[1:3]), binary.BigEndian.Uint32(h[3:7]), nil
}

// full reads len(b) bytes, going on after wake-ups so a frame is never cut.
func (fr *frameReader) full(b []byte) error {
	for n := 0; n < len(b); {
		m, err := fr.r.Read(b[n:])
		n += m
		if err != nil && n < len(b) {
			if fr.again != nil && fr.again(err) {
				continue
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// read reads a whole frame whose header was just peeked into the reused buffer; the frame is
// valid until the next read. A buffer without room for it grows as the frame's bytes arrive
// (proxy.ReadGrowing): a header alone, from a client that stalls after it or sends a byte a
// second, does not make the proxy allocate the size it claims.
func (fr *frameReader) read(size uint32) (frame, error) {
	b, err := proxy.ReadGrowing(fullReader{fr}, fr.buf[:0], 7+int(size)+1)
	if cap(b) > cap(fr.buf) {
		fr.buf = b[:0]
	}
	if err != nil {
		return frame{}, err
	}
	f, _, err := splitFrame(b)
	return f, err
}

// next reads a whole frame whose header was just peeked, as read does; a frame already all in
// the reader's buffer is not copied but split off it in place, where it stays until the next
// read (a publisher's method and content header frames nearly always are).
func (fr *frameReader) next(size uint32) (frame, error) {
	n := 7 + int(size) + 1
	if fr.r.Buffered() < n {
		return fr.read(size)
	}
	b, _ := fr.r.Peek(n)
	fr.r.Discard(n)
	f, _, err := splitFrame(b)
	return f, err
}

// fullReader reads with frameReader.full: a read fills its buffer or fails.
type fullReader struct{ fr *frameReader }

func (r fullReader) Read(b []byte) (int, error) {
	if err := r.fr.full(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// copyFrame streams a frame whose header was just peeked from the reader to w without holding it
// in memory (bodies and oversized frames), chunk by chunk from the reader's buffer. The end octet
// is checked after the copy.
func (fr *frameReader) copyFrame(w *connWriter, size uint32) error {
	for left := 7 + int(size); left > 0; {
		if fr.r.Buffered() == 0 {
			// What is written so far (earlier frames, this one's start) goes out before the
			// read waits for the rest: a heartbeat or ack must not wait on a slow body.
			if err := w.Flush(); err != nil {
				return err
			}
			if _, err := fr.r.Peek(1); err != nil {
				if fr.again != nil && fr.again(err) {
					continue
				}
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		chunk, _ := fr.r.Peek(min(left, fr.r.Buffered()))
		if _, err := w.Write(chunk); err != nil {
			return err
		}
		fr.r.Discard(len(chunk))
		left -= len(chunk)
	}
	for {
		end, err := fr.r.ReadByte()
		if err != nil {
			if fr.again != nil && fr.again(err) {
				continue
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if end != frameEnd {
			return fmt.Errorf("%w: %d-byte frame: end octet 0x%02x", errFrameEnd, size, end)
		}
		return w.WriteByte(frameEnd)
	}
}

// startFrame begins in buf (from its start) a frame of f's type and channel whose payload the
// caller appends; endFrame then sets its size and ends it. For payloads built in place.
func startFrame(buf []byte, f frame) []byte {
	return append(buf[:0], f.Raw[0], f.Raw[1], f.Raw[2], 0, 0, 0, 0)
}

func endFrame(out []byte) []byte {
	binary.BigEndian.PutUint32(out[3:], uint32(len(out)-7))
	return append(out, frameEnd)
}

// appendFrame appends a frame of type typ on channel ch with payload p.
func appendFrame(dst []byte, typ byte, ch uint16, p []byte) []byte {
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint16(dst, ch)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(p)))
	dst = append(dst, p...)
	return append(dst, frameEnd)
}
