package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// DefaultMaxFrameBytes bounds one request or response frame. Kafka's own socket.request.max.bytes
// default is 100 MiB; a larger size prefix means the stream is not Kafka (or is broken).
const DefaultMaxFrameBytes = 100 << 20

// DefaultFrameBudgetBytes is Config.FrameBudgetBytes's default: room for a request of the default
// MaxFrameBytes being rewritten, or for 170 of just over 1 MiB at once (1 MiB is what clients'
// max.request.size lets a request be by default).
const DefaultFrameBudgetBytes = 512 << 20

// errFrameTooLarge is returned by readFrame when the size prefix is over the limit.
var errFrameTooLarge = errors.New("frame size over the limit")

// readFrame reads one size-prefixed frame into a buffer it allocates (the frame is handed to other
// goroutines afterwards, so it is never reused). The result includes the 4-byte size prefix.
func readFrame(r io.Reader, maxBytes int) ([]byte, error) {
	var sz [4]byte
	n, err := readFrameSize(r, maxBytes, sz[:])
	if err != nil {
		return nil, err
	}
	return readFrameBody(r, sz, n, nil)
}

// maxReusedFrame bounds the frames a session reads into a buffer it reuses; bigger frames get
// their own allocation so an occasional huge request does not pin its size.
const maxReusedFrame = 1 << 20

// readFrameBody reads the n bytes of a frame whose size prefix sz was read: into buf when it has
// room for them (the frame is then valid until buf is reused), else into a buffer that grows as
// they arrive (proxy.ReadGrowing).
func readFrameBody(r io.Reader, sz [4]byte, n int, buf []byte) ([]byte, error) {
	frame, err := proxy.ReadGrowing(r, append(buf[:0], sz[:]...), n)
	if err != nil {
		return nil, cutShort(n, err)
	}
	return frame, nil
}

// cutShort is the error of a frame of n bytes that ended early: never io.EOF, which reads as a
// clean close, whatever point of the frame the stream ended at.
func cutShort(n int, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("frame of %d bytes cut short: %w", n, err)
}

// readFrameSize reads a frame's size prefix into sz and checks it against the limit.
func readFrameSize(r io.Reader, maxBytes int, sz []byte) (int, error) {
	if _, err := io.ReadFull(r, sz[:4]); err != nil {
		return 0, err
	}
	n := int32(binary.BigEndian.Uint32(sz))
	if n < 0 || int(n) > maxBytes {
		e := &frameSizeError{size: n, limit: maxBytes}
		copy(e.head[:], sz)
		return 0, e
	}
	return int(n), nil
}

// frameSizeError is errFrameTooLarge with the size prefix, which when the peer speaks another
// protocol (TLS, AMQP, HTTP) says which: the usual cause of such a prefix is a front pointed at
// the wrong port or with TLS on one side only.
type frameSizeError struct {
	size  int32
	limit int
	head  [4]byte
}

func (e *frameSizeError) Error() string {
	s := fmt.Sprintf("%v: size prefix %d, limit %d", errFrameTooLarge, e.size, e.limit)
	if what := proxy.LooksLike(e.head[:]); what != "" {
		s += "; the bytes begin " + what + ", not a Kafka frame"
	}
	return s
}

func (e *frameSizeError) Is(target error) bool { return target == errFrameTooLarge }

// framingFields adds to ev, when err is a frameSizeError whose bytes are another protocol's, what
// they look like (looks_like, the field the AMQP front's lines carry too) and what to change
// (hint); fromClient as for framingHint.
func framingFields(ev *zerolog.Event, err error, fromClient bool) *zerolog.Event {
	var fe *frameSizeError
	if !errors.As(err, &fe) {
		return ev
	}
	if what := proxy.LooksLike(fe.head[:]); what != "" {
		ev = ev.Str("looks_like", what)
	}
	if hint := framingHint(err, fromClient); hint != "" {
		ev = ev.Str("hint", hint)
	}
	return ev
}

// framingHint says what to change when err is a frameSizeError whose bytes are another protocol's:
// fromClient, the client sent them; else the upstream did. "" when there is nothing to say.
func framingHint(err error, fromClient bool) string {
	var fe *frameSizeError
	if !errors.As(err, &fe) {
		return ""
	}
	what := proxy.LooksLike(fe.head[:])
	switch {
	case what == "":
		return ""
	case fromClient && proxy.IsTLS(what):
		return "the client speaks TLS and this listener does not: give the front tls {cert_file, key_file}, or have the client connect in plaintext"
	case fromClient:
		if hint := proxy.OtherFrontHint(what, "Kafka"); hint != "" {
			return hint
		}
		return "the client does not speak Kafka: is it pointed at the wrong port?"
	case proxy.IsTLS(what):
		return "the broker speaks TLS: set upstream_tls on this front"
	default:
		return "the upstream is not a Kafka broker: check the front's bootstrap addresses"
	}
}

// notKafka is why an upstream whose answer failed with err is not a Kafka broker, or not one the
// front can speak to as configured (TLS): its bytes are another protocol's. Nil for any other
// error, which says nothing of what the upstream is.
func notKafka(err error) error {
	var fe *frameSizeError
	if !errors.As(err, &fe) {
		return nil
	}
	what := proxy.LooksLike(fe.head[:])
	if what == "" {
		return nil
	}
	return fmt.Errorf("answered with %s, not Kafka: %s", what, framingHint(err, false))
}

// readFrameRest fills frame from offset have on.
func readFrameRest(r io.Reader, frame []byte, have int) error {
	if _, err := io.ReadFull(r, frame[have:]); err != nil {
		return cutShort(len(frame)-4, err)
	}
	return nil
}

// requestHeader is what the proxy reads from every request: the fixed fields and where the body
// starts. ClientID stays a sub-slice of the frame.
type requestHeader struct {
	Key       int16
	Version   int16
	CorrID    int32
	ClientID  []byte // nil when the client sent a null client id
	Flexible  bool   // request header v2 / flexible body
	BodyStart int    // offset of the body within the frame (after the size prefix and header)
}

// errShortHeader says a request frame is too short for its header.
var errShortHeader = errors.New("request header truncated")

// parseRequestHeader reads the header of a request frame (size prefix included). Flexibility comes
// from kmsg's schema for (key, version); keys kmsg does not know are treated as non-flexible, which
// only matters for where the body starts, and the proxy never reads the body of such requests.
func parseRequestHeader(frame []byte) (requestHeader, error) {
	var h requestHeader
	if len(frame) < 4+8 {
		return h, errShortHeader
	}
	h.Key = int16(binary.BigEndian.Uint16(frame[4:]))
	h.Version = int16(binary.BigEndian.Uint16(frame[6:]))
	h.CorrID = int32(binary.BigEndian.Uint32(frame[8:]))
	h.Flexible = isFlexible(h.Key, h.Version)
	pos := 12
	// ControlledShutdown v0 has no client id; the proxy never decodes it, so its body start is moot.
	if h.Key == 7 && h.Version == 0 {
		h.BodyStart = pos
		return h, nil
	}
	if len(frame) < pos+2 {
		return h, errShortHeader
	}
	l := int16(binary.BigEndian.Uint16(frame[pos:]))
	pos += 2
	if l >= 0 {
		if len(frame) < pos+int(l) {
			return h, errShortHeader
		}
		h.ClientID = frame[pos : pos+int(l)]
		pos += int(l)
	}
	if h.Flexible {
		n, err := skipTags(frame[pos:])
		if err != nil {
			return h, fmt.Errorf("request header tags: %w", err)
		}
		pos += n
	}
	h.BodyStart = pos
	return h, nil
}

// skipTags returns the length of a tagged-field section at the start of b.
func skipTags(b []byte) (int, error) {
	r := kbin.Reader{Src: b}
	n := r.Uvarint()
	for i := uint32(0); i < n && r.Ok(); i++ {
		r.Uvarint()
		l := r.Uvarint()
		r.Span(int(l))
	}
	if !r.Ok() {
		return 0, errShortHeader
	}
	return len(b) - len(r.Src), nil
}

// flexCache memoizes isFlexible for every (key, version) kmsg knows.
var flexCache = func() map[int32]bool {
	m := make(map[int32]bool)
	for k := int16(0); k < 200; k++ {
		req := kmsg.RequestForKey(k)
		if req == nil {
			continue
		}
		for v := int16(0); v <= req.MaxVersion(); v++ {
			r := kmsg.RequestForKey(k)
			r.SetVersion(v)
			m[int32(k)<<16|int32(uint16(v))] = r.IsFlexible()
		}
	}
	return m
}()

func isFlexible(key, version int16) bool {
	return flexCache[int32(key)<<16|int32(uint16(version))]
}

// knownVersion reports whether kmsg can decode (key, version).
func knownVersion(key, version int16) bool {
	_, ok := flexCache[int32(key)<<16|int32(uint16(version))]
	return ok
}

// responseBodyStart returns where the body of a response frame starts: after the size prefix, the
// correlation id and, for flexible responses except ApiVersions, the header's tagged fields.
func responseBodyStart(frame []byte, key int16, flexible bool) (int, error) {
	if len(frame) < 8 {
		return 0, errors.New("response header truncated")
	}
	if !flexible || key == 18 {
		return 8, nil
	}
	n, err := skipTags(frame[8:])
	if err != nil {
		return 0, fmt.Errorf("response header tags: %w", err)
	}
	return 8 + n, nil
}

// putSize writes the size prefix of frame.
func putSize(frame []byte) {
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
}
