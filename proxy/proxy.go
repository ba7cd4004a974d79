// Package proxy is the protocol-agnostic plumbing of dsmproxy: listeners that accept client
// connections, dial the upstream for each, and hand the pair to a protocol Handler; plus TLS toward
// clients and upstreams with reloadable certificates, the connection registry, limits (connections,
// idle time), graceful drain and the per-connection log fields.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Handler serves one client connection and its upstream until either side ends. When Draining is
// closed it should stop reading new requests, let those in flight finish, and return.
type Handler interface {
	ServeConn(ctx context.Context, c *Conn) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, c *Conn) error

// ServeConn calls f.
func (f HandlerFunc) ServeConn(ctx context.Context, c *Conn) error { return f(ctx, c) }

// Conn is one accepted client connection with its dialed upstream.
type Conn struct {
	ID       uint64
	Protocol string
	Client   net.Conn
	Upstream net.Conn
	// UpstreamAddr is the upstream's address as configured: ListenerConfig.Upstream, or the one
	// a DialFunc picked (DialedAddr).
	UpstreamAddr string
	// Log carries conn, protocol, client and upstream fields.
	Log zerolog.Logger

	draining   <-chan struct{}
	tracked    *trackedConn // Client as accepted by a Listener; nil for hand-made Conns
	tlsConn    *tls.Conn    // set when the listener terminates TLS
	since      time.Time
	idleClosed atomic.Bool
}

// TLSState is the client's TLS session, once the listener terminated TLS.
func (c *Conn) TLSState() (tls.ConnectionState, bool) {
	if c.tlsConn == nil {
		return tls.ConnectionState{}, false
	}
	return c.tlsConn.ConnectionState(), true
}

// closeBoth closes the client and, once dialed, the upstream. Callers hold the listener's mu, which
// also guards Upstream. It cuts: under TLS it closes the socket first, as tls.Conn.Close would
// write close_notify and block up to 5 s on a client that reads nothing, holding mu.
func (c *Conn) closeBoth() {
	if c.tlsConn != nil {
		c.tlsConn.NetConn().Close()
	}
	c.Client.Close()
	if c.Upstream != nil {
		c.Upstream.Close()
	}
}

// Draining is closed when the proxy is shutting down gracefully.
func (c *Conn) Draining() <-chan struct{} { return c.draining }

// WakeOnDrain watches for a graceful drain and for ctx while a handler reads the client: on a
// drain it sets draining and puts the client's read deadline in the past, which wakes a blocked
// read (the handler then stops at a boundary of its protocol); when ctx ends it closes the
// client. stop ends the watch.
func (c *Conn) WakeOnDrain(ctx context.Context, draining *atomic.Bool) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-c.draining:
			draining.Store(true) // before the deadline: a reader woken by it sees the drain
			c.Client.SetReadDeadline(time.Now())
		case <-ctx.Done():
			c.Client.Close()
		case <-done:
		}
	}()
	return func() { close(done) }
}

var connIDs atomic.Uint64

// Logged marks err as logged already, with its reason, by the handler that returns it: the
// listener then notes the connection's end at Debug instead of logging the same error again.
func Logged(err error) error {
	if err == nil {
		return nil
	}
	return loggedError{err}
}

type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

// AddrString is a's text, or "unknown" for a socket that has no address (a nil interface would
// panic, in an accept goroutine outside every connection's recover).
func AddrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return a.String()
}

// NextConnID returns a process-wide unique connection id.
func NextConnID() uint64 { return connIDs.Add(1) }

// DialFunc dials an upstream; Listener uses it for every accepted connection.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

type dialedKey struct{}

// DialedAddr is for a DialFunc that picks its own address among several (Kafka's bootstrap
// list): it tells the Listener which one it reached, so that the connection's log lines name
// that one as `upstream` rather than ListenerConfig.Upstream.
func DialedAddr(ctx context.Context, addr string) {
	if p, ok := ctx.Value(dialedKey{}).(*string); ok {
		*p = addr
	}
}

// ListenerConfig configures one listener.
type ListenerConfig struct {
	Protocol    string // kafka, amqp, ... (log field)
	Addr        string // address to listen on
	Upstream    string // host:port dialed for every accepted connection (see DialedAddr)
	MaxConns    int    // 0 = unlimited; further connections are closed at once and logged
	DialTimeout time.Duration
	Dial        DialFunc    // nil = net.Dialer; set for TLS origination
	TLS         *tls.Config // non-nil terminates TLS toward clients

	// HandshakeTimeout bounds the TLS handshake with a client (default 10s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that moved no byte either way for this long; 0 = never.
	// Keep it above the longest wait a client may leave pending (Kafka fetch.max.wait.ms, AMQP
	// heartbeat interval).
	IdleTimeout time.Duration
	// Clock is the time source for the registry and the idle timeout (default time.Now).
	Clock func() time.Time
}

// ErrClosed is returned by Serve after Shutdown or Close.
var ErrClosed = errors.New("listener closed")

// Listener accepts clients on one address and serves each with a Handler.
type Listener struct {
	cfg     ListenerConfig
	h       Handler
	log     zerolog.Logger
	ln      net.Listener
	drain   chan struct{}
	closing atomic.Bool
	// cut ends what closing the connections cannot reach, dials and handshakes in progress,
	// when a drain's time is up or the listener closes.
	cut    context.Context
	cutNow context.CancelFunc

	mu    sync.Mutex
	conns map[uint64]*Conn
	wg    sync.WaitGroup

	refused    atomic.Uint64
	tlsFailed  atomic.Uint64
	dialFailed atomic.Uint64
	dialWorked atomic.Bool   // the latest upstream dial succeeded
	failedThen atomic.Uint64 // dialFailed as of the dial that ended the latest outage
	serving    atomic.Int64  // connections accepted and not yet ended (including those still dialing)
	epoch      time.Time
	coarse     atomic.Int64 // elapsed() as of the last tick
	tickEvery  time.Duration
}

// Listen opens cfg.Addr. Call Serve to start accepting. log, which should name the protocol,
// is the base of every connection's log lines (with the listener and the connection added).
func Listen(cfg ListenerConfig, h Handler, log zerolog.Logger) (*Listener, error) {
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener on %s: %w", cfg.Protocol, cfg.Addr, err)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: cfg.DialTimeout}
		cfg.Dial = d.DialContext
	}
	cut, cutNow := context.WithCancel(context.Background())
	return &Listener{
		cut:       cut,
		cutNow:    cutNow,
		cfg:       cfg,
		h:         h,
		log:       log.With().Str("listen", ln.Addr().String()).Logger(), // the caller's log names the protocol
		ln:        RawSyscallListener(ln),
		drain:     make(chan struct{}),
		conns:     make(map[uint64]*Conn),
		epoch:     cfg.Clock(),
		tickEvery: clockTick(cfg.IdleTimeout),
	}, nil
}

// elapsed is nanoseconds since Listen, monotonic with the default clock.
func (l *Listener) elapsed() int64 { return int64(l.cfg.Clock().Sub(l.epoch)) }

// Addr is the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Conns is the number of open client connections, those still in their TLS handshake or
// upstream dial included: what MaxConns counts.
func (l *Listener) Conns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Refused counts connections closed because MaxConns was reached.
func (l *Listener) Refused() uint64 { return l.refused.Load() }

// TLSFailures counts clients whose TLS handshake failed (not connections closed before sending a
// byte of one: port probes and TCP health checks).
func (l *Listener) TLSFailures() uint64 { return l.tlsFailed.Load() }

// Serve accepts connections until Shutdown or Close; it returns ErrClosed then.
func (l *Listener) Serve(ctx context.Context) error {
	go l.tickLoop()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.closing.Load() {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("%s accept on %s: %w", l.cfg.Protocol, l.ln.Addr(), err)
			}
			// Out of file descriptors, an aborted handshake: wait and keep serving rather than
			// leave the port dead.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Error().Err(err).Stringer("retry_in", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		// Under mu, as closing is set: a connection accepted just as Shutdown began is either
		// counted before Shutdown waits or closed here, never served after Shutdown returned.
		l.mu.Lock()
		if l.closing.Load() {
			l.mu.Unlock()
			c.Close()
			return ErrClosed
		}
		l.wg.Add(1)
		l.serving.Add(1)
		l.mu.Unlock()
		go l.serve(ctx, c)
	}
}

func (l *Listener) serve(ctx context.Context, raw net.Conn) {
	defer l.wg.Done()
	defer l.serving.Add(-1)
	id := NextConnID()
	base := l.log.With().Uint64("conn", id).Str("client", AddrString(raw.RemoteAddr())).Logger()
	log := base.With().Str("upstream", l.cfg.Upstream).Logger()
	l.mu.Lock()
	if l.cfg.MaxConns > 0 && len(l.conns) >= l.cfg.MaxConns {
		l.mu.Unlock()
		// Loud only now and then: whoever can reach the port could otherwise fill the log.
		n := l.refused.Add(1)
		ev := log.Debug()
		if LogNth(n) {
			ev = log.Warn()
		}
		ev.Int("max_conns", l.cfg.MaxConns).Uint64("refused_total", n).Msg("connection refused: listener is at its connection limit")
		resetClose(raw)
		return
	}
	var client net.Conn = raw
	var tc *tls.Conn
	if l.cfg.TLS != nil {
		tc = tls.Server(&FirstByteConn{Conn: raw}, l.cfg.TLS)
		client = tc
	}
	tr := &trackedConn{Conn: client, clock: &l.coarse}
	if l.cfg.IdleTimeout > 0 {
		tr.chunk = writeChunk
	}
	tr.last.Store(l.coarse.Load())
	c := &Conn{ID: id, Protocol: l.cfg.Protocol, Client: tr, Log: log, draining: l.drain,
		tracked: tr, tlsConn: tc, since: l.cfg.Clock()}
	l.conns[id] = c
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.conns, id)
		l.mu.Unlock()
	}()

	// Handshake here rather than on the handler's first read: a client that fails TLS costs no
	// upstream dial and gets a log line that says so.
	if tc != nil {
		hctx, cancel := context.WithTimeout(ctx, l.cfg.HandshakeTimeout)
		stop := context.AfterFunc(l.cut, cancel)
		err := tc.HandshakeContext(hctx)
		stop()
		cancel()
		if err != nil {
			if !SpokeFirst(tc) { // port probes and TCP health checks: not counted
				log.Debug().Err(err).Msg("TLS handshake with client failed; closing client connection")
				raw.Close()
				return
			}
			// Loud only now and then, as refusals are: anyone who reaches the port can fail one.
			n := l.tlsFailed.Add(1)
			ev := log.Debug()
			if LogNth(n) {
				ev = log.Warn()
			}
			var rh tls.RecordHeaderError
			if errors.As(err, &rh) && rh.Conn != nil {
				// Not a TLS record at all: a client without TLS. Say so, as a TLS client at a
				// plain front is told, and with what its bytes look like.
				if what := LooksLike(rh.RecordHeader[:]); what != "" {
					ev = ev.Str("looks_like", what)
				}
				ev = ev.Hex("header", rh.RecordHeader[:]).Str("hint", "the client does not speak TLS and this front expects it: have the client use TLS (Kafka security.protocol=SSL, amqps://, https://), or remove the front's tls")
			} else {
				ev = CertRefusalFields(ev, err, tc, l.cfg.TLS)
			}
			ev.Err(err).Uint64("tls_failures_total", n).Msg("TLS handshake with client failed; closing client connection")
			raw.Close()
			return
		}
		tc.NetConn().(*FirstByteConn).HandshakeDone()
	}

	dctx, cancel := context.WithTimeout(ctx, l.cfg.DialTimeout)
	stop := context.AfterFunc(l.cut, cancel) // a drain out of time does not wait for the dial
	var dialed string
	up, err := l.cfg.Dial(context.WithValue(dctx, dialedKey{}, &dialed), "tcp", l.cfg.Upstream)
	stop()
	cancel()
	if err != nil {
		if l.cut.Err() != nil || ctx.Err() != nil { // cut by a shutdown, not the broker's failure
			resetClose(raw)
			return
		}
		// Loud only now and then, as during an outage every client retries, many a second; but
		// always the first failure after a dial that worked, so that each outage is told.
		n := l.dialFailed.Add(1)
		ev := log.Debug()
		if l.dialWorked.Swap(false) || LogNth(n) {
			ev = log.Warn()
		}
		ev.Err(err).Uint64("dial_failures_total", n).Msg("upstream dial failed; resetting client connection")
		resetClose(raw)
		return
	}
	if !l.dialWorked.Swap(true) {
		// The end of an outage is told once, as its first failure was: without it the last line
		// about the upstream says it fails.
		n := l.dialFailed.Load()
		if prev := l.failedThen.Swap(n); n > prev {
			log.Info().Uint64("failed_dials", n-prev).Msg("upstream answers again after failed dials")
		}
	}
	upAddr := l.cfg.Upstream
	if dialed != "" && dialed != l.cfg.Upstream {
		log = base.With().Str("upstream", dialed).Logger()
		upAddr = dialed
	}
	l.mu.Lock()
	up = RawSyscallConn(up)
	c.Upstream = up
	c.UpstreamAddr = upAddr
	c.Log = log // read under mu by reapIdle
	l.mu.Unlock()
	log.Debug().Msg("connection opened")
	err = l.serveRecovered(ctx, c)
	client.Close()
	up.Close()
	if err != nil && !isClosedErr(err) && !c.idleClosed.Load() {
		if errors.As(err, new(loggedError)) {
			log.Debug().Err(err).Msg("connection closed with the error logged before")
			return
		}
		log.Warn().Err(err).Msg("connection closed with error")
		return
	}
	log.Debug().Msg("connection closed")
}

// serveRecovered runs the handler; a bug that panics on one connection's bytes closes that
// connection with a log line and leaves the process and every other connection alone.
func (l *Listener) serveRecovered(ctx context.Context, c *Conn) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.Log.Error().Interface("panic", r).Str("stack", string(debug.Stack())).
				Msg("protocol handler panicked; closing this connection only")
			err = Logged(fmt.Errorf("%s handler panicked: %v", l.cfg.Protocol, r))
		}
	}()
	return l.h.ServeConn(ctx, c)
}

// Recover runs fn, a connection's second goroutine (the handler's own is recovered by the
// Listener): a panic in it closes this connection, with a log line and the stack, and comes back
// as an error, instead of ending the process and every other connection.
func (c *Conn) Recover(what string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.Log.Error().Interface("panic", r).Str("stack", string(debug.Stack())).
				Msgf("%s panicked; closing this connection only", what)
			c.closeBoth()
			err = Logged(fmt.Errorf("%s panicked: %v", what, r))
		}
	}()
	return fn()
}

// Start serves in the background (Serve's errors other than ErrClosed are logged), as the
// protocol fronts start their listeners.
func (l *Listener) Start(ctx context.Context) error {
	go func() {
		if err := l.Serve(ctx); err != nil && !errors.Is(err, ErrClosed) {
			l.log.Error().Err(err).Msg("listener stopped accepting")
		}
	}()
	return nil
}

// Shutdown stops accepting, tells every handler to drain, and waits until they return or ctx ends;
// then it closes whatever is left.
func (l *Listener) Shutdown(ctx context.Context) error {
	if l.setClosing() {
		return nil
	}
	l.ln.Close()
	// Serve counts connections under mu and stops once closing is set: serving can only fall now.
	open := l.serving.Load()
	close(l.drain)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		if open > 0 {
			l.log.Info().Int64("connections", open).Msg("drained: every open connection finished")
		}
		return nil
	case <-ctx.Done():
		// An operator wants to know whether a drain cut clients off, and how many.
		left := l.serving.Load()
		l.closeAll()
		<-done
		l.log.Warn().Int64("connections", open).Int64("closed_at_deadline", left).Msg("drain time is up: closing the connections still open")
		return ctx.Err()
	}
}

// Close stops accepting and closes every connection at once.
func (l *Listener) Close() error {
	if !l.setClosing() {
		l.ln.Close()
		close(l.drain)
	}
	l.closeAll()
	l.wg.Wait()
	return nil
}

// setClosing marks the listener closing and reports whether it already was.
func (l *Listener) setClosing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closing.Swap(true)
}

func (l *Listener) closeAll() {
	l.cutNow()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.closeBoth()
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled)
}

// resetClose closes a client connection the proxy cannot serve (no upstream, or at max_conns)
// with a TCP reset, not a FIN: where the broker is down, a direct client's connection is
// refused, which clients retry, while a clean close right after connecting reads to them as a
// broker speaking another protocol (kgo fails the buffered records: "is TLS missing?").
func resetClose(c net.Conn) { ResetClose(c) }

// ResetClose closes c with a TCP reset (SO_LINGER 0), looking through wrappers with NetConn: the
// socket itself is closed first, so that a TLS connection sends no close_notify, which a client
// reads as a clean end. A protocol handler uses it to pass on an upstream's reset: clients tell
// a reset from a clean close (kgo retries a request cut by a reset, and fails one cut by a clean
// close before the connection's first answer: "is SASL missing?").
func ResetClose(c net.Conn) {
	inner := c
	for {
		w, ok := inner.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		inner = w.NetConn()
	}
	if tc, ok := inner.(interface{ SetLinger(int) error }); ok {
		_ = tc.SetLinger(0)
	}
	inner.Close()
	if inner != c {
		c.Close()
	}
}

// IsReset reports whether err is a TCP reset from the peer: ECONNRESET on a read, or EPIPE on a
// write to a connection the peer has reset.
func IsReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// DialFailures counts client connections reset because the upstream dial failed.
func (l *Listener) DialFailures() uint64 { return l.dialFailed.Load() }

// LogNth says whether the nth event of a kind a client can repeat at will is logged loudly: the
// first 10, then one in a thousand, so a misconfigured or hostile client cannot flood the log.
// Counters keep them all.
func LogNth(n uint64) bool { return n <= 10 || n%1000 == 0 }
