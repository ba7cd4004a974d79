package aws

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// h1Server serves the front's HTTP/1.1 connections. It replaces net/http's server, whose
// per-request background read (a goroutine, a read syscall and a wake-up to abort it, to notice
// a client going away) and response machinery cost as much CPU as the front's own work on a
// machine where each syscall and futex is expensive. Requests are read with http.ReadRequest
// (net/http's parser and its framing checks: Content-Length, chunked, conflicting lengths), the
// handler's response is buffered whole and written in one write with its Content-Length.
// Differences from net/http: HTTP/1.0 connections are closed after each answer, and a client
// that goes away is noticed when the answer is written, not while the upstream is asked.
// Connections that speak HTTP/2 (h2c prior knowledge, or h2 in ALPN) go to net/http's HTTP/2
// server instead (serveH2), still counted and drained here.
type h1Server struct {
	handler http.Handler
	// baseCtx is every request's context; endRequests, when set, ends it with errDrainEnded when
	// the drain time runs out, so that requests still waiting for the upstream stop and are
	// answered (their handlers tell the client why) before their connections close.
	baseCtx           context.Context
	endRequests       context.CancelCauseFunc
	readHeaderTimeout time.Duration
	idleTimeout       time.Duration
	// bodyTimeout bounds reading a request's body and writing its answer, so a client that sends
	// or reads a byte now and then cannot hold a connection and its buffers for ever.
	bodyTimeout    time.Duration
	maxHeaderBytes int64
	// maxBodyBytes is the handler's body limit (0: none): a request that announces more gets no
	// 100 Continue, as its handler answers 413 without reading the body (Proxy.ServeHTTP).
	maxBodyBytes int64
	logErr       func(string)
	log          zerolog.Logger // the drain's outcome
	refusals     *atomic.Uint64 // malformed requests and failed TLS handshakes (Stats), for loudWarn
	// tls serves the certificate toward clients (nil: plain HTTP), for the lines about clients
	// that refuse it.
	tlsConf *tls.Config

	// h2 serves the connections of clients that speak HTTP/2 (serveH2); nil: none are served.
	h2 *h2Handoff

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*h1Conn]bool // true = idle (waiting for a request)
	shutting bool
	done     chan struct{} // closed when the last connection ends during Shutdown
}

type h1Conn struct {
	s   *h1Server
	rwc net.Conn
	id  uint64          // process-wide connection id (proxy.NextConnID)
	log zerolog.Logger  // carries the connection id and the client's address
	ctx context.Context // its requests' context: the server's, with id (connOf); set by serve
}

// connIDKey keys a request context's connection id (withConnID, connOf).
type connIDKey struct{}

func withConnID(ctx context.Context, id uint64) context.Context {
	return context.WithValue(ctx, connIDKey{}, id)
}

// connOf is the id of the client connection r came on, as the connection's own lines name it
// (`conn`); 0 for a request that came some other way (tests calling the handler).
func connOf(r *http.Request) uint64 {
	id, _ := r.Context().Value(connIDKey{}).(uint64)
	return id
}

// errServerClosed mirrors http.ErrServerClosed.
var errServerClosed = http.ErrServerClosed

func (s *h1Server) serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutting {
		s.mu.Unlock()
		ln.Close()
		return errServerClosed
	}
	s.ln = ln
	if s.conns == nil {
		s.conns = map[*h1Conn]bool{}
	}
	s.mu.Unlock()
	var delay time.Duration
	for {
		rw, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			shutting := s.shutting
			s.mu.Unlock()
			if shutting {
				return errServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of descriptors or buffers, an aborted handshake...: the front goes on
			// accepting, as the other fronts' listeners do, rather than stop while /readyz
			// still says ready.
			if delay == 0 || delay == time.Second {
				s.logErr("accepting connections: " + err.Error() + " (retrying)")
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		id := proxy.NextConnID()
		c := &h1Conn{s: s, rwc: rw, id: id, log: s.log.With().Uint64("conn", id).Str("client", proxy.AddrString(rw.RemoteAddr())).Logger()}
		s.mu.Lock()
		if s.shutting {
			s.mu.Unlock()
			rw.Close()
			return errServerClosed
		}
		s.conns[c] = true
		s.mu.Unlock()
		go c.serve()
	}
}

// maxH2Streams bounds the requests of one HTTP/2 connection at a time: each holds its body (up
// to max_body_bytes) in the front, so a connection runs a few, not the hundreds net/http allows.
const maxH2Streams = 32

// enableH2 sets the server up to serve HTTP/2 connections (serveH2) with net/http's server,
// which gets them from h2Handoff, not from a socket of its own.
func (s *h1Server) enableH2(addr net.Addr) {
	s.h2 = &h2Handoff{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{}), done: map[net.Conn]chan struct{}{}, ids: map[net.Conn]uint64{}}
	s.h2.srv = &http.Server{
		Handler:        s.handler,
		MaxHeaderBytes: int(s.maxHeaderBytes),
		// Per stream, from its start: its body, then the upstream's answer, then writing it.
		ReadTimeout:  s.bodyTimeout,
		WriteTimeout: 2*s.bodyTimeout + upstreamTimeout,
		IdleTimeout:  s.idleTimeout,
		HTTP2:        &http.HTTP2Config{MaxConcurrentStreams: maxH2Streams},
		ErrorLog:     log.New(h2Log{s}, "", 0),
		BaseContext:  func(net.Listener) context.Context { return s.baseCtx },
		ConnContext:  s.h2.connContext,
		ConnState:    s.h2.connState,
	}
	s.h2.srv.Protocols = new(http.Protocols)
	s.h2.srv.Protocols.SetHTTP2(true)
	s.h2.srv.Protocols.SetUnencryptedHTTP2(true) // and no HTTP/1: h1Server serves that
	go s.h2.srv.Serve(s.h2)
}

// h2Handoff is the listener net/http's HTTP/2 server takes connections from: those h1Server found
// speaking HTTP/2. Each connection's serveH2 waits until that server closes it.
type h2Handoff struct {
	srv    *http.Server
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once

	mu   sync.Mutex
	done map[net.Conn]chan struct{} // closed when the server is done with the connection
	ids  map[net.Conn]uint64        // the connection's id, for its requests (connContext)
}

func (h *h2Handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.closed:
		return nil, net.ErrClosed
	}
}

func (h *h2Handoff) Close() error {
	h.once.Do(func() { close(h.closed) })
	return nil
}

func (h *h2Handoff) Addr() net.Addr { return h.addr }

// connContext gives a connection's requests its id, as h1Conn gives those it serves itself.
func (h *h2Handoff) connContext(ctx context.Context, c net.Conn) context.Context {
	h.mu.Lock()
	id := h.ids[c]
	h.mu.Unlock()
	return withConnID(ctx, id)
}

func (h *h2Handoff) connState(c net.Conn, st http.ConnState) {
	if st != http.StateClosed && st != http.StateHijacked {
		return
	}
	h.mu.Lock()
	d := h.done[c]
	delete(h.done, c)
	delete(h.ids, c)
	h.mu.Unlock()
	if d != nil {
		close(d)
	}
}

// serve hands conn, whose id is id, to the server and waits until it is done with it (false:
// the server is shut down and conn was not taken).
func (h *h2Handoff) serve(conn net.Conn, id uint64) bool {
	d := make(chan struct{})
	h.mu.Lock()
	h.done[conn] = d
	h.ids[conn] = id
	h.mu.Unlock()
	select {
	case h.conns <- conn:
		<-d
		return true
	case <-h.closed:
		h.mu.Lock()
		delete(h.done, conn)
		delete(h.ids, conn)
		h.mu.Unlock()
		return false
	}
}

// h2Log writes the HTTP/2 server's own lines into the front's log, as h1Server logs the same
// events: a connection that breaks the protocol is a refusal (counted, and a Warn line as
// loudWarn makes them), a handler's panic an Error line with its stack; the rest is Debug.
// net/http's server tells of these only through its ErrorLog, whose lines are matched here.
type h2Log struct{ s *h1Server }

func (l h2Log) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	log := l.s.log
	switch {
	case strings.HasPrefix(line, "http2: panic serving"):
		msg, stack, _ := strings.Cut(line, "\n")
		log.Error().Str("source", "http2").Str("panic", msg).Str("stack", stack).Msg("panic serving an HTTP/2 request; its stream is reset")
	case strings.HasPrefix(line, "http2: server connection error from"), // PROTOCOL_ERROR, ENHANCE_YOUR_CALM...
		strings.HasPrefix(line, "http2: server: error reading preface"), // h2 in ALPN, then no preface
		strings.HasPrefix(line, "timeout waiting for SETTINGS frames"):  // a preface and nothing after it
		l.s.loudWarn(log).Str("source", "http2").Str("error", line).Msg("refused a malformed HTTP/2 connection; closing it")
	default:
		log.Debug().Str("source", "http2").Msg(line)
	}
	return len(p), nil
}

// h2Preface is what an HTTP/2 client with prior knowledge sends first (RFC 9113 3.4); "PRI" is no
// HTTP/1 method.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// isH2Preface reports whether a cleartext connection starts with the HTTP/2 preface. It waits
// for more bytes only while those received are the preface's start: an HTTP/1 request shorter
// than the preface ("PRI / HTTP/1.0\r\n\r\n") is not kept waiting for bytes that never come.
func isH2Preface(br *bufio.Reader) bool {
	for n := 1; ; {
		b, err := br.Peek(n)
		if string(b) != h2Preface[:len(b)] || err != nil {
			return false
		}
		if n == len(h2Preface) {
			return true
		}
		n = min(max(br.Buffered(), n+1), len(h2Preface))
	}
}

// maxMethodSniff bounds the bytes notHTTP looks at: methods are short.
const maxMethodSniff = 32

// notHTTP reports whether a connection's first bytes cannot begin an HTTP/1 request, whose
// request line (and the HTTP/2 preface, "PRI * ...") starts with a method: a token, then a space
// (RFC 9112 3). Another protocol's client (AMQP's header, a Kafka request, a TLS ClientHello)
// sends a byte no token holds within its first few, and would otherwise wait for a line end that
// never comes. It waits for more bytes only while those received are a method not yet ended,
// which an HTTP client ends at once: no HTTP client is kept waiting.
func notHTTP(br *bufio.Reader) bool {
	for n := 1; ; {
		b, err := br.Peek(n)
		if err != nil {
			return false // ReadRequest says what is wrong
		}
		for _, c := range b {
			switch {
			case c == ' ' || c == '\r' || c == '\n':
				// A line without a method is malformed HTTP, not another protocol:
				// ReadRequest says what is wrong.
				return false
			case !isTokenChar(rune(c)):
				return true
			}
		}
		if n == maxMethodSniff {
			return false
		}
		n = min(max(br.Buffered(), n+1), maxMethodSniff)
	}
}

// refuseProtocol refuses a client that opened with another protocol than HTTP (notHTTP), naming
// it (looks_like) and what to change (hint) as the Kafka and AMQP fronts do, and answers 400:
// the client fails at once, and Kafka clients, reading "HTTP" as a size, say so.
func (c *h1Conn) refuseProtocol(br *bufio.Reader) {
	if br.Buffered() < 8 {
		// LooksLike takes eight bytes for a Kafka request, which a client writes at once:
		// wait a moment for them, not for a client that sends no more.
		c.rwc.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		br.Peek(8)
	}
	head, _ := br.Peek(min(br.Buffered(), 8))
	ev := c.loudWarn()
	if what := proxy.LooksLike(head); what != "" {
		hint := proxy.OtherFrontHint(what, "AWS")
		switch {
		case proxy.IsTLS(what):
			hint = "the client speaks TLS (https) and this listener does not: give the front tls {cert_file, key_file}, or have the client use http://"
		case hint == "":
			hint = "the client does not speak HTTP: is it pointed at the wrong port?"
		}
		ev = ev.Str("looks_like", what).Str("hint", hint)
	}
	ev.Hex("header", head).Int("status", http.StatusBadRequest).Msg("client opened with a protocol other than HTTP; refused (400 Bad Request), closing connection")
	c.writeSimple(http.StatusBadRequest, "400 Bad Request: this is dsmproxy's AWS front, which speaks HTTP (SQS, SNS and Kinesis APIs)")
}

// refusePlain refuses a client that does not speak TLS at a front with tls, naming what it
// spoke (looks_like) and what to change (hint), as the Kafka and AMQP fronts do. An HTTP client
// (an SDK or CLI given an http:// endpoint) is answered 400 in plain HTTP, as net/http's servers
// answer one, so that it says what happened instead of "connection closed".
func (c *h1Conn) refusePlain(rh tls.RecordHeaderError) {
	head := rh.RecordHeader[:]
	ev := c.loudWarn()
	what := proxy.LooksLike(head)
	if what != "" {
		ev = ev.Str("looks_like", what)
	}
	hint := "the client does not speak TLS and this front expects it: have the client use https:// (--endpoint-url https://...), or remove the front's tls"
	if h := proxy.OtherFrontHint(what, "AWS"); h != "" {
		hint = h
	}
	ev = ev.Hex("header", head).Str("hint", hint)
	if what != proxy.HTTPRequest {
		ev.Msg("TLS handshake with client failed: the client does not speak TLS; closing connection")
		return
	}
	ev.Int("status", http.StatusBadRequest).Msg("TLS handshake with client failed: the client sent a plain HTTP request; refused (400 Bad Request), closing connection")
	rh.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	const text = "400 Bad Request: client sent an HTTP request to an HTTPS server (dsmproxy's AWS front has tls: use https://)"
	if _, err := io.WriteString(rh.Conn, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(text))+"\r\n\r\n"+text); err == nil {
		proxy.Linger(rh.Conn)
	}
}

// serveH2 serves an HTTP/2 connection until it ends: the JavaScript SDK v3's KinesisClient
// speaks nothing else, and the Java SDK v2's KinesisAsyncClient does by default. Its requests go
// to the same handler (SubscribeToShard, an event stream, is still refused there).
func (c *h1Conn) serveH2(conn net.Conn) {
	s := c.s
	if s.h2 == nil || !s.setIdle(c, false) { // never idle: a drain sends it a GOAWAY instead
		return
	}
	conn.SetDeadline(time.Time{}) // the HTTP/2 server keeps its own time limits
	s.h2.serve(conn, c.id)
}

// prefacedConn reads what a buffered reader already holds of a connection before the rest.
type prefacedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *prefacedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// setIdle records whether c waits for a request; false means the server is shutting down and c
// must close.
func (s *h1Server) setIdle(c *h1Conn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting {
		return false
	}
	s.conns[c] = idle
	return true
}

// open is the number of client connections the server holds, idle and in their TLS handshake
// included.
func (s *h1Server) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *h1Server) forget(c *h1Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if s.shutting && len(s.conns) == 0 && s.done != nil {
		close(s.done)
		s.done = nil
	}
	s.mu.Unlock()
}

// shutdown stops accepting, closes idle connections, lets requests in flight finish (their
// connections close after the answer) and waits for them or ctx. When ctx ends first, the
// requests still in flight are stopped (endRequests) and get drainAnswerTime to answer, then
// every connection left is closed.
func (s *h1Server) shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.shutting {
		s.shutting = true
		if s.ln != nil {
			s.ln.Close()
		}
	}
	for c, idle := range s.conns {
		if idle {
			c.rwc.Close()
		}
	}
	if s.h2 != nil {
		// Each HTTP/2 connection gets a GOAWAY and closes once its streams end, which the wait
		// below sees; past the deadline it is closed with the rest.
		go s.h2.srv.Shutdown(ctx)
	}
	var done chan struct{}
	open := len(s.conns) // idle ones included, as the other fronts count them
	if open > 0 {
		if s.done == nil {
			s.done = make(chan struct{})
		}
		done = s.done
	}
	s.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		s.log.Info().Int("connections", open).Msg("drained: every open connection finished")
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		left := len(s.conns)
		s.mu.Unlock()
		if s.endRequests != nil {
			// Requests still waiting for the upstream stop now and are answered, briefly: a
			// connection that cut off says nothing, and the client cannot tell the proxy's
			// shutdown from a network failure.
			s.endRequests(errDrainEnded)
			t := time.NewTimer(drainAnswerTime)
			select {
			case <-done:
			case <-t.C:
			}
			t.Stop()
		}
		s.mu.Lock()
		for c := range s.conns {
			c.rwc.Close()
		}
		s.mu.Unlock()
		s.log.Warn().Int("connections", open).Int("closed_at_deadline", left).Msg("drain time is up: closing the connections still open")
		return ctx.Err()
	}
}

// errDrainEnded ends the requests still in flight when the drain time runs out (h1Server.endRequests):
// the proxy's own shutdown, not the upstream, cut them off.
var errDrainEnded = errors.New("the drain time ran out")

// drainAnswerTime is how long requests stopped by errDrainEnded get to write their answers
// before their connections are closed (a variable for tests).
var drainAnswerTime = time.Second

// headerBudget limits what reading a request's head may consume from the connection.
type headerBudget struct {
	r io.Reader
	n int64
}

func (b *headerBudget) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	return n, err
}

var errHeaderTooLarge = errors.New("request header too large")

var respBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func (c *h1Conn) serve() {
	s := c.s
	defer func() {
		if v := recover(); v != nil && v != http.ErrAbortHandler {
			c.log.Error().Interface("panic", v).Str("stack", string(debug.Stack())).Msg("panic serving a request; closing this connection only")
		}
		c.rwc.Close()
		s.forget(c)
	}()
	var tlsState *tls.ConnectionState
	if tc, ok := c.rwc.(*tls.Conn); ok {
		tc.SetDeadline(time.Now().Add(s.readHeaderTimeout))
		if err := tc.HandshakeContext(s.baseCtx); err != nil {
			if !proxy.SpokeFirst(tc) { // port probes and TCP health checks: not counted
				c.log.Debug().Err(err).Msg("TLS handshake with client failed; closing connection")
				return
			}
			var rh tls.RecordHeaderError
			if errors.As(err, &rh) && rh.Conn != nil {
				c.refusePlain(rh)
				return
			}
			proxy.CertRefusalFields(c.loudWarn(), err, tc, s.tlsConf).Err(err).Msg("TLS handshake with client failed; closing connection")
			return
		}
		if fb, ok := tc.NetConn().(*proxy.FirstByteConn); ok {
			fb.HandshakeDone()
		}
		tc.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		tlsState = &st
		if st.NegotiatedProtocol == "h2" {
			c.serveH2(tc)
			return
		}
	}
	budget := &headerBudget{r: c.rwc}
	br := bufio.NewReaderSize(budget, 4096)
	remote := proxy.AddrString(c.rwc.RemoteAddr())
	for first := true; ; first = false {
		if s.idleTimeout > 0 {
			c.rwc.SetReadDeadline(time.Now().Add(s.idleTimeout))
		} else {
			c.rwc.SetReadDeadline(time.Time{}) // the last request's body deadline is not this one's
		}
		budget.n = s.maxHeaderBytes
		if !skipEmptyLines(br) {
			return
		}
		if first && tlsState == nil && isH2Preface(br) {
			budget.n = math.MaxInt64
			c.serveH2(&prefacedConn{Conn: c.rwc, r: br})
			return
		}
		if !s.setIdle(c, false) {
			return
		}
		if s.readHeaderTimeout > 0 {
			c.rwc.SetReadDeadline(time.Now().Add(s.readHeaderTimeout))
		}
		if first && notHTTP(br) {
			c.refuseProtocol(br)
			return
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			switch {
			case errors.Is(err, errHeaderTooLarge):
				c.refuse(http.StatusRequestHeaderFieldsTooLarge, "431 Request Header Fields Too Large", err)
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				c.log.Debug().Err(err).Msg("client closed the connection inside a request head")
			default:
				var ne net.Error
				if !errors.As(err, &ne) {
					c.refuse(http.StatusBadRequest, "400 Bad Request", err)
				} else {
					c.log.Debug().Err(err).Msg("reading a request head timed out or failed; closing connection")
				}
			}
			return
		}
		if s.bodyTimeout > 0 {
			c.rwc.SetReadDeadline(time.Now().Add(s.bodyTimeout))
		} else {
			c.rwc.SetReadDeadline(time.Time{})
		}
		budget.n = math.MaxInt64
		if req.ProtoMajor != 1 {
			c.refuse(http.StatusHTTPVersionNotSupported, "505 HTTP Version Not Supported", fmt.Errorf("%s request", req.Proto))
			return
		}
		if req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != http.MethodConnect {
			c.refuse(http.StatusBadRequest, "400 Bad Request: missing required Host header", nil)
			return
		}
		// textproto keeps "Content-Length : 5" as a field of its own, which would frame the
		// request without its body and read that as the next request (RFC 9112 5.1: 400).
		if why := badFields(req); why != "" {
			c.refuse(http.StatusBadRequest, "400 Bad Request: "+why, nil)
			return
		}
		// HTTP/1.0 clients know no 100 Continue: the expectation is ignored (RFC 9110 10.1.1).
		if e := req.Header.Get("Expect"); e != "" && req.ProtoAtLeast(1, 1) {
			if !strings.EqualFold(e, "100-continue") {
				c.refuse(http.StatusExpectationFailed, "417 Expectation Failed", fmt.Errorf("expectation %q", e))
				return
			}
			// Over the limit, the 413 comes in the 100's place (RFC 9110 10.1.1: a final status
			// the header section decides is sent at once): told to go on, the client would start
			// sending a body nobody reads.
			if req.ContentLength != 0 && (s.maxBodyBytes <= 0 || req.ContentLength <= s.maxBodyBytes) {
				// The last answer's write deadline may have passed while the connection was idle.
				c.rwc.SetWriteDeadline(time.Now().Add(30 * time.Second))
				if _, err := io.WriteString(c.rwc, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
					return
				}
			}
		}
		req.RemoteAddr = remote
		req.TLS = tlsState
		if c.ctx == nil {
			c.ctx = withConnID(s.baseCtx, c.id)
		}
		req = req.WithContext(c.ctx)
		w := &h1Response{hdr: make(http.Header, 8), bp: respBufs.Get().(*[]byte)}
		w.body = (*w.bp)[:0]
		s.handler.ServeHTTP(w, req)
		// what the handler left of the body is skipped, up to a point
		// In a drain the answer says so, or the client would send its next request on a
		// connection that closes under it.
		// A chunked request may have come with a Content-Length as well, which ReadRequest
		// dropped: an intermediary in front that framed it by that length reads the rest as
		// another request, so the connection closes after the answer (RFC 9112 6.1: MUST).
		// SDKs send SQS, SNS and Kinesis requests with a length, so closing after every chunked
		// one costs them nothing.
		closeAfter := req.Close || !req.ProtoAtLeast(1, 1) || s.isShutting() || len(req.TransferEncoding) > 0
		unread := false
		if w.hdr.Get("Connection") == "close" {
			// The handler will not take the rest of the body (it is over the limit): the
			// connection closes without waiting for bytes the client may be slow to send.
			closeAfter, unread = true, req.Body != http.NoBody
		} else if req.Body != http.NoBody {
			var one [1]byte
			if n, err := req.Body.Read(one[:]); n != 0 || err != io.EOF {
				if n, err := io.CopyN(io.Discard, req.Body, 256<<10); err != io.EOF || n >= 256<<10 {
					closeAfter, unread = true, true
				}
			}
		}
		err = c.writeResponse(req, w, closeAfter)
		if cap(w.body) <= 1<<20 {
			*w.bp = w.body[:0]
			respBufs.Put(w.bp)
		}
		if err == nil && (unread || closeAfter) {
			c.lingerClose()
		}
		if err != nil || closeAfter || !s.setIdle(c, true) {
			return
		}
	}
}

// badFields says what is wrong with req's header field names or Host, as net/http's server
// checks them, or "".
func badFields(req *http.Request) string {
	for k := range req.Header {
		if k == "" || strings.IndexFunc(k, func(r rune) bool { return !isTokenChar(r) }) >= 0 {
			return "invalid header name " + strconv.Quote(k)
		}
	}
	if strings.IndexFunc(req.Host, func(r rune) bool { return !isHostChar(r) }) >= 0 {
		return "invalid Host"
	}
	return ""
}

// isTokenChar: a field name is a token (RFC 9110 5.6.2).
func isTokenChar(r rune) bool {
	return r < 0x80 && (r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || strings.ContainsRune("!#$%&'*+-.^_`|~", r))
}

// isHostChar: what a Host field may hold, a URI host and port (RFC 3986 3.2.2: reg-name,
// IP literals, percent-encoding).
func isHostChar(r rune) bool {
	return r < 0x80 && (r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || strings.ContainsRune("-._~%!$&'()*+,;=:[]", r))
}

func (s *h1Server) isShutting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutting
}

// maxEmptyLines bounds the empty lines skipped before a request line.
const maxEmptyLines = 4

// skipEmptyLines waits for a request and skips the empty lines before it (RFC 9112 2.2: a server
// SHOULD ignore at least one; `echo | openssl s_client` sends one); false when the connection ends
// first. More than maxEmptyLines are left for ReadRequest to refuse.
func skipEmptyLines(br *bufio.Reader) bool {
	for range maxEmptyLines {
		b, err := br.Peek(1)
		if err != nil {
			return false
		}
		switch {
		case b[0] == '\n':
			br.Discard(1)
		case b[0] == '\r':
			if b, err = br.Peek(2); err != nil {
				return false
			}
			if b[1] != '\n' {
				return true
			}
			br.Discard(2)
		default:
			return true
		}
	}
	_, err := br.Peek(1)
	return err == nil
}

// refuse logs why a request could not be taken, then answers it with writeSimple.
func (c *h1Conn) refuse(status int, text string, err error) {
	c.loudWarn().Err(err).Int("status", status).Msgf("refused a malformed request (%s); closing connection", text)
	c.writeSimple(status, text)
}

// loudWarn is a Warn event for the first 10 refusals and every 1000th after them (with the total
// so far), a Debug one for the rest: anyone who can reach the port can send malformed requests,
// and a scanner would otherwise fill the log.
func (c *h1Conn) loudWarn() *zerolog.Event { return c.s.loudWarn(c.log) }

// loudWarn is h1Conn's loudWarn on log, for refusals with no h1Conn (HTTP/2's, h2Log).
func (s *h1Server) loudWarn(log zerolog.Logger) *zerolog.Event {
	if s.refusals == nil {
		return log.Debug()
	}
	n := s.refusals.Add(1)
	if proxy.LogNth(n) {
		return log.Warn().Uint64("refused_total", n)
	}
	return log.Debug().Uint64("refused_total", n)
}

// writeSimple answers a request that could not be read, then the connection closes.
func (c *h1Conn) writeSimple(status int, text string) {
	c.rwc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.rwc, "HTTP/1.1 "+strconv.Itoa(status)+" "+http.StatusText(status)+
		"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(text))+"\r\n\r\n"+text); err == nil {
		c.lingerClose()
	}
}

// lingerClose: closing with unread data would reset the connection and could destroy the answer
// before the client reads it.
func (c *h1Conn) lingerClose() { proxy.Linger(c.rwc) }

// h1Response buffers the handler's answer.
type h1Response struct {
	hdr    http.Header
	status int
	body   []byte
	bp     *[]byte
}

func (w *h1Response) Header() http.Header { return w.hdr }

func (w *h1Response) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
}

func (w *h1Response) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.body = append(w.body, b...)
	return len(b), nil
}

// writeResponse writes the status line, the headers (Date, Content-Type by sniffing and
// Content-Length added as net/http would) and the body in one write.
func (c *h1Conn) writeResponse(req *http.Request, w *h1Response, closeAfter bool) error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	bp := reqBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 1<<20 {
			reqBufs.Put(bp)
		}
	}()
	b := append((*bp)[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(w.status)...)
	b = append(b, "\r\n"...)
	withBody := bodyAllowed(w.status)
	if _, ok := w.hdr["Date"]; !ok {
		b = append(b, "Date: "...)
		b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
		b = append(b, "\r\n"...)
	}
	if _, ok := w.hdr["Content-Type"]; !ok && withBody && len(w.body) > 0 {
		b = append(b, "Content-Type: "...)
		b = append(b, http.DetectContentType(w.body)...)
		b = append(b, "\r\n"...)
	}
	for k, vs := range w.hdr {
		switch k {
		case "Content-Length", "Connection", "Transfer-Encoding", "Keep-Alive":
			continue
		}
		if !validHeaderName(k) {
			continue
		}
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = appendHeaderValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	if withBody {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(w.body)), 10)
		b = append(b, "\r\n"...)
	}
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if withBody && req.Method != http.MethodHead {
		b = append(b, w.body...)
	}
	*bp = b
	if c.s.bodyTimeout > 0 {
		c.rwc.SetWriteDeadline(time.Now().Add(c.s.bodyTimeout))
	}
	_, err := c.rwc.Write(b)
	return err
}

// appendHeaderValue appends v with CR and LF turned into spaces, as net/http writes values.
func appendHeaderValue(b []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\r', '\n':
			b = append(b, ' ')
		default:
			b = append(b, c)
		}
	}
	return b
}
