package kafka

// Request-path buffers over keptBufBytes (the frame read, the spliced batches, the rewritten
// frame) are not kept by a connection between requests: they go back to its front's bufList,
// and the next request of any connection takes them from there. Kept per connection, an idle
// producer that had sent requests of 800 KB held about 3 MiB for the rest of its life: 100 of
// them took the proxy from 26 to 322 MB of RSS. Memory for them now follows the requests in
// progress, not the connections open.
const (
	keptBufBytes   = 64 << 10
	maxListedBuf   = maxReusedFrame + maxReusedFrame/4 // what growth leaves of a 1 MiB request's buffers
	listedBufCount = 32                                // about 40 MiB at most, kept for busy connections
)

// bufList is a bounded free list of buffers between keptBufBytes and maxListedBuf bytes.
type bufList struct{ free chan []byte }

func newBufList() bufList { return bufList{free: make(chan []byte, listedBufCount)} }

// get returns an empty buffer with room for at least n bytes: a listed one when the one it finds
// is big enough (a smaller one goes back), else a new one with a quarter to spare.
func (l bufList) get(n int) []byte {
	select {
	case b := <-l.free:
		if cap(b) >= n {
			return b
		}
		l.put(b)
	default:
	}
	return make([]byte, 0, n+n/4)
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

// shedBuffers gives the request path's big buffers back to the front's list: the request that
// used them has gone upstream.
func (s *session) shedBuffers() {
	for _, b := range [...]*[]byte{&s.inBuf, &s.outBuf, &s.scratch} {
		if cap(*b) > keptBufBytes {
			s.p.bufs.put(*b)
			*b = nil
		}
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
