package amqp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
	"github.com/rs/zerolog"
)

const bufSize = 64 << 10

// What the next content header on a channel belongs to.
const (
	contentNone = iota
	contentPublish
	contentDeliver
	contentGetOk
	contentReturn
	contentDiscarded // delivered on a channel the client is closing: it discards it
)

// session is one client connection and its upstream. The client-to-broker goroutine owns pub, the
// broker-to-client goroutine owns del; state both directions need sits in shared under mu.
type session struct {
	p    *Proxy
	c    *proxy.Conn
	log  zerolog.Logger
	addr netip.Addr

	service  atomic.Pointer[string]
	traced   atomic.Bool // its own tracer checkpoints what it consumes (a services rule says so)
	draining atomic.Bool
	heldTx   proxy.Share // this connection's part of Proxy.heldTx
	// and of Proxy.heldConfirms; acked is confirm's buffer (broker goroutine)
	heldConfirms proxy.Share
	acked        []pathway.Point
	tags         proxy.Share // and of Proxy.tags
	// The connection is open (Connection.OpenOk passed), the client has not begun to close it,
	// and the proxy closes it for a drain: see closeOrderly.
	opened, clientClosing, proxyClosing atomic.Bool
	brokerClose                         atomic.Pointer[string] // why the broker closed the connection, with an error code
	loginSent, tuned                    atomic.Bool            // Connection.StartOk forwarded; Connection.Tune came back
	user                                atomic.Pointer[string] // the login's user, from Connection.StartOk
	// closeOkSent is closed once the relay has forwarded the broker's CloseOk to a client that
	// sent Connection.Close: a drain waiting for it need not wait for the broker's socket too.
	closeOkSent     chan struct{}
	closeOkSignaled atomic.Bool
	// brokerSaidClose: the broker sent Connection.Close, which the client was given (the broker
	// relay's goroutine only).
	brokerSaidClose bool
	frameMax        uint32 // from Connection.TuneOk; client goroutine only
	// consumerFrameMax is frameMax for the broker goroutine, which fits deliveries to it.
	consumerFrameMax atomic.Uint32
	// The channel of the client's latest Basic.Publish: a broker's Connection.Close over a
	// publish names no channel (discard.go).
	lastPubCh atomic.Uint32
	// Broker acks and nacks seen: a drain waits for confirms while they keep coming (closeOrderly).
	confirmsSeen atomic.Uint64

	pub map[uint16]*pubState
	del map[uint16]*delState
	// The publish side pubFor found last: a publish's frames come one after another on its
	// channel, and its method, content header and body each look it up.
	lastPS   *pubState
	lastPSCh uint16

	mu     sync.Mutex
	shared map[uint16]*chanShared
	// The broker sent Connection.Close (with connCloseCode): it discards what the client sends on
	// any channel until its CloseOk (under mu, as shared).
	connClosed    bool
	connCloseCode uint16

	out    []byte // rewritten frames (client goroutine)
	delOut []byte // rewritten frames (broker goroutine)
	val    []byte // header value (client goroutine)
	// The values the proxy put on this connection's latest publishes (client goroutine): a
	// returned message carries one back, and a client that publishes it again is republishing
	// the proxy's own context, not a tracer's.
	own    [ownValues][pathway.Base64Len]byte
	ownPos int
}

// pubState is a channel's publish side.
type pubState struct {
	awaiting     bool   // a Basic.Publish was read; its content header comes next
	bodyLeft     uint64 // body bytes of the current publish still to come
	bodyUnknown  bool   // its header was relayed unread: the body ends at the channel's next method
	confirm      bool   // Confirm.Select: publishes are numbered for acks and nacks
	tx           bool   // Tx.Select: publishes count when their transaction commits
	txPoints     []pathway.Point
	txSent       int  // publishes since the last Tx.Commit or Rollback, held or not
	discard      bool // the current publish came after the broker closed the channel
	tally        pubTally
	exchange, rk []byte
	edge         *pathway.Edge // edge of exchange/rk, rebuilt only when they change
	node         nodeOf        // of edge
}

// nodeOf keeps the checkpoint node of a channel's edge for the connection's service: a channel
// publishes to (or consumes) one edge message after message, whose node the checkpointer would
// look up for each by hashing the edge's strings.
type nodeOf struct {
	node    *pathway.Node
	service string
}

// get is the node of service on e, which must be the edge of the last call unless reset
// between.
func (n *nodeOf) get(cp *pathway.Checkpointer, service string, e *pathway.Edge) *pathway.Node {
	if n.node == nil || n.service != service {
		n.node, n.service = cp.Node(service, *e), service
	}
	return n.node
}

// reset forgets the node: the edge changed.
func (n *nodeOf) reset() { n.node = nil }

// delState is a channel's delivery side.
type delState struct {
	awaiting int
	queue    string
	edge     *pathway.Edge
	node     nodeOf // of edge
	stripped int    // bytes of the pathway entry fitDelivery took out of the header being delivered
}

type pendingConsume struct{ queue, tag string }

type target struct {
	method methodID
	edge   pathway.Edge
	// dest is an Exchange.Bind or Unbind's destination; edge names its source.
	dest string
}

// The exchange methods, and the bindings: a binding's refusal concerns the exchange as much as
// the queue or destination exchange (most often the exchange is not declared yet).
var (
	exchDeclare = mid(classExchange, 10)
	exchDelete  = mid(classExchange, 20)
	exchBind    = mid(classExchange, 30)
	exchUnbind  = mid(classExchange, 40)
	queueBind   = mid(classQueue, 20)
	queueUnbind = mid(classQueue, 50)
)

// namesTwoExch: Exchange.Bind and Unbind name a destination and a source exchange.
func namesTwoExch(m methodID) bool { return m == exchBind || m == exchUnbind }

// targetOf is the queue or exchange method m names, when it is one of those whose refusal
// concerns one: they all start with a reserved short and the name (Queue.Bind and Unbind then
// the exchange, Exchange.Bind and Unbind the destination then the source). a is a copy of the
// method's argument reader, so the caller's own stays at the start.
func targetOf(m methodID, a args) (target, bool) {
	t := target{method: m}
	e := &t.edge
	switch {
	case m == basicConsume || m == basicGet:
		e.Direction = pathway.In
	case m>>16 == classQueue && m != queueDeclOk && m&1 == 0:
	case m == exchDeclare || m == exchDelete || namesTwoExch(m):
	default:
		return t, false
	}
	a.u16()
	name := string(a.short())
	var second string
	if m == queueBind || m == queueUnbind || namesTwoExch(m) {
		second = string(a.short())
	}
	if a.err != nil {
		return t, false
	}
	e.Type = pathway.TypeRabbitMQ
	switch {
	case namesTwoExch(m):
		e.Exchange, t.dest = second, name
	case m>>16 == classExchange:
		e.Exchange = name
	default:
		e.Topic, e.Exchange = name, second
	}
	return t, true
}

// refused is the edge a broker's refusal of t concerns: of an exchange binding's two
// exchanges, the destination when the broker's text names it ("no exchange 'x' in vhost"),
// else the source.
func (t target) refused(text []byte) pathway.Edge {
	e := t.edge
	if t.dest != "" && t.dest != e.Exchange && bytes.Contains(text, []byte("'"+t.dest+"'")) {
		e.Exchange = t.dest
	}
	return e
}

// chanShared is channel state learned in one direction and used in the other.
type chanShared struct {
	consumers map[string]string // consumer tag -> queue
	// Tags cancelled with no-wait, still in consumers for deliveries already on their way: the
	// first evicted when consumers is full (cancelledAt: the cancel each is still valid for).
	cancelled    []cancelledTag
	cancelledAt  map[string]uint64
	cancelSeq    uint64
	pending      []pendingConsume // Basic.Consume waiting for its ConsumeOk
	lastDeclared string
	getQueue     string
	lastPub      *pathway.Edge
	// The queue or exchange the latest other method naming one concerned (Basic.Consume,
	// Basic.Get, Queue.*, Exchange.Declare/Delete): a broker Channel.Close for that method
	// concerns it. Such methods are synchronous, so the latest is the one refused.
	lastTarget target
	committing []pathway.Point // publishes of a Tx.Commit waiting for its CommitOk
	// committingMsgs counts those publishes, held or not; tally is the publish side's (discard.go).
	committingMsgs int
	tally          *pubTally
	closing        bool // the client sent Channel.Close; the broker's CloseOk has not come
	// The broker closed the channel (with closeCode) and the client's CloseOk has not come: the
	// broker discards what the client sends on it meanwhile.
	brokerClosed bool
	closeCode    uint16
	// In confirm mode, the edges of the latest publishes by sequence number, so a nack names
	// the exchange or queue it concerns.
	seq     uint64
	pubRing []*pathway.Edge // cleared as the broker confirms
	settled uint64          // every tag up to it confirmed
	// Unconfirmed publishes the ring has overwritten, by tag: RabbitMQ confirms one by one
	// while an older publish waits (a slow queue), and more than pubRingSize later ones can be
	// confirmed first. Beyond maxEvicted only their number is kept (untracked).
	evicted   map[uint64]*pathway.Edge
	untracked int
	// Confirm mode: the publishes' checkpoints awaiting acks, by tag (confirms.go).
	held     []heldPub
	heldHead int
	heldLive int // of held, those not settled yet
}

// pubRingSize bounds the publishes remembered per confirm-mode channel; maxEvicted, those kept
// after the ring moved past them unconfirmed. A ring starts at pubRingMin and doubles, up to
// pubRingSize, when the publishes still unconfirmed would not fit: a publisher that keeps a few
// unconfirmed costs a few hundred bytes a channel, not 8 KiB (channels are up to 2047 a
// connection, and connections are unlimited unless max_conns is set). A ring does not shrink:
// one publish left unconfirmed behind hundreds of later ones keeps its channel's ring large.
const (
	pubRingMin  = 64
	pubRingSize = 1024
	maxEvicted  = 1024
)

// ringLen is the number of publishes cs's ring holds: the tags seq-ringLen+1 .. seq. Older
// unconfirmed ones are in evicted (or counted in untracked); a ring grows instead of evicting
// until it is pubRingSize long.
func (cs *chanShared) ringLen() uint64 { return uint64(len(cs.pubRing)) }

// trackPublishLocked remembers confirm-mode publish cs.seq+1 and its edge.
func (cs *chanShared) trackPublishLocked(e *pathway.Edge) {
	cs.seq++
	if cs.pubRing[cs.seq%cs.ringLen()] != nil && len(cs.pubRing) < pubRingSize {
		cs.growRingLocked()
	}
	n := cs.ringLen()
	slot := cs.seq % n
	if old := cs.pubRing[slot]; old != nil {
		switch {
		case len(cs.evicted) < maxEvicted:
			if cs.evicted == nil {
				cs.evicted = map[uint64]*pathway.Edge{}
			}
			cs.evicted[cs.seq-n] = old
		default:
			cs.untracked++
		}
	}
	cs.pubRing[slot] = e
}

// growRingLocked doubles the ring for publish cs.seq, whose slot holds publish cs.seq-n, still
// unconfirmed: every publish the ring holds (cs.seq-n .. cs.seq-1) moves to its slot in the new
// one, where none collides with cs.seq.
func (cs *chanShared) growRingLocked() {
	old, n := cs.pubRing, cs.ringLen()
	cs.pubRing = make([]*pathway.Edge, min(2*n, pubRingSize))
	m := cs.ringLen()
	for k := cs.seq - n; k < cs.seq; k++ {
		cs.pubRing[k%m] = old[k%n]
	}
}

// advanceSettledLocked moves settled past every publish confirmed since, so that a multiple
// confirm starts at the oldest unconfirmed publish and counts nothing confirmed before.
func (cs *chanShared) advanceSettledLocked() {
	for cs.settled < cs.seq {
		next := cs.settled + 1
		if cs.seq-next >= cs.ringLen() { // older than the ring: only evicted ones are unconfirmed
			if cs.untracked > 0 {
				return
			}
			floor := cs.seq - cs.ringLen() // the newest tag older than the ring
			for t := range cs.evicted {
				floor = min(floor, t-1)
			}
			if floor < next {
				return
			}
			cs.settled = floor
			continue
		}
		if cs.pubRing[next%cs.ringLen()] != nil {
			return
		}
		cs.settled = next
	}
}

// ServeConn implements proxy.Handler.
func (p *Proxy) ServeConn(ctx context.Context, c *proxy.Conn) error {
	p.stats.conns.Add(1)
	s := &session{p: p, c: c, log: c.Log, pub: map[uint16]*pubState{}, del: map[uint16]*delState{}, shared: map[uint16]*chanShared{},
		closeOkSent: make(chan struct{})}
	if ap, err := netip.ParseAddrPort(proxy.AddrString(c.Client.RemoteAddr())); err == nil {
		s.addr = ap.Addr().Unmap()
	}
	s.setService("", "")
	// Whatever the connection still holds when it ends goes with it.
	defer func() {
		s.endConnHeld()
		s.p.heldTx.Release(&s.heldTx)
		s.p.tags.Release(&s.tags)
	}()
	return s.serve(ctx)
}

func (s *session) setService(connName, user string) {
	if len(connName) > maxConnNameBytes {
		connName = strings.Clone(connName[:maxConnNameBytes])
	}
	cl := s.p.cfg.Services.Client(proxy.Identity{Protocol: "amqp", ClientID: connName, User: user, Addr: s.addr,
		Described: proxy.TrimGenerated(describedConnName(connName))})
	svc := cl.Service
	wasTraced := s.traced.Swap(cl.Traced)
	old := s.service.Swap(&svc)
	if old != nil && (*old != svc || wasTraced != cl.Traced) {
		// The login comes before the broker takes it, as long as a frame (a substring of the
		// client's SASL response): the clients remembered below (after their connections end)
		// and the line keep a copy of its first bytes.
		user = strings.Clone(user[:min(len(user), maxConnNameBytes)])
		// A client may open a connection per message: its first one says who it is.
		e := s.log.Debug()
		if s.p.identified(clientIdentity{addr: s.addr, connName: connName, user: user, service: svc}) {
			e = s.log.Info()
		}
		if cl.Traced {
			e = e.Bool("traced", true)
		}
		e.Str("connection_name", connName).Str("user", user).Str("service", svc).Msg("amqp client identified")
	}
}

// clientIdentity is what makes a client new to the log: its host, name, login and service.
type clientIdentity struct {
	addr                    netip.Addr
	connName, user, service string
}

// maxIdentified bounds the clients remembered as identified at Info; a client forgotten is
// logged at Info again.
const maxIdentified = 10000

// identified reports whether id is new, remembering it.
func (p *Proxy) identified(id clientIdentity) bool {
	return p.seen.Add(id) // nil in a Proxy not made by New (tests): every client is new
}

// maxConnNameBytes caps the connection_name kept per connection (and named in checkpoints).
const maxConnNameBytes = 255

// describedConnName is the service a connection_name suggests. Spring AMQP names connections
// "<connection factory bean>#<identity hash>:<counter>" unless told otherwise: the hash and
// counter change with every JVM and reconnect, and its default beans (SpringAMQP, Spring Boot's
// rabbitConnectionFactory and its .publisher twin) name the library, not a service.
func describedConnName(name string) string {
	i := strings.LastIndexByte(name, '#')
	if i < 0 {
		return name
	}
	hash, n, ok := strings.Cut(name[i+1:], ":")
	if !ok || hash == "" || n == "" || strings.Trim(hash, "0123456789abcdef") != "" || strings.Trim(n, "0123456789") != "" {
		return name
	}
	bean := strings.TrimSuffix(name[:i], ".publisher")
	switch bean {
	case "", "SpringAMQP", "rabbitConnectionFactory":
		return ""
	}
	return bean
}

func (s *session) serve(ctx context.Context) error {
	cr, uw := s.relay(s.c.Client, s.c.Upstream, s.p.tap)
	defer func() { cr.release(); uw.release() }()
	// A client that sends nothing would otherwise hold its socket, and one to a broker that has
	// given up on it, for as long as it stays connected. Set before the drain watcher starts, so
	// a drain already under way is not put off by it.
	s.c.Client.SetReadDeadline(time.Now().Add(headerTimeout))
	// A drain wakes the client reader; it closes at the next safe frame boundary.
	defer s.c.WakeOnDrain(ctx, &s.draining)()
	var hdr [8]byte
	if _, err := io.ReadFull(cr, hdr[:]); err != nil {
		if s.draining.Load() {
			return nil
		}
		// A port probe or TCP health check connects and sends nothing: not worth a Warn each.
		s.log.Debug().Err(err).Msg("closing connection: the client sent no AMQP protocol header")
		return proxy.Logged(fmt.Errorf("amqp protocol header: %w", err))
	}
	s.c.Client.SetReadDeadline(time.Time{})
	if s.draining.Load() { // the drain's deadline was just cleared: no session yet to keep
		return nil
	}
	if hdr != protocolHeader {
		// A 0-9-1 server answers any other protocol header with the one it speaks and closes.
		// Loud only now and then: anyone who reaches the port can send an HTTP request.
		n := s.p.stats.refused.Add(1)
		ev := s.log.Debug()
		if proxy.LogNth(n) {
			ev = s.log.Warn()
		}
		if what := proxy.LooksLike(hdr[:]); what != "" {
			version := ""
			if what == proxy.AMQPHeader {
				version = amqpVersion(hdr)
				what = "an AMQP " + version + " protocol header"
			}
			ev = ev.Str("looks_like", what)
			switch hint := proxy.OtherFrontHint(what, "AMQP"); {
			case version == "1.0":
				ev = ev.Str("hint", "the client speaks AMQP 1.0 (served by RabbitMQ 4 on the 0-9-1 port, or by its amqp1_0 plugin); this front speaks 0-9-1 only: connect AMQP 1.0 clients to the broker directly")
			case version != "":
				ev = ev.Str("hint", "this front speaks AMQP 0-9-1 only")
			case proxy.IsTLS(what):
				ev = ev.Str("hint", "the client speaks TLS (amqps) and this listener does not: give the front tls {cert_file, key_file}, or have the client use amqp://")
			case hint != "":
				ev = ev.Str("hint", hint)
			}
		}
		ev.Hex("header", hdr[:]).Uint64("refused_protocol_total", n).Msg("client opened with a protocol other than AMQP 0-9-1; refused")
		s.c.Client.Write(protocolHeader[:])
		return nil
	}
	if _, err := s.c.Upstream.Write(hdr[:]); err != nil {
		return fmt.Errorf("amqp protocol header to %s: %w", s.c.Upstream.RemoteAddr(), err)
	}
	down := make(chan error, 1)
	go func() {
		err := s.c.Recover("amqp broker relay", func() error {
			br, cw := s.relay(s.c.Upstream, s.c.Client, s.p.tapBroker)
			defer func() { br.release(); cw.release() }()
			if err := s.brokerSpeaksAMQP(br); err != nil {
				return err
			}
			err := s.fromBroker(br, cw)
			if s.proxyClosing.Load() && !errors.Is(err, errClientTold) && br.ended && !s.brokerSaidClose {
				// The proxy closed the broker side without its CloseOk (a broker that reads
				// nothing, in a memory alarm, never answers), or the broker ended meanwhile:
				// the client is told all the same, between two frames, as RabbitMQ tells it
				// when it stops, and not dropped as by a network failure.
				if _, werr := cw.Write(forcedCloseFrame); werr == nil && cw.Flush() == nil {
					return errClientTold
				}
			}
			return err
		})
		switch {
		case errors.Is(err, errClientTold):
		case proxy.IsReset(err):
			// The broker's reset reaches the client as a reset, as it does direct: clients report
			// the two differently (amqp091-go: "connection reset by peer" against "EOF").
			proxy.ResetClose(s.c.Client)
		default:
			// The broker ended: the client must see the connection end too.
			s.c.Client.Close()
		}
		down <- err
	}()
	err := s.fromClient(cr, uw)
	if errors.Is(err, errDrained) && s.opened.Load() && !s.clientClosing.Load() {
		derr := s.closeOrderly(cr, uw, down)
		s.c.Upstream.Close()
		s.c.Client.Close()
		s.log.Debug().AnErr("broker", derr).Msg("amqp connection closed for proxy shutdown")
		return nil
	}
	var derr error
	if errors.Is(err, errDrained) && s.clientClosing.Load() {
		// The client's own Connection.Close is with the broker: the relay forwards its CloseOk,
		// as without the proxy. The broker may take a while (it closes every channel first): the
		// wait ends there, when the broker ends the connection, or at the drain's deadline, when
		// the listener closes both sockets. (A fixed 2 s was too short for a busy broker.)
		select {
		case derr = <-down:
			s.c.Upstream.Close()
		case <-s.closeOkSent:
			s.c.Upstream.Close() // RabbitMQ waits for the client to hang up first
			derr = <-down
		}
	} else {
		s.c.Upstream.Close()
		select {
		case derr = <-down:
		case <-time.After(closeWait):
			// The broker relay is stuck writing to a client that reads nothing (its reader
			// stalled), and the broker side is over: the relay would never read the end, and the
			// client, whose writes the proxy's socket still takes, would never learn of it. Direct,
			// its next write (a heartbeat) would fail: the relay ends, and the client is closed.
			s.c.Client.SetWriteDeadline(time.Now())
			derr = <-down
		}
	}
	if errors.Is(err, errDrained) {
		s.log.Debug().Msg("amqp connection closed for proxy shutdown")
		return nil
	}
	if why := s.brokerClose.Load(); why != nil {
		// The broker's reason, not the socket error that followed.
		s.brokerCloseLine(*why).Str("reason", *why).Str("user", s.loginUser()).Msg("the broker closed the connection")
		return nil
	}
	if s.loginSent.Load() && !s.tuned.Load() && !quiet(derr) {
		// RabbitMQ answers refused credentials by closing the socket, unless the client asked
		// for a Connection.Close (authentication_failure_close): say what it means, not "reset",
		// and track it as that close would be (the client reports 403 too). The vhost comes
		// later, in Connection.Open, and its refusal is a close.
		s.p.errs.Report(errtrack.Event{
			Time: s.p.now(), Category: errtrack.BrokerError, Protocol: "amqp", Operation: methodName(connStartOk),
			Code: replyAccessRefused, Name: replyName(replyAccessRefused),
			Message:   "the broker closed the socket after the login, before Connection.Tune: it refused the credentials",
			Service:   *s.service.Load(),
			Edge:      pathway.Edge{Type: pathway.TypeRabbitMQ},
			Partition: -1,
		})
		s.brokerCloseLine("refused login").AnErr("broker", derr).Str("user", s.loginUser()).Msg("the broker closed the connection after the client's login, before Connection.Tune: it refused the credentials")
		return nil
	}
	if quiet(err) {
		if quiet(derr) {
			return nil
		}
		return fmt.Errorf("amqp from broker %s: %w", s.c.Upstream.RemoteAddr(), derr)
	}
	return clientRelayError(err, s.c.Upstream.RemoteAddr())
}

// clientRelayError names what ended the client-to-broker relay: a write to the broker that failed
// is the broker's side (RabbitMQ resets a connection whose client reads too slowly, at its send
// timeout), which "from client" misread in the log.
func clientRelayError(err error, broker net.Addr) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "write" && op.Addr != nil && broker != nil && op.Addr.String() == broker.String() {
		return fmt.Errorf("amqp to broker %s: %w", broker, err)
	}
	return fmt.Errorf("amqp from client: %w", err)
}

// relay is the reader of one side and the writer to the other, their buffers counted in the
// front's RelayBuffers: the writer gives its buffer back when the reader parks. tap, when set
// (tests), sees every byte read.
func (s *session) relay(from, to net.Conn, tap func(conn uint64) io.Writer) (*connReader, *connWriter) {
	r, w := newConnReader(from, proxy.Parking(from)), newConnWriter(to)
	r.held, w.held = bufCount{&s.p.relayBufs}, bufCount{&s.p.relayBufs}
	r.onPark = w.park
	if tap != nil {
		r.tee = tap(s.c.ID)
	}
	return r, w
}

// amqpVersion names the protocol a header other than 0-9-1's asks for ("1.0", "0-10", ...), or
// the header's bytes after "AMQP" when they name none.
func amqpVersion(h [8]byte) string {
	switch {
	case (h[4] == 0 || h[4] == 2 || h[4] == 3) && h[5] == 1 && h[6] == 0 && h[7] == 0:
		return "1.0" // protocol id 0 plain, 2 TLS, 3 SASL
	case h[4] == 1 && h[5] == 1 && h[6] == 8 && h[7] == 0:
		return "0-8"
	case h[4] == 1 && h[5] == 1 && h[6] == 0:
		return fmt.Sprintf("0-%d", h[7]) // 0-9, 0-10
	}
	return fmt.Sprintf("%d.%d.%d.%d", h[4], h[5], h[6], h[7])
}

// brokerCloseKey is what makes a broker's close of a connection new to the log.
type brokerCloseKey struct {
	addr         netip.Addr
	user, reason string
}

// brokerCloseLine is the line for the broker's close of this connection: Warn the first time
// its client, login and reason come together (for up to 10 such a minute, so that a client
// trying a new login each time cannot flood the log either) and every 1000th close, Debug
// else, so that a client retrying a refused login in a loop does not write a Warn line a try.
// The tracked errors count every close.
func (s *session) brokerCloseLine(reason string) *zerolog.Event {
	n := s.p.closes.Add(1)
	if s.p.closesSeen.Add(brokerCloseKey{s.addr, s.loginUser(), reason}) && s.p.newCloseWarns() || n%1000 == 0 {
		return s.log.Warn().Uint64("broker_closes_total", n)
	}
	return s.log.Debug().Uint64("broker_closes_total", n)
}

// maxNewCloseWarns is how many closes new to the log are Warn lines in a minute. A minute, not
// the process's life: a broker restart closes every client at once, and each is new, so a
// lifetime's few would be spent on it, and a login refused days later would be Debug only.
const maxNewCloseWarns = 10

// newCloseWarns counts a close new to the log and says whether it may be a Warn line.
func (p *Proxy) newCloseWarns() bool {
	now := p.now()
	p.newClosesMu.Lock()
	defer p.newClosesMu.Unlock()
	if now.Sub(p.newClosesSince) >= time.Minute || now.Before(p.newClosesSince) {
		p.newClosesSince, p.newCloses = now, 0
	}
	p.newCloses++
	return p.newCloses <= maxNewCloseWarns
}

// loginUser is the user the client logged in as, for the lines about the broker's refusals: of
// several clients, it tells the misconfigured one ("" before Connection.StartOk).
func (s *session) loginUser() string {
	if u := s.user.Load(); u != nil {
		return *u
	}
	return ""
}

func quiet(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

// brokerSpeaksAMQP waits for the upstream's first bytes, which a broker sends at once (Connection.Start,
// or its own protocol header), and ends the connection when they are another protocol's: a front
// whose upstream is another service's port would otherwise leave each client waiting for its own
// timeout, or reading an HTTP answer as frames, with nothing said. An upstream silent for
// Config.upstreamWait (headerTimeout) is told once per connection, and waited for: a broker
// may be slow.
func (s *session) brokerSpeaksAMQP(br *connReader) error {
	s.c.Upstream.SetReadDeadline(time.Now().Add(s.p.cfg.upstreamWait))
	b, err := br.Peek(7)
	s.c.Upstream.SetReadDeadline(time.Time{})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// Per connection, so loud only now and then: every client of a front pointed at the
		// wrong port meets it.
		n := s.p.stats.silentUpstreams.Add(1)
		ev := s.log.Debug()
		if proxy.LogNth(n) {
			ev = s.log.Warn()
		}
		ev.Stringer("waited", s.p.cfg.upstreamWait).Uint64("silent_upstreams_total", n).
			Msg("the upstream has not answered the AMQP protocol header (a broker sends Connection.Start at once): is the front's upstream an AMQP 0-9-1 broker, and does it want TLS (upstream_tls)?")
		s.p.wrong.Wrong(s.p.cfg.Upstream, fmt.Errorf("did not answer the AMQP protocol header within %s (a broker sends Connection.Start at once): is it an AMQP 0-9-1 broker, and does it want TLS (upstream_tls)?", s.p.cfg.upstreamWait))
		b, err = br.Peek(7)
	}
	if err != nil {
		return nil // the relay reads the same end and reports it
	}
	if wrong := notAMQP(b); wrong != nil {
		ev := s.log.Warn().Hex("first_bytes", b)
		if what := proxy.LooksLike(b); what != "" {
			ev = ev.Str("looks_like", what)
		}
		ev.Msg("closing connection: the upstream answered the AMQP protocol header with another protocol; is the front's upstream an AMQP 0-9-1 broker (and, for a TLS one, is upstream_tls set)?")
		s.p.wrong.Wrong(s.p.cfg.Upstream, wrong)
		return proxy.Logged(errors.New("the upstream does not speak AMQP 0-9-1"))
	}
	s.p.wrong.Answered(s.p.cfg.Upstream)
	return nil
}

// notAMQP is why an upstream whose first bytes after the protocol header are b (7 or more) is not
// an AMQP 0-9-1 broker, or nil: a broker answers with a method frame on channel 0
// (Connection.Start) or its own protocol header.
func notAMQP(b []byte) error {
	if b[0] == frameMethod && b[1] == 0 && b[2] == 0 || bytes.HasPrefix(b, []byte("AMQP")) {
		return nil
	}
	return fmt.Errorf("answered the AMQP protocol header with %s, not AMQP 0-9-1: is it an AMQP 0-9-1 broker (and, for a TLS one, is upstream_tls set)?", proxy.Describe(b))
}

// headerTimeout is how long a client has to send the protocol header (RabbitMQ's own
// handshake_timeout is 10 s).
const headerTimeout = 10 * time.Second

// errDrained ends a connection the proxy closed for a graceful shutdown.
var errDrained = errors.New("closed for proxy shutdown")

// errClientTold: the broker relay told the client the connection is closed (closeOrderly).
var errClientTold = errors.New("client told of the proxy's shutdown")

// closeWait bounds each step of closeOrderly: the broker's CloseOk, then the client's.
const closeWait = 2 * time.Second

// closeOrderly ends an open connection in a drain as RabbitMQ ends one when it stops, instead of
// dropping both sockets: the proxy closes the broker side with Connection.Close, so the broker
// sends the confirms and deliveries already on their way and then CloseOk; the broker relay then
// tells the client Connection.Close 320 (CONNECTION_FORCED), and the client's CloseOk ends it.
// Clients then see a server-initiated close, which they handle as a restart, not a network
// failure. It returns the broker relay's error.
func (s *session) closeOrderly(cr *connReader, uw *connWriter, down <-chan error) error {
	cr.onPark = nil // uw is written from two goroutines below, under wmu: it keeps its buffer
	// The client is read on until it answers the proxy's Close: its acks of deliveries (and
	// heartbeats) go to the broker until the proxy closes that side, or the broker would requeue
	// messages the client handled. Nothing else is forwarded: no new publish, no method that
	// would want an answer.
	var wmu sync.Mutex
	forward := true
	clientDone := make(chan struct{})
	var stopping atomic.Bool
	var untilNs atomic.Int64 // moved on while the broker keeps confirming (below)
	extend := func() {
		until := time.Now().Add(3 * closeWait)
		untilNs.Store(until.UnixNano())
		s.c.Client.SetReadDeadline(until)
		s.c.Upstream.SetWriteDeadline(until) // a broker that stops reading cannot hold the drain
	}
	extend()
	go s.c.Recover("amqp drain reader", func() error {
		defer close(clientDone)
		fr := &frameReader{r: cr, max: s.p.cfg.MaxFrameBytes}
		// The drain watcher may set its wake-up deadline after the one above: read on.
		fr.again = func(err error) bool {
			until := time.Unix(0, untilNs.Load())
			if !errors.Is(err, os.ErrDeadlineExceeded) || stopping.Load() || !time.Now().Before(until) {
				return false
			}
			s.c.Client.SetReadDeadline(until)
			return true
		}
		discard := newConnWriter(io.Discard)
		defer discard.release()
		for {
			typ, ch, size, err := fr.header()
			if err != nil {
				return nil
			}
			if typ != frameMethod && typ != frameHeartbeat || int64(size) > int64(fr.max) {
				if fr.copyFrame(discard, size) != nil {
					return nil
				}
				continue
			}
			f, err := fr.read(size)
			if err != nil {
				return nil
			}
			var m methodID
			if typ == frameMethod {
				m = methodOf(f.Payload)
			}
			if ch == 0 && m == connCloseOk {
				return nil
			}
			if typ == frameHeartbeat || m == basicAck || m == basicNack || m == basicReject {
				func() {
					wmu.Lock()
					defer wmu.Unlock() // held by nobody after a panic, or the close below would wait for ever
					if forward {
						uw.Write(f.Raw)
						uw.Flush()
					}
				}()
			}
		}
	})
	defer func() {
		stopping.Store(true)
		s.c.Client.SetReadDeadline(time.Now()) // the reader ends, whatever the client does
		<-clientDone
	}()
	// RabbitMQ does not confirm what it has not confirmed by the time a connection closes, though
	// the queue keeps it: publishes the proxy forwarded get their confirms first. A busy broker
	// may still have thousands of them to read from its socket, so the wait goes on while
	// confirms keep coming, and ends closeWait after the last one (or at the drain's deadline,
	// which closes both sockets).
	seen, lastConfirm := s.confirmsSeen.Load(), time.Now()
	for s.unconfirmed() && time.Since(lastConfirm) < closeWait {
		select {
		case derr := <-down:
			return derr // the broker ended the connection meanwhile
		case <-time.After(5 * time.Millisecond):
		}
		if n := s.confirmsSeen.Load(); n != seen {
			seen, lastConfirm = n, time.Now()
			extend()
		}
	}
	wmu.Lock()
	forward = false
	s.proxyClosing.Store(true)
	_, err := uw.Write(connCloseFrame(replySuccess, "dsmproxy is shutting down"))
	if err == nil {
		err = uw.Flush()
	}
	wmu.Unlock()
	var derr error
	select {
	case derr = <-down:
	case <-time.After(closeWait):
		// No CloseOk: end the broker side (the relay then tells the client), and free the
		// relay, in time, if a client that stopped reading holds it in a write.
		s.c.Upstream.Close()
		s.c.Client.SetWriteDeadline(time.Now().Add(closeWait))
		derr = <-down
	}
	if err != nil || !errors.Is(derr, errClientTold) {
		return derr
	}
	// The client was told: its CloseOk ends the reader (or closeWait does).
	select {
	case <-clientDone:
	case <-time.After(closeWait):
	}
	return derr
}

// unconfirmed reports whether a channel in confirm mode has publishes the broker has not
// confirmed yet, among those the ring still tracks (confirmed ones are cleared from it, by a
// multiple ack or one by one).
func (s *session) unconfirmed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cs := range s.shared {
		if cs.pubRing == nil || cs.seq <= cs.settled {
			continue
		}
		lo := cs.settled + 1
		if n := cs.ringLen(); cs.seq >= n {
			lo = max(lo, cs.seq-n+1)
		}
		if len(cs.evicted) > 0 || cs.untracked > 0 {
			return true
		}
		for k := lo; k <= cs.seq; k++ {
			if cs.pubRing[k%cs.ringLen()] != nil {
				return true
			}
		}
	}
	return false
}

// AMQP reply codes the proxy sends, or tracks where the broker said it without one.
const (
	replySuccess          = 200
	replyConnectionForced = 320
	replyAccessRefused    = 403
)

// forcedCloseFrame tells a client the proxy is shutting down, as RabbitMQ tells it when it stops.
var forcedCloseFrame = connCloseFrame(replyConnectionForced, "CONNECTION_FORCED - dsmproxy is shutting down")

// connCloseFrame is a Connection.Close method frame on channel 0 (no failing method).
func connCloseFrame(code uint16, text string) []byte {
	b := []byte{frameMethod, 0, 0, 0, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, classConnection)
	b = binary.BigEndian.AppendUint16(b, 50)
	b = binary.BigEndian.AppendUint16(b, code)
	b = append(b, byte(len(text)))
	b = append(b, text...)
	b = append(b, 0, 0, 0, 0) // class and method id: none
	return endFrame(b)
}

// pump reads frames from r and hands each non-body frame that fits MaxFrameBytes to handle, which
// forwards it to w; body frames and oversized frames are streamed through, body frames counted
// by body when it is not nil. Before a read could block, what is buffered for w is flushed, so
// frames are batched only while more are waiting. When safe is non-nil and the proxy drains,
// pump returns errDrained at the first frame boundary where safe says no message is half through.
func (s *session) pump(side string, r *connReader, w *connWriter, safe func() bool, handle func(ch uint16, f frame) error, skipped func(ch uint16, typ byte), body func(ch uint16, size uint32)) error {
	fr := &frameReader{r: r, max: s.p.cfg.MaxFrameBytes}
	if safe != nil {
		fr.again = s.wakeUp
	}
	for {
		if r.Buffered() < 7 {
			if err := w.Flush(); err != nil {
				return err
			}
			// Bytes the client sent that the kernel still holds are a request to finish first.
			if safe != nil && s.draining.Load() && r.Buffered() == 0 && safe() && proxy.Unread(s.c.Client) == 0 {
				return errDrained
			}
		}
		typ, ch, size, err := fr.header()
		if err != nil {
			if safe != nil && s.wakeUp(err) {
				continue
			}
			w.Flush()
			r.ended = true
			return err
		}
		switch {
		case typ == frameBody:
			if body != nil {
				body(ch, size)
			}
			err = fr.copyFrame(w, size)
		case int64(size) > int64(fr.max):
			n := s.p.decodeError("frame", fmt.Errorf("%d-byte frame of type %d on channel %d exceeds MaxFrameBytes %d; relayed unread", size, typ, ch, fr.max))
			// On the connection too: when the peer then ends it (RabbitMQ resets one whose frame
			// passes its frame_max), its line names only that, not the frame.
			ev := s.log.Debug()
			if proxy.LogNth(n) {
				ev = s.log.Warn()
			}
			ev.Str("from", side).Uint32("size", size).Uint8("type", typ).Uint16("channel", ch).Int("max_frame_bytes", fr.max).
				Uint64("decode_errors_total", n).Msg("frame over max_frame_bytes relayed unread: the other side decides whether it takes it")
			skipped(ch, typ)
			err = fr.copyFrame(w, size)
		default:
			if r.Buffered() < int(size)+frameOverhead {
				if err := w.Flush(); err != nil {
					return err
				}
			}
			var f frame
			if f, err = fr.next(size); err == nil {
				err = handle(ch, f)
			}
		}
		if err != nil {
			return err
		}
	}
}

// wakeUp reports whether err is the deadline the drain watcher set to wake a blocked read; it
// clears the deadline so reading goes on.
func (s *session) wakeUp(err error) bool {
	if !s.draining.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	s.c.Client.SetReadDeadline(time.Time{})
	return true
}

// fromClient relays client frames to the broker, splicing published content headers.
func (s *session) fromClient(r *connReader, w *connWriter) error {
	// A drain must not cut a publish between its method frame and its body's last byte: the
	// broker would drop the message and a publisher without confirms would never know.
	safe := func() bool {
		for _, ps := range s.pub {
			if ps.awaiting || ps.bodyLeft > 0 || ps.bodyUnknown {
				return false
			}
		}
		return true
	}
	skipped := func(ch uint16, typ byte) {
		if ps := s.pubFor(ch); ps != nil && typ == frameHeader && ps.awaiting {
			ps.awaiting, ps.bodyUnknown = false, true
		}
	}
	body := func(ch uint16, size uint32) {
		if ps := s.pubFor(ch); ps != nil {
			ps.bodyLeft -= min(ps.bodyLeft, uint64(size))
		}
	}
	return s.pump("client", r, w, safe, func(ch uint16, f frame) error {
		out := f.Raw
		switch f.Type {
		case frameMethod:
			if ps := s.pubFor(ch); ps != nil {
				ps.bodyLeft, ps.bodyUnknown = 0, false // a method ends any content before it
			}
			s.clientMethod(f)
		case frameHeader:
			if ps := s.pubFor(ch); ps != nil && ps.awaiting {
				ps.awaiting = false
				if len(f.Payload) >= 12 {
					ps.bodyLeft = binary.BigEndian.Uint64(f.Payload[4:])
				}
				out = s.publishHeader(ps, f)
			}
		}
		_, err := w.Write(out)
		return err
	}, skipped, body)
}

// fromBroker relays broker frames to the client, observing deliveries after forwarding them.
func (s *session) fromBroker(r *connReader, w *connWriter) error {
	skipped := func(ch uint16, typ byte) {
		if ds := s.del[ch]; ds != nil && typ == frameHeader {
			ds.awaiting = contentNone
		}
	}
	return s.pump("broker", r, w, nil, func(ch uint16, f frame) error {
		if s.proxyClosing.Load() && ch == 0 && f.Type == frameMethod && methodOf(f.Payload) == connCloseOk {
			// The broker closed the connection the proxy asked it to close: the client, which
			// asked nothing, is told the server closes it, as RabbitMQ tells it when it stops;
			// unless the broker closed it first (RabbitMQ, closing, answers a Close with CloseOk):
			// the client has its Close, and direct it gets no other.
			if s.brokerSaidClose {
				return errClientTold
			}
			if _, err := w.Write(forcedCloseFrame); err != nil {
				return err
			}
			if err := w.Flush(); err != nil {
				return err
			}
			return errClientTold
		}
		if _, err := w.Write(s.fitDelivery(ch, f)); err != nil {
			return err
		}
		if ch == 0 && f.Type == frameMethod && s.clientClosing.Load() && s.closeOkSent != nil && methodOf(f.Payload) == connCloseOk {
			if err := w.Flush(); err != nil {
				return err
			}
			if !s.closeOkSignaled.Swap(true) {
				close(s.closeOkSent)
			}
		}
		// The frame is handled before pump flushes it to the client: a client's Channel.Open
		// after the CloseOk below cannot come before the reset the CloseOk makes.
		switch f.Type {
		case frameMethod:
			s.brokerMethod(f)
		case frameHeader:
			if ds := s.del[ch]; ds != nil && ds.awaiting != contentNone {
				if ds.awaiting == contentReturn {
					s.returnedHeader(ch, f)
				} else {
					s.deliveredHeader(ds, f)
				}
				ds.awaiting = contentNone
			}
		}
		return nil
	}, skipped, nil)
}

// state returns channel ch's entry in m, creating it.
func state[T any](m map[uint16]*T, ch uint16) *T {
	v := m[ch]
	if v == nil {
		v = new(T)
		m[ch] = v
	}
	return v
}

// sharedLocked returns channel ch's shared state; s.mu is held.
func (s *session) sharedLocked(ch uint16) *chanShared {
	cs := s.shared[ch]
	if cs == nil {
		cs = &chanShared{consumers: map[string]string{}}
		s.shared[ch] = cs
	}
	return cs
}

// resetShared forgets everything about ch (Channel.Open, Close, CloseOk). A commit whose
// CommitOk did not come before the channel closed is not known to be stored: its publishes are
// not counted. Unconfirmed publishes count only where the client closed the channel
// (clientClosed: the broker's CloseOk).
func (s *session) resetShared(ch uint16, clientClosed bool) {
	s.mu.Lock()
	r := s.forgetLocked(ch, clientClosed)
	s.mu.Unlock()
	s.release(r)
}

// forgotten is what a channel held when it was forgotten, to give back outside the lock.
type forgotten struct {
	committing, held, unconfirmed int
	pts                           []pathway.Point
}

// forgetLocked deletes ch's shared state; s.mu is held.
func (s *session) forgetLocked(ch uint16, clientClosed bool) (r forgotten) {
	if cs := s.shared[ch]; cs != nil {
		r.committing = len(cs.committing)
		s.untag(len(cs.consumers))
		r.pts, r.held, r.unconfirmed = cs.endHeldLocked(clientClosed, nil)
	}
	delete(s.shared, ch)
	return r
}

// release gives back what forgetLocked took out.
func (s *session) release(r forgotten) {
	s.releaseTx(r.committing)
	s.endHeld(r.pts, r.held, r.unconfirmed)
}

// endHeld counts pts, what ended channels held for acks and their client closed, counts those
// not known to be stored, and then gives back the room of all held of them (last, so that the
// room given back says the counts are in).
func (s *session) endHeld(pts []pathway.Point, held, unconfirmed int) {
	s.p.stats.unconfirmed.Add(uint64(unconfirmed))
	for _, pt := range pts {
		s.p.addPoint(pt)
	}
	s.p.heldConfirms.Give(&s.heldConfirms, int64(held))
}

// dropPub forgets ch's publish side; an open transaction's publishes are discarded with it.
func (s *session) dropPub(ch uint16) {
	if ps := s.pubFor(ch); ps != nil {
		s.releaseTx(len(ps.txPoints))
		delete(s.pub, ch)
		s.lastPS = nil
	}
}

// pubFor is channel ch's publish side, nil when it has none.
func (s *session) pubFor(ch uint16) *pubState {
	if s.lastPS != nil && s.lastPSCh == ch {
		return s.lastPS
	}
	ps := s.pub[ch]
	if ps != nil {
		s.lastPS, s.lastPSCh = ps, ch
	}
	return ps
}

// maxHeldTxPoints bounds the transactional publishes all connections hold for their commits
// (96 bytes each: 96 MiB), which maxTxPoints bounds only per channel: a connection may open
// thousands of channels, and connections are unlimited unless max_conns is set. Past it a
// publish counts when sent (Stats.TxUnheld).
var maxHeldTxPoints int64 = 1 << 20

// holdTx takes room for n held publishes, or counts them as unheld.
func (s *session) holdTx(n int) bool {
	if s.p.heldTx.Take(&s.heldTx, int64(n)) {
		return true
	}
	s.p.stats.txUnheld.Add(uint64(n))
	return false
}

// releaseTx gives back the room of n held publishes.
func (s *session) releaseTx(n int) { s.p.heldTx.Give(&s.heldTx, int64(n)) }

func (s *session) clientMethod(f frame) {
	m, a, err := methodArgs(f.Payload)
	if err != nil {
		s.p.decodeError("client method", err)
		return
	}
	if m != basicPublish {
		if t, ok := targetOf(m, a); ok {
			s.mu.Lock()
			cs := s.sharedLocked(f.Channel)
			if t.edge.Topic == "" && m>>16 != classExchange && m != queueDecl {
				t.edge.Topic = cs.lastDeclared // a queue named "" is the channel's last declared one
			}
			cs.lastTarget = t
			s.mu.Unlock()
		}
	}
	switch m {
	case basicPublish:
		a.u16()
		ex, rk := a.short(), a.short()
		if a.err != nil {
			s.p.decodeError("Basic.Publish", a.err)
			return
		}
		ps := s.pubOf(f.Channel)
		ps.awaiting = true
		if s.lastPubCh.Load() != uint32(f.Channel) {
			s.lastPubCh.Store(uint32(f.Channel))
		}
		if ps.tx {
			ps.txSent++
		}
		ps.discard = ps.tally.publish(ps.tx)
		if ps.edge == nil || !bytes.Equal(ex, ps.exchange) || !bytes.Equal(rk, ps.rk) {
			ps.exchange = append(ps.exchange[:0], ex...)
			ps.rk = append(ps.rk[:0], rk...)
			ps.edge = publishEdge(string(ex), string(rk))
			ps.node.reset()
			s.mu.Lock()
			s.sharedLocked(f.Channel).lastPub = ps.edge
			s.mu.Unlock()
		}
		if ps.discard {
			s.discardedPublish(f.Channel, ps)
			return
		}
		if ps.confirm {
			s.mu.Lock()
			cs := s.sharedLocked(f.Channel)
			// No ring when the broker closed the channel while this publish was on its way: the
			// broker drops it, and no ack or nack will name it.
			if cs.pubRing != nil {
				cs.trackPublishLocked(ps.edge)
			}
			s.mu.Unlock()
		}
	case txSelect:
		s.pubOf(f.Channel).tx = true
	case txCommit:
		s.commit(f.Channel, s.pubOf(f.Channel))
	case txRollback:
		ps := s.pubOf(f.Channel)
		s.releaseTx(len(ps.txPoints)) // never published
		ps.tally.uncount(ps.txSent)
		ps.txPoints, ps.txSent = ps.txPoints[:0], 0
	case confirmSel:
		ps := s.pubOf(f.Channel)
		if !ps.confirm {
			ps.confirm = true
			s.mu.Lock()
			s.sharedLocked(f.Channel).pubRing = make([]*pathway.Edge, pubRingMin)
			s.mu.Unlock()
		}
	case queueDecl:
		// A declare with no-wait gets no DeclareOk to learn the name from. An empty name is the
		// server's to choose, which no-wait cannot report: the channel's last declared queue is
		// then unknown ("" queue names stay unnamed), no longer the one declared before.
		a.u16()
		q := a.short()
		if nowait := a.u8()&0x10 != 0; a.err == nil && nowait {
			s.mu.Lock()
			s.sharedLocked(f.Channel).lastDeclared = string(q)
			s.mu.Unlock()
		}
	case basicConsume:
		a.u16()
		q, tag := string(a.short()), string(a.short())
		bits := a.u8()
		if a.err != nil {
			s.p.decodeError("Basic.Consume", a.err)
			return
		}
		s.mu.Lock()
		cs := s.sharedLocked(f.Channel)
		if q == "" {
			q = cs.lastDeclared
		}
		if bits&0x08 != 0 { // nowait: no ConsumeOk, the client's tag is final
			s.addConsumerLocked(cs, tag, q)
		} else if len(cs.pending) < s.p.cfg.MaxConsumers {
			cs.pending = append(cs.pending, pendingConsume{queue: q, tag: tag})
		}
		s.mu.Unlock()
	case basicGet:
		a.u16()
		q := string(a.short())
		if a.err != nil {
			s.p.decodeError("Basic.Get", a.err)
			return
		}
		s.mu.Lock()
		cs := s.sharedLocked(f.Channel)
		if q == "" {
			q = cs.lastDeclared
		}
		cs.getQueue = q
		s.mu.Unlock()
	case basicCancel:
		// Deliveries may follow the client's Cancel until the broker's CancelOk (AMQP 0-9-1,
		// basic.cancel): the tag keeps its queue until then. With no-wait no CancelOk comes, and
		// deliveries already on their way still arrive: the tag stays, and is the first to go
		// when the map is full.
		tag := string(a.short())
		if bits := a.u8(); a.err == nil && bits&0x01 != 0 {
			s.mu.Lock()
			s.sharedLocked(f.Channel).cancelledNoWait(tag, s.p.cfg.MaxConsumers)
			s.mu.Unlock()
		}
	case basicCancOk:
		s.dropConsumer(f.Channel, a.short())
	case connStartOk:
		s.loginSent.Store(true)
		props := a.table()
		mech, resp := a.short(), a.long()
		if a.err != nil {
			s.p.decodeError("Connection.StartOk", a.err)
			return
		}
		name, _ := tableString(props, "connection_name")
		user := saslUser(mech, resp)
		// A clone: a slice would keep the whole decoded user (up to MaxFrameBytes) for the
		// connection's life. Kept for the log only.
		logged := strings.Clone(user[:min(len(user), maxConnNameBytes)])
		s.user.Store(&logged)
		s.setService(string(name), user)
	case connTuneOk:
		a.u16()
		fm := a.u32()
		if a.err != nil {
			s.p.decodeError("Connection.TuneOk", a.err)
			return
		}
		s.frameMax = fm
		s.consumerFrameMax.Store(fm)
	case chanOpen, chanCloseOk:
		s.dropPub(f.Channel)
		s.resetShared(f.Channel, false)
	case chanClose:
		// The broker may deliver until its CloseOk, which resets the channel; the client
		// discards those deliveries (and the broker requeues them), so they are not consumed.
		s.dropPub(f.Channel)
		s.mu.Lock()
		s.sharedLocked(f.Channel).closing = true
		s.mu.Unlock()
		if s.p.cfg.clientClosed != nil {
			s.p.cfg.clientClosed()
		}
		if c := a.closeArgs(); a.err == nil && c.Code != 200 {
			s.errorClose("client", m, f.Channel, c)
		}
	case connClose:
		s.clientClosing.Store(true)
		if s.p.cfg.clientClosed != nil {
			s.p.cfg.clientClosed()
		}
		if c := a.closeArgs(); a.err == nil && c.Code != 200 {
			s.errorClose("client", m, 0, c)
		}
	}
}

// commit hands the transaction's publishes on ch to the channel, to count at the CommitOk. A
// commit sent after the broker closed the channel is discarded with them.
func (s *session) commit(ch uint16, ps *pubState) {
	if ps.txSent == 0 {
		return
	}
	s.mu.Lock()
	keep, closed := 0, ps.tally.closed()
	if !closed {
		cs := s.sharedLocked(ch)
		// Commits sent before their CommitOks come (or never come) hold at most maxTxPoints
		// in all; the rest count now, as past the limit of one transaction.
		keep = min(len(ps.txPoints), max(0, maxTxPoints-len(cs.committing)))
		cs.committing = append(cs.committing, ps.txPoints[:keep]...)
		// Under the lock with the tally: a broker's close counts each publish once.
		cs.committingMsgs += ps.txSent
		ps.tally.uncount(ps.txSent)
	}
	s.mu.Unlock()
	if !closed {
		for _, pt := range ps.txPoints[keep:] {
			s.p.addPoint(pt)
		}
	}
	s.releaseTx(len(ps.txPoints) - keep)
	ps.txPoints, ps.txSent = ps.txPoints[:0], 0
}

// settleLocked clears the publishes of cs (the channel's shared state, nil for none) that a
// broker ack or nack confirms (tag alone, or every unconfirmed one up to it with multiple:
// RabbitMQ merges its confirms) and, for a nack, counts them per edge. A publish the ring no
// longer holds counts on the bare rabbitmq edge. s.mu is held.
func settleLocked(cs *chanShared, tag uint64, multiple, nack bool) map[pathway.Edge]int {
	bare := pathway.Edge{Type: pathway.TypeRabbitMQ}
	var counts map[pathway.Edge]int
	count := func(e pathway.Edge, n int) {
		if nack && n > 0 {
			if counts == nil {
				counts = map[pathway.Edge]int{}
			}
			counts[e] += n
		}
	}
	if cs == nil || cs.pubRing == nil || tag == 0 || tag > cs.seq {
		count(bare, 1)
		return counts
	}
	defer cs.advanceSettledLocked()
	n := cs.ringLen()
	inRing := func(k uint64) bool { return cs.seq-k < n }
	if !multiple {
		switch e, old := cs.evicted[tag]; {
		case inRing(tag) && cs.pubRing[tag%n] != nil:
			count(*cs.pubRing[tag%n], 1)
			cs.pubRing[tag%n] = nil
		case old:
			count(*e, 1)
			delete(cs.evicted, tag)
		default: // not remembered: an untracked one, or a tag confirmed twice
			count(bare, 1)
			if !inRing(tag) && cs.untracked > 0 {
				cs.untracked--
			}
		}
		return counts
	}
	// Every unconfirmed publish up to tag: those the ring holds, then the evicted ones.
	for k := tag; k > cs.settled && inRing(k); k-- {
		if e := cs.pubRing[k%n]; e != nil {
			count(*e, 1)
			cs.pubRing[k%n] = nil
		}
	}
	for t, e := range cs.evicted {
		if t <= tag {
			count(*e, 1)
			delete(cs.evicted, t)
		}
	}
	if cs.untracked > 0 && !inRing(cs.settled+1) && cs.settled < tag {
		count(bare, cs.untracked) // their tags are unknown; all are older than the ring
		cs.untracked = 0
	}
	cs.settled = max(cs.settled, tag)
	return counts
}

// dropConsumer forgets a cancelled consumer: at CancelOk from either side, the broker's Cancel,
// or the client's Cancel with no-wait.
func (s *session) dropConsumer(ch uint16, tag []byte) {
	s.mu.Lock()
	if cs := s.shared[ch]; cs != nil {
		if _, ok := cs.consumers[string(tag)]; ok {
			delete(cs.consumers, string(tag))
			s.untag(1)
		}
		delete(cs.cancelledAt, string(tag)) // its entry in cancelled is stale now, skipped when reached
	}
	s.mu.Unlock()
}

func (s *session) addConsumerLocked(cs *chanShared, tag, queue string) {
	// Full: consumers cancelled with no-wait go first, oldest first; only if every tag is live
	// is the map started again.
	for len(cs.consumers) >= s.p.cfg.MaxConsumers && len(cs.cancelled) > 0 {
		c := cs.cancelled[0]
		cs.cancelled = cs.cancelled[1:]
		if cs.cancelledAt[c.tag] == c.seq {
			delete(cs.consumers, c.tag)
			delete(cs.cancelledAt, c.tag)
			s.untag(1)
		}
	}
	if len(cs.consumers) >= s.p.cfg.MaxConsumers {
		s.untag(len(cs.consumers))
		clear(cs.consumers)
		clear(cs.cancelledAt)
		cs.cancelled = nil
		s.p.stats.consumerResets.Add(1)
	}
	delete(cs.cancelledAt, tag) // consuming again under a cancelled tag makes it live
	if _, ok := cs.consumers[tag]; !ok && !s.p.tags.Take(&s.tags, 1) {
		s.p.stats.untrackedConsumers.Add(1)
		return
	}
	cs.consumers[tag] = queue
}

// maxConsumerTags bounds the consumer tags all connections remember (a tag and a queue name of
// up to 255 bytes each), which MaxConsumers bounds only per channel: a connection may open
// thousands of channels, and connections are unlimited unless max_conns is set.
var maxConsumerTags int64 = 1 << 18

// untag gives back the room of n forgotten consumer tags.
func (s *session) untag(n int) { s.p.tags.Give(&s.tags, int64(n)) }

// cancelledTag is a consumer tag the client cancelled with no-wait, in the order of cancels.
type cancelledTag struct {
	tag string
	seq uint64
}

// cancelledNoWait records that the client cancelled tag with no-wait (the newest limit of them,
// up to twice that between trims).
func (cs *chanShared) cancelledNoWait(tag string, limit int) {
	if _, ok := cs.consumers[tag]; !ok {
		return
	}
	if cs.cancelledAt == nil {
		cs.cancelledAt = map[string]uint64{}
	}
	cs.cancelSeq++
	cs.cancelledAt[tag] = cs.cancelSeq
	cs.cancelled = append(cs.cancelled, cancelledTag{tag, cs.cancelSeq})
	if len(cs.cancelled) > 2*limit { // trimmed to the newest limit now and then, not at every cancel
		old := len(cs.cancelled) - limit
		for _, c := range cs.cancelled[:old] {
			// Forgotten as cancelled, so cancelledAt, which must not outgrow cancelled, forgets it
			// too: a tag still consumed stays live, as before its no-wait cancel.
			if cs.cancelledAt[c.tag] == c.seq {
				delete(cs.cancelledAt, c.tag)
			}
		}
		cs.cancelled = slices.Clone(cs.cancelled[old:])
	}
}

func (s *session) brokerMethod(f frame) {
	m, a, err := methodArgs(f.Payload)
	if err != nil {
		s.p.decodeError("broker method", err)
		return
	}
	switch m {
	case connTune:
		s.tuned.Store(true)
	case connOpenOk:
		s.opened.Store(true)
	case basicDeliver:
		tag := a.short()
		if a.err != nil {
			s.p.decodeError("Basic.Deliver", a.err)
			return
		}
		ds := state(s.del, f.Channel)
		ds.awaiting = contentDeliver
		s.mu.Lock()
		q, ok, closing := "", false, false
		if cs := s.shared[f.Channel]; cs != nil {
			q, ok = cs.consumers[string(tag)]
			closing = cs.closing
		}
		s.mu.Unlock()
		// After the client's Channel.Close or Connection.Close it discards deliveries (the
		// broker requeues them): they are not consumed.
		if closing || s.clientClosing.Load() {
			ds.awaiting = contentDiscarded
			return
		}
		if !ok || q == "" { // "" only for a queue the server named on a no-wait declare
			s.p.stats.unknownQueue.Add(1)
		}
		ds.setQueue(q)
	case basicGetOk:
		ds := state(s.del, f.Channel)
		ds.awaiting = contentGetOk
		s.mu.Lock()
		q, closing := "", false
		if cs := s.shared[f.Channel]; cs != nil {
			q, closing = cs.getQueue, cs.closing
		}
		s.mu.Unlock()
		if closing || s.clientClosing.Load() { // discarded, as a delivery is
			ds.awaiting = contentDiscarded
			return
		}
		ds.setQueue(q)
	case basicReturn:
		state(s.del, f.Channel).awaiting = contentReturn
		code, text := a.u16(), a.short()
		ex, rk := a.short(), a.short()
		if a.err != nil {
			s.p.decodeError("Basic.Return", a.err)
			return
		}
		s.p.stats.returns.Add(1)
		s.p.errs.Report(errtrack.Event{
			Time: s.p.now(), Category: errtrack.LostMessage, Protocol: "amqp", Operation: "Basic.Publish",
			Code: int32(code), Name: replyName(code), Message: fmt.Sprintf("returned by the broker: %s (routing key %q)", text, rk),
			Service: *s.service.Load(), Edge: *publishEdge(string(ex), string(rk)), Partition: -1, Messages: 1,
		})
	case txCommitOk:
		s.mu.Lock()
		var pts []pathway.Point
		if cs := s.shared[f.Channel]; cs != nil {
			pts, cs.committing, cs.committingMsgs = cs.committing, nil, 0
		}
		s.mu.Unlock()
		for _, pt := range pts {
			s.p.addPoint(pt)
		}
		s.releaseTx(len(pts))
	case basicAck:
		tag := a.u64()
		multiple := a.u8()&1 != 0
		if a.err == nil {
			s.confirmsSeen.Add(1)
			s.confirm(f.Channel, tag, multiple, false)
		}
	case basicNack:
		tag := a.u64()
		multiple := a.u8()&1 != 0
		if a.err != nil {
			s.p.decodeError("Basic.Nack", a.err)
			return
		}
		s.p.stats.nacks.Add(1)
		s.confirmsSeen.Add(1)
		msg := fmt.Sprintf("publish nacked by the broker (delivery tag %d, multiple %t)", tag, multiple)
		for edge, n := range s.confirm(f.Channel, tag, multiple, true) {
			s.p.errs.Report(errtrack.Event{
				Time: s.p.now(), Category: errtrack.LostMessage, Protocol: "amqp", Operation: "Basic.Publish",
				Name: "NACK", Message: msg, Service: *s.service.Load(), Edge: edge, Partition: -1, Messages: n,
			})
		}
	case basicConsOk:
		tag := string(a.short())
		s.mu.Lock()
		if cs := s.shared[f.Channel]; cs != nil && len(cs.pending) > 0 {
			// One synchronous request per channel at a time: the oldest pending Consume is answered.
			pc := cs.pending[0]
			cs.pending = cs.pending[1:]
			s.addConsumerLocked(cs, tag, pc.queue)
		}
		s.mu.Unlock()
	case basicCancel:
		// RabbitMQ cancels a consumer whose queue was deleted or lost its leader: the client
		// just stops receiving, which many never notice. Tracked on the queue's consume edge.
		tag := a.short()
		s.mu.Lock()
		q, ok := "", false
		if cs := s.shared[f.Channel]; cs != nil {
			q, ok = cs.consumers[string(tag)]
		}
		s.mu.Unlock()
		s.dropConsumer(f.Channel, tag)
		if a.err == nil && ok {
			s.p.errs.Report(errtrack.Event{
				Time: s.p.now(), Category: errtrack.BrokerError, Protocol: "amqp", Operation: "Basic.Cancel",
				Name: "CONSUMER_CANCELLED", Message: fmt.Sprintf("the broker cancelled consumer %q: its queue was deleted or is unavailable", tag),
				Service: *s.service.Load(), Edge: pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: q}, Partition: -1,
			})
		}
	case basicCancOk:
		s.dropConsumer(f.Channel, a.short())
	case queueDeclOk:
		q := string(a.short())
		if a.err == nil {
			s.mu.Lock()
			s.sharedLocked(f.Channel).lastDeclared = q
			s.mu.Unlock()
		}
	case chanClose:
		c := a.closeArgs()
		delete(s.del, f.Channel)
		refused, pub, discarded, lastIn := s.closedByBroker(f.Channel, c)
		if a.err == nil && c.Code != 200 {
			s.errorCloseEdge("broker", m, f.Channel, c, refused)
			s.closeLost(f.Channel, c, refused, pub, discarded, lastIn)
		}
	case chanCloseOk:
		delete(s.del, f.Channel)
		s.resetShared(f.Channel, true)
	case connClose:
		s.brokerSaidClose = true
		c := a.closeArgs()
		refused := s.connClosedByBroker(c, a.err == nil && c.Code != 200 && c.Method == basicPublish)
		if a.err == nil && c.Code != 200 {
			s.errorCloseEdge("broker", m, 0, c, refused)
			why := fmt.Sprintf("%d %s", c.Code, c.Text)
			s.brokerClose.Store(&why)
		}
	}
}

// consumedQueueLocked is the consume edge of the one queue the channel's consumers read, nil
// when they read several or none: a refused ack (an unknown delivery tag, acked twice or on
// another channel) concerns a delivery the proxy does not map to its queue.
func (cs *chanShared) consumedQueueLocked() *pathway.Edge {
	q := ""
	for _, cq := range cs.consumers {
		if cq == "" || q != "" && cq != q {
			return nil
		}
		q = cq
	}
	if q == "" {
		return nil
	}
	return &pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: q}
}

func (ds *delState) setQueue(q string) {
	if ds.edge == nil || q != ds.queue {
		ds.queue = q
		ds.edge = &pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: q}
		ds.node.reset()
	}
}

// publishEdge is the edge of a publish: the routing key names the queue on the default exchange,
// a named exchange is the edge otherwise (the tags Python and Java tracers write).
func publishEdge(exchange, rk string) *pathway.Edge {
	e := &pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ}
	if exchange == "" {
		e.Topic = rk
		return e
	}
	e.Exchange = exchange
	e.HasRoutingKey = pathway.RoutingKeyFalse
	if rk != "" {
		e.HasRoutingKey = pathway.RoutingKeyTrue
	}
	return e
}

// saslUser is the user name in a PLAIN ("\x00user\x00pass") or AMQPLAIN (LOGIN in a table) response.
func saslUser(mech, resp []byte) string {
	switch string(mech) {
	case "PLAIN":
		parts := bytes.SplitN(resp, []byte{0}, 3)
		if len(parts) == 3 {
			return string(parts[1])
		}
	case "AMQPLAIN":
		if u, ok := tableString(resp, "LOGIN"); ok {
			return string(u)
		}
	}
	return ""
}

// publishHeader checkpoints a published message and returns the frame to forward: the content
// header with the pathway entry spliced in, or the original when it cannot or must not change.
func (s *session) publishHeader(ps *pubState, f frame) []byte {
	p := s.p
	p.stats.published.Add(1)
	if ps.discard { // the broker closed the channel: it reaches no queue
		return f.Raw
	}
	h, err := parseContentHeader(f.Payload)
	if err != nil {
		p.decodeError("Basic.Publish content header", err)
		return f.Raw
	}
	service := *s.service.Load()
	var parent pathway.Context
	if h.CtxEnd != 0 {
		p.stats.existing.Add(1)
		if h.CtxTwice {
			return f.Raw
		}
		parent, _ = pathway.DecodeBase64(h.Ctx)
		// A context delivered lately is forwarded by this client, not written by its tracer.
		fwd, forwarded := p.handed.Parent(parent, service)
		if p.respect && !forwarded && !s.ownValue(h.Ctx) {
			return f.Raw
		}
		if forwarded {
			parent = fwd
		}
	}
	now := p.now()
	// Counted as the consumer will see it: body plus headers table with the pathway entry.
	size := int64(h.BodySize) + int64(h.TableBytes())
	if h.CtxEnd == 0 {
		size += int64(ctxEntryLen(pathway.Base64Len))
	}
	pt, ctx := pathway.CheckpointNode(ps.node.get(p.cp, service, ps.edge), parent, service, size, now)
	s.val = ctx.AppendBase64(s.val[:0])
	n := splicedLen(f.Payload, &h, len(s.val))
	limit := uint64(s.frameMax)
	// The broker hands the header frame as it is to every consumer, whose frame_max may be as
	// small as minFrameMax: a frame that fitted it must go on fitting it.
	if len(f.Raw) <= minFrameMax && (limit == 0 || limit > minFrameMax) {
		limit = minFrameMax
	}
	fits := limit == 0 || uint64(n)+frameOverhead <= limit
	if !fits && h.CtxEnd == 0 {
		pt.PayloadSize -= int64(ctxEntryLen(pathway.Base64Len)) // the consumer gets it without the entry
	}
	switch {
	case ps.tx && len(ps.txPoints) < maxTxPoints && s.holdTx(1):
		ps.txPoints = append(ps.txPoints, pt)
	case ps.confirm:
		s.holdConfirm(f.Channel, pt)
	default:
		p.addPoint(pt)
	}
	if !fits {
		p.stats.frameMax.Add(1)
		p.errs.Report(errtrack.Event{
			Time: now, Category: errtrack.ProxySkip, Protocol: "amqp", Operation: "Basic.Publish", Name: "frame_max",
			Message: frameMaxSkip(n+frameOverhead, limit),
			Service: service, Edge: *ps.edge, Partition: -1, Messages: 1,
		})
		return f.Raw
	}
	if len(s.val) == pathway.Base64Len {
		copy(s.own[s.ownPos%ownValues][:], s.val)
		s.ownPos++
	}
	out := endFrame(spliceHeader(startFrame(s.out, f), f.Payload, &h, s.val))
	s.out = out
	p.stats.injected.Add(1)
	return out
}

// minFrameMax is AMQP 0-9-1's frame-min-size: the smallest frame_max a peer may negotiate, and
// the default of Node's amqplib.
const minFrameMax = 4096

func frameMaxSkip(size int, limit uint64) string {
	if limit == minFrameMax {
		return fmt.Sprintf("content header of %d bytes with the pathway header would exceed %d bytes, the smallest frame_max a consumer may have, which it fitted before; forwarded unmodified", size, limit)
	}
	return fmt.Sprintf("content header of %d bytes with the pathway header would exceed frame_max %d; forwarded unmodified", size, limit)
}

// maxTxPoints bounds the publishes of one transaction held for its commit, and those of the
// commits awaiting their CommitOks on a channel; past it they count when sent or committed.
const maxTxPoints = 10000

// ownValues is how many of its latest header values a connection remembers.
const ownValues = 64

// ownValue reports whether v is a header value the proxy put on one of this connection's latest
// publishes.
func (s *session) ownValue(v []byte) bool {
	if len(v) != pathway.Base64Len {
		return false
	}
	for i := range min(s.ownPos, ownValues) {
		if bytes.Equal(s.own[i][:], v) {
			return true
		}
	}
	return false
}

// fitDelivery returns the frame to forward to the client: a delivered content header that the
// pathway entry takes past the client's frame_max comes without the entry (the broker passes a
// header frame on as it was published, and the publisher's frame_max may be larger), so that the
// client gets what it would get direct instead of losing its connection. deliveredHeader still
// reads the entry from f. A delivery on a channel the client is closing is fitted too: the client
// discards it, but reads its frames first, and amqp091-go ends the whole connection on one over
// its frame_max.
func (s *session) fitDelivery(ch uint16, f frame) []byte {
	limit := s.consumerFrameMax.Load()
	if f.Type != frameHeader || limit == 0 || uint64(len(f.Raw)) <= uint64(limit) {
		return f.Raw
	}
	ds := s.del[ch]
	if ds == nil || (ds.awaiting != contentDeliver && ds.awaiting != contentGetOk && ds.awaiting != contentDiscarded) {
		return f.Raw
	}
	h, err := parseContentHeader(f.Payload)
	if err != nil || h.CtxEnd == 0 || h.CtxTwice || uint64(len(f.Raw)-(h.CtxEnd-h.CtxAt)) > uint64(limit) {
		return f.Raw // over the limit direct too: the client answers it as it would
	}
	out := endFrame(stripCtx(startFrame(s.delOut, f), f.Payload, &h))
	s.delOut = out
	if ds.awaiting == contentDiscarded {
		return out // not consumed: no checkpoint to size, no skip to count
	}
	ds.stripped = h.CtxEnd - h.CtxAt
	p := s.p
	edge := pathway.Edge{Type: pathway.TypeRabbitMQ}
	if ds.edge != nil {
		edge = *ds.edge
	}
	p.errs.Report(errtrack.Event{
		Time: p.now(), Category: errtrack.ProxySkip, Protocol: "amqp", Operation: "Basic.Deliver", Name: "frame_max",
		Message: fmt.Sprintf("delivered content header of %d bytes with the pathway header exceeds the client's frame_max %d; delivered without it", len(f.Raw), limit),
		Service: *s.service.Load(), Edge: edge, Partition: -1, Messages: 1,
	})
	return out
}

// deliveredHeader checkpoints a delivered message (Deliver or GetOk) with the context it carries.
// returnedHeader finds the publish a Basic.Return brings back by the pathway context the proxy
// gave it, so that its held checkpoint is not counted at its ack.
func (s *session) returnedHeader(ch uint16, f frame) {
	h, err := parseContentHeader(f.Payload)
	if err != nil {
		s.p.decodeError("Basic.Return content header", err)
		return
	}
	if h.Ctx != nil {
		if ctx, err := pathway.DecodeBase64(h.Ctx); err == nil {
			s.returnHeld(ch, ctx, int64(h.BodySize)+int64(h.TableBytes()))
			// A retry may come after more publishes than ownValue remembers: the returned
			// context stays known as the proxy's, the retry's parent.
			s.p.handed.Put(ctx, *s.service.Load(), ctx)
		}
	}
}

func (s *session) deliveredHeader(ds *delState, f frame) {
	if ds.awaiting == contentDiscarded {
		return
	}
	if s.traced.Load() {
		ds.stripped = 0
		return // its tracer checkpoints what it consumes
	}
	p := s.p
	h, err := parseContentHeader(f.Payload)
	if err != nil {
		p.decodeError("Basic.Deliver content header", err)
		return
	}
	var parent pathway.Context
	if h.Ctx != nil {
		parent, _ = pathway.DecodeBase64(h.Ctx)
	}
	service := *s.service.Load()
	// Counted as the consumer got it: without an entry fitDelivery took out.
	size := int64(h.BodySize) + int64(h.TableBytes()) - int64(ds.stripped)
	ds.stripped = 0
	pt, ctx := pathway.CheckpointNode(ds.node.get(p.cp, service, ds.edge), parent, service, size, p.now())
	p.handed.Put(parent, service, ctx)
	p.stats.consumed.Add(1)
	p.addPoint(pt)
}

func (s *session) errorClose(side string, m methodID, ch uint16, c closeArgs) {
	s.errorCloseEdge(side, m, ch, c, nil)
}

// errorCloseEdge reports a Channel.Close or Connection.Close with an error code; edge is what
// the refused method concerned: the channel's latest publish, or the queue or exchange it named.
func (s *session) errorCloseEdge(side string, m methodID, ch uint16, c closeArgs, edge *pathway.Edge) {
	s.p.stats.errorCloses.Add(1)
	ev := errtrack.Event{
		Time: s.p.now(), Category: errtrack.BrokerError, Protocol: "amqp", Operation: methodName(c.Method),
		Code: int32(c.Code), Name: replyName(c.Code),
		Message:   fmt.Sprintf("%s sent %s on channel %d: %s", side, methodName(m), ch, c.Text),
		Service:   *s.service.Load(),
		Edge:      pathway.Edge{Type: pathway.TypeRabbitMQ},
		Partition: -1,
	}
	switch {
	case c.Method == 0 && m == connClose && side == "broker" && s.loginSent.Load() && !s.tuned.Load():
		// RabbitMQ's close of a refused login names no method: it answers the StartOk.
		ev.Operation = methodName(connStartOk)
	case c.Method == 0:
		ev.Operation = methodName(m)
	}
	if edge != nil {
		ev.Edge = *edge
		if c.Method == basicPublish {
			ev.Messages = 1
		}
	}
	s.p.errs.Report(ev)
}

// decodeError reports a frame the proxy relayed without understanding it.
func (p *Proxy) decodeError(what string, err error) uint64 {
	n := p.stats.decodeErrors.Add(1)
	p.errs.Report(errtrack.Event{
		Time: p.now(), Category: errtrack.DecodeError, Protocol: "amqp", Operation: what,
		Name: "undecodable", Message: err.Error(), Partition: -1,
	})
	return n
}
