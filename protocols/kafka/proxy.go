// Package kafka is dsmproxy's Kafka wire-protocol proxy: it splits and pairs requests and
// responses, rewrites every broker address to a proxy listener (one per broker node), caps the
// ApiVersions it advertises to what it can decode, splices the DSM pathway header into produced
// record batches, and observes produce responses, fetch responses, commits and group traffic to
// record checkpoints, Kafka offsets and broker errors. Everything it does not touch is relayed as
// bytes.
package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/sasl"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// Observer receives checkpoints and offsets. Both calls must not block (false = dropped); the
// aggregator implements it. A point may stand for several checkpoints alike
// (pathway.Point.Count): an Observer that counts or weighs them takes Checkpoints() of each.
type Observer interface {
	Add(pathway.Point) bool
	Offset(pathway.Offset) bool
}

// DefaultMaxBatchBytes is the broker's default message.max.bytes: a batch that would grow past it
// by injection is forwarded unmodified.
const DefaultMaxBatchBytes = 1048588

// Config configures one Kafka front.
type Config struct {
	// Listen is the bootstrap listener, e.g. 127.0.0.1:19092.
	Listen string
	// Bootstrap lists the upstream bootstrap brokers (host:port); the bootstrap listener dials them
	// in turn.
	Bootstrap []string
	// AdvertisedHost is the host written into rewritten broker addresses. Default: Listen's host
	// (which must then not be a wildcard such as 0.0.0.0 or empty).
	AdvertisedHost string
	// NodeAddrs maps a broker node id to the address its listener binds (optional). A wildcard or
	// empty host there is advertised as AdvertisedHost; port 0 binds an ephemeral port.
	NodeAddrs map[int32]string
	// NodePortBase: nodes not in NodeAddrs listen on NodePortBase + node id on Listen's host.
	// 0 means Listen's port + 1 (bootstrap 19092 -> node 0 on 19093, node 1 on 19094, ...), so
	// several proxy instances with the same settings advertise the same addresses. When Listen's
	// port is 0 too (tests), every node listener takes an ephemeral port. A node whose port falls
	// outside 1..65535 is an error naming this setting.
	NodePortBase int
	// MaxBatchBytes: a batch whose size after injection would exceed it goes upstream unmodified
	// (default DefaultMaxBatchBytes, the broker's message.max.bytes default).
	MaxBatchBytes int
	// InjectAcks0UnknownLimit: acks=0 batches get the header even to topics whose
	// max.message.bytes the proxy has not read (a SASL cluster does not let it): the operator
	// vouches that no topic's limit is below MaxBatchBytes. Off (the default), those batches go
	// unmodified, because a refusal would lose them without an answer (topiclimits.go).
	InjectAcks0UnknownLimit bool
	// TopicLimitWait bounds how long a produce request naming topics whose limits were never read
	// waits for their lookup (nil: DefaultTopicLimitWait; 0: it never waits, and a first batch
	// the header grows past a topic's lower limit may be refused). MaxTopicLimitWait at most.
	TopicLimitWait *time.Duration
	// MaxFrameBytes bounds one request or response (default DefaultMaxFrameBytes).
	MaxFrameBytes int
	// FrameBudgetBytes bounds what all connections together hold of request frames over 1 MiB
	// while they are read and rewritten (three times the bytes that arrived, taken as they
	// arrive, not the size the prefix claims: the spliced batches and the rewritten frame are as
	// big) and of fetch responses over 256 KiB while they stream (default
	// DefaultFrameBudgetBytes). A request whose bytes stop fitting is relayed unread from there
	// as it arrives (Stats.UnreadRequests), a fetch response unobserved
	// (Stats.UnobservedFetches), so that many clients sending or fetching big frames at once, or
	// stalling half-way through them, cannot make the proxy hold max_frame_bytes per connection.
	FrameBudgetBytes int64
	// SASL is the proxy's own login, for its own connections to the cluster: topic configs
	// (DescribeConfigs) and node discovery (Metadata). Clients' logins pass through and are never
	// borrowed. Nil: those connections do not log in, and a cluster that wants SASL refuses
	// them. Client-first mechanisms only (PLAIN, SCRAM; OAUTHBEARER with a token source). Its
	// Authenticate gets the bootstrap address dialed, host:port, as kgo gives it. One that is
	// also a CredentialVersioner is tried again soon after a refusal, once its credentials change.
	SASL sasl.Mechanism

	Env          string
	Checkpointer *pathway.Checkpointer // default pathway.NewCheckpointer(Env, 0)
	// Handed: the contexts consumers were handed lately, to tell a client that sends one on (a
	// relay) from a tracer. The process's fronts share one, so that a relay from one front to
	// another (Kafka to RabbitMQ) is known too. Default: one of this front's own, of
	// pathway.HandedPerKafkaFront contexts.
	Handed   *pathway.Handed
	Observer Observer // nil = checkpoints and offsets are computed and dropped
	// OffsetsGone is told of offsets the cluster no longer has (a topic, a group or a group's
	// offsets deleted, a topic created again), so that a view of last known offsets forgets
	// them. It must not block; nil: nobody is told.
	OffsetsGone func(pathway.OffsetsGone)
	Errors      errtrack.Reporter // nil = errtrack.Discard
	Services    *proxy.Services
	Clock       func() time.Time // default time.Now
	Log         zerolog.Logger

	// Listener is the template for every listener: TLS toward clients, Dial (TLS origination),
	// MaxConns, DialTimeout. Protocol, Addr and Upstream are set per listener.
	Listener proxy.ListenerConfig

	// LinkConsumeProduce: when a client that consumed a record carrying context C produces within
	// LinkWindow, C becomes the produce checkpoint's parent. See link.go for when that is right.
	LinkConsumeProduce bool
	LinkWindow         time.Duration // default 1s

	// RespectExistingContext (default true via New when left nil): records that already carry
	// dd-pathway-ctx-base64 are left alone and get no produce checkpoint. Off, each such record
	// is checkpointed with its context as the parent, and the new context replaces it.
	RespectExistingContext *bool

	// MaxTopicIDs bounds the cluster-wide topic id -> name map (default 100000), which holds up
	// to twice as many ids: the latest answers' and those requests named lately (topics.go).
	// The size limits of the last MaxTopicIDs topics produced to are kept, in as much memory
	// (topiclimits.go).
	MaxTopicIDs int
	// MaxClients bounds the client -> consumer group map (default 10000).
	MaxClients int
	// ObserveQueue is the bounded queue of fetch responses waiting to be observed (default 256);
	// when full, responses are forwarded and not observed (counted in Stats).
	ObserveQueue int
	// ObserveQueueBytes bounds the bytes of the responses in that queue together (default
	// DefaultObserveQueueBytes): consumers catching up get responses of up to fetch.max.bytes
	// (50 MiB by default) each, and a lagging observer must not hold hundreds of them.
	ObserveQueueBytes int

	// Tests only: fetch responses from streamFetchMin bytes are forwarded while they arrive,
	// holding back the last fetchTailHold bytes (defaults in fetchstream.go).
	streamFetchMin, fetchTailHold int
}

// Stats are the proxy's counters.
type Stats struct {
	UnknownCorrIDs uint64 // responses whose correlation id matched no request (forwarded as they were)
	ObserveDropped uint64 // fetch responses not observed because the queue was full
	DecodeErrors   uint64 // requests/responses forwarded without being understood
	// Connections closed because a client's bytes were not Kafka framing (an HTTP request, a TLS
	// hello to a plaintext front, a size over max_frame_bytes).
	InvalidFrames    uint64
	InjectedRecords  uint64 // records that got a pathway header
	ExistingContext  uint64 // records that already carried one
	SkippedBatches   uint64 // batches forwarded unmodified (any reason)
	ConsumedRecords  uint64 // records checkpointed from fetch responses
	TopicIDMisses    uint64 // topic ids not (yet) in the map
	PointsDropped    uint64 // Observer.Add / Offset returned false
	SyntheticReplies uint64 // ApiVersions answers the proxy wrote itself
	StreamedFetches  uint64 // big fetch responses forwarded while they arrived
	HiddenEndpoints  uint64 // streamed fetch responses whose KIP-951 node endpoints were hidden
	ResentBatches    uint64 // idempotent batches the broker had stored before: not counted again
	RefusedConns     uint64 // connections closed at once because their listener was at MaxConns
	DialFailures     uint64 // client connections reset because their upstream dial failed
	// AdvertiseFailures: answers that named a broker node whose listener could not open, left
	// out of them (logged with advertise_failures_total).
	AdvertiseFailures uint64
	// TLSHandshakeFailures: clients whose TLS handshake failed (not port probes closed first).
	TLSHandshakeFailures uint64
	TxnOffsetsDropped    uint64 // TxnOffsetCommit offsets past 10,000 in one transaction: no backlog
	// Fetch sessions forgotten: over 2^17 partitions on one connection, or 2^20 offsets on all.
	// Their incremental fetches are observed as a session begun before the proxy.
	ForgottenSessions uint64
	UnheldBatches     uint64 // batches checkpointed when sent, not at the answer: their connection held maxConnHeldPoints, or all held maxHeldPoints
	// Requests answered without what the proxy keeps from them (their connection's requests
	// awaiting answers named maxConnFacts partitions, or all connections' maxFacts).
	UnkeptFacts uint64
	// Requests over 1 MiB relayed unread because Config.FrameBudgetBytes was taken by other
	// requests in progress, or is below three times the request's size: a produce's batches
	// went without the header or checkpoints.
	UnreadRequests uint64
	// Fetch responses over 256 KiB relayed unobserved because Config.FrameBudgetBytes was taken,
	// or is below their size: their records got no consume checkpoints.
	UnobservedFetches uint64
	// Client connections the broker ended (closed or reset) while requests on them waited for
	// its answers: a broker that crashed, restarted or dropped them. The client retries them.
	BrokerCuts uint64
	// Produce batches that waited for their topic's first size limit (topicLimits.check), at
	// most Config.TopicLimitWait (500 ms) per request: each batch to a topic not read yet while
	// its lookup is under way (again every 10 s for a topic whose lookup comes back without its
	// limit).
	TopicLimitWaits uint64
	// DescribeConfigs lookups of topic limits the cluster answered on the proxy's own connection,
	// and those that failed (no connection, a refused login or request). On a SASL cluster,
	// answered lookups show that the proxy's own login (Config.SASL) works.
	TopicConfigLookups, TopicConfigFailures uint64
	// OpenConnections: client connections open now on the bootstrap and every node listener
	// together, those still dialing the broker included. max_conns limits each listener on its
	// own: ListenerConnections has them one by one. Signed: a level, not a count since the start.
	OpenConnections int64
}

type counters struct {
	unknownCorr, observeDropped, decodeErrors, injected, existing, skipped, consumed, topicMiss, dropped, synthetic, streamed, hiddenEndpoints, resent, unheld, forgottenSessions, unkeptFacts, invalidFrames, unreadRequests, unobservedFetches, brokerCuts atomic.Uint64
}

// Proxy is one Kafka front: a bootstrap listener plus one listener per broker node.
type Proxy struct {
	cfg Config
	log zerolog.Logger
	// firstRequestTimeout: how long a client has to send its first request (a test shortens it
	// before Start).
	firstRequestTimeout time.Duration
	now                 func() time.Time
	cp                  *pathway.Checkpointer
	obs                 Observer
	pointBufs           *pointBuffers
	errs                errtrack.Reporter
	respect             bool
	listen              string // host of Listen
	advHost             string
	portBase            int // 0 = ephemeral node ports
	baseDial            proxy.DialFunc
	bootstrap           *proxy.Listener

	topics    *topicIDs
	limits    *topicLimits
	sequences *producedSequences
	saslSeen  atomic.Bool                        // the cluster accepted a client's login: the proxy's own requests need Config.SASL
	seen      *proxy.FirstSeen[clientServiceKey] // clients whose identity was logged at info
	clusterID atomic.Pointer[string]             // from Metadata; see noteCluster
	txns      txnCommits                         // transactional commits awaiting their EndTxn
	groups    *groupTracker
	links     *linkTable
	handed    *pathway.Handed // contexts consumers were handed lately (Config.Handed), to tell a relay
	stats     counters
	// advertiseFailures: answers that named a broker node without a listener, left out of them
	// (for how loudly that is logged).
	advertiseFailures atomic.Uint64
	// wrong: bootstrap brokers whose answer was another protocol's (UpstreamProblem).
	wrong proxy.WrongUpstreams

	observeQ       chan observeJob
	queued         atomic.Int64 // bytes of the frames in observeQ
	heldPoints     proxy.Budget // produce checkpoints held for answers (maxHeldPoints)
	sessionEntries proxy.Budget // fetch session offsets (maxSessionEntries)
	facts          proxy.Budget // partitions named by requests awaiting answers (maxFacts)
	connFactsMax   int64        // maxConnFacts when the proxy was made: tests change the variable
	frames         proxy.Budget // big request frames being read and fetch responses being streamed (FrameBudgetBytes)
	observeLate    atomic.Bool  // Shutdown ran out of time: observeQ is emptied unobserved
	walker         batchCodec   // used by the observation worker only
	fetchBufs      chan []byte  // streamed fetch frames, back from observation; see getFetchFrame
	bufs           bufList      // request-path buffers between requests

	mu           sync.Mutex
	ctx          context.Context
	nodes        map[int32]*node
	nodeProblems map[int32]error // nodes whose listener could not open: clients cannot reach them
	closed       bool
	serveWG      sync.WaitGroup
	workWG       sync.WaitGroup

	stopDiscovery context.CancelFunc // ends discoverNodes

	bootIdx  atomic.Uint32
	sessions sync.Map // *session -> struct{}: open connections

	tap func(h requestHeader, frame []byte) // tests: sees every request read whole, as the client sent it
}

type node struct {
	id       int32
	upstream atomic.Value // string host:port of the real broker
	ln       *proxy.Listener
	advHost  string
	advPort  int32
}

// New validates cfg and returns a Proxy; Start binds it.
func New(cfg Config) (*Proxy, error) {
	if len(cfg.Bootstrap) == 0 {
		return nil, errors.New("kafka: Bootstrap: at least one upstream broker is required")
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("kafka: Listen %q: %w", cfg.Listen, err)
	}
	port, err := net.LookupPort("tcp", portStr) // a number or a service name, as net.Listen takes
	if err != nil {
		return nil, fmt.Errorf("kafka: listen %q: port: %w", cfg.Listen, err)
	}
	p := &Proxy{cfg: cfg, log: cfg.Log.With().Str("protocol", "kafka").Logger(), listen: host, nodes: make(map[int32]*node), nodeProblems: make(map[int32]error),
		firstRequestTimeout: firstRequestTimeout}
	p.heldPoints.Max, p.sessionEntries.Max, p.facts.Max, p.connFactsMax = maxHeldPoints, maxSessionEntries, maxFacts, maxConnFacts
	p.advHost = cfg.AdvertisedHost
	if p.advHost == "" {
		if host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
			return nil, fmt.Errorf("kafka: AdvertisedHost is required when Listen %q binds every interface", cfg.Listen)
		}
		p.advHost = host
	}
	switch {
	case cfg.NodePortBase != 0:
		p.portBase = cfg.NodePortBase
	case port != 0:
		p.portBase = port + 1
	}
	for id, a := range cfg.NodeAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("kafka: NodeAddrs[%d] %q: %w", id, a, err)
		}
	}
	if p.cfg.MaxBatchBytes <= 0 {
		p.cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if p.cfg.streamFetchMin <= 0 {
		p.cfg.streamFetchMin = defaultStreamFetchMin
	}
	if p.cfg.fetchTailHold <= 0 {
		p.cfg.fetchTailHold = defaultFetchTailHold
	}
	if p.cfg.MaxFrameBytes <= 0 {
		p.cfg.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if p.cfg.FrameBudgetBytes <= 0 {
		p.cfg.FrameBudgetBytes = DefaultFrameBudgetBytes
	}
	p.frames.Max = p.cfg.FrameBudgetBytes
	p.now = cfg.Clock
	if p.now == nil {
		p.now = time.Now
	}
	p.cp = cfg.Checkpointer
	if p.cp == nil {
		p.cp = pathway.NewCheckpointer(cfg.Env, 0)
	}
	p.obs = cfg.Observer
	p.pointBufs = newPointBuffers()
	if p.obs == nil {
		p.obs = discardObserver{}
	}
	p.errs = cfg.Errors
	if p.errs == nil {
		p.errs = errtrack.Discard{}
	}
	p.respect = cfg.RespectExistingContext == nil || *cfg.RespectExistingContext
	if p.cfg.LinkWindow <= 0 {
		p.cfg.LinkWindow = time.Second
	}
	if p.cfg.MaxTopicIDs <= 0 {
		p.cfg.MaxTopicIDs = 100000
	}
	if p.cfg.MaxClients <= 0 {
		p.cfg.MaxClients = 10000
	}
	if p.cfg.ObserveQueue <= 0 {
		p.cfg.ObserveQueue = 256
	}
	if p.cfg.ObserveQueueBytes <= 0 {
		p.cfg.ObserveQueueBytes = DefaultObserveQueueBytes
	}
	p.topics = newTopicIDs(p.cfg.MaxTopicIDs)
	p.topics.now = p.now
	p.limits = newTopicLimits(p.cfg.MaxTopicIDs, cfg.InjectAcks0UnknownLimit)
	if w := cfg.TopicLimitWait; w != nil {
		if *w < 0 || *w > MaxTopicLimitWait {
			return nil, fmt.Errorf("kafka: TopicLimitWait %v: from 0 to %v (a client gives up on a request after request.timeout.ms, 30 s by default)", *w, MaxTopicLimitWait)
		}
		p.limits.wait.Store(int64(*w))
	}
	p.sequences = newProducedSequences()
	p.groups = newGroupTracker(p.cfg.MaxClients)
	p.groups.names = p.topics.get
	p.groups.now = p.now
	p.seen = proxy.NewFirstSeen[clientServiceKey](p.cfg.MaxClients)
	p.links = newLinkTable(p.cfg.MaxClients)
	p.handed = cfg.Handed
	if p.handed == nil {
		p.handed = pathway.NewHanded(pathway.HandedPerKafkaFront)
	}
	p.observeQ = make(chan observeJob, p.cfg.ObserveQueue)
	p.fetchBufs = make(chan []byte, pooledFetchFrames)
	p.bufs = newBufList()
	p.walker = newCodec(p.cfg.MaxBatchBytes, bufList{}) // one, kept: observation is one goroutine
	p.baseDial = cfg.Listener.Dial
	if p.baseDial == nil {
		timeout := cfg.Listener.DialTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		d := &net.Dialer{Timeout: timeout}
		p.baseDial = d.DialContext
	}
	return p, nil
}

type discardObserver struct{}

func (discardObserver) Add(pathway.Point) bool     { return true }
func (discardObserver) Offset(pathway.Offset) bool { return true }

// Start binds the bootstrap listener and serves it until Shutdown; per-node listeners open on
// demand when a response names a node and, when node addresses are fixed, as soon as the cluster
// tells the proxy its brokers (discover.go).
func (p *Proxy) Start(ctx context.Context) error {
	lc := p.cfg.Listener
	lc.Protocol = "kafka"
	lc.Addr = p.cfg.Listen
	lc.Upstream = strings.Join(p.cfg.Bootstrap, ",") // until a dial reached one (dialBootstrap)
	lc.Dial = p.dialBootstrap
	ln, err := proxy.Listen(lc, p, p.log)
	if err != nil {
		return fmt.Errorf("kafka: bootstrap %w", err)
	}
	dctx, stopDiscovery := context.WithCancel(ctx)
	p.mu.Lock()
	p.ctx = ctx
	p.bootstrap = ln
	p.stopDiscovery = stopDiscovery
	p.mu.Unlock()
	p.workWG.Add(1)
	go func() { defer p.workWG.Done(); p.observeLoop() }()
	p.workWG.Add(1)
	p.limits.noReader.Store(false) // before the first connection: its produce may wait for the reader
	go func() { defer p.workWG.Done(); (&configReader{p: p}).run(dctx) }()
	p.serve(ln)
	if p.portBase != 0 || len(p.cfg.NodeAddrs) > 0 {
		p.workWG.Add(1) // fixed node addresses: clients may hold them from before (discover.go)
		go func() { defer p.workWG.Done(); p.discoverNodes(dctx) }()
	}
	p.log.Debug().Str("listen", ln.Addr().String()).Strs("bootstrap", p.cfg.Bootstrap).Msg("kafka proxy listening") // dsmproxy logs "front listening"
	return nil
}

func (p *Proxy) serve(ln *proxy.Listener) {
	p.serveWG.Add(1)
	go func() {
		defer p.serveWG.Done()
		if err := ln.Serve(p.ctx); err != nil && !errors.Is(err, proxy.ErrClosed) {
			p.log.Error().Err(err).Str("listen", ln.Addr().String()).Msg("kafka listener stopped")
		}
	}()
}

// dialBootstrap tries the bootstrap brokers in turn, starting from a rotating index.
func (p *Proxy) dialBootstrap(ctx context.Context, network, _ string) (net.Conn, error) {
	c, addr, err := p.dialBootstrapAddr(ctx, network)
	if err == nil {
		proxy.DialedAddr(ctx, addr) // the connection's log lines name it
	}
	return c, err
}

// dialBootstrapAddr is dialBootstrap, which also says which bootstrap address answered.
func (p *Proxy) dialBootstrapAddr(ctx context.Context, network string) (net.Conn, string, error) {
	n := len(p.cfg.Bootstrap)
	start := int(p.bootIdx.Add(1))
	var errs []error
	for i := 0; i < n; i++ {
		addr := p.cfg.Bootstrap[(start+i)%n]
		c, err := p.baseDial(ctx, network, addr)
		if err == nil {
			return c, addr, nil
		}
		errs = append(errs, err)
	}
	return nil, "", fmt.Errorf("no bootstrap broker answered: %w", errors.Join(errs...))
}

// MaxTopicIDs is the bound of its topic id map: Config.MaxTopicIDs, or the default.
func (p *Proxy) MaxTopicIDs() int { return p.cfg.MaxTopicIDs }

// Addr is the bootstrap listener's address (nil before Start).
func (p *Proxy) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bootstrap == nil {
		return nil
	}
	return p.bootstrap.Addr()
}

// NodeAddr is the address a node's listener is bound to, if it is open.
func (p *Proxy) NodeAddr(id int32) (net.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.nodes[id]
	if n == nil {
		return nil, false
	}
	return n.ln.Addr(), true
}

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	s := &p.stats
	refused, tlsFailed, dialFailed, open := p.listenerCounts()
	return Stats{
		UnknownCorrIDs: s.unknownCorr.Load(), ObserveDropped: s.observeDropped.Load(), DecodeErrors: s.decodeErrors.Load(), InvalidFrames: s.invalidFrames.Load(),
		InjectedRecords: s.injected.Load(), ExistingContext: s.existing.Load(), SkippedBatches: s.skipped.Load(),
		ConsumedRecords: s.consumed.Load(), TopicIDMisses: s.topicMiss.Load(), PointsDropped: s.dropped.Load(),
		SyntheticReplies: s.synthetic.Load(), StreamedFetches: s.streamed.Load(), HiddenEndpoints: s.hiddenEndpoints.Load(),
		ResentBatches: s.resent.Load(), RefusedConns: refused, TLSHandshakeFailures: tlsFailed, DialFailures: dialFailed, AdvertiseFailures: p.advertiseFailures.Load(), TxnOffsetsDropped: p.txns.dropped.Load(), ForgottenSessions: s.forgottenSessions.Load(),
		UnkeptFacts: s.unkeptFacts.Load(), UnreadRequests: s.unreadRequests.Load(), UnobservedFetches: s.unobservedFetches.Load(), BrokerCuts: s.brokerCuts.Load(),
		UnheldBatches: s.unheld.Load(), TopicLimitWaits: p.limits.waits.Load(),
		TopicConfigLookups: p.limits.lookups.Load(), TopicConfigFailures: p.limits.lookupFailures.Load(),
		OpenConnections: int64(open),
	}
}

// listenerCounts sums the refusals, failed TLS handshakes, failed upstream dials and open
// connections of the bootstrap and node listeners (node listeners live until Shutdown, so no
// count is lost).
func (p *Proxy) listenerCounts() (refused, tlsFailed, dialFailed uint64, open int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bootstrap != nil {
		refused, tlsFailed, dialFailed, open = p.bootstrap.Refused(), p.bootstrap.TLSFailures(), p.bootstrap.DialFailures(), p.bootstrap.Conns()
	}
	for _, nd := range p.nodes {
		if nd.ln != nil {
			refused += nd.ln.Refused()
			tlsFailed += nd.ln.TLSFailures()
			dialFailed += nd.ln.DialFailures()
			open += nd.ln.Conns()
		}
	}
	return refused, tlsFailed, dialFailed, open
}

// ListenerConnections are one listener's open client connections.
type ListenerConnections struct {
	Listen string // the address it is bound to
	Node   int32  // the broker node it stands for; -1 for the bootstrap listener
	Open   int
}

// ListenerConnections lists the open client connections of the bootstrap listener, then of each
// node listener by node id: max_conns limits each one on its own.
func (p *Proxy) ListenerConnections() []ListenerConnections {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ListenerConnections, 0, len(p.nodes)+1)
	if p.bootstrap != nil {
		out = append(out, ListenerConnections{Listen: p.bootstrap.Addr().String(), Node: -1, Open: p.bootstrap.Conns()})
	}
	for id, nd := range p.nodes {
		if nd.ln != nil {
			out = append(out, ListenerConnections{Listen: nd.ln.Addr().String(), Node: id, Open: nd.ln.Conns()})
		}
	}
	slices.SortFunc(out, func(a, b ListenerConnections) int { return cmp.Compare(a.Node, b.Node) })
	return out
}

// Shutdown drains every listener (clients finish their in-flight requests) and stops the
// observation worker once the last queued response is observed.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.stopDiscovery != nil {
		p.stopDiscovery()
	}
	lns := make([]*proxy.Listener, 0, len(p.nodes)+1)
	if p.bootstrap != nil {
		lns = append(lns, p.bootstrap)
	}
	for _, n := range p.nodes {
		lns = append(lns, n.ln)
	}
	started := p.bootstrap != nil
	p.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(lns))
	for i, ln := range lns {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = ln.Shutdown(ctx) }()
	}
	wg.Wait()
	p.serveWG.Wait()
	if started {
		close(p.observeQ)
		observed := make(chan struct{})
		go func() { p.workWG.Wait(); close(observed) }()
		select {
		case <-observed:
		case <-ctx.Done():
			p.observeLate.Store(true) // out of time: what still waits is dropped, not observed
			<-observed
		}
	}
	return errors.Join(errs...)
}

// advertise returns the address to write for node id whose real address is host:port, opening its
// listener if needed. It is called before the response naming the node is forwarded, so the
// listener accepts by the time a client dials it.
// errNotRunning: the proxy opens no listener before Start or once Shutdown began.
var errNotRunning = errors.New("kafka proxy is not running")

func (p *Proxy) advertise(id int32, host string, port int32) (string, int32, error) {
	up := net.JoinHostPort(host, strconv.Itoa(int(port)))
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.nodes[id]; n != nil {
		if n.upstream.Load().(string) != up {
			n.upstream.Store(up)
			p.log.Info().Int32("node", id).Str("upstream", up).Msg("broker node moved")
		}
		return n.advHost, n.advPort, nil
	}
	if p.closed || p.ctx == nil {
		return "", 0, errNotRunning
	}
	addr, advHost, err := p.nodeListenAddr(id)
	if err != nil {
		return "", 0, err
	}
	n := &node{id: id}
	n.upstream.Store(up)
	lc := p.cfg.Listener
	lc.Protocol = "kafka"
	lc.Addr = addr
	lc.Upstream = up
	lc.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return p.baseDial(ctx, network, n.upstream.Load().(string))
	}
	ln, err := proxy.Listen(lc, p, p.log.With().Int32("node", id).Logger())
	if err != nil {
		err = fmt.Errorf("broker node %d's listener on %s (where clients are told to find it): %w; set node_port_base, or map the node in node_addrs (config file keys)", id, addr, err)
		p.nodeProblems[id] = err
		return "", 0, err
	}
	delete(p.nodeProblems, id)
	n.ln = ln
	n.advHost = advHost
	n.advPort = int32(ln.Addr().(*net.TCPAddr).Port)
	p.nodes[id] = n
	p.serve(ln)
	p.log.Info().Int32("node", id).Str("listen", ln.Addr().String()).Str("upstream", up).
		Str("advertised", net.JoinHostPort(advHost, strconv.Itoa(int(n.advPort)))).Msg("broker node listener opened")
	return n.advHost, n.advPort, nil
}

type clientServiceKey struct {
	client  clientKey
	service string
}

// identified reports whether ci is a client (and service) not seen recently.
func (p *Proxy) identified(ci *clientInfo) bool {
	k := clientServiceKey{ci.key(), ci.service}
	return p.seen.Add(k)
}

// Problem reports why clients cannot use the front fully although it listens: broker nodes
// whose listeners could not open (answers leave them out, as brokers that are down). Nil when
// there is none; readiness reports it.
func (p *Proxy) Problem() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, err := range p.nodeProblems {
		errs = append(errs, err)
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// AdvertisedHosts are the hosts the front tells clients to reach its broker nodes at:
// advertised_host (or the listen host) and the hosts of node_addrs, each once, sorted. A client
// checks the front's certificate against them.
func (p *Proxy) AdvertisedHosts() []string {
	hosts := []string{p.advHost}
	for id := range p.cfg.NodeAddrs {
		if _, h, err := p.nodeListenAddr(id); err == nil && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	slices.Sort(hosts)
	return hosts
}

// nodeListenAddr is where node id's listener binds and the host it advertises.
func (p *Proxy) nodeListenAddr(id int32) (addr, advHost string, err error) {
	if a, ok := p.cfg.NodeAddrs[id]; ok {
		h, _, _ := net.SplitHostPort(a)
		advHost = h
		if h == "" || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified() {
			advHost = p.advHost
		}
		return a, advHost, nil
	}
	if p.portBase == 0 {
		return net.JoinHostPort(p.listen, "0"), p.advHost, nil
	}
	port := p.portBase + int(id)
	if id < 0 || port < 1 || port > 65535 {
		err := fmt.Errorf("broker node id %d gives port %d outside 1..65535: set node_port_base (now %d), or map the node in node_addrs", id, port, p.portBase)
		p.nodeProblems[id] = err
		return "", "", err
	}
	return net.JoinHostPort(p.listen, strconv.Itoa(port)), p.advHost, nil
}

func (p *Proxy) addPoint(pt pathway.Point) {
	if !p.obs.Add(pt) {
		p.stats.dropped.Add(uint64(pt.Checkpoints()))
	}
}

// batchObserver is an Observer that takes a record batch's points in one call (the aggregator
// does, with one lock per batch instead of one per record). AddAll returns how many points it
// took, a prefix of them.
type batchObserver interface {
	AddAll([]pathway.Point) int
}

// addPoints hands over the points of one batch.
func (p *Proxy) addPoints(pts []pathway.Point) {
	if bo, ok := p.obs.(batchObserver); ok {
		if n := bo.AddAll(pts); n < len(pts) {
			for _, pt := range pts[n:] {
				p.stats.dropped.Add(uint64(pt.Checkpoints()))
			}
		}
		return
	}
	for _, pt := range pts {
		p.addPoint(pt)
	}
}

// dropCounter is the part of an Observer (the aggregator) that counts checkpoints a caller
// could not hand over, so they show where its own drops do.
type dropCounter interface{ Dropped(n int) }

// dropPoints counts n checkpoints that were not taken (maxBatchPoints).
func (p *Proxy) dropPoints(n int) {
	if n <= 0 {
		return
	}
	p.stats.dropped.Add(uint64(n))
	if dc, ok := p.obs.(dropCounter); ok {
		dc.Dropped(n)
	}
}

// offsetsGone tells cfg.OffsetsGone that the offsets of topic (every topic: "") committed by
// group (every kind of offset: "") on partition (every one: -1) are gone from the cluster.
func (p *Proxy) offsetsGone(topic, group string, partition int32) {
	// A longer name has no offsets to forget (a group's commits give none, maxGroupNameBytes;
	// Kafka's topic names stop at 249 bytes), and what is told is kept a while: a client deleting
	// names of 32 KiB that are not there would fill the view's memory.
	if len(topic) > maxGroupNameBytes || len(group) > maxGroupNameBytes {
		return
	}
	if p.cfg.OffsetsGone != nil {
		p.cfg.OffsetsGone(pathway.OffsetsGone{ClusterID: p.cluster(), Topic: topic, Group: group, Partition: partition,
			Time: p.now().UnixNano()})
	}
}

func (p *Proxy) addOffset(o pathway.Offset) {
	if !p.obs.Offset(o) {
		p.stats.dropped.Add(1)
	}
}

// inflight counts requests waiting for a response on every open connection (tests).
func (p *Proxy) inflight() int {
	n := 0
	p.sessions.Range(func(k, _ any) bool {
		s := k.(*session)
		s.mu.Lock()
		n += len(s.queue)
		s.mu.Unlock()
		return true
	})
	return n
}
