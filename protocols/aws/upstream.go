package aws

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// upstreamClient sends the proxy's upstream requests over HTTP/1.1 connections it keeps itself.
// Unlike http.Transport, which hands every request to a writer goroutine and the response to the
// caller through a reader goroutine (four goroutine wake-ups per request, each a futex and
// scheduler round on a busy machine), it writes the whole request in one write and reads the
// response in the handler's own goroutine. It is used when no Transport is configured and no
// HTTP proxy applies to the upstream; requests are sent as http.Transport would send them, after
// signing, with Host and Content-Length.
type upstreamClient struct {
	dialer    net.Dialer
	tlsConfig func() *tls.Config // nil, or nil returned: system roots
	maxIdle   int                // idle connections kept per host
	idleFor   time.Duration

	mu     sync.Mutex
	idle   map[string][]*upConn // "scheme://host:port" -> most recently used last
	closed bool
}

type upConn struct {
	net.Conn
	br    *bufio.Reader
	key   string
	since time.Time // when it went idle
}

func newUpstreamClient() *upstreamClient {
	return &upstreamClient{
		dialer:  net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle: 256,
		idleFor: 90 * time.Second,
		idle:    map[string][]*upConn{},
	}
}

var errUpstreamClosed = errors.New("aws: upstream client closed")

// errClosedIdle: a reused connection ended before any byte of the response, which almost always
// means the server closed it while it sat idle; the request is sent again, once, on a new
// connection. http.Transport learns of such closes from a background read and retries a written
// POST only when it knows nothing reached the server; without that read this client cannot tell,
// so in the rare case where the server took the request and then died before answering, a send can
// reach it twice: what the SDKs' own retry of a connection error does too, and SQS, SNS and Kinesis
// are at-least-once services.
var errClosedIdle = errors.New("upstream closed an idle connection")

// aLongTimeAgo is a deadline that makes pending reads and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

var reqBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// do sends req (signed, with Host set) with body and returns the response with its body read, at
// most limit+1 bytes of it.
func (u *upstreamClient) do(req *http.Request, body []byte, limit int64) (*http.Response, []byte, error) {
	bp := reqBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 1<<20 {
			reqBufs.Put(bp)
		}
	}()
	wire, err := appendRequest((*bp)[:0], req, body)
	*bp = wire
	if err != nil {
		return nil, nil, err
	}
	key, addr, tlsHost := connKey(req)
	for attempt := 0; ; attempt++ {
		c, err := u.get(req.Context(), key, addr, tlsHost, attempt > 0)
		if err != nil {
			if cerr := req.Context().Err(); cerr != nil {
				err = cerr
			}
			return nil, nil, err
		}
		resp, rb, keep, err := c.roundTrip(req, wire, limit)
		if err == nil {
			if keep {
				u.put(c)
			} else {
				c.Close()
			}
			return resp, rb, nil
		}
		c.Close()
		if errors.Is(err, errClosedIdle) && attempt == 0 && req.Context().Err() == nil {
			continue
		}
		if errors.Is(err, errClosedIdle) {
			err = fmt.Errorf("%w: %w", io.ErrUnexpectedEOF, err)
		}
		if cerr := req.Context().Err(); cerr != nil {
			err = cerr
		}
		return nil, nil, err
	}
}

// roundTrip writes the request and reads the response; keep says the connection may be reused.
func (c *upConn) roundTrip(req *http.Request, wire []byte, limit int64) (resp *http.Response, rb []byte, keep bool, err error) {
	reused := !c.since.IsZero()
	stop := context.AfterFunc(req.Context(), func() { c.SetDeadline(aLongTimeAgo) })
	defer func() {
		if !stop() {
			keep = false // the deadline may be set, or about to be
		}
	}()
	if _, err := c.Write(wire); err != nil {
		if reused {
			return nil, nil, false, fmt.Errorf("%w: %w", errClosedIdle, err)
		}
		return nil, nil, false, err
	}
	if reused {
		if _, err := c.br.Peek(1); err != nil {
			return nil, nil, false, fmt.Errorf("%w: %w", errClosedIdle, err)
		}
	}
	if nh := notHTTPAnswer(c.br); nh != nil {
		return nil, nil, false, nh
	}
	for {
		resp, err = http.ReadResponse(c.br, req)
		if err != nil {
			return nil, nil, false, err
		}
		// 1xx answers (we never send Expect: 100-continue, but 103 may come) precede the real one.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		break
	}
	rb, err = readBody(resp.Body, answerLength(resp), limit)
	if err != nil {
		return nil, nil, false, err
	}
	if int64(len(rb)) > limit {
		return resp, rb, false, nil // the rest of the body is still on the connection
	}
	// readBody read to the end (chunked: the trailer too) or exactly Content-Length bytes
	resp.Body = http.NoBody
	return resp, rb, !resp.Close && c.br.Buffered() == 0, nil
}

// connKey is the pool key, the address to dial and, for https, the TLS server name.
func connKey(req *http.Request) (key, addr, tlsHost string) {
	host, port := req.URL.Hostname(), req.URL.Port()
	if port == "" {
		port = "80"
		if req.URL.Scheme == "https" {
			port = "443"
		}
	}
	addr = net.JoinHostPort(host, port)
	if req.URL.Scheme == "https" {
		tlsHost = host
	}
	return req.URL.Scheme + "://" + addr, addr, tlsHost
}

// get returns an idle connection to key, or a new one (always when fresh).
func (u *upstreamClient) get(ctx context.Context, key, addr, tlsHost string, fresh bool) (*upConn, error) {
	now := time.Now()
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, errUpstreamClosed
	}
	var stale []*upConn
	var c *upConn
	for cs := u.idle[key]; len(cs) > 0 && !fresh; {
		last := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		cs = cs[:len(cs)-1]
		u.idle[key] = cs
		if now.Sub(last.since) > u.idleFor {
			stale = append(stale, last)
			continue
		}
		c = last
		break
	}
	u.mu.Unlock()
	for _, s := range stale {
		s.Close()
	}
	if c != nil {
		return c, nil
	}
	raw, err := dialUpstream(ctx, &u.dialer, addr, tlsHost, u.tlsConfig)
	if err != nil {
		return nil, err
	}
	return &upConn{Conn: raw, br: bufio.NewReaderSize(raw, 16<<10), key: key}, nil
}

// dialUpstream dials addr and, when tlsHost is set, makes a TLS handshake for HTTP/1.1 with
// tlsConfig's configuration (nil, or nil returned: system roots; its ServerName, else tlsHost).
func dialUpstream(ctx context.Context, d *net.Dialer, addr, tlsHost string, tlsConfig func() *tls.Config) (net.Conn, error) {
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	raw = proxy.RawSyscallConn(raw)
	if tlsHost == "" {
		return raw, nil
	}
	var cfg *tls.Config
	if tlsConfig != nil {
		cfg = tlsConfig().Clone()
	}
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = tlsHost
	}
	cfg.NextProtos = nil // HTTP/1.1
	tc := tls.Client(raw, cfg)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}

func (u *upstreamClient) put(c *upConn) {
	c.since = time.Now()
	u.mu.Lock()
	if u.closed || len(u.idle[c.key]) >= u.maxIdle {
		u.mu.Unlock()
		c.Close()
		return
	}
	cs := append(u.idle[c.key], c)
	// the oldest are at the front: those idle too long are closed while traffic goes on
	var stale []*upConn
	for len(cs) > 0 && c.since.Sub(cs[0].since) > u.idleFor {
		stale = append(stale, cs[0])
		cs[0] = nil
		cs = cs[1:]
	}
	u.idle[c.key] = cs
	u.mu.Unlock()
	for _, s := range stale {
		s.Close()
	}
}

// close closes the idle connections and refuses new requests.
func (u *upstreamClient) close() {
	u.mu.Lock()
	u.closed = true
	idle := u.idle
	u.idle = map[string][]*upConn{}
	u.mu.Unlock()
	for _, cs := range idle {
		for _, c := range cs {
			c.Close()
		}
	}
}

// appendRequest writes req's request line, Host, headers, Content-Length and body, refusing
// header names or values that would split the request.
func appendRequest(b []byte, req *http.Request, body []byte) ([]byte, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !validHeaderValue(host) || host == "" {
		return b, fmt.Errorf("aws: invalid upstream host %q", host)
	}
	b = append(b, req.Method...)
	b = append(b, ' ')
	b = append(b, req.URL.RequestURI()...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Trailer":
			continue
		}
		if !validHeaderName(k) {
			return b, fmt.Errorf("aws: invalid upstream header name %q", k)
		}
		for _, v := range vs {
			if !validHeaderValue(v) {
				return b, fmt.Errorf("aws: invalid value for upstream header %s", k)
			}
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	if len(body) > 0 || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, body...), nil
}

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == '\r' || c == '\n' || c == 0 {
			return false
		}
	}
	return true
}

// answerLength is the body length to read for resp: a HEAD answer's Content-Length is that of
// the body a GET would get, and it has none.
func answerLength(resp *http.Response) int64 {
	if resp.Request != nil && resp.Request.Method == http.MethodHead {
		return 0
	}
	return resp.ContentLength
}
