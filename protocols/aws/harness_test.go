package aws

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/npmpeer"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// The proxy's own credentials in the tests; sidecar clients sign with the same pair.
const (
	testKey    = "AKIDPROXYTEST0000001"
	testSecret = "proxy-secret-key-for-tests-only"
	otherKey   = "AKIDCLIENTTEST000002"
	otherSec   = "client-secret-for-tests"
	// proxyRoleToken is the session token of the proxy's own temporary credentials in the tests
	// that give it some (rotation_test.go): the only token that may go upstream.
	proxyRoleToken = "new-role-token"
)

func nodeDir(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "aws", "node")
}

// ensureNode installs the npm peers (emulators, JS SDK) when node_modules is missing. The tests
// fail, never skip, when node or npm is not there.
func ensureNode(t testing.TB) string {
	t.Helper()
	dir := nodeDir(t)
	npmpeer.Install(t, dir, "the AWS tests (real SQS/SNS/Kinesis emulators)", "local-aws-sqs", "fauxqs", "kinesis-local", "@aws-sdk/client-sqs", "@aws-sdk/client-kinesis")
	return dir
}

// startNode runs a node script from testdata/aws/node and returns the port it reports (a
// "LISTENING <port>" line on stdout, or the loopback preload's line on stderr).
func startNode(t testing.TB, env []string, args ...string) int {
	t.Helper()
	return startNodeWait(t, env, 0, args...)
}

// startNodeWait is startNode waiting for a given port (0 = the first reported).
func startNodeWait(t testing.TB, env []string, want int, args ...string) int {
	t.Helper()
	dir := ensureNode(t)
	cmd := exec.Command("node", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting node %v: %v", args, err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
		cmd.Wait()
	})
	ports := make(chan int, 4)
	var logMu sync.Mutex
	var log bytes.Buffer
	scan := func(r io.Reader, prefix string) {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			var port int
			if _, err := fmt.Sscanf(line, prefix+" %d", &port); err == nil {
				ports <- port
				continue
			}
			logMu.Lock()
			log.WriteString(line + "\n")
			logMu.Unlock()
		}
	}
	go scan(stdout, "LISTENING")
	go scan(stderr, "DSMPROXY_LISTENING")
	deadline := time.After(60 * time.Second)
	for {
		select {
		case p := <-ports:
			if want == 0 || p == want {
				return p
			}
			continue
		case <-deadline:
		}
		break
	}
	{
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("node %v did not report a port within 60s; output:\n%s", args, log.String())
	}
	return 0
}

// verifier is the upstream check: a hop in front of the emulator that re-derives the proxy's
// SigV4 signature with aws-sdk-go-v2's signer and refuses anything that does not match, then
// forwards to the emulator. No emulator checks signatures, so this is the test's.
type verifier struct {
	t        testing.TB
	target   *url.URL
	rp       *httputil.ReverseProxy
	srv      *http.Server
	addr     string
	mu       sync.Mutex
	requests int
	bad      []string
	bodies   []string
	paths    []string
	headers  []http.Header
	scopes   []string // region/service of each request's signature
	// intercept, when set, may answer a request in place of the emulator (status 0: it does not),
	// for the upstream failures no emulator gives on demand.
	intercept func(body string) (status int, answer string)
}

func startVerifier(t testing.TB, target string) *verifier {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	v := &verifier{t: t, target: u, rp: httputil.NewSingleHostReverseProxy(u)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	v.addr = ln.Addr().String()
	v.srv = &http.Server{Handler: v}
	go v.srv.Serve(ln)
	t.Cleanup(func() { v.srv.Close() })
	return v
}

func (v *verifier) URL() string { return "http://" + v.addr }

func (v *verifier) setIntercept(f func(body string) (int, string)) {
	v.mu.Lock()
	v.intercept = f
	v.mu.Unlock()
}

func (v *verifier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	v.mu.Lock()
	v.requests++
	v.bodies = append(v.bodies, string(body))
	v.paths = append(v.paths, r.URL.Path)
	v.headers = append(v.headers, r.Header.Clone())
	if a, err := parseAuthorization(r.Header.Get("Authorization")); err == nil {
		v.scopes = append(v.scopes, a.Region+"/"+a.Service)
	}
	v.mu.Unlock()
	if why := checkSignature(r, body); why != "" {
		v.mu.Lock()
		v.bad = append(v.bad, why)
		v.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"__type":"SignatureDoesNotMatch","message":%q}`, why)
		return
	}
	v.mu.Lock()
	intercept := v.intercept
	v.mu.Unlock()
	if intercept != nil {
		if status, answer := intercept(string(body)); status != 0 {
			w.Header().Set("Content-Type", "application/x-amz-json-1.0")
			w.WriteHeader(status)
			io.WriteString(w, answer)
			return
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.Host = v.target.Host
	v.rp.ServeHTTP(w, r)
}

// checkSignature rebuilds the request from exactly its signed headers and signs it again with the
// SDK's signer at the same time; the Authorization headers must be equal.
func checkSignature(r *http.Request, body []byte) string {
	got := r.Header.Get("Authorization")
	a, err := parseAuthorization(got)
	if err != nil {
		return "no SigV4 authorization: " + err.Error()
	}
	if a.AccessKey != testKey {
		return "signed with " + a.AccessKey + ", not the proxy's key"
	}
	if tok := r.Header.Get("X-Amz-Security-Token"); tok != "" && tok != proxyRoleToken {
		return "client security token forwarded"
	}
	when, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return "bad X-Amz-Date"
	}
	u := *r.URL
	u.Scheme, u.Host = "http", r.Host
	req, _ := http.NewRequest(r.Method, u.String(), bytes.NewReader(body))
	req.Host = r.Host
	for _, h := range a.SignedHeaders {
		if h == "host" || h == "content-length" {
			continue
		}
		req.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
	}
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, sha256Hex(body), a.Service, a.Region, when); err != nil {
		return "re-signing: " + err.Error()
	}
	if want := req.Header.Get("Authorization"); want != got {
		return "signature mismatch: got " + got + " want " + want
	}
	return ""
}

func (v *verifier) signedScopes() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.scopes)
}

// seen returns the bodies and headers of the requests that reached the upstream check.
func (v *verifier) seen() ([]string, []http.Header) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.bodies), slices.Clone(v.headers)
}

func (v *verifier) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.requests
}

func (v *verifier) failures() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.bad...)
}

// recorder is an Observer that keeps every point.
type recorder struct {
	mu     sync.Mutex
	points []pathway.Point
}

func (r *recorder) Add(p pathway.Point) bool {
	r.mu.Lock()
	r.points = append(r.points, p)
	r.mu.Unlock()
	return true
}

func (r *recorder) Offset(pathway.Offset) bool { return true }

func (r *recorder) all() []pathway.Point {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]pathway.Point(nil), r.points...)
}

// withTag returns the points carrying every tag.
func (r *recorder) withTags(tags ...string) []pathway.Point {
	var out []pathway.Point
	for _, p := range r.all() {
		ok := true
		for _, t := range tags {
			found := false
			for _, et := range p.EdgeTags {
				if et == t {
					found = true
				}
			}
			ok = ok && found
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

// events keeps error-tracking events.
type events struct {
	mu sync.Mutex
	ev []errtrack.Event
}

func (e *events) Report(ev errtrack.Event) {
	e.mu.Lock()
	e.ev = append(e.ev, ev)
	e.mu.Unlock()
}

func (e *events) all() []errtrack.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.ev)
}

func (e *events) named(name string) []errtrack.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []errtrack.Event
	for _, ev := range e.ev {
		if ev.Name == name {
			out = append(out, ev)
		}
	}
	return out
}

type testProxy struct {
	*Proxy
	rec *recorder
	ev  *events
	url string
}

func startProxy(t testing.TB, mod func(*Config)) *testProxy {
	t.Helper()
	rec, ev := &recorder{}, &events{}
	cfg := Config{
		Listen:      "127.0.0.1:0",
		Region:      "us-east-1",
		Env:         "test",
		Observer:    rec,
		Errors:      ev,
		Services:    &proxy.Services{Default: "svc-default"},
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""),
		ClientKeys:  map[string]string{otherKey: otherSec},
		Log:         zerolog.Nop(),
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("DSMPROXY_AWS_CAPTURE"); dir != "" {
		p.tap = func(c *call, resp []byte) { capture(dir, c, resp) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c2 := context.WithTimeout(context.Background(), 10*time.Second)
		defer c2()
		p.Shutdown(sctx)
		cancel()
	})
	return &testProxy{Proxy: p, rec: rec, ev: ev, url: "http://" + p.Addr().String()}
}

// sqsPeer starts local-aws-sqs behind a verifier and returns the verifier.
func sqsPeer(t testing.TB) *verifier {
	port := startNode(t, nil, "sqs-server.js")
	return startVerifier(t, fmt.Sprintf("http://127.0.0.1:%d", port))
}

// snsPeer is the SNS emulator (fauxqs) behind the upstream check. fauxqs binds every interface
// whatever host it is given: the preload keeps it on 127.0.0.1.
func snsPeer(t testing.TB) *verifier {
	port := startNode(t, nil, "-r", "./loopback-only.js", "sns-server.js")
	return startVerifier(t, fmt.Sprintf("http://127.0.0.1:%d", port))
}

func getenv(k string) string { return os.Getenv(k) }

type rawResp struct {
	status int
	header http.Header
	body   string
}

func httpPost(u, ct string, hdr map[string]string, body string) (rawResp, error) {
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return rawResp{}, err
	}
	req.Header.Set("Content-Type", ct)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rawResp{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return rawResp{resp.StatusCode, resp.Header, string(b)}, nil
}

var wireNames = map[wire]string{wireQuery: "query", wireJSON10: "json10", wireJSON11: "json11", wireCBOR: "cbor"}

var captureMu sync.Mutex

// capture writes a real client's request body and the emulator's answer under dir, once per
// service, operation and wire form (DSMPROXY_AWS_CAPTURE=testdata/aws/captured go test ...).
func capture(dir string, c *call, resp []byte) {
	captureMu.Lock()
	defer captureMu.Unlock()
	base := filepath.Join(dir, c.service+"-"+c.op+"-"+wireNames[c.wire])
	if _, err := os.Stat(base + ".req"); err == nil {
		return
	}
	os.MkdirAll(dir, 0o755)
	os.WriteFile(base+".req", c.body, 0o644)
	os.WriteFile(base+".resp", resp, 0o644)
}

// assertChained checks n produce and n consume points on topic, every consume's parent a produce.
func assertChained(t *testing.T, tp *testProxy, typ, topic string, n int) {
	t.Helper()
	assertChainedCounts(t, tp, typ, topic, n, n)
}

// assertChainedCounts is assertChained for nProd produce and nCons consume points.
func assertChainedCounts(t *testing.T, tp *testProxy, typ, topic string, nProd, nCons int) {
	t.Helper()
	prod := tp.rec.withTags("direction:out", "topic:"+topic, "type:"+typ)
	cons := tp.rec.withTags("direction:in", "topic:"+topic)
	hashes := map[uint64]bool{}
	for _, p := range prod {
		hashes[p.Hash] = true
	}
	for _, c := range cons {
		if !hashes[c.ParentHash] {
			t.Errorf("consume point on %s has parent %d, no produce point", topic, c.ParentHash)
		}
	}
	if len(prod) != nProd || len(cons) != nCons {
		t.Errorf("%s: %d produce and %d consume points, want %d and %d", topic, len(prod), len(cons), nProd, nCons)
	}
}

// sqsSetup is the common start of an SQS test: local-aws-sqs behind the verifier, the proxy in
// front, an aws-sdk-go-v2 client and a fresh queue created through the proxy.
func sqsSetup(t *testing.T, queue string, mod func(*Config)) (*testProxy, *verifier, *sqs.Client, string, context.Context) {
	t.Helper()
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) {
		c.Upstream = up.URL()
		if mod != nil {
			mod(c)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cl := sqsClient(tp.url, testKey, testSecret)
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(queue)})
	if err != nil {
		t.Fatalf("CreateQueue %s through the proxy: %v", queue, err)
	}
	return tp, up, cl, *cq.QueueUrl, ctx
}
