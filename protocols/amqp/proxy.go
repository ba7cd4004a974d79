// Package amqp is dsmproxy's AMQP 0-9-1 (RabbitMQ) proxy: it splits the frame stream of each
// connection, splices the DSM pathway header into the content header of every Basic.Publish, and
// checkpoints every Basic.Deliver and Basic.GetOk with the queue it came from, reporting returns,
// nacks and error closes. Every other byte is relayed as it came.
//
// Checkpoints carry the tags the Python and Java tracers write:
//
//	publish to the default exchange, routing key q:  direction:out, topic:q, type:rabbitmq
//	publish to exchange x, routing key k (or none):   direction:out, exchange:x, has_routing_key:true (false), type:rabbitmq
//	Basic.Deliver or Basic.GetOk from queue q:         direction:in, topic:q, type:rabbitmq
//
// The queue of a delivery comes from the Basic.Consume (or ConsumeOk, for server-named tags) of
// its consumer tag on that channel, the queue of a GetOk from the channel's last Basic.Get; an
// empty queue name there is the queue last declared on the channel. The payload size is the body
// plus the headers table including the pathway entry, so both ends of a message report the same.
//
// The service is the first configured rule that matches (connection name or user), else the
// client's connection_name property, else the default service: a client that sets
// connection_name "billing-worker" checkpoints as billing-worker; one that sets none, logging in
// as guest, matches a rule {User: guest} or takes the default.
package amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// Observer receives checkpoints (and, for the interface's sake, offsets, which AMQP has none of).
// Both calls must not block (false = dropped); the aggregator implements it.
type Observer interface {
	Add(pathway.Point) bool
	Offset(pathway.Offset) bool
}

// DefaultMaxFrameBytes bounds a method or content-header frame the proxy reads into memory. Body
// frames are streamed and never held whole; a larger non-body frame is relayed unread.
const DefaultMaxFrameBytes = 1 << 20

// Config configures one AMQP front.
type Config struct {
	// Listen is the client-facing address, e.g. 127.0.0.1:15672.
	Listen string
	// Upstream is the broker's host:port.
	Upstream string
	// MaxFrameBytes: see DefaultMaxFrameBytes.
	MaxFrameBytes int
	// RespectExistingContext (default true when nil): a published message that already carries
	// dd-pathway-ctx-base64 is left alone and gets no produce checkpoint.
	RespectExistingContext *bool

	Env          string
	Checkpointer *pathway.Checkpointer // default pathway.NewCheckpointer(Env, 0)
	// Handed: the contexts consumers were handed lately, to tell a client that sends one on (a
	// relay) from a tracer. The process's fronts share one, so that a relay from one front to
	// another (Kafka to RabbitMQ) is known too. Default: one of this front's own, of
	// pathway.HandedPerAMQPFront contexts.
	Handed   *pathway.Handed
	Observer Observer          // nil = checkpoints are computed and dropped
	Errors   errtrack.Reporter // nil = errtrack.Discard
	Services *proxy.Services
	Clock    func() time.Time // default time.Now
	Log      zerolog.Logger

	// Listener is the listener template: TLS toward clients (amqps), Dial (TLS toward the broker),
	// MaxConns, timeouts. Protocol, Addr and Upstream are set from the fields above.
	Listener proxy.ListenerConfig

	// MaxConsumers bounds the consumer tags remembered per channel (default 4096).
	MaxConsumers int

	// upstreamWait, for tests: how long the upstream may be silent after the protocol header
	// before a Warn (default headerTimeout).
	upstreamWait time.Duration

	// clientClosed, for tests, runs once the proxy has taken in a client's Channel.Close or
	// Connection.Close, before passing it on.
	clientClosed func()
}

// Stats are the proxy's counters.
type Stats struct {
	Connections     uint64 // client connections served
	Published       uint64 // Basic.Publish content headers seen
	Injected        uint64 // published messages that got a pathway header
	ExistingContext uint64 // published messages that already carried one
	SkippedFrameMax uint64 // published messages left alone because the header would exceed frame_max, or 4096 bytes when it fitted them
	Consumed        uint64 // Basic.Deliver and Basic.GetOk messages checkpointed
	UnknownQueue    uint64 // deliveries whose consumer tag matched no known consume, or whose queue the server named on a no-wait declare (checkpointed without topic)
	DecodeErrors    uint64 // frames relayed without being understood
	Returns         uint64 // Basic.Return from the broker
	Nacks           uint64 // Basic.Nack from the broker
	ErrorCloses     uint64 // Channel.Close or Connection.Close with an error code
	PointsDropped   uint64 // Observer.Add returned false
	RefusedProtocol uint64 // clients that opened with another protocol header
	RefusedConns    uint64 // connections closed at once because the listener was at MaxConns
	DialFailures    uint64 // client connections reset because the upstream dial failed
	// TLSHandshakeFailures: clients whose TLS handshake failed (not port probes closed first).
	TLSHandshakeFailures uint64
	ConsumerResets       uint64 // channels' consumer tag maps started again because MaxConsumers tags were live
	TxUnheld             uint64 // transactional publishes counted when sent: all connections held maxHeldTxPoints
	// Confirm-mode publishes counted when sent: their channel held maxHeldPerChannel, or all
	// connections maxHeldConfirms.
	ConfirmUnheld uint64
	// Confirm-mode publishes not counted: their channel or connection ended, not by the client,
	// before the broker confirmed them, so whether they were stored is unknown (not the publish
	// the broker closed it over: that one is a lost message).
	Unconfirmed uint64
	// Consumers whose tag was not remembered, all connections holding maxConsumerTags: their
	// deliveries count as UnknownQueue.
	UntrackedConsumers uint64
	// SilentUpstreams: connections whose upstream had not answered the protocol header within
	// 10 s (a broker answers at once: the front's upstream may be another service's port, or
	// want TLS). The Warn line about it is logged for the first 10 and every 1000th.
	SilentUpstreams uint64
	// OpenConnections: client connections open now, those still dialing the broker included
	// (what max_conns counts). Signed: a level, not a count since the start.
	OpenConnections int64
	// RelayBuffers: the 64 KiB buffers connections hold now, up to four a busy one (a reader
	// and a writer each way). An idle connection holds none over plain TCP; a direction read
	// over TLS, which cannot wait without a buffer, keeps its two.
	RelayBuffers int64
}

type counters struct {
	conns, published, injected, existing, frameMax, consumed, unknownQueue, decodeErrors,
	returns, nacks, errorCloses, dropped, refused, consumerResets, txUnheld, untrackedConsumers,
	confirmUnheld, unconfirmed, silentUpstreams atomic.Uint64
}

// Proxy is one AMQP front: one listener, one upstream broker.
type Proxy struct {
	cfg     Config
	log     zerolog.Logger
	now     func() time.Time
	cp      *pathway.Checkpointer
	obs     Observer
	errs    errtrack.Reporter
	respect bool
	stats   counters
	// relayBufs counts the relay buffers connections hold (Stats.RelayBuffers).
	relayBufs atomic.Int64
	heldTx    proxy.Budget // transactional publishes held for commits (maxHeldTxPoints)
	// confirm-mode publishes held for acks (maxHeldConfirms)
	heldConfirms proxy.Budget
	tags         proxy.Budget                     // consumer tags remembered (maxConsumerTags)
	handed       *pathway.Handed                  // contexts delivered or returned lately (Config.Handed), to tell a forward
	seen         *proxy.FirstSeen[clientIdentity] // clients whose identity was logged at Info
	// closesSeen: the broker's closes of a client's connections logged at Warn, by client, login
	// and reason; closes counts all of them (broker_closes_total). newCloses counts those new to
	// closesSeen in the minute from newClosesSince.
	closesSeen     *proxy.FirstSeen[brokerCloseKey]
	closes         atomic.Uint64
	newClosesMu    sync.Mutex
	newClosesSince time.Time
	newCloses      int

	// tap and tapBroker, set by tests before Start, receive every byte a client sends and every
	// byte its broker sends (golden captures).
	tap, tapBroker func(conn uint64) io.Writer

	// wrong: the upstream answered the protocol header with another protocol, or not at all
	// (UpstreamProblem).
	wrong proxy.WrongUpstreams

	mu      sync.Mutex
	ln      *proxy.Listener
	closed  bool
	serveWG sync.WaitGroup
}

// New validates cfg and returns a Proxy; Start binds it.
func New(cfg Config) (*Proxy, error) {
	if cfg.Upstream == "" {
		return nil, errors.New("amqp: Upstream: the broker address is required")
	}
	if _, _, err := net.SplitHostPort(cfg.Upstream); err != nil {
		return nil, fmt.Errorf("amqp: Upstream %q: %w", cfg.Upstream, err)
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("amqp: Listen %q: %w", cfg.Listen, err)
	}
	p := &Proxy{cfg: cfg, log: cfg.Log.With().Str("protocol", "amqp").Logger(), handed: cfg.Handed,
		seen: proxy.NewFirstSeen[clientIdentity](maxIdentified), closesSeen: proxy.NewFirstSeen[brokerCloseKey](maxIdentified)}
	if p.handed == nil {
		p.handed = pathway.NewHanded(pathway.HandedPerAMQPFront)
	}
	p.heldTx.Max, p.tags.Max, p.heldConfirms.Max = maxHeldTxPoints, maxConsumerTags, maxHeldConfirms
	if p.cfg.upstreamWait <= 0 {
		p.cfg.upstreamWait = headerTimeout
	}
	if p.cfg.MaxFrameBytes <= 0 {
		p.cfg.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if p.cfg.MaxConsumers <= 0 {
		p.cfg.MaxConsumers = 4096
	}
	p.now = cfg.Clock
	if p.now == nil {
		p.now = time.Now
	}
	p.cp = cfg.Checkpointer
	if p.cp == nil {
		p.cp = pathway.NewCheckpointer(cfg.Env, 0)
	}
	p.obs = cfg.Observer
	if p.obs == nil {
		p.obs = discardObserver{}
	}
	p.errs = cfg.Errors
	if p.errs == nil {
		p.errs = errtrack.Discard{}
	}
	p.respect = cfg.RespectExistingContext == nil || *cfg.RespectExistingContext
	return p, nil
}

type discardObserver struct{}

func (discardObserver) Add(pathway.Point) bool     { return true }
func (discardObserver) Offset(pathway.Offset) bool { return true }

// Start binds the listener and serves it in the background until Shutdown.
func (p *Proxy) Start(ctx context.Context) error {
	lc := p.cfg.Listener
	lc.Protocol = "amqp"
	lc.Addr = p.cfg.Listen
	lc.Upstream = p.cfg.Upstream
	ln, err := proxy.Listen(lc, p, p.log)
	if err != nil {
		return fmt.Errorf("amqp: %w", err)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ln.Close()
		return errors.New("amqp: Start after Shutdown")
	}
	p.ln = ln
	p.mu.Unlock()
	p.serveWG.Add(1)
	go func() {
		defer p.serveWG.Done()
		if err := ln.Serve(ctx); err != nil && !errors.Is(err, proxy.ErrClosed) {
			p.log.Error().Err(err).Msg("amqp listener stopped")
		}
	}()
	p.log.Debug().Str("listen", ln.Addr().String()).Str("upstream", p.cfg.Upstream).Msg("amqp proxy listening") // dsmproxy logs "front listening"
	return nil
}

// Addr is the listener's address (nil before Start).
func (p *Proxy) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return nil
	}
	return p.ln.Addr()
}

// Shutdown stops accepting and asks every connection to drain: each one closes at the first frame
// boundary where no published message is half through the proxy, or when ctx ends.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	ln := p.ln
	p.mu.Unlock()
	if ln == nil {
		return nil
	}
	err := ln.Shutdown(ctx)
	p.serveWG.Wait()
	return err
}

// UpstreamProblem says why the broker at addr (Config.Upstream) is not an AMQP 0-9-1 broker
// although it takes connections: it answered a client's protocol header with another protocol, or
// was silent past the wait (nil when neither, or it answered as a broker since). While that is
// recorded, each call sends it the protocol header again, so that a broker put right is seen
// without a client.
func (p *Proxy) UpstreamProblem(ctx context.Context, addr string) error {
	return p.wrong.Recheck(ctx, addr, p.checkAMQP)
}

// checkAMQP sends addr the protocol header: wrong when it answers with another protocol; err when
// that says nothing (the dial failed, it closed, or ctx ended first: silence a moment long is no
// proof).
func (p *Proxy) checkAMQP(ctx context.Context, addr string) (wrong, err error) {
	dial := p.cfg.Listener.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write(protocolHeader[:]); err != nil {
		return nil, err
	}
	b := make([]byte, 7)
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	return notAMQP(b), nil
}

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	s := &p.stats
	refused, tlsFailed, dialFailed, open := p.listenerCounts()
	return Stats{
		Connections: s.conns.Load(), Published: s.published.Load(), Injected: s.injected.Load(),
		ExistingContext: s.existing.Load(), SkippedFrameMax: s.frameMax.Load(), Consumed: s.consumed.Load(),
		UnknownQueue: s.unknownQueue.Load(), DecodeErrors: s.decodeErrors.Load(), Returns: s.returns.Load(),
		Nacks: s.nacks.Load(), ErrorCloses: s.errorCloses.Load(), PointsDropped: s.dropped.Load(),
		RefusedProtocol: s.refused.Load(), RefusedConns: refused, TLSHandshakeFailures: tlsFailed, DialFailures: dialFailed, ConsumerResets: s.consumerResets.Load(), TxUnheld: s.txUnheld.Load(), UntrackedConsumers: s.untrackedConsumers.Load(),
		ConfirmUnheld: s.confirmUnheld.Load(), Unconfirmed: s.unconfirmed.Load(), SilentUpstreams: s.silentUpstreams.Load(),
		OpenConnections: int64(open), RelayBuffers: p.relayBufs.Load(),
	}
}

// listenerCounts is the listener's refusals, failed TLS handshakes and failed upstream dials,
// and its open connections.
func (p *Proxy) listenerCounts() (refused, tlsFailed, dialFailed uint64, open int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return 0, 0, 0, 0
	}
	return p.ln.Refused(), p.ln.TLSFailures(), p.ln.DialFailures(), p.ln.Conns()
}

func (p *Proxy) addPoint(pt pathway.Point) {
	if !p.obs.Add(pt) {
		p.stats.dropped.Add(1)
	}
}
