package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// The proxy dials brokers from this address, so the broker side can tell proxied connections from
// clients that went around the proxy.
const proxySource = "127.0.0.2"

type sourceGuard struct {
	mu       sync.Mutex
	proxied  int
	bypassed []string
}

func (g *sourceGuard) listen(network, addr string) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	return &guardedLn{Listener: ln, g: g}, err
}

type guardedLn struct {
	net.Listener
	g *sourceGuard
}

func (l *guardedLn) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		l.g.mu.Lock()
		if host == proxySource {
			l.g.proxied++
		} else {
			l.g.bypassed = append(l.g.bypassed, c.RemoteAddr().String())
		}
		l.g.mu.Unlock()
	}
	return c, err
}

// A franz-go client speaks TLS to the proxy (with a client certificate), the proxy terminates it,
// splices the pathway header into produced batches, and originates TLS with its own client
// certificate to a kfake cluster that requires one. kcat then does the same over OpenSSL.
func TestKafkaTLSBothSides(t *testing.T) {
	pki := testpki.New(t, "kafka test CA")
	dir := t.TempDir()
	caFile := pki.WriteCA(t, dir)

	_, _, brokerPair := pki.Issue(t, "kfake")
	guard := &sourceGuard{}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.ListenFn(guard.listen), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(3),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{brokerPair}, ClientCAs: pki.Pool, ClientAuth: tls.RequireAndVerifyClientCert}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)

	srvCert, srvKey, _ := pki.IssueFiles(t, dir, "proxy-server", "dsmproxy")
	_, srvConf, err := proxy.ServerTLS(proxy.TLSFiles{CertFile: srvCert, KeyFile: srvKey, CAFile: caFile, ClientAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	upCert, upKey, _ := pki.IssueFiles(t, dir, "proxy-client", "dsmproxy-upstream")
	upTLS, _, err := proxy.ClientTLS(proxy.TLSFiles{CertFile: upCert, KeyFile: upKey, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	base := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySource)}, Timeout: 10 * time.Second}

	p, err := kafka.New(kafka.Config{
		Listen:    "127.0.0.1:0",
		Bootstrap: cluster.ListenAddrs(),
		Env:       "test",
		Services:  &proxy.Services{Default: "tls-test"},
		Log:       zerolog.Nop(),
		Listener:  proxy.ListenerConfig{TLS: srvConf, Dial: upTLS.DialFunc(base.DialContext)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := p.Shutdown(sctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
	})

	_, _, appPair := pki.Issue(t, "orders")
	clientTLS := &tls.Config{RootCAs: pki.Pool, Certificates: []tls.Certificate{appPair}}
	topic := fmt.Sprintf("tls-orders-%d", time.Now().UnixNano()%1e9)
	producer, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.DialTLSConfig(clientTLS),
		kgo.AllowAutoTopicCreation(), kgo.ClientID("orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	const n = 30
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(fmt.Sprint(i)), Value: []byte(fmt.Sprintf("order-%d", i))}
	}
	if err := producer.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce over TLS through the proxy: %v", err)
	}

	consumer, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.DialTLSConfig(clientTLS),
		kgo.ConsumeTopics(topic), kgo.ConsumerGroup("billing"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	seen := map[string]bool{}
	for len(seen) < n {
		fs := consumer.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records over TLS: %v", len(seen), n, err)
		}
		fs.EachError(func(tp string, part int32, err error) { t.Logf("fetch %s/%d: %v", tp, part, err) })
		for _, r := range fs.Records() {
			hasCtx := false
			for _, h := range r.Headers {
				hasCtx = hasCtx || h.Key == pathway.HeaderKey
			}
			if !hasCtx {
				t.Fatalf("record %s arrived without %s: the proxy did not see inside TLS", r.Value, pathway.HeaderKey)
			}
			seen[string(r.Value)] = true
		}
	}

	// kcat (librdkafka on OpenSSL, not Go's TLS) does the same with its own client certificate.
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat is required: install it with `apt-get install -y kcat` (%v)", err)
	}
	kcatCert, kcatKey, _ := pki.IssueFiles(t, dir, "kcat-client", "kcat")
	tlsArgs := []string{"-b", p.Addr().String(), "-X", "security.protocol=ssl", "-X", "ssl.ca.location=" + caFile,
		"-X", "ssl.certificate.location=" + kcatCert, "-X", "ssl.key.location=" + kcatKey,
		"-X", "ssl.endpoint.identification.algorithm=none"}
	kcatTopic := topic + "-kcat"
	prod := exec.CommandContext(ctx, kcat, append([]string{"-P", "-t", kcatTopic, "-X", "allow.auto.create.topics=true"}, tlsArgs...)...)
	prod.Stdin = strings.NewReader("one\ntwo\nthree\n")
	if out, err := prod.CombinedOutput(); err != nil {
		t.Fatalf("kcat produce over TLS through the proxy: %v\n%s", err, out)
	}
	cons := exec.CommandContext(ctx, kcat, append([]string{"-C", "-t", kcatTopic, "-o", "beginning", "-c", "3", "-f", "%s|%h\n"}, tlsArgs...)...)
	out, err := cons.Output()
	if err != nil {
		t.Fatalf("kcat consume over TLS through the proxy: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("kcat read %q over TLS, want 3 records", out)
	}
	for _, l := range lines {
		if !strings.Contains(l, "|"+pathway.HeaderKey+"=") {
			t.Errorf("kcat record %q over TLS carries no %s", l, pathway.HeaderKey)
		}
	}

	// Every broker connection came from the proxy: no client went around it, though the broker's
	// certificate would have let it.
	guard.mu.Lock()
	defer guard.mu.Unlock()
	if guard.proxied == 0 || len(guard.bypassed) > 0 {
		t.Fatalf("broker saw %d proxied connections and these from elsewhere: %v", guard.proxied, guard.bypassed)
	}
}
