package kafka

import "time"

// A connection idle for idleShed gives the request path's buffers over keptBufBytes (the frame
// read, the spliced batches, the rewritten frame, and a compressed batch's records decompressed
// and spliced) to its front's bufList, and a connection's next big request takes them from
// there. Kept for good, an idle producer that had sent requests of 800 KB held about 3 MiB for
// the rest of its life: 100 of them took the proxy from 26 to 322 MB of RSS (101 MB now; lz4
// ones, 304 MB and 80 MB). A busy connection
// keeps its buffers: handing them over at every request made a compressed batch's buffers, sized
// by the batch before it, be reallocated for each request.
const (
	keptBufBytes   = 64 << 10
	maxListedBuf   = maxReusedFrame + maxReusedFrame/4 // what growth leaves of a 1 MiB request's buffers
	listedBufCount = 32                                // about 40 MiB at most
	idleShed       = time.Second
)

// bufList is a bounded free list of buffers between keptBufBytes and maxListedBuf bytes. The zero
// bufList lists nothing: get allocates and put drops.
type bufList struct{ free chan []byte }

func newBufList() bufList { return bufList{free: make(chan []byte, listedBufCount)} }

// get returns an empty buffer with room for at least n bytes: a listed one when the one it finds
// is big enough (a smaller one goes back), else a new one with a quarter to spare.
func (l bufList) get(n int) []byte {
	if b := l.listed(n); b != nil {
		return b
	}
	return make([]byte, 0, n+n/4)
}

// listed returns a listed buffer with room for n bytes, emptied, or nil: it never allocates.
func (l bufList) listed(n int) []byte {
	select {
	case b := <-l.free:
		if cap(b) >= n {
			return b
		}
		l.put(b)
	default:
	}
	return nil
}

// put lists b, which nothing refers to any more, if it is in the listed sizes and the list has room.
func (l bufList) put(b []byte) {
	if cap(b) <= keptBufBytes || cap(b) > maxListedBuf {
		return
	}
	select {
	case l.free <- b[:0]:
	default:
	}
}

// shedBuffers gives the request path's big buffers to the front's list. The request goroutine
// calls it only while no other can (shedIdle holds bufMu, which the request goroutine takes
// before it touches a buffer again).
func (s *session) shedBuffers() {
	for _, b := range [...]*[]byte{&s.inBuf, &s.outBuf, &s.scratch} {
		if cap(*b) > keptBufBytes {
			s.p.bufs.put(*b)
			*b = nil
		}
	}
	if s.codec != nil {
		s.codec.Shed()
	}
}

// holdsBig says whether the connection holds a buffer worth giving back when idle.
func (s *session) holdsBig() bool {
	return cap(s.inBuf) > keptBufBytes || cap(s.outBuf) > keptBufBytes || cap(s.scratch) > keptBufBytes || s.codec != nil
}

// armShed is called by the request goroutine before it waits for the next request: unless a
// request starts (disarmShed) within idleShed, the buffers go back.
func (s *session) armShed() {
	if !s.holdsBig() {
		return
	}
	s.bufMu.Lock()
	s.shedArmed = true
	s.bufMu.Unlock()
	if s.idleTimer == nil {
		s.idleTimer = time.AfterFunc(idleShed, s.shedIdle)
	} else {
		s.idleTimer.Reset(idleShed)
	}
}

// disarmShed is called by the request goroutine when a request starts: from here on it uses its
// buffers, which a shedIdle that fired meanwhile has handed over already or will not touch.
func (s *session) disarmShed() {
	if s.idleTimer == nil {
		return
	}
	s.bufMu.Lock()
	s.shedArmed = false
	s.bufMu.Unlock()
	s.idleTimer.Stop()
}

func (s *session) shedIdle() {
	s.bufMu.Lock()
	defer s.bufMu.Unlock()
	if s.shedArmed {
		s.shedArmed = false
		s.shedBuffers()
	}
}

// bigBuf is *b emptied, taken from the front's list first when it has no room for n bytes and n
// is over what a connection keeps.
func (s *session) bigBuf(b *[]byte, n int) []byte {
	if cap(*b) < n {
		if n > keptBufBytes {
			*b = s.p.bufs.get(n)
		} else {
			*b = make([]byte, 0, max(n, min(max(n+n/4, 4<<10), keptBufBytes))) // kept: not over keptBufBytes
		}
	}
	return (*b)[:0]
}
