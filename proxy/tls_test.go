package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// tlsDial connects a crypto/tls client to l and completes the handshake.
func tlsDial(t *testing.T, l *Listener, conf *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 20 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", l.Addr().String(), conf)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func servedSerial(c *tls.Conn) string {
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// tlsFront is a listener terminating TLS with a fresh test CA's certificate, relaying to an echo
// upstream.
type tlsFront struct {
	pki               *testpki.PKI
	dir               string
	certFile, keyFile string
	leaf              *x509.Certificate
	r                 *CertReloader
	l                 *Listener
}

func startTLSFront(t *testing.T, h Handler) *tlsFront {
	t.Helper()
	f := &tlsFront{pki: testpki.New(t, "test CA"), dir: t.TempDir()}
	f.certFile, f.keyFile, f.leaf = f.pki.IssueFiles(t, f.dir, "proxy", "proxy")
	r, conf, err := ServerTLS(TLSFiles{CertFile: f.certFile, KeyFile: f.keyFile})
	if err != nil {
		t.Fatal(err)
	}
	f.r = r
	f.l = startListener(t, ListenerConfig{Upstream: startEcho(t, nil).addr(), TLS: conf}, h)
	return f
}

// dial completes a handshake as a client trusting the test CA.
func (f *tlsFront) dial(t *testing.T) *tls.Conn {
	t.Helper()
	c, err := tlsDial(t, f.l, &tls.Config{RootCAs: f.pki.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("TLS dial through the proxy: %v", err)
	}
	return c
}

func TestTLSTermination(t *testing.T) {
	states := make(chan tls.ConnectionState, 1)
	f := startTLSFront(t, HandlerFunc(func(ctx context.Context, c *Conn) error {
		if st, ok := c.TLSState(); ok {
			states <- st
		}
		return relay(ctx, c)
	}))
	l, leaf := f.l, f.leaf
	c := f.dial(t)
	if got := servedSerial(c); got != leaf.SerialNumber.String() {
		t.Fatalf("proxy served serial %s, want %s", got, leaf.SerialNumber)
	}
	roundTrip(t, c, "hello over TLS")
	if st := <-states; !st.HandshakeComplete {
		t.Fatalf("handler saw no completed TLS handshake: %+v", st)
	}
	settled(t, l, 14, 14)
	if ci := l.Connections()[0]; ci.Upstream == "" || ci.Client != c.LocalAddr().String() {
		t.Fatalf("registry entry %+v: want the client %s and its upstream", ci, c.LocalAddr())
	}

	// A client that does not trust the test CA fails the handshake and never reaches upstream.
	if _, err := tlsDial(t, l, &tls.Config{ServerName: "127.0.0.1"}); err == nil {
		t.Fatal("client without the CA completed a handshake")
	}
}

func TestTLSClientAuth(t *testing.T) {
	pki := testpki.New(t, "test CA")
	dir := t.TempDir()
	certFile, keyFile, _ := pki.IssueFiles(t, dir, "proxy", "proxy")
	caFile := pki.WriteCA(t, dir)
	if _, _, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile, ClientAuth: true}); err == nil {
		t.Fatal("ClientAuth without a CA file was accepted")
	}
	_, conf, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, ClientAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	up := startEcho(t, nil)
	peers := make(chan string, 1)
	l := startListener(t, ListenerConfig{Upstream: up.addr(), TLS: conf}, HandlerFunc(func(ctx context.Context, c *Conn) error {
		if st, ok := c.TLSState(); ok && len(st.PeerCertificates) > 0 {
			peers <- st.PeerCertificates[0].Subject.CommonName
		}
		return relay(ctx, c)
	}))

	// Without a client certificate: TLS 1.3 reports the refusal on the first read.
	if c, err := tlsDial(t, l, &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"}); err == nil {
		expectClosed(t, c)
	}
	_, _, clientPair := pki.Issue(t, "orders-service")
	c, err := tlsDial(t, l, &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{clientPair}})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "mutual")
	if peer := <-peers; peer != "orders-service" {
		t.Fatalf("handler saw client certificate %q, want orders-service", peer)
	}
}

func TestTLSOrigination(t *testing.T) {
	pki := testpki.New(t, "upstream CA")
	dir := t.TempDir()
	_, _, upPair := pki.Issue(t, "broker")
	upConf := &tls.Config{Certificates: []tls.Certificate{upPair}, ClientCAs: pki.Pool, ClientAuth: tls.RequireAndVerifyClientCert}
	up := startEcho(t, upConf)
	caFile := pki.WriteCA(t, dir)
	certFile, keyFile, proxyLeaf := pki.IssueFiles(t, dir, "proxy-client", "dsmproxy")
	r, _, err := ClientTLS(TLSFiles{CAFile: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	l := startListener(t, ListenerConfig{Upstream: up.addr(), Dial: r.DialFunc(nil)}, HandlerFunc(relay))

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "plain in, TLS out")
	upConn := (<-up.accepted).(*tls.Conn)
	st := upConn.ConnectionState()
	if len(st.PeerCertificates) == 0 || st.PeerCertificates[0].SerialNumber.Cmp(proxyLeaf.SerialNumber) != 0 {
		t.Fatalf("upstream saw client certificates %v, want the proxy's", st.PeerCertificates)
	}
	if st.ServerName != "" {
		t.Fatalf("SNI %q sent for an IP address", st.ServerName)
	}

	// An upstream whose certificate does not name the host dialed is refused: the default
	// ServerName is the upstream host, not "skip verification".
	_, _, otherPair := pki.Issue(t, "elsewhere", "elsewhere.example")
	other := startEcho(t, &tls.Config{Certificates: []tls.Certificate{otherPair}})
	bad := startListener(t, ListenerConfig{Upstream: other.addr(), Dial: r.DialFunc(nil)}, HandlerFunc(relay))
	expectReset(t, bad.Addr().String())

	// An explicit ServerName is checked instead of the host.
	byName := DialTLS(nil, &tls.Config{RootCAs: pki.Pool, ServerName: "elsewhere.example"})
	tc, err := byName(context.Background(), "tcp", other.addr())
	if err != nil {
		t.Fatalf("dial with explicit server name: %v", err)
	}
	tc.Close()
}

func TestCertReload(t *testing.T) {
	f := startTLSFront(t, HandlerFunc(relay))
	pki, dir, r, first := f.pki, f.dir, f.r, f.leaf
	certFile, keyFile := f.certFile, f.keyFile
	old := f.dial(t)
	roundTrip(t, old, "before")
	if servedSerial(old) != first.SerialNumber.String() {
		t.Fatal("first connection did not see the first certificate")
	}

	_, _, second := pki.IssueFiles(t, dir, "proxy", "proxy")
	if err := r.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if r.Leaf().SerialNumber.Cmp(second.SerialNumber) != 0 {
		t.Fatal("Leaf does not report the reloaded certificate")
	}
	fresh := f.dial(t)
	if got := servedSerial(fresh); got != second.SerialNumber.String() {
		t.Fatalf("new handshake saw serial %s, want the rotated %s", got, second.SerialNumber)
	}
	roundTrip(t, fresh, "after")
	roundTrip(t, old, "old connection still works")

	// Bad material: the error names the file and the current certificate stays.
	testpki.WriteFileAtomic(t, certFile, []byte("not a certificate"))
	err := r.Reload()
	if err == nil || !strings.Contains(err.Error(), certFile) {
		t.Fatalf("Reload of a garbage cert = %v, want an error naming %s", err, certFile)
	}
	again := f.dial(t)
	if got := servedSerial(again); got != second.SerialNumber.String() {
		t.Fatalf("after a bad reload the proxy served %s, want the last good %s", got, second.SerialNumber)
	}

	// A missing key file and a key that does not match fail the same way.
	os.Remove(keyFile)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), keyFile) {
		t.Fatalf("Reload without the key = %v, want an error naming %s", err, keyFile)
	}
	certPEM, _, _ := pki.Issue(t, "proxy")
	_, otherKey, _ := pki.Issue(t, "proxy")
	testpki.WriteFileAtomic(t, certFile, certPEM)
	testpki.WriteFileAtomic(t, keyFile, otherKey)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Fatalf("Reload of a mismatched pair = %v, want an error naming %s", err, certFile)
	}
	if r.Leaf().SerialNumber.Cmp(second.SerialNumber) != 0 {
		t.Fatal("a failed reload replaced the certificate")
	}
}

// A reloaded CA file reaches client-certificate checks on the listener and upstream verification
// in the dialer.
func TestCAReload(t *testing.T) {
	oldCA, newCA := testpki.New(t, "old CA"), testpki.New(t, "new CA")
	dir := t.TempDir()
	caFile := oldCA.WriteCA(t, dir)
	certFile, keyFile, _ := oldCA.IssueFiles(t, dir, "proxy", "proxy")
	r, conf, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, ClientAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	up := startEcho(t, nil)
	l := startListener(t, ListenerConfig{Upstream: up.addr(), TLS: conf}, HandlerFunc(relay))
	_, _, newClient := newCA.Issue(t, "client")
	clientConf := &tls.Config{RootCAs: oldCA.Pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{newClient}}
	if c, err := tlsDial(t, l, clientConf); err == nil {
		expectClosed(t, c)
	}
	newCA.WriteCA(t, dir)
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	c, err := tlsDial(t, l, clientConf)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "trusted now")

	// Dialer side.
	_, _, upPair := newCA.Issue(t, "broker")
	tlsUp := startEcho(t, &tls.Config{Certificates: []tls.Certificate{upPair}})
	testpki.WriteFileAtomic(t, caFile, oldCA.CAPEM)
	cr, _, err := ClientTLS(TLSFiles{CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	dial := cr.DialFunc(nil)
	if c, err := dial(context.Background(), "tcp", tlsUp.addr()); err == nil {
		c.Close()
		t.Fatal("dialer trusted an upstream signed by a CA it was not given")
	}
	testpki.WriteFileAtomic(t, caFile, newCA.CAPEM)
	if err := cr.Reload(); err != nil {
		t.Fatal(err)
	}
	uc, err := dial(context.Background(), "tcp", tlsUp.addr())
	if err != nil {
		t.Fatalf("dial after CA reload: %v", err)
	}
	uc.Close()
}

func TestReloadOnSIGHUP(t *testing.T) {
	f := startTLSFront(t, HandlerFunc(relay))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ReloadOnSIGHUP(ctx, testLog(), f.r)

	_, _, rotated := f.pki.IssueFiles(t, f.dir, "proxy", "proxy")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a handshake with the certificate rotated by SIGHUP", func() bool {
		c := f.dial(t)
		defer c.Close()
		return servedSerial(c) == rotated.SerialNumber.String()
	})
}

func TestTLSFilesValidation(t *testing.T) {
	if _, _, err := ServerTLS(TLSFiles{CertFile: "x.crt"}); err == nil {
		t.Error("ServerTLS without a key file was accepted")
	}
	if _, _, err := ClientTLS(TLSFiles{KeyFile: "x.key"}); err == nil {
		t.Error("ClientTLS with a key but no certificate was accepted")
	}
	_, _, err := ClientTLS(TLSFiles{CAFile: "/nonexistent/ca.pem"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Errorf("ClientTLS with a missing CA file = %v, want an error naming it", err)
	}
	// A relative path is read from the working directory (/ under systemd), not the config
	// file's: a missing one says so, and which directory that is.
	wd, _ := os.Getwd()
	for _, files := range []TLSFiles{{CAFile: "certs/missing-ca.pem"}, {CertFile: "certs/missing.pem", KeyFile: "certs/missing.key"}} {
		_, _, err = ClientTLS(files)
		if err == nil || !strings.Contains(err.Error(), "relative paths are read from the working directory, "+wd) {
			t.Errorf("ClientTLS(%+v) = %v, want an error naming the working directory", files, err)
		}
	}
	dir := t.TempDir()
	empty := dir + "/empty.pem"
	testpki.WriteFileAtomic(t, empty, []byte("no pem here"))
	_, _, err = ClientTLS(TLSFiles{CAFile: empty})
	if err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("ClientTLS with a CA file without certificates = %v, want an error naming it", err)
	}
	// System roots when no CA file: a usable config with nil RootCAs.
	_, conf, err := ClientTLS(TLSFiles{})
	if err != nil || conf.RootCAs != nil || conf.GetClientCertificate != nil {
		t.Errorf("ClientTLS{} = %+v, %v", conf, err)
	}
}

// startTLSListener serves TLS on a loopback port with a certificate of a test CA, logging to the
// returned buffer; its connections' handler does nothing. It stops when the test ends.
func startTLSListener(t *testing.T) (*Listener, *syncbuf.Buffer) {
	t.Helper()
	pki := testpki.New(t, "test CA")
	certFile, keyFile, _ := pki.IssueFiles(t, t.TempDir(), "proxy", "proxy")
	_, conf, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	logs := new(syncbuf.Buffer)
	l, err := Listen(ListenerConfig{Addr: "127.0.0.1:0", Protocol: "test", Upstream: startEcho(t, nil).addr(), TLS: conf},
		HandlerFunc(func(context.Context, *Conn) error { return nil }), zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- l.Serve(context.Background()) }()
	t.Cleanup(func() { l.Close(); <-served })
	return l, logs
}

// TestTLSFailuresCountedQuietly: clients whose TLS handshake fails are counted and logged at Warn
// for the first 10 only (anyone who reaches the port can fail one); connections closed before
// their first byte (port probes, TCP health checks) are neither.
func TestTLSFailuresCountedQuietly(t *testing.T) {
	l, logs := startTLSListener(t)

	for range 3 {
		testpki.Knock(t, l.Addr().String(), "")
	}
	const failures = 12
	for i := range failures {
		testpki.Knock(t, l.Addr().String(), "\x00\x00\x00\x10not a handshake!")
		deadline := time.Now().Add(30 * time.Second)
		for l.TLSFailures() < uint64(i+1) {
			if time.Now().After(deadline) {
				t.Fatalf("%d TLS failures counted after %d", l.TLSFailures(), i+1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// A client that sends its hello, reads the answer and hangs up without an alert ends the
	// handshake with a plain EOF too, but it spoke: it counts.
	testpki.HelloAndHangUp(t, l.Addr().String())
	deadline := time.Now().Add(30 * time.Second)
	for l.TLSFailures() < failures+1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := l.TLSFailures(); n != failures+1 {
		t.Errorf("TLSFailures %d after 3 probes, %d failed handshakes and a hello cut off, want %d", n, failures, failures+1)
	}
	var warn int
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "TLS handshake with client failed") {
			warn++
		}
	}
	if warn != 10 {
		t.Errorf("%d Warn lines for %d failed handshakes, want 10:\n%s", warn, failures+1, logs.String())
	}
}

// TestCertProblem: an expired certificate, one not valid yet and one ending within a week are
// named; one valid for longer is not, and neither is a side without a certificate.
func TestCertProblem(t *testing.T) {
	pki := testpki.New(t, "test CA")
	certFile, keyFile, leaf := pki.IssueFiles(t, t.TempDir(), "proxy", "proxy")
	r, _, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		now  time.Time
		want string
	}{
		{"valid", leaf.NotAfter.Add(-30 * 24 * time.Hour), ""},
		{"expired", leaf.NotAfter.Add(time.Second), "expired"},
		{"not yet valid", leaf.NotBefore.Add(-time.Second), "not valid before"},
		{"ending soon", leaf.NotAfter.Add(-24 * time.Hour), "within a week"},
	} {
		if got := r.Problem(tc.now); tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want one saying %q", tc.name, got, tc.want)
		}
	}
	// Hosts the proxy tells clients to dial (a Kafka front's advertised hosts): the certificate
	// (issued for localhost and 127.0.0.1) must name each of them.
	r.Hosts = []string{"localhost", "kafka-1.example", "10.0.0.7", "127.0.0.1"}
	valid := leaf.NotAfter.Add(-30 * 24 * time.Hour)
	if got := r.Problem(valid); !strings.Contains(got, "does not name kafka-1.example, 10.0.0.7,") {
		t.Errorf("hosts the certificate lacks: %q", got)
	}
	if got := r.Problem(leaf.NotAfter.Add(time.Second)); !strings.Contains(got, "expired") || !strings.Contains(got, "does not name") {
		t.Errorf("expired and hosts lacking: %q, want both said", got)
	}
	r.Hosts = []string{"localhost", "127.0.0.1"}
	if got := r.Problem(valid); got != "" {
		t.Errorf("a certificate naming every host: %q", got)
	}
	caOnly, _, err := ClientTLS(TLSFiles{CAFile: pki.WriteCA(t, t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	if got := caOnly.Problem(time.Now().Add(100 * 365 * 24 * time.Hour)); got != "" {
		t.Errorf("a side without a certificate: %q", got)
	}
}

// TestReloadAllLogs: each reload's line names what uses the files (two fronts may share them), and
// says at Warn when the certificate it loaded is one peers refuse, and at Error when it failed.
func TestReloadAllLogs(t *testing.T) {
	pki := testpki.New(t, "test CA")
	dir := t.TempDir()
	certFile, keyFile, _ := pki.IssueFiles(t, dir, "proxy", "proxy")
	r, _, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	r.Owner = "kafka 127.0.0.1:19092 tls"
	reload := func() string {
		var logs syncbuf.Buffer
		ReloadAll(zerolog.New(&logs), r)
		return logs.String()
	}
	if got := reload(); !strings.Contains(got, `"level":"info"`) || !strings.Contains(got, `"for":"kafka 127.0.0.1:19092 tls"`) {
		t.Errorf("a good reload logged %s", got)
	}
	pki.LeafNotAfter = time.Now().Add(-time.Hour)
	pki.IssueFiles(t, dir, "proxy", "proxy")
	if got := reload(); !strings.Contains(got, `"level":"warn"`) || !strings.Contains(got, "expired") {
		t.Errorf("an expired certificate's reload logged %s", got)
	}
	testpki.WriteFileAtomic(t, certFile, []byte("not a certificate"))
	if got := reload(); !strings.Contains(got, `"level":"error"`) || !strings.Contains(got, `"for":"kafka 127.0.0.1:19092 tls"`) {
		t.Errorf("a failed reload logged %s", got)
	}
}
