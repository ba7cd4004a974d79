// Package aws is dsmproxy's HTTP front for SQS, SNS and Kinesis: it verifies each client's SigV4
// signature, recognises the service and operation (SQS JSON and Query, SNS Query and JSON,
// Kinesis JSON and CBOR), splices the DSM `_datadog` carrier into sent messages (repairing the
// MD5s SDKs check), records produce and consume checkpoints, rewrites queue URLs to point at
// itself, and re-signs every request with its own credentials. Queue URLs an application keeps in
// its own configuration still name AWS's host and bypass the proxy.
package aws

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go/logging"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// Observer receives checkpoints (and, for symmetry with the other fronts, offsets). Calls must not
// block (false = dropped); the aggregator implements it.
type Observer interface {
	Add(pathway.Point) bool
	Offset(pathway.Offset) bool
}

// The services the front recognises.
const (
	ServiceSQS     = "sqs"
	ServiceSNS     = "sns"
	ServiceKinesis = "kinesis"
)

// Config configures one AWS front (one listener).
type Config struct {
	// Listen is the address to bind, e.g. 127.0.0.1:4566.
	Listen string
	// Upstream is the endpoint URL requests go to (e.g. https://sqs.us-east-1.amazonaws.com).
	// An AWS regional endpoint names one service: the others go to their own endpoints in its
	// region (sns.us-east-1.amazonaws.com, ...). Any other URL (LocalStack) serves them all.
	// Empty means each service's regional AWS endpoint.
	Upstream string
	// Upstreams overrides Upstream per service (keys ServiceSQS, ServiceSNS, ServiceKinesis).
	Upstreams map[string]string
	// Region signs requests whose credential scope names none, and names the endpoints when
	// Upstream is empty (default: the SDK chain's, AWS_REGION..., else us-east-1).
	Region string

	Env          string
	Checkpointer *pathway.Checkpointer // default pathway.NewCheckpointer(Env, 0)
	// Handed: the contexts consumers were handed lately, to tell a client that sends one on (a
	// relay) from a tracer. The process's fronts share one, so that a relay from one front to
	// another (Kafka to RabbitMQ) is known too. Default: one of this front's own, of
	// pathway.HandedPerAWSFront contexts.
	Handed   *pathway.Handed
	Observer Observer          // nil = checkpoints are computed and dropped
	Errors   errtrack.Reporter // nil = errtrack.Discard
	Services *proxy.Services
	Clock    func() time.Time // default time.Now
	Log      zerolog.Logger

	// Credentials sign upstream requests. nil = aws-sdk-go-v2's default chain (env, shared
	// config, web identity, ECS/EC2 roles), cached and refreshed before expiry.
	Credentials awssdk.CredentialsProvider
	// ClientKeys are extra access key id -> secret pairs clients may sign with.
	ClientKeys map[string]string
	// TrustClients skips verifying client signatures (a loopback sidecar). On a listener that is
	// not loopback it also needs TrustClientsNonLoopback.
	TrustClients            bool
	TrustClientsNonLoopback bool
	// MaxClockSkew bounds how far a client's X-Amz-Date may be from now (default 15m, as AWS).
	MaxClockSkew time.Duration

	// MaxBodyBytes bounds a request body (default 16 MiB, above every AWS request limit).
	MaxBodyBytes int64
	// MaxAnswerBytes bounds an answer, which the proxy holds whole (default 64 MiB: a Kinesis
	// GetRecords of 10 MB is ~18 MB of JSON, and ten 1 MiB SQS messages in a Query answer can grow
	// several times by XML escaping). A larger answer is refused with a 502 naming the limit,
	// never passed on cut short.
	MaxAnswerBytes int64
	// MaxMessageBytes: a message whose size with `_datadog` would exceed it is sent unmodified
	// (default DefaultMaxMessageBytes).
	MaxMessageBytes int
	// RespectExistingContext (default true when nil): a message or Kinesis record whose
	// `_datadog` already holds a pathway context comes from a tracer, which checkpointed it: it
	// goes unmodified and gets no produce checkpoint. Off, the proxy checkpoints it with that
	// context as the parent and replaces the context. A `_datadog` with trace keys only gets the
	// pathway context merged in either way.
	RespectExistingContext *bool
	// KinesisInjectData splices `_datadog` into JSON-object record data (default off: analytics
	// consumers read the data). GetRecords through the proxy, in JSON or CBOR (Java SDKs'
	// default), removes it again where the proxy added it to data that had none; consumers
	// reading directly see it. PutRecord(s) in CBOR are checkpointed but never modified.
	KinesisInjectData bool
	// MaxShardIterators bounds the shard iterator -> stream map (default 100000).
	MaxShardIterators int

	// Listener carries TLS toward clients (Listener.TLS), the connection limit (MaxConns), the
	// time a connection may wait idle between requests (IdleTimeout, default 5 minutes) and the
	// upstream dial timeout (DialTimeout, default 30 s); other fields are ignored.
	Listener proxy.ListenerConfig
	// Transport sends upstream requests. Default: the front's own HTTP/1.1 client, or a clone of
	// http.DefaultTransport when an HTTP proxy from the environment applies to an upstream.
	Transport http.RoundTripper
	// UpstreamTLS returns the TLS configuration toward https upstreams; the front's own client
	// calls it at every dial, so a reloaded CA or certificate applies to new connections (nil:
	// system roots). ServerName, when empty, is the upstream's host.
	UpstreamTLS func() *tls.Config
}

// Stats are the front's counters.
type Stats struct {
	Requests       uint64 // requests received
	AuthFailures   uint64 // refused before forwarding
	UpstreamErrors uint64 // AWS error responses passed through
	Injected       uint64 // messages/records that got `_datadog`
	Existing       uint64 // messages/records left alone: their `_datadog` held a tracer's pathway context
	Skipped        uint64 // messages sent unmodified (attribute count, size, not JSON, Kinesis CBOR)
	Produced       uint64 // produce checkpoints recorded
	Consumed       uint64 // consume checkpoints recorded
	DecodeErrors   uint64 // bodies forwarded without being understood
	PointsDropped  uint64 // Observer.Add returned false
	RefusedConns   uint64 // connections closed at once because MaxConns were open
	// UpstreamFailures: requests answered 502 ServiceUnavailable because the upstream could not
	// be reached or its answer relayed, or the front could not sign them for want of its own
	// credentials (logged with upstream_failures_total).
	UpstreamFailures uint64
	// MalformedRequests: requests refused as malformed HTTP (400, 417, 431, 505) or whose body
	// ended before its Content-Length (400), clients that opened with another protocol (400),
	// and failed TLS handshakes with clients (not connections closed before a byte of one, such
	// as TCP health checks); each closed its connection.
	MalformedRequests uint64
	// SendMessages, and SendMessageBatches with entries, refused as over their queue's own size
	// limit with `_datadog`, and sent again without it (a batch's refused entries in a batch of
	// their own).
	SentAgain uint64
	// OpenConnections: client connections open now, idle keep-alive ones included (what
	// max_conns counts). Signed: a level, not a count since the start.
	OpenConnections int64
}

type counters struct {
	requests, authFail, upstreamErr, injected, existing, skipped, produced, consumed, decodeErr, dropped, refused, sentAgain, malformed atomic.Uint64
}

// Proxy is one AWS front.
type Proxy struct {
	cfg    Config
	log    zerolog.Logger
	now    func() time.Time
	cp     *pathway.Checkpointer
	obs    Observer
	errs   errtrack.Reporter
	creds  awssdk.CredentialsProvider
	signer *v4.Signer
	client *http.Client
	upc    *upstreamClient      // nil = client
	up     map[string]*endpoint // service -> where its requests go
	stats  counters
	// credsFailures counts failed loads of the proxy's own credentials (their log lines are thinned).
	credsFailures atomic.Uint64
	// upstreamFailed counts requests answered 502 because the upstream could not be reached (or
	// its answer relayed), upstreamWorked says the latest request got an answer: their log lines
	// are thinned as failed dials are on the other fronts.
	upstreamFailed atomic.Uint64
	upstreamWorked atomic.Bool
	// checking: a checkHTTP after a transport error is under way (checkAfterTransportError).
	checking atomic.Bool
	// credsMissing: the latest load of the proxy's own credentials failed (Problem); credsRetry: a
	// load that Problem started is under way.
	credsMissing, credsRetry atomic.Bool
	// own: the proxy's recent credentials, for clients that sign with them across a rotation.
	own ownKeys
	// respect: messages that already carry a pathway context are left alone (RespectExistingContext).
	respect bool

	iters *boundedMap // shard iterator -> stream name
	qurls *boundedMap // queue URL as the proxy handed it out -> upstream queue URL
	sizes *queueLimits
	// handed: contexts consumers were handed (Config.Handed), to know them when
	// sent on.
	handed *pathway.Handed
	// seen: clients whose service was logged at Info, once each while they keep coming.
	seen *proxy.FirstSeen[seenClient]

	// wrong: upstreams (as /readyz names them) whose latest answer was not HTTP
	// (UpstreamProblem).
	wrong proxy.WrongUpstreams

	mu  sync.Mutex
	ln  net.Listener
	srv *h1Server

	// tap sees each request as the client sent it and the upstream's answer (tests capture
	// real client traffic with it).
	tap func(c *call, resp []byte)
}

// New validates cfg and returns a Proxy; Start binds it.
func New(cfg Config) (*Proxy, error) {
	if cfg.Listen == "" {
		return nil, errors.New("aws: Listen is required")
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("aws: Listen %q: %w", cfg.Listen, err)
	}
	if cfg.TrustClients && !cfg.TrustClientsNonLoopback && !isLoopback(host) {
		return nil, fmt.Errorf("aws: trust_clients on non-loopback listener %q lets anyone reach AWS as the proxy's identity; set trust_clients_non_loopback too if that is really wanted", cfg.Listen)
	}
	if cfg.Region == "" && cfg.Credentials == nil {
		// As the SDKs do, and as the proxy's own credentials come: AWS_REGION, AWS_DEFAULT_REGION
		// or the profile's region. Read apart from the credentials, which are loaded for the
		// region settled here (an STS endpoint needs one).
		ac, err := awsconfig.LoadDefaultConfig(context.Background(), awsconfig.WithLogger(sdkLogger(cfg.Log.With().Str("protocol", "aws").Logger())))
		if err != nil {
			return nil, fmt.Errorf("aws: default config (region): %w", err)
		}
		cfg.Region = ac.Region
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.MaxClockSkew <= 0 {
		cfg.MaxClockSkew = 15 * time.Minute
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 16 << 20
	}
	if cfg.MaxAnswerBytes <= 0 {
		cfg.MaxAnswerBytes = 64 << 20
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if cfg.MaxShardIterators <= 0 {
		cfg.MaxShardIterators = 100000
	}
	p := &Proxy{cfg: cfg, log: cfg.Log.With().Str("protocol", "aws").Logger(), up: map[string]*endpoint{}}
	p.respect = cfg.RespectExistingContext == nil || *cfg.RespectExistingContext
	for _, svc := range []string{ServiceSQS, ServiceSNS, ServiceKinesis} {
		raw := cfg.Upstreams[svc]
		if raw == "" {
			raw = serviceEndpoint(cfg.Upstream, svc)
		}
		if raw == "" {
			raw = "https://" + svc + "." + cfg.Region + ".amazonaws.com"
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("aws: upstream for %s %q is not an http(s) URL", svc, raw)
		}
		p.up[svc] = newEndpoint(u)
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
	// Temporary credentials are refreshed a few minutes before they expire, so a request signed
	// just before expiry does not reach AWS with a dead token.
	window := func(o *awssdk.CredentialsCacheOptions) {
		o.ExpiryWindow = 5 * time.Minute
		o.ExpiryWindowJitterFrac = 0.5
	}
	p.creds = cfg.Credentials
	if p.creds == nil {
		ac, err := awsconfig.LoadDefaultConfig(context.Background(), awsconfig.WithRegion(cfg.Region),
			awsconfig.WithCredentialsCacheOptions(window), awsconfig.WithLogger(sdkLogger(p.log)))
		if err != nil {
			return nil, fmt.Errorf("aws: default credential chain: %w", err)
		}
		p.creds = ac.Credentials
	} else if _, cached := p.creds.(*awssdk.CredentialsCache); !cached {
		p.creds = awssdk.NewCredentialsCache(p.creds, window)
	}
	p.signer = v4.NewSigner()
	rt := cfg.Transport
	if rt == nil && !envProxied(p.up) {
		p.upc = newUpstreamClient()
		p.upc.tlsConfig = cfg.UpstreamTLS
		if d := p.cfg.Listener.DialTimeout; d > 0 {
			p.upc.dialer.Timeout = d
		}
	}
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 256
		if d := p.cfg.Listener.DialTimeout; d > 0 { // to the egress proxy, on this path
			t.DialContext = (&net.Dialer{Timeout: d, KeepAlive: 30 * time.Second}).DialContext
		}
		rt = t
		if cfg.UpstreamTLS != nil {
			// Through an HTTP proxy the transport does TLS itself, with the configuration it
			// was built with: a reload builds another.
			rt = &tlsFollower{base: t, conf: cfg.UpstreamTLS}
		}
	}
	p.client = &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	p.iters = newBoundedMap(cfg.MaxShardIterators)
	p.qurls = newBoundedMap(10000)
	p.seen = proxy.NewFirstSeen[seenClient](maxSeenClients)
	p.sizes = newQueueLimits()
	p.handed = cfg.Handed
	if p.handed == nil {
		p.handed = pathway.NewHanded(pathway.HandedPerAWSFront)
	}
	return p, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

type discardObserver struct{}

func (discardObserver) Add(pathway.Point) bool     { return true }
func (discardObserver) Offset(pathway.Offset) bool { return true }

// Start binds the listener and serves it until Shutdown.
func (p *Proxy) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		return fmt.Errorf("aws: listener on %s: %w", p.cfg.Listen, err)
	}
	ln = proxy.RawSyscallListener(ln)
	if p.cfg.Listener.MaxConns > 0 {
		ln = &limitListener{Listener: ln, max: int64(p.cfg.Listener.MaxConns), p: p}
	}
	if p.cfg.Listener.TLS != nil {
		ln = tls.NewListener(proxy.FirstByteListener{Listener: ln}, alpnProtocols(p.cfg.Listener.TLS))
	}
	reqCtx, endRequests := context.WithCancelCause(ctx)
	srv := &h1Server{
		handler:           p,
		baseCtx:           reqCtx,
		endRequests:       endRequests,
		readHeaderTimeout: 30 * time.Second,
		idleTimeout:       5 * time.Minute,
		bodyTimeout:       bodyTimeout,
		maxHeaderBytes:    http.DefaultMaxHeaderBytes + 4096,
		maxBodyBytes:      p.cfg.MaxBodyBytes,
		tlsConf:           p.cfg.Listener.TLS,
		logErr:            func(msg string) { p.log.Error().Msg(msg) },
		log:               p.log,
		refusals:          &p.stats.malformed,
	}
	if d := p.cfg.Listener.IdleTimeout; d > 0 {
		srv.idleTimeout = d
	}
	srv.enableH2(ln.Addr())
	p.mu.Lock()
	p.ln, p.srv = ln, srv
	p.mu.Unlock()
	go func() {
		if err := srv.serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error().Err(err).Msg("aws listener stopped")
		}
	}()
	go p.checkCredentials(ctx)
	p.log.Debug().Str("listen", ln.Addr().String()).Msg("aws proxy listening") // dsmproxy logs "front listening"
	return nil
}

// checkCredentials loads the proxy's own credentials once at start, so that an operator whose
// host has none reads so at start, not at the first client's request (which fails until they
// can be loaded). The source is logged, never the key.
func (p *Proxy) checkCredentials(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	creds, err := p.loadCreds(ctx)
	switch {
	case err == nil:
		p.log.Info().Str("source", creds.Source).Msg("the proxy's own AWS credentials are loaded")
	case ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded):
		p.logCredsError(err)
	}
}

// loadCreds is p.creds.Retrieve, remembering for Problem whether the load failed (not when ctx
// ended first: a client that went away says nothing about the credentials).
func (p *Proxy) loadCreds(ctx context.Context) (awssdk.Credentials, error) {
	creds, err := p.creds.Retrieve(ctx)
	if err == nil || ctx.Err() == nil {
		p.credsMissing.Store(err != nil)
	}
	if err == nil {
		p.own.note(creds)
	}
	return creds, err
}

// Problem reports why clients cannot use the front although it listens (GET /readyz): the
// latest load of the proxy's own credentials failed, and every request is answered 502 (or
// refused, where the proxy verifies signatures with them) until one works. While that lasts,
// each call starts a load of its own in the background (one at a time), so that the front is
// seen ready again once the credentials are back, even if no client sends a request meanwhile.
func (p *Proxy) Problem() error {
	if !p.credsMissing.Load() {
		return nil
	}
	if p.credsRetry.CompareAndSwap(false, true) {
		go func() {
			defer p.credsRetry.Store(false)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := p.loadCreds(ctx); err != nil {
				p.logCredsError(err)
			}
		}()
	}
	return errors.New("the proxy cannot load its own AWS credentials, which it signs every request with (the log says why; standard AWS chain: env, shared config, credential_process, web identity, instance role): signed requests are refused (403 InvalidClientTokenId: the front cannot verify them), and those it need not verify with them (client_keys, trust_clients) answered 502")
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

// Shutdown stops accepting and waits for requests in flight, or until ctx ends.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	srv := p.srv
	p.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.shutdown(ctx)
	if p.upc != nil {
		p.upc.close()
	}
	return err
}

// tlsFollower sends requests through a transport built with the current upstream TLS
// configuration, and builds another when a reload (SIGHUP) replaces it.
type tlsFollower struct {
	base *http.Transport
	conf func() *tls.Config

	mu      sync.Mutex
	cur     *http.Transport
	curConf *tls.Config
}

func (f *tlsFollower) RoundTrip(r *http.Request) (*http.Response, error) {
	return f.transport().RoundTrip(r)
}

func (f *tlsFollower) transport() *http.Transport {
	c := f.conf()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur == nil || c != f.curConf {
		if f.cur != nil {
			f.cur.CloseIdleConnections() // connections made with the old CA or certificate
		}
		t := f.base.Clone()
		t.TLSClientConfig = c.Clone()
		f.cur, f.curConf = t, c
	}
	return f.cur
}

// envProxied reports whether an HTTP proxy from the environment (HTTPS_PROXY, HTTP_PROXY,
// NO_PROXY) applies to an upstream: http.Transport then sends the requests.
func envProxied(up map[string]*endpoint) bool {
	for _, e := range up {
		if pu, err := http.ProxyFromEnvironment(&http.Request{URL: &e.URL}); pu != nil || err != nil {
			return true
		}
	}
	return false
}

// Endpoints are the upstream URLs the front sends each service to (SQS, SNS, Kinesis), as
// resolved from Upstream, Upstreams and Region; the same URL appears once.
func (p *Proxy) Endpoints() []string {
	var out []string
	for _, svc := range []string{ServiceSQS, ServiceSNS, ServiceKinesis} {
		if u := p.up[svc].String(); !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// serviceEndpoint is raw for svc: raw itself, or, when raw is an AWS regional endpoint of another
// of the front's services (https://sqs.eu-west-1.amazonaws.com, sqs-fips, .amazonaws.com.cn),
// the same endpoint of svc.
func serviceEndpoint(raw, svc string) string {
	u, err := url.Parse(raw)
	if err != nil || (!strings.HasSuffix(u.Hostname(), ".amazonaws.com") && !strings.HasSuffix(u.Hostname(), ".amazonaws.com.cn")) {
		return raw
	}
	first, rest, ok := strings.Cut(u.Host, ".")
	if !ok {
		return raw
	}
	name, fips := strings.CutSuffix(first, "-fips")
	switch name {
	case ServiceSQS, ServiceSNS, ServiceKinesis:
	default:
		return raw
	}
	if fips {
		svc += "-fips"
	}
	u.Host = svc + "." + rest
	return u.String()
}

// openConns is the number of client connections open now (0 before Start).
func (p *Proxy) openConns() int {
	p.mu.Lock()
	srv := p.srv
	p.mu.Unlock()
	if srv == nil {
		return 0
	}
	return srv.open()
}

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	s := &p.stats
	return Stats{
		Requests: s.requests.Load(), AuthFailures: s.authFail.Load(), UpstreamErrors: s.upstreamErr.Load(),
		Injected: s.injected.Load(), Existing: s.existing.Load(), Skipped: s.skipped.Load(), Produced: s.produced.Load(),
		Consumed: s.consumed.Load(), DecodeErrors: s.decodeErr.Load(), PointsDropped: s.dropped.Load(),
		RefusedConns: s.refused.Load(), SentAgain: s.sentAgain.Load(), MalformedRequests: s.malformed.Load(),
		UpstreamFailures: p.upstreamFailed.Load(),
		OpenConnections:  int64(p.openConns()),
	}
}

// wire is how a request is encoded, which decides the shape of errors the proxy writes itself.
type wire uint8

const (
	wireQuery  wire = iota // form body, XML response
	wireJSON10             // SQS JSON
	wireJSON11             // Kinesis, SNS JSON
	wireCBOR               // Kinesis from Java SDKs
)

// call is one request as the front understands it.
type call struct {
	r       *http.Request
	wire    wire
	service string
	op      string
	body    []byte
	form    *form // wireQuery only
	auth    *authHeader
	svcName string // DSM service of the client
	traced  bool   // the client's own tracer checkpoints what it consumes (a services rule says so)
	now     time.Time
	// batchTotal is the payload of a whole batch (SQS and SNS limit the sum too); batchAdded is
	// what injection has added to it so far.
	batchTotal, batchAdded int
	bodyHash               string // hex SHA-256 of body, once verification computed it
	// edge is the queue, topic or stream the request concerns and sent how many messages it
	// carries there, so an error response can name them and count them lost.
	edge pathway.Edge
	sent int
	// injected counts the messages the rewrite gave `_datadog`; with noInject it gives none (a
	// send again after its queue refused it with `_datadog`).
	injected int
	noInject bool
	// out is a SendMessageBatch's entries by Id, as its rewrite left them; resent names those
	// refused as over their queue's size limit with `_datadog` and sent again (sendBatchAgain).
	out    map[string]*outMsg
	resent map[string]bool
	// noStream counts records of a GetRecords answer read with a shard iterator of no known stream.
	noStream int
}

// again is a fresh call for body (c's, or a part of it) to send again without `_datadog`: as c's
// client sent it, before any rewrite (the Query rewrite edits its parsed form in place).
func (c *call) again(body []byte) (*call, error) {
	a := &call{r: c.r, wire: c.wire, service: c.service, op: c.op, body: body, auth: c.auth,
		svcName: c.svcName, traced: c.traced, now: c.now, noInject: true}
	if sameSlice(body, c.body) {
		a.bodyHash = c.bodyHash
	}
	if c.form != nil {
		f, err := parseForm(body)
		if err != nil {
			return nil, err
		}
		a.form = f
	}
	return a, nil
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.stats.requests.Add(1)
	if r.ContentLength > p.cfg.MaxBodyBytes {
		// Said at once: waiting for the body would hold the connection for up to the body
		// timeout, or the limit's worth of bytes, only to say the same. The body is left unread,
		// so an HTTP/1 connection closes after the answer, without waiting to skip it (an HTTP/2
		// stream ends by itself).
		c := &call{r: r, now: p.now()}
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		p.classify(c)
		p.writeError(w, c, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge",
			fmt.Sprintf("request body of %d bytes exceeds the proxy's limit of %d bytes (max_body_bytes)", r.ContentLength, p.cfg.MaxBodyBytes))
		return
	}
	body, err := readBody(r.Body, r.ContentLength, p.cfg.MaxBodyBytes)
	if err != nil {
		// Any client can cut a body short: counted with the malformed requests, and logged as
		// they are, at Warn now and then.
		e := p.log.Debug()
		if n := p.stats.malformed.Add(1); proxy.LogNth(n) {
			e = p.log.Warn().Uint64("refused_total", n)
		}
		e.Err(err).Uint64("conn", connOf(r)).Str("client", r.RemoteAddr).Str("path", r.URL.Path).Msg("could not read a request body; answered 400")
		http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	c := &call{r: r, body: body, now: p.now()}
	p.classify(c)
	if int64(len(body)) > p.cfg.MaxBodyBytes {
		p.writeError(w, c, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", fmt.Sprintf("request body exceeds the proxy's limit of %d bytes", p.cfg.MaxBodyBytes))
		return
	}
	if f := p.authenticate(c); f != nil {
		// the first refusals are logged, then one in a thousand, so a misconfigured or hostile
		// client cannot flood the log; Stats counts them all
		code := kinesisAuthCode(c, f.Code) // the code the client is told, which the log names too
		if n := p.stats.authFail.Add(1); proxy.LogNth(n) {
			ev := p.log.Warn().Str("service", c.service).Str("op", c.op).Str("code", code).Uint64("conn", connOf(r)).Str("client", r.RemoteAddr)
			if c.auth != nil {
				// The key id says which of several clients is misconfigured; it is no secret
				// (AWS's own logs show it). Never the secret, nor the signature.
				ev = ev.Str("access_key", c.auth.AccessKey)
			}
			if f.Message == unknownKeyMessage {
				// Neither the proxy's key nor a client key: what would let it in.
				ev = ev.Str("hint", "the key is neither the proxy's own nor one of this front's client_keys: add it to client_keys (with its secret), or, for a loopback sidecar, set trust_clients")
			}
			ev.Uint64("refused_total", n).Msg("request refused: " + f.Message)
		}
		status := http.StatusForbidden
		if c.service == ServiceKinesis {
			status = http.StatusBadRequest
		}
		p.writeError(w, c, status, code, f.Message)
		return
	}
	if c.wire == wireCBOR && c.service != ServiceKinesis {
		p.writeError(w, c, http.StatusBadRequest, "CborNotSupportedException",
			"dsmproxy does not read the CBOR protocol; turn CBOR off in the client: AWS_CBOR_DISABLE=true (Java SDK v1), CBOR_ENABLED=false or -Daws.cborEnabled=false (Java SDK v2)")
		return
	}
	id := p.identity(c)
	cl := p.cfg.Services.Client(id)
	c.svcName, c.traced = cl.Service, cl.Traced
	p.logIdentified(c, id)
	if c.service == ServiceKinesis && c.op == "SubscribeToShard" {
		p.refuseSubscribe(w, c)
		return
	}
	p.handle(w, c)
}

// refuseSubscribe answers SubscribeToShard at once. Its answer is an event stream that stays
// open for minutes, which the front, holding answers whole, cannot relay: forwarded, the client
// would wait with no event until the upstream timeout, then get a 502 and retry the same.
func (p *Proxy) refuseSubscribe(w http.ResponseWriter, c *call) {
	const msg = "dsmproxy does not relay SubscribeToShard (enhanced fan-out's event stream): read the shard through it with GetShardIterator and GetRecords (the KCL: polling, not fan-out), or send SubscribeToShard to Kinesis directly"
	p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.ProxySkip, Protocol: c.service, Operation: c.op,
		Name: "not_relayed", Message: msg, Service: c.svcName, Edge: kinesisEdge(pathway.In, consumerStream(c)), Partition: -1})
	p.writeError(w, c, http.StatusBadRequest, "SubscribeToShardNotSupportedException", msg)
}

// consumerStream is the stream of a SubscribeToShard's ConsumerARN
// (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME/consumer/CONSUMER:TIME), "" when it has none.
func consumerStream(c *call) string {
	var arn string
	if c.wire == wireCBOR {
		if v, err := cborDecode(c.body); err == nil {
			m, _ := v.(map[string]any)
			arn, _ = m["ConsumerARN"].(string)
		}
	} else if ms, _, err := objectMembers(c.body, 0); err == nil {
		arn, _ = jsonString(c.body, find(ms, "ConsumerARN"))
	}
	_, rest, ok := strings.Cut(arn, ":stream/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	return name
}

// kinesisAuthCode maps the SQS/SNS auth error codes to Kinesis's names.
func kinesisAuthCode(c *call, code string) string {
	if c.service != ServiceKinesis {
		return code
	}
	switch code {
	case "InvalidClientTokenId":
		return "UnrecognizedClientException"
	case "SignatureDoesNotMatch", "IncompleteSignature":
		return "InvalidSignatureException"
	case "MissingAuthenticationToken":
		return "MissingAuthenticationTokenException"
	}
	return code
}

// classify finds the service, operation and wire form of a request.
func (p *Proxy) classify(c *call) {
	r := c.r
	if a, err := parseAuthorization(r.Header.Get("Authorization")); err == nil {
		c.auth = &a
		c.service = a.Service
	}
	ct := r.Header.Get("Content-Type")
	if t := r.Header.Get("X-Amz-Target"); t != "" {
		prefix, op, _ := strings.Cut(t, ".")
		c.op = op
		switch {
		case prefix == "AmazonSQS":
			c.service, c.wire = ServiceSQS, wireJSON10
		case strings.HasPrefix(prefix, "Kinesis_"):
			c.service, c.wire = ServiceKinesis, wireJSON11
		case strings.HasPrefix(prefix, "AmazonSimpleNotificationService"):
			c.service, c.wire = ServiceSNS, wireJSON11
		default:
			c.wire = wireJSON11
			if strings.Contains(ct, "1.0") {
				c.wire = wireJSON10
			}
		}
		if strings.Contains(ct, "cbor") {
			c.wire = wireCBOR
		}
		return
	}
	c.wire = wireQuery
	if strings.HasPrefix(ct, "application/x-www-form-urlencoded") || (ct == "" && r.Method == http.MethodPost) {
		f, err := parseForm(c.body)
		if err == nil {
			c.form = f
			c.op = f.get("Action")
			if c.service == "" {
				switch f.get("Version") {
				case "2012-11-05":
					c.service = ServiceSQS
				case "2010-03-31":
					c.service = ServiceSNS
				}
			}
		}
	}
	if c.service == "" {
		c.service = ServiceSQS
	}
}

// authenticate verifies the client's signature unless clients are trusted.
func (p *Proxy) authenticate(c *call) *authFailure {
	if p.cfg.TrustClients {
		return p.trustedClient(c)
	}
	r := c.r
	if r.URL.Query().Get("X-Amz-Signature") != "" {
		return &authFailure{"AccessDenied", "presigned (query-string) SigV4 requests are not accepted by dsmproxy; sign with the Authorization header"}
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return &authFailure{"MissingAuthenticationToken", "Request is missing Authentication Token"}
	}
	if c.auth == nil {
		_, err := parseAuthorization(h)
		return &authFailure{"IncompleteSignature", err.Error()}
	}
	// The proxy signs for the service the client's scope names: only those it fronts (with an
	// upstream that serves everything, LocalStack, a client key would otherwise reach IAM or S3
	// as the proxy).
	switch c.auth.Service {
	case ServiceSQS, ServiceSNS, ServiceKinesis:
	default:
		return &authFailure{"AccessDenied", "dsmproxy fronts SQS, SNS and Kinesis; this request is signed for " + strconv.Quote(c.auth.Service)}
	}
	// The proxy signs every header it forwards with its own identity: those that say what the
	// request does must be covered by the client's signature (SigV4 wants Content-Type and every
	// x-amz-* header signed), or a captured request could be replayed as another operation.
	for _, hk := range meaningHeaders {
		if r.Header.Get(hk) != "" && !contains(c.auth.SignedHeaders, strings.ToLower(hk)) {
			return &authFailure{"IncompleteSignature", "the request's " + hk + " header is not among its SignedHeaders"}
		}
	}
	secret, ok := p.cfg.ClientKeys[c.auth.AccessKey]
	if !ok {
		creds, err := p.loadCreds(r.Context())
		if err != nil {
			// The chain's error can quote what a credential helper printed, secrets included:
			// the client and the log get a fixed text (logCredsError says what to check).
			p.logCredsError(err)
			return &authFailure{"InvalidClientTokenId", "the proxy could not load its own AWS credentials to verify the request"}
		}
		if secret, ok = p.ownSecret(r.Context(), c, creds, c.auth.AccessKey); !ok {
			return &authFailure{"InvalidClientTokenId", unknownKeyMessage}
		}
	}
	c.bodyHash = sha256Hex(c.body)
	if f := verifyWithHash(r, c.auth, secret, c.bodyHash, c.now, p.cfg.MaxClockSkew); f != nil {
		return f
	}
	return nil
}

// unknownKeyMessage is AWS's answer to an access key it does not know (InvalidClientTokenId).
const unknownKeyMessage = "The security token included in the request is invalid."

// identity is what the service rules match a request on.
func (p *Proxy) identity(c *call) proxy.Identity {
	id := proxy.Identity{Protocol: "aws"}
	if c.auth != nil {
		id.AccessKey = c.auth.AccessKey
	}
	id.ClientID = appID(c.r.Header.Get("User-Agent"))
	if id.ClientID == "" {
		id.ClientID = appID(c.r.Header.Get("X-Amz-User-Agent"))
	}
	id.Described = proxy.TrimGenerated(id.ClientID)
	if ap, err := netip.ParseAddrPort(c.r.RemoteAddr); err == nil {
		id.Addr = ap.Addr().Unmap()
	}
	return id
}

// seenClient is one client as the log names it: its address, key, app id and the service they
// gave it.
type seenClient struct {
	addr                      netip.Addr
	accessKey, appID, service string
}

// maxSeenClients bounds the clients remembered as logged (about 200 bytes each).
const maxSeenClients = 10000

// maxAccessKeyBytes caps the access key a remembered client and its line keep (AWS's are 16 to
// 128 characters), as the app id (maxAppIDBytes) and the Kafka front's client.id are.
const maxAccessKeyBytes = 255

// logIdentified says at Info which service a client was named and from what, the first time it
// comes (and again after a long absence), as the Kafka and AMQP fronts do for theirs.
func (p *Proxy) logIdentified(c *call, id proxy.Identity) {
	// The key is the client's own text, as long as its Authorization header where the front
	// trusts its clients; a substring of it would keep the whole header for each client kept.
	key := id.AccessKey
	if len(key) > maxAccessKeyBytes {
		key = strings.ToValidUTF8(key[:maxAccessKeyBytes], "")
	}
	k := seenClient{id.Addr, key, id.ClientID, c.svcName}
	if p.seen.Has(k) { // as every request of a client seen lately: no copy
		return
	}
	key = strings.Clone(key)
	k.accessKey = key
	if !p.seen.Add(k) {
		return
	}
	sdk, _, _ := strings.Cut(c.r.Header.Get("User-Agent"), " ")
	if len(sdk) > 64 { // the client's own text: its first token is enough to tell SDKs apart
		sdk = strings.ToValidUTF8(sdk[:64], "")
	}
	e := p.log.Info()
	if c.traced {
		e = e.Bool("traced", true)
	}
	e.Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("access_key", key).Str("app_id", id.ClientID).Str("sdk", sdk).
		Str("service", c.svcName).Msg("aws client identified")
}

// appID is the `app/<id>` token SDKs add to User-Agent when an application id is configured.
func appID(ua string) string {
	for f := range strings.FieldsSeq(ua) {
		if v, ok := strings.CutPrefix(f, "app/"); ok {
			if len(v) > maxAppIDBytes {
				// The SDKs allow 50 characters; a longer one would be a service name of up to
				// the header's size in every cache keyed by service.
				v = strings.ToValidUTF8(v[:maxAppIDBytes], "")
			}
			return strings.Clone(v) // not the whole header
		}
	}
	return ""
}

// maxAppIDBytes caps the app id kept as a service name.
const maxAppIDBytes = 255

// meaningHeaders are the forwarded headers that change what a request does: a verified client
// must have signed them.
var meaningHeaders = []string{"Content-Type", "X-Amz-Target", "X-Amzn-Query-Mode"}

// errNoCredentials: the proxy could not load its own AWS credentials (the reason is logged, not
// returned: it can quote a credential helper's output).
var errNoCredentials = errors.New("the proxy could not load its own AWS credentials")

// logCredsError says why the credential chain failed, without the chain's text, which can quote a
// credential helper's output (credential_process puts it whole in its error): the error's type,
// and its first line when no secret-looking word is in it.
func (p *Proxy) logCredsError(err error) {
	line, _, _ := strings.Cut(err.Error(), "\n")
	if l := strings.ToLower(line); len(line) > 300 || strings.Contains(l, "secret") || strings.Contains(l, "sessiontoken") ||
		strings.Contains(l, "accesskey") {
		line = "(withheld: it may quote a secret)"
	}
	if n := p.credsFailures.Add(1); proxy.LogNth(n) {
		p.log.Error().Str("error_type", fmt.Sprintf("%T", err)).Str("reason", line).Uint64("failures", n).
			Msg("cannot load the proxy's own AWS credentials: check the standard chain (env, shared config, credential_process, web identity, instance role)")
	}
}

// trustedClient refuses, in trust_clients mode, what only a web browser sends: a page the user
// opens can make it POST a form to a loopback port (no CORS preflight for that), and with DNS
// rebinding read the answers. SDKs send neither Origin nor Sec-Fetch-*, and on a loopback
// listener they name a loopback host.
func (p *Proxy) trustedClient(c *call) *authFailure {
	h := c.r.Header
	if h.Get("Origin") != "" || h.Get("Sec-Fetch-Site") != "" || h.Get("Sec-Fetch-Mode") != "" {
		return &authFailure{"AccessDenied", "dsmproxy trusts its clients here and does not take requests from web browsers (Origin or Sec-Fetch-* header)"}
	}
	if p.cfg.TrustClientsNonLoopback {
		return nil
	}
	host := c.r.Host
	if hn, _, err := net.SplitHostPort(host); err == nil {
		host = hn
	}
	if !isLoopback(strings.Trim(host, "[]")) {
		return &authFailure{"AccessDenied", "dsmproxy trusts only loopback clients here, and the request names host " + c.r.Host + " (DNS rebinding?)"}
	}
	return nil
}

// forwardHeaders are the client headers sent upstream; everything else is dropped, notably the
// client's Authorization, X-Amz-Date and X-Amz-Security-Token.
var forwardHeaders = []string{
	"Content-Type", "X-Amz-Target", "X-Amzn-Query-Mode", "Amz-Sdk-Invocation-Id", "Amz-Sdk-Request",
	"User-Agent", "X-Amz-User-Agent", "Accept", "X-Amzn-Trace-Id",
}

// forward sends body upstream, signed with the proxy's credentials, and returns the response with
// its body read.
func (p *Proxy) forward(c *call, body []byte) (*http.Response, []byte, error) {
	base := p.up[c.service]
	if base == nil {
		base = p.up[ServiceSQS]
	}
	u := base.URL
	u.Path = strings.TrimSuffix(base.Path, "/") + c.r.URL.Path
	u.RawPath = ""
	if c.r.URL.RawPath != "" {
		u.RawPath = strings.TrimSuffix(base.EscapedPath(), "/") + c.r.URL.RawPath
	}
	u.RawQuery = c.r.URL.RawQuery
	var rd io.Reader
	if p.upc == nil {
		rd = bytes.NewReader(body)
	}
	// built from "" then given u: u.String() and parsing it again would only copy u
	// The longest wait a client may ask for is a 20 s long poll: an upstream that takes minutes
	// is gone, and each such request would hold a goroutine and its body.
	ctx, cancel := context.WithTimeout(c.r.Context(), upstreamTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, c.r.Method, "", rd)
	if err != nil {
		return nil, nil, fmt.Errorf("aws %s %s: building upstream request: %w", c.service, c.op, err)
	}
	req.URL, req.Host = &u, strings.TrimSuffix(u.Host, ":") // as NewRequest does
	for _, h := range forwardHeaders {
		if v := c.r.Header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	creds, err := p.loadCreds(c.r.Context())
	if err != nil {
		p.logCredsError(err)
		return nil, nil, fmt.Errorf("aws %s %s: %w", c.service, c.op, errNoCredentials)
	}
	region, signingName := p.cfg.Region, c.service
	if c.auth != nil {
		region, signingName = c.auth.Region, c.auth.Service
	}
	sum := c.bodyHash
	if sum == "" || !sameSlice(body, c.body) {
		sum = sha256Hex(body)
	}
	req.ContentLength = int64(len(body)) // signed as content-length when > 0, as http.Transport sends it
	if err := p.signer.SignHTTP(c.r.Context(), creds, req, sum, signingName, region, p.now()); err != nil {
		return nil, nil, fmt.Errorf("aws %s %s: signing: %w", c.service, c.op, err)
	}
	var resp *http.Response
	var rb []byte
	if p.upc != nil {
		if resp, rb, err = p.upc.do(req, body, p.cfg.MaxAnswerBytes); err != nil {
			var nh *notHTTPError
			if errors.As(err, &nh) {
				p.wrong.Wrong(base.addr, nh)
			}
			return nil, nil, fmt.Errorf("aws %s %s to %s: %w", c.service, c.op, base.Host, err)
		}
		p.wrong.Answered(base.addr)
	} else {
		if resp, err = p.client.Do(req); err != nil {
			p.checkAfterTransportError(ctx, base, err)
			return nil, nil, fmt.Errorf("aws %s %s to %s: %w", c.service, c.op, base.Host, err)
		}
		p.wrong.Answered(base.addr)
		defer resp.Body.Close()
		if rb, err = readBody(resp.Body, answerLength(resp), p.cfg.MaxAnswerBytes); err != nil {
			return nil, nil, fmt.Errorf("aws %s %s from %s: reading response: %w", c.service, c.op, base.Host, err)
		}
	}
	// readBody stops one byte past the limit: the answer would reach the client cut short.
	if int64(len(rb)) > p.cfg.MaxAnswerBytes {
		return nil, nil, fmt.Errorf("aws %s %s from %s: %w", c.service, c.op, base.Host, errAnswerTooLarge{p.cfg.MaxAnswerBytes})
	}
	return resp, rb, nil
}

// errAnswerTooLarge: an upstream answer past MaxAnswerBytes, which the proxy holds whole.
type errAnswerTooLarge struct{ limit int64 }

func (e errAnswerTooLarge) Error() string {
	return fmt.Sprintf("the answer is larger than max_answer_bytes (%d); raise it to relay such answers", e.limit)
}

// sameSlice reports whether a and b are the same bytes in memory (the request went unmodified).
func sameSlice(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Time limits of the AWS front (see h1Server.bodyTimeout and forward); variables for tests.
var (
	bodyTimeout     = 2 * time.Minute
	upstreamTimeout = 2 * time.Minute
)

// readBody reads at most limit+1 bytes; with a Content-Length (n) within the limit, into a
// buffer that grows as the body arrives (proxy.ReadGrowing).
func readBody(r io.Reader, n, limit int64) ([]byte, error) {
	if n < 0 || n > limit {
		return io.ReadAll(io.LimitReader(r, limit+1))
	}
	b, err := proxy.ReadGrowing(r, nil, int(n))
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return b, err
}

// respFixer rewrites a successful response body; it returns nil to leave it alone.
type respFixer func(resp []byte) []byte

func (p *Proxy) handle(w http.ResponseWriter, c *call) {
	body, fix := p.rewriteRequest(c)
	resp, rb, err := p.forward(c, body)
	if err == nil && p.refusedOverQueueLimit(c, resp, rb) {
		// Rewritten again without `_datadog`, keeping what else the rewrite changes (the queue
		// URL).
		if again, aerr := c.again(c.body); aerr == nil { // it parsed before, so it parses again
			c = again
			body, fix = p.rewriteRequest(c)
			resp, rb, err = p.forward(c, body)
		}
	}
	if err != nil && c.r.Context().Err() != nil {
		p.requestEnded(w, c, err)
		return
	}
	if err != nil {
		// Loud only now and then, as while the service cannot be reached every client sends
		// (and retries) each message; but always the first failure after a request that got
		// through, so that each outage is told. The tracked error counts them all.
		n := p.upstreamFailed.Add(1)
		ev := p.log.Debug()
		if p.upstreamWorked.Swap(false) || proxy.LogNth(n) {
			ev = p.log.Warn()
		}
		ev = ev.Err(err).Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("service", c.service).Str("op", c.op)
		if c.edge.Topic != "" { // of many queues behind one front, whose requests fail
			ev = ev.Str("topic", c.edge.Topic)
		}
		ev.Uint64("upstream_failures_total", n).Msg("upstream request failed; answered 502")
		msg := "dsmproxy could not reach the upstream: "
		switch {
		case errors.As(err, new(errAnswerTooLarge)):
			msg = "dsmproxy could not relay the upstream's answer: "
		case errors.Is(err, errNoCredentials): // the upstream was not tried
			msg = "dsmproxy could not sign the request for the upstream: "
		}
		p.writeError(w, c, http.StatusBadGateway, "ServiceUnavailable", msg+err.Error())
		// The client gets an SQS, SNS or Kinesis error as any other (the SDKs retry it): it is
		// tracked on the request's edge like the upstream's own, or an outage of the upstream
		// would show nowhere but this log.
		c.now = p.now()
		p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.BrokerError, Protocol: c.service, Operation: c.op,
			Code: http.StatusBadGateway, Name: "ServiceUnavailable", Message: msg + err.Error(), Retriable: true,
			Service: c.svcName, Edge: c.edge, Partition: -1, Messages: c.sent})
		return
	}
	if !p.upstreamWorked.Load() { // a store per request would bounce the line between cores
		p.upstreamWorked.Store(true)
	}
	if p.tap != nil {
		p.tap(c, rb)
	}
	// What happens from here (consume checkpoints, error events) happens when the answer came:
	// a long-polled ReceiveMessage can wait 20 s for a message produced meanwhile.
	c.now = p.now()
	modified := false
	if resp.StatusCode/100 == 2 {
		if again, ok := p.sendBatchAgain(c, rb, fix); ok {
			rb, modified = again, true
		} else if fix != nil {
			if nb := fix(rb); nb != nil {
				rb, modified = nb, true
			}
		}
	} else {
		p.reportUpstreamError(c, resp, rb)
	}
	hdr := w.Header()
	// Hop-by-hop fields (RFC 9110 7.6.1), and those the upstream's Connection names, end here.
	var named map[string]bool
	for _, v := range resp.Header.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if named == nil {
				named = map[string]bool{}
			}
			named[http.CanonicalHeaderKey(strings.TrimSpace(f))] = true
		}
	}
	for k, vs := range resp.Header {
		switch ck := http.CanonicalHeaderKey(k); {
		case named[ck]:
			continue
		case ck == "Content-Length", ck == "Connection", ck == "Keep-Alive", ck == "Transfer-Encoding", ck == "Content-Encoding",
			ck == "Upgrade", ck == "Trailer", ck == "Te", ck == "Proxy-Connection", ck == "Proxy-Authenticate":
			continue
		case ck == "X-Amz-Crc32" && modified:
			continue
		}
		hdr[k] = vs
	}
	// The answer goes out with its length, never chunked (h1Server sets it again itself; other
	// ResponseWriters, net/http's or a test's, use this one).
	if bodyAllowed(resp.StatusCode) {
		hdr["Content-Length"] = []string{strconv.Itoa(len(rb))}
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(rb)
}

// requestEnded answers a request whose own context ended before the upstream answered: the
// proxy's drain time ran out (a long-polled ReceiveMessage waits up to 20 s), or an HTTP/2
// client reset its stream or closed its connection. Neither is the upstream's failure, so
// neither is tracked as one; the messages a cut-off ReceiveMessage was handed are delivered
// again after their visibility timeout.
func (p *Proxy) requestEnded(w http.ResponseWriter, c *call, err error) {
	msg := "the request ended before the upstream answered (the client went away, or the front was stopped)"
	ev := p.log.Debug().Err(err)
	if errors.Is(context.Cause(c.r.Context()), errDrainEnded) {
		msg = "dsmproxy is shutting down, and its drain time ran out before the upstream answered; send the request again"
		ev = p.log.Info()
	}
	ev.Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("service", c.service).Str("op", c.op).Msg(msg + " (answered 503)")
	p.writeError(w, c, http.StatusServiceUnavailable, "ServiceUnavailable", msg)
}

// bodyAllowed reports whether a response with this status may carry a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// rewriteRequest dispatches on service, wire and operation.
func (p *Proxy) rewriteRequest(c *call) ([]byte, respFixer) {
	var (
		body []byte
		fix  respFixer
		err  error
	)
	switch {
	case c.service == ServiceSQS && c.wire == wireJSON10:
		body, fix, err = p.sqsJSON(c)
	case c.service == ServiceSQS && c.wire == wireQuery && c.form != nil:
		body, fix, err = p.sqsQuery(c)
	case c.service == ServiceSNS && c.wire == wireQuery && c.form != nil:
		body, fix, err = p.snsQuery(c)
	case c.service == ServiceSNS:
		body, fix, err = p.snsJSON(c)
	case c.service == ServiceKinesis && c.wire == wireCBOR:
		body, fix, err = p.kinesisCBOR(c)
	case c.service == ServiceKinesis:
		body, fix, err = p.kinesisJSON(c)
	}
	if err != nil {
		p.stats.decodeErr.Add(1)
		p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.DecodeError, Protocol: c.service, Operation: c.op,
			Name: "request_decode", Message: err.Error(), Service: c.svcName, Partition: -1})
		p.log.Debug().Err(err).Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("service", c.service).Str("op", c.op).Msg("request forwarded without rewriting")
		return c.body, nil
	}
	if body == nil {
		body = c.body
	}
	return body, fix
}

func (p *Proxy) add(pt pathway.Point) {
	if !p.obs.Add(pt) {
		p.stats.dropped.Add(1)
	}
}

// answerUndecoded counts an answer the proxy could not read, passed on as it came, and tracks it
// on e: the messages in it got no consume checkpoint.
func (p *Proxy) answerUndecoded(c *call, e pathway.Edge, err error) {
	p.stats.decodeErr.Add(1)
	p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.DecodeError, Protocol: c.service, Operation: c.op,
		Name: "answer_decode", Message: err.Error(), Service: c.svcName, Edge: e, Partition: -1})
	p.log.Debug().Err(err).Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("service", c.service).Str("op", c.op).Msg("answer passed on without reading it")
}

// skip reports a message sent without `_datadog`.
func (p *Proxy) skip(c *call, e pathway.Edge, name, msg string) {
	p.stats.skipped.Add(1)
	p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.ProxySkip, Protocol: c.service, Operation: c.op,
		Name: name, Message: msg, Service: c.svcName, Edge: e, Partition: -1, Messages: 1})
}

// alpnProtocols is cfg offering, in ALPN, HTTP/1.1 first and HTTP/2 to the clients that offer
// nothing else (the JavaScript SDK's KinesisClient): the protocols the front speaks, whatever cfg
// lists. A client offering both keeps HTTP/1.1, the front's common path.
func alpnProtocols(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"http/1.1", "h2"}
	if get := cfg.GetConfigForClient; get != nil {
		cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if c == nil || err != nil {
				return c, err
			}
			c = c.Clone()
			c.NextProtos = []string{"http/1.1", "h2"}
			return c, nil
		}
	}
	return cfg
}

// boundedMap is a string map bounded to the keys used most recently (proxy.RecentMap): an
// iterator or queue URL in use is never forgotten because many new ones arrived.
type boundedMap struct {
	mu sync.Mutex
	m  *proxy.RecentMap[string, string]
}

func newBoundedMap(max int) *boundedMap {
	return &boundedMap{m: proxy.NewRecentMap[string, string](max)}
}

func (b *boundedMap) put(k, v string) {
	b.mu.Lock()
	b.m.Put(k, v)
	b.mu.Unlock()
}

func (b *boundedMap) get(k string) (string, bool) {
	b.mu.Lock()
	v, ok := b.m.Get(k)
	b.mu.Unlock()
	return v, ok
}

// limitListener closes connections beyond max at once, as the other fronts do: a client pool's
// idle keep-alive connections would otherwise hold every slot and starve new clients, and SDKs
// retry a reset connection.
type limitListener struct {
	net.Listener
	max  int64
	open atomic.Int64
	p    *Proxy
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			if n := l.p.stats.refused.Add(1); proxy.LogNth(n) {
				l.p.log.Warn().Uint64("conn", proxy.NextConnID()).Str("client", proxy.AddrString(c.RemoteAddr())).Int64("max_conns", l.max).Uint64("refused_total", n).
					Msg("connection refused: listener is at its connection limit")
			}
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, l: l}, nil
	}
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}

// CloseWrite half-closes the connection when the underlying one can (a lingering close).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// sdkLogger writes the AWS SDK's own log lines (an IMDS fallback, a credential source that
// failed) into the proxy's log, not as plain text between its JSON lines on stderr.
func sdkLogger(log zerolog.Logger) logging.Logger {
	log = log.With().Str("source", "aws-sdk").Logger()
	return logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
		ev := log.Debug()
		if c == logging.Warn {
			ev = log.Warn()
		}
		ev.Msgf(format, v...)
	})
}
