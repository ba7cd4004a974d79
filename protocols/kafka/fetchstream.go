package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// Big Fetch responses (a consumer catching up gets one frame of up to fetch.max.bytes, 50 MB by
// default) are forwarded while they arrive instead of after the last byte: storing and then
// forwarding doubles the transfer time of every poll. Only the last fetchTailHold bytes wait,
// because on v16+ they may hold KIP-951 node endpoints, which must not reach the client.
const (
	defaultStreamFetchMin = 256 << 10
	defaultFetchTailHold  = 64 << 10
)

// hiddenTag replaces tag 0 (NodeEndpoints) in a streamed response: same one-byte uvarint, a tag
// no Fetch version defines, which every client skips as unknown.
const hiddenTag = 0x7f

var errShortFetch = errors.New("fetch response truncated")

// Streamed fetch frames are recycled: a consumer catching up gets a multi-megabyte response per
// poll, and a fresh allocation for each is zeroed by the runtime and faulted in by the kernel
// before the first byte is read, which cost the proxy more CPU than relaying the bytes. Frames
// go back once observed (or when observation is skipped); at most pooledFetchFrames of up to
// maxPooledFetchFrame bytes are kept.
const (
	pooledFetchFrames   = 4
	maxPooledFetchFrame = 8 << 20
)

// getFetchFrame returns a frame of n bytes whose content is undefined: the caller fills it
// before any byte is read.
func (p *Proxy) getFetchFrame(n int) []byte {
	select {
	case b := <-p.fetchBufs:
		if cap(b) >= n {
			return b[:n]
		}
	default:
	}
	// Responses to one consumer vary by a few percent; headroom lets the next one reuse this frame.
	return make([]byte, n, max(n, min(n+n/8, maxPooledFetchFrame)))
}

// putFetchFrame takes back a frame nothing refers to any more.
func (p *Proxy) putFetchFrame(b []byte) {
	if cap(b) > maxPooledFetchFrame {
		return
	}
	select {
	case p.fetchBufs <- b[:0]:
	default:
	}
}

// nextResponse reads the next upstream frame and forwards it: a big Fetch response streams
// through streamFetch, everything else goes through response.
func (s *session) nextResponse(maxBytes int) error {
	var hdr [8]byte
	n, err := readFrameSize(s.c.Upstream, maxBytes, hdr[:4])
	if err != nil {
		return err
	}
	if n < s.p.cfg.streamFetchMin || n < 4 {
		frame := make([]byte, 4+n)
		copy(frame, hdr[:4])
		if err := readFrameRest(s.c.Upstream, frame, 4); err != nil {
			return err
		}
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
		return s.response(frame)
	}
	if _, err := io.ReadFull(s.c.Upstream, hdr[4:]); err != nil {
		return cutShort(n, err)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	pd := s.popFetch(int32(binary.BigEndian.Uint32(hdr[4:])))
	if pd == nil {
		frame := make([]byte, 4+n)
		copy(frame, hdr[:])
		if err := readFrameRest(s.c.Upstream, frame, 8); err != nil {
			return err
		}
		return s.response(frame)
	}
	s.streaming = pd
	return s.streamFetch(pd, hdr, n)
}

// popFetch removes the pending request answered by corr if it is a Fetch the proxy decodes;
// anything else stays queued for response.
func (s *session) popFetch(corr int32) *pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 && s.queue[0].rawToken {
		return nil
	}
	i := s.findLocked(corr)
	if i < 0 {
		return nil
	}
	pd := s.queue[i]
	if pd.key != keyFetch || !knownVersion(pd.key, pd.version) {
		return nil
	}
	s.removeLocked(i)
	return pd
}

// streamFetch relays one Fetch response of n bytes (hdr: size and correlation id, already read)
// as it arrives, keeps the whole frame for the observation worker, and queues it there.
func (s *session) streamFetch(pd *pending, hdr [8]byte, n int) error {
	s.upstreamSpoke() // a client that sends no ApiVersions first may get no other answer
	s.p.stats.streamed.Add(1)
	if !s.p.frames.Take(&s.fetchShare, int64(4+n)) {
		return s.relayUnobserved(pd, hdr, n)
	}
	// Once queued, the frame counts against the observation queue's own bound.
	defer s.p.frames.Release(&s.fetchShare)
	frame := s.p.getFetchFrame(4 + n)
	copy(frame, hdr[:])
	queued := false
	defer func() {
		if !queued {
			s.p.putFetchFrame(frame)
		}
	}()
	hold := 0
	if pd.version >= 16 {
		hold = min(s.p.cfg.fetchTailHold, len(frame))
	}
	// While a node is left out, a preferred read replica anywhere in the answer may name it: the
	// whole answer waits, to be walked (a rare, logged fault; streaming resumes with the node).
	var leftOut func(int32) bool
	if pd.version >= 11 {
		if leftOut = s.p.leftOutNodes(); leftOut != nil {
			hold = len(frame)
		}
	}
	got, sent := len(hdr), 0
	for got < len(frame) {
		k, err := s.c.Upstream.Read(frame[got:])
		got += k
		if safe := min(got, len(frame)-hold); safe > sent {
			if _, werr := s.c.Client.Write(frame[sent:safe]); werr != nil {
				return werr
			}
			sent = safe
		}
		if err != nil && got < len(frame) {
			if errors.Is(err, io.EOF) { // not the clean close it reads as
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("fetch response of %d bytes cut short (%d forwarded): %w", n, sent, err)
		}
	}
	s.streaming = nil // all came: answered, whatever happens to its writing
	if leftOut != nil {
		if start, err := responseBodyStart(frame, pd.key, pd.flexible); err == nil {
			s.clearReplicas(pd, frame[start:], leftOut)
		}
	}
	if sent < len(frame) && pd.version >= 16 {
		if err := s.fetchTail(pd, frame, sent); err != nil {
			s.log.Error().Err(err).Msg("closing connection: cannot hide broker node endpoints")
			return proxy.Logged(versionErr(pd, err))
		}
	}
	if sent < len(frame) {
		if _, err := s.c.Client.Write(frame[sent:]); err != nil {
			return err
		}
	}
	if start, err := responseBodyStart(frame, pd.key, pd.flexible); err != nil {
		s.p.decodeError("Fetch response", pd.key, pd.version, err)
	} else {
		facts, _ := pd.facts.(*fetchFacts)
		ci := s.info.Load()
		queued = s.p.enqueueObserve(observeJob{frame: frame, start: start, version: pd.version, facts: facts, client: ci,
			groups: s.p.groups.current(ci.key()), pooled: true, log: &s.log, at: s.p.now()})
	}
	return s.flushQueued()
}

// relayUnobserved relays a Fetch response too big for the frame budget through a small buffer,
// unobserved: its records get no consume checkpoints and its offsets are not read. The walk still
// does what a client must not miss: on v16+ it finds the node endpoints, at the end, and hides
// them; while a node is left out (v11+), it clears preferred read replicas naming it, which a
// client (kgo) would follow to a broker it is never told of, getting no records of that partition
// from then on.
func (s *session) relayUnobserved(pd *pending, hdr [8]byte, n int) error {
	c := s.p.stats.unobservedFetches.Add(1)
	ev := s.log.Debug()
	if proxy.LogNth(c) {
		ev = s.log.Warn()
	}
	// Why: other frames held the budget, or this one alone is over all of it, which no wait
	// would change (a budget set below the size of consumers' fetch answers).
	why := "the frame budget is taken by other big frames"
	if int64(4+n) > s.p.frames.Max {
		why = "its size is over the whole frame budget"
	}
	ev.Int("bytes", 4+n).Int64("frame_budget_bytes", s.p.frames.Max).Uint64("unobserved_fetches_total", c).
		Msg("fetch response relayed unobserved: " + why)
	buf := s.p.bufs.get(max(2*s.p.cfg.fetchTailHold, 128<<10))
	defer s.p.bufs.put(buf)
	w := newStreamWalk(s.c.Upstream, s.c.Client, 4+n-len(hdr), hdr[:], buf)
	var replica func([]byte)
	cleared := 0
	if pd.version >= 11 {
		if leftOut := s.p.leftOutNodes(); leftOut != nil {
			replica = func(f []byte) { cleared += clearLeftOutReplica(f, leftOut) }
		}
	}
	switch {
	case pd.version >= 16:
		skipTagsR(w) // response header
		if walkFetchBody(w, pd.version, replica) {
			tail, err := w.rest()
			if err != nil {
				if w.err != nil {
					return fmt.Errorf("fetch response of %d bytes: %w", n, err)
				}
				s.log.Error().Err(err).Msg("closing connection: cannot hide broker node endpoints")
				return proxy.Logged(versionErr(pd, err))
			}
			if at, err := nodeEndpointsTag(tail); err == nil && at >= 0 {
				tail[at] = hiddenTag
				s.p.stats.hiddenEndpoints.Add(1)
			}
		} else if w.err == nil {
			s.p.decodeError("Fetch response", pd.key, pd.version, errShortFetch)
		}
	case replica != nil:
		if pd.flexible {
			skipTagsR(w) // response header
		}
		if !walkFetchBody(w, pd.version, replica) && w.err == nil {
			s.p.decodeError("Fetch response", pd.key, pd.version, errShortFetch)
		}
	}
	s.replicasCleared(cleared)
	if err := w.copyRest(); err != nil {
		return fmt.Errorf("fetch response of %d bytes cut short: %w", n, err)
	}
	s.streaming = nil
	return s.flushQueued()
}

// fetchTail hides KIP-951 node endpoints in the held-back end of a streamed v16+ response. The
// size prefix is already out, so they cannot be rewritten to proxy addresses of another length;
// renamed to an unknown tag they are skipped, and the client refreshes Metadata through the
// proxy, as before KIP-951. Endpoints are rare: only responses reporting a leader change carry them.
func (s *session) fetchTail(pd *pending, frame []byte, sent int) error {
	start, err := responseBodyStart(frame, pd.key, pd.flexible)
	if err != nil {
		return nil // forwarded as it is, as the stored path does; the observer reports it
	}
	tail, err := fetchTailStart(frame[start:], pd.version)
	if err != nil {
		// Malformed for this walker: if kmsg reads it and finds endpoints, they cannot be hidden.
		resp := kmsg.NewPtrFetchResponse()
		resp.SetVersion(pd.version)
		if resp.ReadFrom(frame[start:]) == nil && len(resp.Brokers) > 0 {
			return fmt.Errorf("node endpoints in a fetch response the proxy cannot walk: %w", err)
		}
		return nil
	}
	tail += start
	at, err := nodeEndpointsTag(frame[tail:])
	if err != nil || at < 0 {
		return nil
	}
	if tail+at < sent {
		return fmt.Errorf("node endpoints %d bytes before the end of a fetch response, more than the %d held back", len(frame)-tail-at, len(frame)-sent)
	}
	frame[tail+at] = hiddenTag
	s.p.stats.hiddenEndpoints.Add(1)
	return nil
}

// fetchTailStart is where the top-level tagged fields of a flexible (v12+) Fetch response body
// start: after throttle, error, session id and the responses array, skipped by lengths only.
func fetchTailStart(body []byte, version int16) (int, error) {
	if version < 12 {
		return 0, fmt.Errorf("fetch v%d has no tagged fields", version)
	}
	r := &kbin.Reader{Src: body}
	if !walkFetchBody(r, version, nil) {
		return 0, errShortFetch
	}
	return len(body) - len(r.Src), nil
}

// spanReader is what the length-only walkers need of their input: a frame in memory
// (kbin.Reader) or a response passing through (streamWalk).
type spanReader interface {
	Span(n int) []byte
	Uvarint() uint32
	Ok() bool
}

// walkFetchBody skips a Fetch response body (v11+; flexible from v12) up to its top-level tagged
// fields, and reports whether it got there. replica, when not nil, gets each partition's
// preferred_read_replica field as r holds it, to read or change in place (a streamWalk's stays
// changeable until its next span).
func walkFetchBody(r spanReader, version int16, replica func(field []byte)) bool {
	flexible := version >= 12
	count := func() int { // an array's length; null (-1) is none
		if flexible {
			return compactArrayLen(r)
		}
		return int(int32At(r.Span(4)))
	}
	tags := func() {
		if flexible {
			skipTagsR(r)
		}
	}
	r.Span(4 + 2 + 4) // throttle_time_ms, error_code, session_id
	for t := count(); t > 0 && r.Ok(); t-- {
		switch {
		case version >= 13:
			r.Span(16) // topic_id
		case flexible:
			r.Span(compactLen(r)) // topic name
		default:
			r.Span(int(int16At(r.Span(2)))) // topic name
		}
		for p := count(); p > 0 && r.Ok(); p-- {
			r.Span(4 + 2 + 8 + 8 + 8) // partition, error_code, high watermark, last stable offset, log start offset
			for a := count(); a > 0 && r.Ok(); a-- {
				r.Span(8 + 8) // aborted transaction: producer_id, first_offset
				tags()
			}
			if f := r.Span(4); replica != nil { // preferred_read_replica
				replica(f)
			}
			if flexible { // records (null: none)
				r.Span(compactLen(r))
			} else {
				r.Span(max(int(int32At(r.Span(4))), 0))
			}
			tags()
		}
		tags()
	}
	return r.Ok()
}

// int32At and int16At are the big-endian integers b holds (0 when b is short: a walk that
// failed).
func int32At(b []byte) int32 {
	if len(b) < 4 {
		return 0
	}
	return int32(binary.BigEndian.Uint32(b))
}

func int16At(b []byte) int16 {
	if len(b) < 2 {
		return 0
	}
	return int16(binary.BigEndian.Uint16(b))
}

// compactArrayLen reads a compact array length as kmsg does: the uvarint as an int32, less one.
// A length of 2^31 or more is then no elements, and kgo decodes the rest of the answer; read as
// billions, the walk would go on through the bytes that follow and fail where kgo does not.
func compactArrayLen(r spanReader) int {
	return int(int32(r.Uvarint()) - 1)
}

// compactLen reads a compact bytes/string length (uvarint n+1; 0 is null).
func compactLen(r spanReader) int {
	n := int(r.Uvarint())
	if n == 0 {
		return 0
	}
	return n - 1
}

func skipTagsR(r spanReader) {
	for n := r.Uvarint(); n > 0 && r.Ok(); n-- {
		r.Uvarint()
		r.Span(int(r.Uvarint()))
	}
}

// nodeEndpointsTag is the offset of tag 0's key byte in a tagged-field section, or -1.
func nodeEndpointsTag(tags []byte) (int, error) {
	r := kbin.Reader{Src: tags}
	for n := r.Uvarint(); n > 0 && r.Ok(); n-- {
		at := len(tags) - len(r.Src)
		tag := r.Uvarint()
		r.Span(int(r.Uvarint()))
		if r.Ok() && tag == 0 {
			return at, nil
		}
	}
	if !r.Ok() {
		return -1, errShortFetch
	}
	return -1, nil
}
