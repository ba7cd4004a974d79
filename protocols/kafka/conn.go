package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// pending is one request waiting for its response. Requests are kept in the order they were sent;
// Kafka answers in that order on a connection, and the proxy's own replies (synthetic) are written
// when their turn comes.
type pending struct {
	corr      int32
	key       int16
	version   int16
	flexible  bool
	synthetic []byte // a response the proxy writes itself instead of forwarding the request
	rawToken  bool   // a SaslHandshake v0 raw token: the response has no Kafka header
	facts     any    // what the response handler needs from the request
	entries   int64  // the partitions facts names, taken from Proxy.facts (keepFacts)
}

// clientInfo is what a connection knows about its client; it is replaced, never mutated.
type clientInfo struct {
	clientID string
	software string // ApiVersions v3+ ClientSoftwareName
	service  string
	traced   bool // its own tracer checkpoints its consumes (a services rule says so)
	addr     netip.Addr
}

// key identifies the client process for group learning: source address + client.id + software.
func (ci *clientInfo) key() clientKey {
	return clientKey{addr: ci.addr, clientID: ci.clientID, software: ci.software}
}

// session is one client connection and its upstream.
type session struct {
	p   *Proxy
	c   *proxy.Conn
	log zerolog.Logger

	addr netip.Addr
	info atomic.Pointer[clientInfo]

	writeMu sync.Mutex // serializes writes to the client (forwarded and synthetic responses)
	mu      sync.Mutex
	queue   []*pending
	idle    chan struct{} // signalled when the queue empties
	room    chan struct{} // signalled when the queue is below maxQueuedRequests again

	// SASL v0: raw token exchanges left (-1: unknown mechanism, relay bytes for good).
	rawLeft    atomic.Int32
	rawOAuth   bool
	saslMech   string // the mechanism of the latest SaslHandshake (request goroutine only)
	draining   atomic.Bool
	respClosed chan struct{}
	// requestsEnded: the client's side ended (or a drain stopped reading it); brokerEnded: the
	// broker ended the connection before that, so what it left unanswered is its doing.
	requestsEnded, brokerEnded atomic.Bool
	// answered: a request other than ApiVersions was answered (response relay; serve reads it
	// once the relay ended). A cut before that, of a client that sent no SASL login to a
	// cluster that takes logins, is most likely that cluster closing it (tellBrokerCut).
	answered bool
	// upstreamAnswered: a response frame came (response relay only), so the upstream is a
	// Kafka broker (Proxy.UpstreamProblem).
	upstreamAnswered bool
	// streaming: the Fetch whose answer is being forwarded as it arrives (nextResponse), out of
	// the queue before its bytes came; nil once they all came. Response relay only; serve reads
	// it once the relay ended: a broker that cut the answer off left that Fetch unanswered.
	streaming *pending
	// awaitingAnswers: the drain found answers in flight and waits for them (waitIdle).
	awaitingAnswers atomic.Bool
	spoke           bool // the client's first request was read (request goroutine)

	// The fetch offsets of the connection's fetch session (KIP-227), request goroutine only: an
	// incremental Fetch leaves out partitions whose offset did not change, and the broker answers
	// them from these. Replaced, never changed, so a fetch's observation can keep the one of its
	// time (fetchFacts.session).
	fetchSession *sessionOffsets
	// limitWait: until when the produce request being rewritten may wait for its topics' first
	// size limits (topicLimits.check); request goroutine only.
	limitWait    time.Time
	sessionShare proxy.Share // its part of Proxy.sessionEntries
	rackDropped  bool        // a fetch request's rack id was dropped (dropRack), logged; request goroutine only

	// Produce path buffers, used by the request goroutine only.
	codec   batchCodec
	produce produceRequestView
	repl    [][]byte
	spans   [][2]int
	outBuf  []byte // rewritten produce frames; reused once written upstream
	inBuf   []byte // request frames; reused once forwarded
	hdr     []byte // the batch's context, for records that carry none
	own     ownContext
	points  []pathway.Point
	scratch []byte

	// heldPoints is the produce checkpoints this connection's requests hold for their answers
	// (taken by the request goroutine, given back by the response one).
	heldPoints proxy.Share
	factShare  proxy.Share // its requests' part of Proxy.facts
	frameShare proxy.Share // the request frame being read's part of Proxy.frames
	fetchShare proxy.Share // the fetch response being streamed's part of Proxy.frames
	// Idle buffers (buflist.go): shedArmed, under bufMu, while the request goroutine waits for
	// a request and idleTimer may hand its buffers over.
	bufMu     sync.Mutex
	shedArmed bool
	idleTimer *time.Timer
}

// ownContext is the last context a record carried in a batch and what replaces it, unless the
// record is left alone (left: a tracer's, with RespectExistingContext on).
type ownContext struct {
	have     bool
	left     bool
	ctx, hdr []byte
	point    pathway.Point
	over     int // records past maxBatchPoints in this partition's batches
}

// maxQueuedRequests bounds the requests of one connection awaiting answers. Clients keep a few in
// flight (Kafka's max.in.flight.requests.per.connection defaults to 5); past the bound the proxy
// reads no more requests until answers come, as a broker would make the client wait, instead of
// filling every buffer between it and the broker with pending entries.
const maxQueuedRequests = 1000

// maxConnFacts bounds the partitions named in what one connection's requests awaiting answers
// keep for those answers (produce, fetch and commit facts, about 100 bytes a partition): a
// connection may have maxQueuedRequests in flight, each naming tens of thousands of partitions.
// maxFacts bounds all connections together (about 100 MiB). A request past either goes upstream
// and its answer is read without its facts (Stats.UnkeptFacts): a produce is treated as acks=0
// (its batches grow only under a topic limit known to fit, and count when sent), no produce or
// commit offsets come from the answer, and a fetch outside a fetch session (whose offsets the
// proxy keeps anyway) has its records all observed, those before the fetch offset included.
var (
	maxConnFacts int64 = 1 << 18
	maxFacts     int64 = 1 << 20
)

// keepFacts takes room for facts naming n partitions under both bounds, or counts that there is
// none.
func (s *session) keepFacts(pd *pending, n int) bool {
	if n == 0 {
		return true
	}
	if s.factShare.Held()+int64(n) > s.p.connFactsMax || !s.p.facts.Take(&s.factShare, int64(n)) {
		s.p.stats.unkeptFacts.Add(1)
		return false
	}
	pd.entries = int64(n)
	return true
}

// settle gives back the room pd's facts took; their answer has come, or will not.
func (s *session) settle(pd *pending) {
	s.p.facts.Give(&s.factShare, pd.entries)
	pd.entries = 0
}

// ServeConn implements proxy.Handler.
func (p *Proxy) ServeConn(ctx context.Context, c *proxy.Conn) error {
	s := &session{p: p, c: c, log: c.Log, idle: make(chan struct{}, 1), room: make(chan struct{}, 1), respClosed: make(chan struct{})}
	if ap, err := netip.ParseAddrPort(proxy.AddrString(c.Client.RemoteAddr())); err == nil {
		s.addr = ap.Addr().Unmap()
	}
	cl := p.client(s.addr, "", "")
	s.info.Store(&clientInfo{addr: s.addr, service: cl.Service, traced: cl.Traced})
	p.sessions.Store(s, struct{}{})
	defer p.sessions.Delete(s)
	return s.serve(ctx)
}

func (s *session) serve(ctx context.Context) error {
	respErr := make(chan error, 1)
	go func() {
		err := s.c.Recover("kafka response relay", s.responses)
		// A login the broker refused by closing is tracked as that, not also told as a cut.
		if !s.loginClosed(err) {
			s.brokerEnded.Store(!s.requestsEnded.Load() && endedByBroker(err))
		}
		close(s.respClosed)
		// The upstream ended (or failed): the client must see the connection end too, and end as
		// the broker's did. A broker's reset reaches the client as a reset: a clean close instead
		// makes kgo fail a request cut before the connection's first answer ("closed immediately
		// after a request was issued ... is SASL missing?"; a metadata request's failure fails the
		// buffered records), where a direct client, reset, retries it.
		if proxy.IsReset(err) {
			proxy.ResetClose(s.c.Client)
		} else {
			s.c.Client.Close()
		}
		respErr <- err
	}()
	// A client that sends nothing would hold its socket, and one to a broker, for as long as it
	// stays connected (a few of them could fill max_conns): every Kafka client sends its first
	// request at once. Set before the drain watcher starts, so a drain is not put off by it.
	s.c.Client.SetReadDeadline(time.Now().Add(s.p.firstRequestTimeout))
	// A drain wakes the request reader; it stops at a request boundary (drainReader).
	defer s.c.WakeOnDrain(ctx, &s.draining)()
	err := s.requests()
	s.requestsEnded.Store(true)
	if s.draining.Load() && isTimeout(err) {
		s.waitIdle()
		// Requests the client sent after the drain began stay unread: closing on them would reset
		// the connection and could destroy answers the client has not read yet.
		proxy.Linger(s.c.Client)
		err = nil
	}
	s.c.Upstream.Close()
	var rerr error
	select {
	case rerr = <-respErr:
	case <-time.After(stalledClientWait):
		// The response relay is stuck writing to a client that reads nothing, and the upstream
		// is over: the relay would never read its end, and the client, whose writes nobody
		// reads any more, would never learn of it while the session (and its shares of the
		// proxy's bounds) stayed. Direct, its next write would fail on the broker's reset.
		s.log.Debug().Stringer("wait", stalledClientWait).Msg("resetting connection: the client read no answer after its requests ended")
		proxy.ResetClose(s.c.Client)
		rerr = <-respErr
	}
	s.mu.Lock()
	unanswered := s.queue
	s.queue = nil
	s.mu.Unlock()
	if s.streaming != nil { // asked before those still queued
		unanswered = append([]*pending{s.streaming}, unanswered...)
	}
	cutTold := s.brokerEnded.Load() && s.tellBrokerCut(unanswered, rerr)
	for _, pd := range unanswered {
		s.abandon(pd)
	}
	s.p.sessionEntries.Release(&s.sessionShare)
	s.p.heldPoints.Release(&s.heldPoints) // abandon gave back all it knew of
	s.p.facts.Release(&s.factShare)
	s.p.frames.Release(&s.frameShare)
	s.disarmShed()
	s.shedBuffers() // a closed connection's buffers serve others
	if clientReset(err, "read") || clientReset(rerr, "write") {
		// The client's choice, as a clean close is: librdkafka's and kafkajs's consumers reset at
		// their close, as does any process that exits with an answer unread.
		s.log.Debug().Err(err).AnErr("answer_error", rerr).Msg("the client reset the connection")
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) || isClosed(err) {
		if rerr != nil && !errors.Is(rerr, io.EOF) && !isClosed(rerr) {
			if cutTold {
				return proxy.Logged(rerr)
			}
			return rerr
		}
		return nil
	}
	return err
}

// clientReset says whether err is the client's reset, seen on the client connection's op side:
// "read" for the requests, "write" for the answers.
func clientReset(err error, op string) bool {
	var oe *net.OpError
	return proxy.IsReset(err) && errors.As(err, &oe) && oe.Op == op
}

// endedByBroker says whether the response relay ended on the broker's side: its clean close or
// reset, not a failed write to the client.
func endedByBroker(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "write" {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || proxy.IsReset(err)
}

// maxCutRequestsLogged bounds the requests a broker-cut line names (a client pipelines at most a
// few per connection; a misbehaving one could queue maxQueuedRequests).
const maxCutRequestsLogged = 10

// tellBrokerCut logs a connection the broker ended while requests on it waited for their answers
// (it crashed, restarted or dropped the connection): the client sees the connection end and
// retries them, and without this line nothing told of it until the next dials failed. Loud for the
// first 10 and every 1000th, as every connection to a broker that goes down ends at once.
// It says whether it logged at Warn.
func (s *session) tellBrokerCut(unanswered []*pending, err error) bool {
	var names []string
	n := 0
	for _, pd := range unanswered {
		if pd.synthetic != nil { // answered by the proxy itself, not waiting for the broker
			continue
		}
		n++
		if len(names) < maxCutRequestsLogged {
			names = append(names, kmsg.NameForKey(pd.key)+" v"+strconv.Itoa(int(pd.version)))
		}
	}
	if n == 0 {
		return false // an idle connection the broker closed (connections.max.idle.ms): routine
	}
	total := s.p.stats.brokerCuts.Add(1)
	loud := proxy.LogNth(total)
	ev := s.log.Debug()
	if loud {
		ev = s.log.Warn()
	}
	// A fresh connection's first request cut is also what a crash looks like: only a cluster
	// known to take logins makes the missing one the likelier cause.
	if !s.answered && s.saslMech == "" && s.p.saslSeen.Load() {
		ev = ev.Str("hint", "the cluster takes SASL logins, and this client sent none and got no answer but ApiVersions: a cluster "+
			"that wants SASL closes such a client at its first other request; give the client its SASL settings (librdkafka "+
			"sasl.mechanisms, sasl.username, sasl.password; Java sasl.jaas.config), else the broker crashed or restarted")
	}
	ev.Err(err).Int("unanswered", n).Strs("requests", names).Uint64("broker_cuts_total", total).
		Msg("the broker ended the connection with requests unanswered")
	return loud
}

// abandon gives up a request whose answer will not come: the connection ended first. Whether the
// broker stored its batches is unknown, and a client that resends them is counted then, so the
// checkpoints its batches held count as dropped, and their room is free again.
func (s *session) abandon(pd *pending) {
	s.settle(pd)
	facts, ok := pd.facts.(*produceFacts)
	if !ok {
		return
	}
	for i := range facts.parts {
		part := &facts.parts[i]
		if part.points != nil {
			s.p.dropPoints(int(pathway.CountCheckpoints(*part.points)) + part.unpointed)
			s.releasePoints(part, false)
		}
	}
}

// waitIdle waits until every request sent upstream has been answered, or the upstream ends.
func (s *session) waitIdle() {
	for {
		s.mu.Lock()
		n := len(s.queue)
		s.mu.Unlock()
		if n == 0 {
			// An answer's request leaves the queue before the answer is written under writeMu:
			// wait for one still on its way (a big fetch to a slow reader), which the Linger
			// after this would cut. It ends, or fails when the drain's deadline closes both ends.
			if !s.writeMu.TryLock() {
				s.awaitingAnswers.Store(true)
				s.writeMu.Lock()
			}
			s.writeMu.Unlock()
			return
		}
		s.awaitingAnswers.Store(true)
		select {
		case <-s.idle:
		case <-s.respClosed:
			return
		}
	}
}

// stalledClientWait bounds how long a session whose requests ended waits for the client to read
// the answers the relay is still writing: past it the client is taken to have stalled.
const stalledClientWait = 5 * time.Second

// firstRequestTimeout is how long a client has to send its first request (Proxy's, which tests
// shorten before Start).
const firstRequestTimeout = 10 * time.Second

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// requests reads client frames, acts on the ones the proxy understands and forwards them.
func (s *session) requests() error {
	maxBytes := s.p.cfg.MaxFrameBytes
	in := &drainReader{s: s}
	for {
		if s.rawLeft.Load() < 0 {
			s.p.frames.Release(&s.frameShare) // bytes from here on: no frame is held
			_, err := io.Copy(s.c.Upstream, s.c.Client)
			return err
		}
		if s.draining.Load() {
			// Each request boundary in a drain tries one read that cannot wait: drainReader decides
			// whether what the client sent before the drain is still to come.
			s.c.Client.SetReadDeadline(time.Now())
		}
		// Every path below forwards (or answers) the frame before the loop reads the next one, and
		// request handlers copy what they keep, so one read buffer serves the connection.
		in.boundary = true
		frame, rest, unread, err := s.readRequest(in, maxBytes)
		if err == nil && !s.spoke {
			s.spoke = true
			s.c.Client.SetReadDeadline(time.Time{})
			if s.draining.Load() { // the drain's wake-up was just cleared
				s.c.Client.SetReadDeadline(time.Now())
			}
		}
		if err != nil && !s.spoke && isTimeout(err) && !s.draining.Load() {
			s.log.Debug().Stringer("timeout", s.p.firstRequestTimeout).Msg("closing connection: the client sent no complete request in time")
			return proxy.Logged(err)
		}
		if err != nil {
			if errors.Is(err, errFrameTooLarge) {
				// Loud only now and then: anyone who reaches the port can send an HTTP request.
				n := s.p.stats.invalidFrames.Add(1)
				ev := s.log.Debug()
				if proxy.LogNth(n) {
					ev = s.log.Warn()
				}
				framingFields(ev, err, true).Err(err).Uint64("invalid_frames_total", n).Msg("closing connection: request frame is not valid Kafka framing")
				return proxy.Logged(err)
			}
			return err
		}
		if left := s.rawLeft.Load(); left != 0 {
			// SaslHandshake v0: this frame is a raw SASL token with no Kafka header. The handshake's
			// answer can arrive while this read waits, so an unknown mechanism (left < 0) is seen
			// here as well as at the top: this token goes as it is, the rest as bytes.
			var pd *pending
			if left > 0 {
				// A login too: a refused one ends with the broker's close (loginClosed).
				pd = &pending{rawToken: true, facts: saslLogin(s.saslMech)}
				s.push(pd)
			}
			if err := s.forwardRest(frame, rest, in); err != nil {
				s.unpush(pd)
				return err
			}
			continue
		}
		h, err := parseRequestHeader(frame)
		if err != nil {
			s.log.Warn().Err(err).Int("bytes", len(frame)).Msg("closing connection: undecodable request header")
			s.p.decodeError("request", -1, -1, err)
			return proxy.Logged(fmt.Errorf("request header: %w", err))
		}
		if unread || !namesSoftware(h) {
			s.noteClientID(h.ClientID, s.info.Load().software)
		} // else apiVersionsRequest learns the client.id with the software name its body carries
		if unread {
			if err := s.forwardUnread(h, frame, rest, in); err != nil {
				return err
			}
			continue
		}
		if s.p.tap != nil {
			s.p.tap(h, frame)
		}
		out, pd := s.handleRequest(h, frame)
		if pd == nil {
			// acks=0 produce: no response will come.
			if _, err := s.c.Upstream.Write(out); err != nil {
				return err
			}
			continue
		}
		if pd.synthetic != nil {
			if err := s.reply(pd); err != nil {
				s.log.Warn().Err(err).Msg("closing connection")
				return proxy.Logged(err)
			}
			continue
		}
		if !s.waitRoom() {
			s.abandon(pd)
			return nil // the upstream ended: its error, if any, is the one to report
		}
		s.push(pd)
		if _, err := s.c.Upstream.Write(out); err != nil {
			return err
		}
	}
}

// readRequest reads the next request frame. One over maxReusedFrame is read whole only while the
// proxy's frame budget has room for three times its bytes (a produce's spliced batches and its
// rewritten frame are each about as big), taken as they arrive (readCounted): otherwise the part
// read comes back with unread set, and rest is the number of its bytes still to come (none when
// the budget refused the read that completed it), which forwardUnread relays as they arrive.
func (s *session) readRequest(r io.Reader, maxBytes int) (frame []byte, rest int, unread bool, err error) {
	// The previous request has been forwarded.
	if s.frameShare.Held() != 0 { // (a shared counter is not written per request)
		s.p.frames.Release(&s.frameShare)
	}
	s.armShed()
	var sz [4]byte
	n, err := readFrameSize(r, maxBytes, sz[:])
	s.disarmShed()
	if err != nil {
		return nil, 0, false, err
	}
	switch {
	case 4+n <= maxReusedFrame:
		frame, err = s.readReused(r, sz, n)
		return frame, 0, false, err
	case 3*int64(4+n) <= s.p.frames.Max:
		frame, unread, err = s.readCounted(r, sz, n)
		if err != nil {
			return nil, 0, false, err
		}
		return frame, 4 + n - len(frame), unread, nil
	}
	// Even the whole budget could not hold it: only its head is read.
	head := s.bigBuf(&s.inBuf, unreadHead)[:unreadHead]
	copy(head, sz[:])
	if err := readFrameRest(r, head, 4); err != nil {
		return nil, 0, false, err
	}
	return head, 4 + n - len(head), true, nil
}

// readCounted reads a request frame over maxReusedFrame whose size prefix sz was read, into a
// buffer that grows as its bytes arrive (as proxy.ReadGrowing's: by 64 KiB, then doubling), and
// takes the frame budget for three times its bytes as they arrive: none for its first unreadHead
// bytes until they are all in (a request relayed unread is read that far anyway), then, at each
// read, for what came. When the budget refuses a read's bytes, it stops there and says so
// (refused): the frame is then the part read (unreadHead bytes or more, the request header in
// them; all of it when that read completed it, which is relayed unread too, or its last read's
// bytes and their copies would be held outside the budget), and the rest is for forwardUnread.
// So the budget follows what clients send, as memory does, not what their size prefixes claim:
// a client that sends a prefix and stalls holds none of it, one that stalls half way through a
// request holds three times that half, and the buffer (at most twice what came) stays within
// what it holds.
func (s *session) readCounted(r io.Reader, sz [4]byte, n int) (_ []byte, refused bool, _ error) {
	end := 4 + n
	b := append(make([]byte, 0, 4+proxy.GrowFrom), sz[:]...)
	counted := 0 // of b's bytes, those the budget holds (three times)
	for len(b) < end {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(end-len(b), len(b)))
		}
		m, err := r.Read(b[len(b):min(end, cap(b))])
		b = b[:len(b)+m]
		if err != nil && len(b) < end {
			return nil, false, cutShort(n, err)
		}
		if len(b) >= unreadHead && len(b) > counted {
			if !s.p.frames.Take(&s.frameShare, 3*int64(len(b)-counted)) {
				return b, true, nil
			}
			counted = len(b)
		}
	}
	return b, false, nil
}

// readReused reads a request of at most maxReusedFrame bytes whose size prefix sz was read into
// the connection's buffer (s.inBuf), or into one the front lists. When neither has room for it,
// readFrameBody grows a buffer with the bytes as they arrive, which the connection then keeps: a
// size prefix alone (a client that stalls after it, or sends a byte a second) made the proxy
// allocate the 1.25 MiB it claims at once, 270 MB for 300 such connections in a soak run.
func (s *session) readReused(r io.Reader, sz [4]byte, n int) ([]byte, error) {
	need := 4 + n
	if need <= max(cap(s.inBuf), keptBufBytes) {
		return readFrameBody(r, sz, n, s.bigBuf(&s.inBuf, need))
	}
	if b := s.p.bufs.listed(need); b != nil {
		s.inBuf = b
		return readFrameBody(r, sz, n, b)
	}
	frame, err := readFrameBody(r, sz, n, nil)
	if err != nil {
		return nil, err
	}
	s.inBuf = frame[:0]
	return frame, nil
}

// unreadHead is the least the proxy reads of a request it relays unread (more when the budget ran
// out part way through it, readCounted): enough for the request header (a client id is at most
// 32 KiB) and, for a produce, its acks.
const unreadHead = 64 << 10

// forwardUnread relays a request the frame budget had no room for as it arrives, head first, and
// waits for its answer without facts, as for a request the proxy does not decode: a produce's
// batches go without the header and without checkpoints (SkippedBatches cannot count them: they
// are not read). Nothing is lost, and memory stays bounded.
func (s *session) forwardUnread(h requestHeader, head []byte, rest int, in io.Reader) error {
	pd := &pending{corr: h.CorrID, key: h.Key, version: h.Version, flexible: h.Flexible}
	switch h.Key {
	case keyProduce:
		v := &s.produce
		_ = parseProduce(h, head, v) // cut short by design; acks comes before the topics
		if v.acked && v.acks == 0 {
			pd = nil
		}
	case keyFetch:
		// The request may change the fetch session in ways the proxy does not see.
		if s.fetchSession != nil {
			s.fetchSession = nil
			s.accountSession()
			s.p.stats.forgottenSessions.Add(1)
		}
	}
	size := len(head) + rest
	n := s.p.stats.unreadRequests.Add(1)
	ev := s.log.Debug()
	if proxy.LogNth(n) {
		ev = s.log.Warn()
	}
	op := kmsg.NameForKey(h.Key)
	// Why: other requests held the budget, or this one alone (three times its size) is over
	// all of it, which no wait would change (a budget set below three times max_frame_bytes).
	why, skipWhy := "the frame budget is taken by other big requests", "frame_budget_bytes (%d) taken by other requests in progress"
	if 3*int64(size) > s.p.frames.Max {
		why, skipWhy = "three times its size is over the whole frame budget", "three times its size is over the whole frame_budget_bytes (%d)"
	}
	ev.Str("api", op).Int16("version", h.Version).Int("bytes", size).Int64("frame_budget_bytes", s.p.frames.Max).
		Uint64("unread_requests_total", n).Msg("request relayed unread: " + why)
	ci := s.info.Load()
	s.p.skipOp(op, "frame_budget", fmt.Sprintf("%s request of %d bytes relayed unread: "+skipWhy, op, size, s.p.frames.Max),
		ci.service, pathway.Edge{}, -1, 0)
	if pd != nil {
		if !s.waitRoom() {
			return nil // the upstream ended: its error, if any, is the one to report
		}
		s.push(pd)
	}
	if err := s.forwardRest(head, rest, in); err != nil {
		s.unpush(pd)
		return err
	}
	return nil
}

// unpush takes back pd (nil: none), pushed for a request that forwardRest could not finish: the
// broker has only part of it and will not answer it, so a drain must not wait for that answer
// (waitIdle) past what the client sent before the drain.
func (s *session) unpush(pd *pending) {
	if pd == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, q := range s.queue {
		if q == pd {
			s.removeLocked(i)
			return
		}
	}
}

// forwardRest writes head upstream, then the rest bytes that follow it from in, through the
// connection's own buffer.
func (s *session) forwardRest(head []byte, rest int, in io.Reader) error {
	if _, err := s.c.Upstream.Write(head); err != nil {
		return err
	}
	// A head readCounted read is written: the budget its bytes took is free while the rest
	// streams, however long the client takes to send it.
	if s.frameShare.Held() != 0 {
		s.p.frames.Release(&s.frameShare)
	}
	if rest == 0 {
		return nil
	}
	buf := s.bigBuf(&s.inBuf, unreadHead) // head may be in it: written, it is free
	buf = buf[:cap(buf)]
	for rest > 0 {
		k, err := in.Read(buf[:min(rest, len(buf))])
		if k > 0 {
			rest -= k
			if _, werr := s.c.Upstream.Write(buf[:k]); werr != nil {
				return werr
			}
		}
		if err != nil && rest > 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("request cut short with %d bytes to come: %w", rest, err)
		}
	}
	return nil
}

// drainReader reads requests from the client. A graceful drain wakes it with a read deadline in
// the past; it then reads on what the client sent before the drain began, so that those
// requests are forwarded and answered, not lost: the rest of a request in progress, and the
// bytes the kernel held when the drain was first seen (a client that keeps sending would
// otherwise keep the drain going until its deadline). Data TLS has already decrypted comes back
// from the read that cannot wait. A client that stalls mid-request for drainGrace ends it.
type drainReader struct {
	s        *session
	boundary bool // no byte of the next request read yet
	seen     bool // the drain was seen; left is set
	left     int  // bytes the kernel held then, not read yet
}

const drainGrace = 2 * time.Second

func (r *drainReader) Read(p []byte) (int, error) {
	for retried := false; ; retried = true {
		n, err := r.s.c.Client.Read(p)
		if n > 0 {
			r.boundary = false
			r.left -= n
			return n, err
		}
		if err == nil || !isTimeout(err) || !r.s.draining.Load() || retried {
			return n, err
		}
		if !r.seen {
			r.seen, r.left = true, proxy.Unread(r.s.c.Client)
		}
		if r.boundary && (r.left <= 0 || proxy.Unread(r.s.c.Client) == 0) {
			return n, err
		}
		r.s.c.Client.SetReadDeadline(time.Now().Add(drainGrace))
	}
}

// waitRoom waits while maxQueuedRequests requests await answers; false when the upstream ended.
func (s *session) waitRoom() bool {
	for {
		s.mu.Lock()
		n := len(s.queue)
		s.mu.Unlock()
		if n < maxQueuedRequests {
			return true
		}
		select {
		case <-s.room:
		case <-s.respClosed:
			return false
		}
	}
}

// removeLocked takes entry i out of the queue, its answer come, and gives back the room its facts
// took. Answers come in order, so it is nearly always the first, which costs nothing to drop.
func (s *session) removeLocked(i int) {
	s.settle(s.queue[i])
	if i == 0 {
		s.queue[0] = nil
		s.queue = s.queue[1:]
		return
	}
	s.queue = append(s.queue[:i], s.queue[i+1:]...)
}

// push registers a request before it is written upstream, so its response always finds it.
func (s *session) push(pd *pending) {
	s.mu.Lock()
	s.queue = append(s.queue, pd)
	s.mu.Unlock()
}

// reply writes a synthetic response now if nothing is in flight, else queues it behind the
// requests in flight so the client receives answers in request order. Such requests never reach
// the broker, so nothing else would hold back a client that sends them without reading its
// answers: past twice maxQueuedRequests awaiting answers, reply refuses.
func (s *session) reply(pd *pending) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if n := len(s.queue); n > 0 {
		// Forwarded requests alone can fill maxQueuedRequests (waitRoom holds them there).
		if n >= 2*maxQueuedRequests {
			s.mu.Unlock()
			return fmt.Errorf("%d requests await their answers (limit %d)", n, 2*maxQueuedRequests)
		}
		s.queue = append(s.queue, pd)
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if _, err := s.c.Client.Write(pd.synthetic); err != nil {
		s.log.Debug().Err(err).Msg("writing proxy reply")
	}
	return nil
}

// pop removes the request answered by a response with corr (or the raw-token entry at the head).
func (s *session) pop(frame []byte) (*pending, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 && s.queue[0].rawToken {
		pd := s.queue[0]
		s.removeLocked(0)
		return pd, true
	}
	if len(frame) < 8 {
		return nil, false
	}
	i := s.findLocked(int32(binary.BigEndian.Uint32(frame[4:])))
	if i < 0 {
		return nil, false
	}
	pd := s.queue[i]
	s.removeLocked(i)
	return pd, true
}

// findLocked is the queue index of the forwarded request with correlation id corr, or -1.
func (s *session) findLocked(corr int32) int {
	for i, pd := range s.queue {
		if pd.synthetic == nil && pd.corr == corr {
			return i
		}
	}
	return -1
}

// responses reads upstream frames, pairs them with their requests, rewrites or observes what the
// proxy understands, and forwards them in order.
func (s *session) responses() error {
	maxBytes := s.p.cfg.MaxFrameBytes
	for {
		if s.rawLeft.Load() < 0 {
			_, err := io.Copy(s.c.Client, s.c.Upstream)
			return err
		}
		if err := s.nextResponse(maxBytes); err != nil {
			if errors.Is(err, errFrameTooLarge) {
				if wrong := notKafka(err); wrong != nil {
					s.p.wrong.Wrong(s.c.UpstreamAddr, wrong)
				}
				framingFields(s.log.Warn().Err(err), err, false).
					Msg("closing connection: response frame is not valid Kafka framing")
				return proxy.Logged(err)
			}
			return err
		}
	}
}

// upstreamSpoke notes a response frame from the broker: the connection's first shows it is a
// Kafka broker (Proxy.UpstreamProblem); after that it is a check of the relay's own bool.
func (s *session) upstreamSpoke() {
	if !s.upstreamAnswered {
		s.upstreamAnswered = true
		s.p.wrong.Answered(s.c.UpstreamAddr)
	}
}

func (s *session) response(frame []byte) error {
	s.upstreamSpoke()
	pd, ok := s.pop(frame)
	out := frame
	var after func()
	switch {
	case !ok:
		s.p.stats.unknownCorr.Add(1)
		s.log.Debug().Int("bytes", len(frame)).Msg("response with unknown correlation id forwarded")
	case pd.rawToken:
		s.rawTokenAnswered(frame)
	default:
		if pd.key != keyApiVersions {
			s.answered = true
		}
		var err error
		out, after, err = s.handleResponse(pd, frame)
		if err != nil {
			return err
		}
	}
	if _, err := s.c.Client.Write(out); err != nil {
		return err
	}
	if after != nil {
		after()
	}
	return s.flushQueued()
}

// flushQueued writes the proxy replies queued behind the response just written, and signals idle
// when nothing is left in flight.
func (s *session) flushQueued() error {
	s.mu.Lock()
	for len(s.queue) > 0 && s.queue[0].synthetic != nil {
		pd := s.queue[0]
		s.removeLocked(0)
		s.mu.Unlock()
		if _, err := s.c.Client.Write(pd.synthetic); err != nil {
			return err
		}
		s.mu.Lock()
	}
	n := len(s.queue)
	s.mu.Unlock()
	if n == 0 {
		select {
		case s.idle <- struct{}{}:
		default:
		}
	}
	if n < maxQueuedRequests {
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
	return nil
}

// noteClientID refreshes the connection's client info when the client.id or the software name
// changes (rarely: once).
func (s *session) noteClientID(id []byte, software string) {
	ci := s.info.Load()
	if string(id[:min(len(id), maxIdentityBytes)]) == ci.clientID && software[:min(len(software), maxIdentityBytes)] == ci.software {
		return
	}
	s.setInfo(string(id), software)
}

// maxIdentityBytes caps the client.id and software name kept per client: the proxy remembers
// thousands of clients (groups, log lines), and any peer that connects can send 32 KiB ids.
const maxIdentityBytes = 255

// clipIdentity is s cut to maxIdentityBytes, in a copy of its own (a substring would keep the
// whole frame it was read from).
func clipIdentity(s string) string {
	if len(s) <= maxIdentityBytes {
		return s
	}
	return strings.Clone(s[:maxIdentityBytes])
}

func (s *session) setInfo(clientID, software string) {
	clientID, software = clipIdentity(clientID), clipIdentity(software)
	ci := &clientInfo{clientID: clientID, software: software, addr: s.addr}
	cl := s.p.client(s.addr, clientID, software)
	ci.service, ci.traced = cl.Service, cl.Traced
	old := s.info.Swap(ci)
	if old == nil || old.service != ci.service || old.traced != ci.traced {
		// A client opens a connection per broker and more: its first one says who it is.
		e := s.log.Debug()
		if s.p.identified(ci) {
			e = s.log.Info()
		}
		if ci.traced {
			e = e.Bool("traced", true)
		}
		e.Str("client_id", clientID).Str("software", software).Str("service", ci.service).Msg("kafka client identified")
	}
}
