package aws

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// endpoint is where one service's requests go: its URL, and the address the front dials first
// for it, as /readyz names it (the endpoint's host:port, or the egress proxy's).
type endpoint struct {
	url.URL
	addr  string
	proxy *url.URL // the egress HTTP proxy (HTTPS_PROXY, HTTP_PROXY) requests go through, or nil
}

func newEndpoint(u *url.URL) *endpoint {
	e := &endpoint{URL: *u, addr: hostPort(u)}
	// net/http reads the proxy variables once per process: what applies now applies for good.
	if pu, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err == nil && pu != nil {
		if hp := hostPort(pu); hp != "" {
			e.addr, e.proxy = hp, pu
		}
	}
	return e
}

// hostPort is u's host:port, with the scheme's port when it names none.
func hostPort(u *url.URL) string {
	switch {
	case u.Host == "":
		return ""
	case u.Port() != "":
		return u.Host
	case u.Scheme == "https":
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// Upstream is an address the front dials first to send requests: an endpoint, or the egress
// proxy that reaches it.
type Upstream struct {
	Addr   string // host:port
	Egress bool   // an egress HTTP proxy (HTTPS_PROXY, HTTP_PROXY) from the environment
	TLS    bool   // the front makes a TLS handshake with Addr (an https endpoint reached directly)
}

// Upstreams are the addresses the front's services send to, each once, in the order of
// Endpoints: what /readyz dials and passes to UpstreamProblem.
func (p *Proxy) Upstreams() []Upstream {
	var out []Upstream
	for _, svc := range []string{ServiceSQS, ServiceSNS, ServiceKinesis} {
		e := p.up[svc]
		if e.addr == "" || containsAddr(out, e.addr) {
			continue
		}
		out = append(out, Upstream{Addr: e.addr, Egress: e.proxy != nil, TLS: e.proxy == nil && e.Scheme == "https"})
	}
	return out
}

func containsAddr(us []Upstream, addr string) bool {
	for _, u := range us {
		if u.Addr == addr {
			return true
		}
	}
	return false
}

// notHTTPError: the answer to an HTTP request was not HTTP (another protocol's bytes), or the
// connection closed before any answer. A real AWS endpoint answers every request it refuses
// with an HTTP error status, which is no such answer.
type notHTTPError struct {
	what   string // what came instead, as proxy.LooksLike names it or as bytes; "" = nothing
	egress bool   // it came from the egress proxy, not from the endpoint
}

func (e *notHTTPError) Error() string {
	if e.egress {
		if e.what == "" {
			return "the egress proxy (HTTPS_PROXY or HTTP_PROXY) closed the connection without answering the HTTP request: is it an HTTP proxy?"
		}
		return fmt.Sprintf("the egress proxy (HTTPS_PROXY or HTTP_PROXY) answered an HTTP request with %s, not HTTP: is it an HTTP proxy?", e.what)
	}
	if e.what == "" {
		return "closed the connection without answering the HTTP request (an HTTP server answers even one it refuses): is it an SQS, SNS or Kinesis endpoint, and does it serve the URL's scheme (http or https)?"
	}
	return fmt.Sprintf("answered an HTTP request with %s, not HTTP: is it an SQS, SNS or Kinesis endpoint, and does it serve the URL's scheme (http or https)?", e.what)
}

// notHTTPAnswer peeks at the start of the answer to an HTTP request (leaving it for
// http.ReadResponse): why it is not HTTP, or nil. Silence (a deadline) or an answer cut short
// after "HTTP" proves nothing, and is nil.
func notHTTPAnswer(br *bufio.Reader) *notHTTPError {
	head, err := br.Peek(len("HTTP/"))
	switch {
	case err == nil && string(head) == "HTTP/":
		return nil
	case len(head) == 0:
		if closedFirst(err) {
			return &notHTTPError{}
		}
		return nil
	case bytes.HasPrefix([]byte("HTTP/"), head):
		return nil // cut short: ReadResponse says so
	}
	b, _ := br.Peek(min(br.Buffered(), 8))
	return &notHTTPError{what: proxy.Describe(b)}
}

// closedFirst: the peer ended the connection (closed or reset it) rather than stayed silent.
func closedFirst(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// transportSuspect: an error of http.Transport that may mean addr is not HTTP (an answer's
// first line without a space, "malformed HTTP response" as AMQP's protocol header gives, or an
// end of the connection). The transport reads answers itself, and its errors do not say whose
// they are: behind an egress proxy, its answer to CONNECT and a TLS handshake with the endpoint
// through it fail alike. checkHTTP, which knows whom it reads, decides.
func transportSuspect(err error) bool {
	return strings.Contains(err.Error(), "malformed HTTP") || closedFirst(err)
}

// checkAfterTransportError runs checkHTTP on e.addr after a transport error that may mean it is
// not HTTP, and records what it finds, one check at a time: while one runs, other failing
// requests do not add theirs. It runs in the failing request, which is answered 502 anyway.
func (p *Proxy) checkAfterTransportError(ctx context.Context, e *endpoint, err error) {
	if !transportSuspect(err) || !p.checking.CompareAndSwap(false, true) {
		return
	}
	defer p.checking.Store(false)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), transportCheckTimeout)
	defer cancel()
	if wrong, err := p.checkHTTP(ctx, e.addr); err == nil && wrong != nil {
		p.wrong.Wrong(e.addr, wrong)
	}
}

// transportCheckTimeout bounds checkAfterTransportError's request: an upstream that answers
// nothing in that time is silent, which proves nothing.
const transportCheckTimeout = 5 * time.Second

// UpstreamProblem says why addr, an upstream as Upstreams names it, is not an HTTP server (or,
// for an egress proxy, not an HTTP proxy) although it takes connections: it answered a request
// with another protocol, or closed without answering (nil when neither, or it answered HTTP
// since). While that is recorded, each call sends it a request again, so that one put right
// is seen without a client.
func (p *Proxy) UpstreamProblem(ctx context.Context, addr string) error {
	return p.wrong.Recheck(ctx, addr, p.checkHTTP)
}

// checkHTTP sends addr a request the way the front reaches it (TLS to an https endpoint; to an
// egress proxy, CONNECT for an https endpoint, else a GET of the endpoint's URL): wrong when the
// answer is not HTTP; err when it says nothing (the dial failed, silence until ctx ended).
func (p *Proxy) checkHTTP(ctx context.Context, addr string) (wrong, err error) {
	var e *endpoint
	for _, svc := range []string{ServiceSQS, ServiceSNS, ServiceKinesis} {
		if p.up[svc].addr == addr {
			e = p.up[svc]
			break
		}
	}
	if e == nil {
		return nil, fmt.Errorf("aws: %s is none of the front's upstreams", addr)
	}
	tlsHost := ""
	switch {
	case e.proxy == nil && e.Scheme == "https":
		tlsHost = e.Hostname()
	case e.proxy != nil && e.proxy.Scheme == "https":
		tlsHost = e.proxy.Hostname()
	}
	c, err := dialUpstream(ctx, &net.Dialer{}, addr, tlsHost, p.cfg.UpstreamTLS)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	defer stop()
	if _, err := io.WriteString(c, e.checkRequest()); err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	if nh := notHTTPAnswer(br); nh != nil {
		nh.egress = e.proxy != nil
		return nh, nil
	}
	if _, err := http.ReadResponse(br, nil); err != nil {
		return nil, err
	}
	return nil, nil
}

// checkRequest is what checkHTTP sends: a GET of the endpoint's root, or, through an egress
// proxy, what the transport would send the proxy first.
func (e *endpoint) checkRequest() string {
	hostPort := hostPort(&e.URL)
	var b strings.Builder
	switch {
	case e.proxy == nil:
		fmt.Fprintf(&b, "GET / HTTP/1.1\r\nHost: %s\r\n", e.Host)
	case e.Scheme == "https":
		fmt.Fprintf(&b, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", hostPort, hostPort)
	default:
		fmt.Fprintf(&b, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n", e.Host, e.Host)
	}
	if u := e.proxy; u != nil && u.User != nil {
		pw, _ := u.User.Password()
		b.WriteString("Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pw)) + "\r\n")
	}
	b.WriteString("User-Agent: dsmproxy-readyz\r\nConnection: close\r\n\r\n")
	return b.String()
}
