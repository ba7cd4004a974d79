package kafka

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// countLogins counts the SaslHandshake requests for mechanism the cluster receives (the proxy's
// own logins, when clients use another mechanism).
func countLogins(c *kfake.Cluster, mechanism string) *atomic.Int64 {
	var n atomic.Int64
	c.ControlKey(kmsg.SASLHandshake.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if req.(*kmsg.SASLHandshakeRequest).Mechanism == mechanism {
			n.Add(1)
		}
		return nil, nil, false
	})
	return &n
}

// hostRecorder is a mechanism that records the host its Authenticate is given.
type hostRecorder struct {
	sasl.Mechanism
	host atomic.Pointer[string]
}

func (m *hostRecorder) Authenticate(ctx context.Context, host string) (sasl.Session, []byte, error) {
	m.host.Store(&host)
	return m.Mechanism.Authenticate(ctx, host)
}

// TestOwnSASLLogin: on a cluster that wants SASL, a proxy given credentials of its own (Config.SASL)
// logs in on its own connections: it can learn the brokers (node discovery) and reads topic
// limits, so a batch the header would grow past its topic's max.message.bytes goes without it and
// is stored, where without credentials the broker refuses it once (TestTopicLimitsUnreadable),
// and acks=0 batches get the header where the limit allows.
func TestOwnSASLLogin(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	login := kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism())
	for _, tc := range []struct {
		name string
		own  sasl.Mechanism
	}{
		{"plain", plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism()},
		{"scram256", scram.Auth{User: "scram256", Pass: "pw256"}.AsSha256Mechanism()},
		{"scram512", scram.Auth{User: "scram512", Pass: "pw512"}.AsSha512Mechanism()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			own := &hostRecorder{Mechanism: tc.own}
			p := startProxy(t, c, func(cfg *Config) { cfg.SASL, cfg.Log = own, zerolog.New(&logs) })
			answeredLimits(p)
			ctx := testCtx(t)
			if n, err := p.learnNodes(ctx); err != nil || n != 3 {
				t.Fatalf("the proxy's own Metadata: %d brokers, %v; want 3", n, err)
			}
			if h := own.host.Load(); h == nil || !slices.Contains(c.ListenAddrs(), *h) {
				t.Errorf("the mechanism was given %v, want a bootstrap address (host:port) of %v", h, c.ListenAddrs())
			}
			cl := kgoClient(t, p, login, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))
			limit := "2000"
			topic := uniqueTopic(t, "own-login-"+tc.name)
			if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
				t.Fatal(err)
			}
			near := strings.Repeat("n", 1900) // about 2,020 bytes with the header
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(near)}).FirstErr(); err != nil {
				t.Fatalf("a batch the header would grow past its topic's limit: %v", err)
			}
			waitFor(t, "the topic's limit", func() bool { return p.limits.known(topic) == 2000 })
			acks0 := kgoClient(t, p, login, kgo.DisableIdempotentWrite(), kgo.RequiredAcks(kgo.NoAck()), kgo.ProducerLinger(0))
			if err := acks0.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("small")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
			got := readTopic(t, ctx, p, topic, 2, login)
			if hasContext(got[0]) || !hasContext(got[1]) {
				t.Errorf("pathway header on the near-limit record %v, on the small acks=0 record %v; want false, true", hasContext(got[0]), hasContext(got[1]))
			}
			waitFor(t, "an answered lookup in Stats", func() bool { return p.Stats().TopicConfigLookups > 0 })
			if n := p.Stats().TopicConfigFailures; n != 0 {
				t.Errorf("%d topic config lookups failed, want none", n)
			}
			if s := logs.String(); strings.Contains(s, "does not let the proxy read topic configs") || strings.Contains(s, "topic configs are not read") {
				t.Errorf("the proxy did not read topic configs with its own login:\n%s", s)
			}
		})
	}
	guard.check(t)
}

// refuseLogins makes the cluster answer the proxy's SCRAM logins (a client-first message "n,,...";
// clients here use PLAIN) while refuse is set as Kafka answers a wrong password: an error code
// and message. kfake closes the connection instead. It returns the count of logins refused.
func refuseLogins(c *kfake.Cluster, refuse *atomic.Bool) *atomic.Int64 {
	var n atomic.Int64
	c.ControlKey(kmsg.SASLAuthenticate.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.SASLAuthenticateRequest)
		if !refuse.Load() || !strings.HasPrefix(string(r.SASLAuthBytes), "n,,") {
			return nil, nil, false
		}
		n.Add(1)
		resp := r.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		msg := "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
		resp.ErrorMessage = &msg
		return resp, nil, true
	})
	return &n
}

// ownLoginProxy starts a proxy that logs in as the cluster's scram512 user itself (clients here
// log in with PLAIN), logging to logs.
func ownLoginProxy(t *testing.T, c *kfake.Cluster, logs *syncbuf.Buffer) *testProxy {
	t.Helper()
	p := startProxy(t, c, func(cfg *Config) {
		cfg.SASL, cfg.Log = scram.Auth{User: "scram512", Pass: "pw512"}.AsSha512Mechanism(), zerolog.New(logs)
	})
	answeredLimits(p)
	return p
}

// TestOwnSASLLoginRefused: credentials the cluster refuses are said once in the log, with the
// broker's reason, and not tried again for an hour (each try is a failed login in the broker's
// log), however many topics are produced to; clients are served as without them.
func TestOwnSASLLoginRefused(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	var refuse atomic.Bool
	refuse.Store(true)
	refused := refuseLogins(c, &refuse)
	var logs syncbuf.Buffer
	p := ownLoginProxy(t, c, &logs)
	ctx := testCtx(t)
	login := kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism())
	cl := kgoClient(t, p, login, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0))
	for i := range 3 {
		produceEach(t, ctx, cl, uniqueTopic(t, "refused-login-"+string(rune('a'+i))), []byte("v"))
	}
	waitFor(t, "the refused login in the log", func() bool {
		return strings.Contains(logs.String(), "the proxy's own SASL login (SCRAM-SHA-512)")
	})
	if s := logs.String(); !strings.Contains(s, "invalid credentials") || strings.Count(s, "the proxy's own SASL login") != 1 {
		t.Errorf("the refusal, with the broker's reason, was not told exactly once:\n%s", s)
	}
	// A refusal: the next try is an hour away (configRefusedBackoff), not seconds.
	if wait := time.Until(time.Unix(0, p.limits.downUntil.Load())); wait < 30*time.Minute {
		t.Errorf("the topic configs' connection is tried again in %v after a refused login", wait)
	}
	if n := refused.Load(); n != 1 {
		t.Errorf("%d logins refused, want 1 (the topic configs' connection, once)", n)
	}
	if st := p.Stats(); st.TopicConfigLookups != 0 || st.TopicConfigFailures != 1 {
		t.Errorf("%d topic config lookups answered, %d failed; want none, 1", st.TopicConfigLookups, st.TopicConfigFailures)
	}
	var r errRefused
	if _, err := p.learnNodes(ctx); !errors.As(err, &r) {
		t.Errorf("node discovery after a refused login: %v, want a refusal", err)
	}
	guard.check(t)
}

// TestOwnSASLLoginCutEveryTime: kfake closes the connection on a wrong password instead of
// answering it, as some brokers do. Three logins cut in a row are told once, with what to check,
// and taken as a refusal: node discovery stops, and topic configs wait an hour (or new credentials)
// instead of trying a login every few minutes, each a failed login in the broker's log.
func TestOwnSASLLoginCutEveryTime(t *testing.T) {
	c, _ := startCluster(t, saslUsers...)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) {
		cfg.SASL, cfg.Log = scram.Auth{User: "scram512", Pass: "not the password"}.AsSha512Mechanism(), zerolog.New(&logs)
	})
	ctx := testCtx(t)
	_, err := p.learnNodes(ctx)
	if !errors.As(err, new(errLoginCut)) {
		t.Fatalf("a wrong password at kfake: %v, want a login cut", err)
	}
	done := make(chan struct{})
	go func() { p.discoverNodes(ctx); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("node discovery still trying logins the broker cuts every time")
	}
	if s := logs.String(); !strings.Contains(s, "closed the connection during the proxy's own SASL login each time") || !strings.Contains(s, `"tries":3`) {
		t.Errorf("the cut logins were not told:\n%s", s)
	}
	// The cuts before the third are no unreachable bootstrap: no line says so.
	if s := logs.String(); strings.Contains(s, "is bootstrap right") {
		t.Errorf("a cut login was told as a bootstrap broker that is wrong or down:\n%s", s)
	}

	r := &configReader{p: p.Proxy}
	cut := errLoginCut{err: err, creds: 7}
	for i := 1; i <= loginCutsTold; i++ {
		r.failed(cut)
		if refused := r.backoff == configRefusedBackoff; refused != (i == loginCutsTold) || r.refused != refused {
			t.Errorf("after %d cut logins: backoff %v, refused %v", i, r.backoff, r.refused)
		}
	}
	if r.refusedWith != 7 {
		t.Errorf("the cut logins' credentials were version %d, want 7", r.refusedWith)
	}
	r.failed(io.EOF) // not during a login: counting starts again
	if r.loginCuts != 0 || r.backoff == configRefusedBackoff {
		t.Errorf("a failure outside a login: %d cuts counted, backoff %v", r.loginCuts, r.backoff)
	}
}

// TestOwnSASLDiscoveryNewCredentials: node discovery, stopped by logins the cluster refuses
// (here kfake cutting them, as it does for a wrong password), starts again when the credentials
// change, and learns the brokers with the new ones.
func TestOwnSASLDiscoveryNewCredentials(t *testing.T) {
	c, _ := startCluster(t, saslUsers...)
	var logs syncbuf.Buffer
	own := newRotatingLogin(scram.Auth{User: "scram512", Pass: "an old password"})
	p := startProxy(t, c, func(cfg *Config) { cfg.SASL, cfg.Log = own, zerolog.New(&logs) })
	ctx := testCtx(t)
	done := make(chan struct{})
	go func() { p.discover(ctx, 20*time.Millisecond); close(done) }()
	waitFor(t, "the cut logins told", func() bool {
		return strings.Contains(logs.String(), "closed the connection during the proxy's own SASL login each time")
	})
	select {
	case <-done:
		t.Fatal("discovery ended although its credentials can change")
	default:
	}
	own.rotate(scram.Auth{User: "scram512", Pass: "pw512"})
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("discovery did not end after the credentials changed")
	}
	if s := logs.String(); !strings.Contains(s, "learning the broker nodes again") || !strings.Contains(s, "broker node listeners opened") {
		t.Errorf("discovery did not learn the brokers with the new credentials:\n%s", s)
	}
}

// TestDiscoveryTellsTLSRefusal: upstream TLS settings the cluster refuses are a Warn line at
// start, from node discovery, not Debug lines until the first client's connection fails the same
// way: a CA that did not sign the broker's certificate, and no client certificate for a broker
// that requires one (its alert).
func TestDiscoveryTellsTLSRefusal(t *testing.T) {
	pki, other := testpki.New(t, "kafka test CA"), testpki.New(t, "another CA")
	_, _, brokerPair := pki.Issue(t, "kfake")
	for _, tc := range []struct {
		name   string
		broker *tls.Config
		proxy  *tls.Config
		says   string
	}{
		{"untrusted CA", &tls.Config{Certificates: []tls.Certificate{brokerPair}}, &tls.Config{RootCAs: other.Pool}, "certificate signed by unknown authority"},
		{"client certificate required", &tls.Config{Certificates: []tls.Certificate{brokerPair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pki.Pool},
			&tls.Config{RootCAs: pki.Pool}, "remote error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(tc.broker))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			var logs syncbuf.Buffer
			up := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: tc.proxy}
			p := startProxy(t, c, func(cfg *Config) { cfg.Listener.Dial, cfg.Log = up.DialContext, zerolog.New(&logs) })
			ctx, cancel := context.WithCancel(testCtx(t))
			done := make(chan struct{})
			go func() { p.discover(ctx, time.Second); close(done) }()
			waitFor(t, "the TLS refusal told", func() bool {
				return strings.Contains(logs.String(), "the TLS handshake with a bootstrap broker failed")
			})
			cancel()
			<-done
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, "the TLS handshake with a bootstrap broker failed") &&
					(!strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, tc.says)) {
					t.Errorf("the refusal is told as %s", line)
				}
			}
		})
	}
}

// rotatingLogin is a SCRAM-SHA-512 login whose credentials the test replaces, as a rotated
// password file would be: a CredentialVersioner.
type rotatingLogin struct {
	sasl.Mechanism
	auth    atomic.Pointer[scram.Auth]
	version atomic.Uint64
}

func newRotatingLogin(a scram.Auth) *rotatingLogin {
	l := &rotatingLogin{}
	l.version.Store(1) // as a password file's: 0 is no version
	l.auth.Store(&a)
	l.Mechanism = scram.Sha512(func(context.Context) (scram.Auth, error) { return *l.auth.Load(), nil })
	return l
}

// lookupFailed reports whether the topic config reader has given up a lookup of topic.
func lookupFailed(p *testProxy, topic string) bool {
	p.limits.mu.Lock()
	defer p.limits.mu.Unlock()
	e, _ := p.limits.m.Get(topic)
	return !e.failedAt.IsZero()
}

func (l *rotatingLogin) rotate(a scram.Auth) { l.auth.Store(&a); l.version.Add(1) }

func (l *rotatingLogin) CredentialVersion() uint64 { return l.version.Load() }

// TestOwnSASLLoginNewCredentials: after a refused login, credentials that change (a rotated
// password file) are tried at the next lookup, not an hour later.
func TestOwnSASLLoginNewCredentials(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	var refuse atomic.Bool
	refuse.Store(true)
	refused := refuseLogins(c, &refuse)
	var logs syncbuf.Buffer
	own := newRotatingLogin(scram.Auth{User: "scram512", Pass: "an old password"})
	p := startProxy(t, c, func(cfg *Config) { cfg.SASL, cfg.Log = own, zerolog.New(&logs) })
	answeredLimits(p)
	ctx := testCtx(t)
	login := kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism())
	cl := kgoClient(t, p, login, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0))
	produceEach(t, ctx, cl, uniqueTopic(t, "rotated-before"), []byte("v"))
	waitFor(t, "the refused login", func() bool { return p.Stats().TopicConfigFailures == 1 })
	// The same credentials are not tried again for another topic.
	again := uniqueTopic(t, "rotated-not-yet")
	produceEach(t, ctx, cl, again, []byte("v"))
	waitFor(t, "the reader to pass over the next topic", func() bool { return lookupFailed(p, again) })
	if n := refused.Load(); n != 1 {
		t.Fatalf("%d logins refused with unchanged credentials, want 1", n)
	}

	refuse.Store(false) // the cluster now knows the new password only
	own.rotate(scram.Auth{User: "scram512", Pass: "pw512"})
	after := uniqueTopic(t, "rotated-after")
	produceEach(t, ctx, cl, after, []byte("v"))
	waitFor(t, "a lookup answered with the new credentials", func() bool { return p.limits.known(after) > 0 })
	if st := p.Stats(); st.TopicConfigLookups == 0 || st.TopicConfigFailures != 1 || refused.Load() != 1 {
		t.Errorf("%d lookups answered, %d failed, %d logins refused; want some, 1, 1", st.TopicConfigLookups, st.TopicConfigFailures, refused.Load())
	}
	if s := logs.String(); !strings.Contains(s, "credentials changed") {
		t.Errorf("the retry with new credentials is not in the log:\n%s", s)
	}
	guard.check(t)
}

// TestOwnSASLLoginBroken: a connection the broker ends in the middle of the proxy's login (a
// restart, say) is not a refused login: the next try logs in.
func TestOwnSASLLoginBroken(t *testing.T) {
	c, _ := startCluster(t, saslUsers...)
	p := ownLoginProxy(t, c, &syncbuf.Buffer{})
	ctx := testCtx(t)
	c.ControlKey(kmsg.SASLHandshake.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		return nil, errors.New("closed by the test"), true // kfake closes the connection
	})
	_, err := p.learnNodes(ctx)
	var r errRefused
	if err == nil || errors.As(err, &r) {
		t.Fatalf("a login cut short: %v, want an error that is not a refusal", err)
	}
	if n, err := p.learnNodes(ctx); err != nil || n != 3 {
		t.Fatalf("the next try: %d brokers, %v; want 3", n, err)
	}
}

// TestOwnSASLLoginExpires: a login the broker gives a lifetime (KIP-368,
// connections.max.reauth.ms) is replaced by a new connection before it ends, instead of the
// lookup finding the connection closed; if the new login is refused (a password rotated at the
// cluster), it is tried once, not again at once as a connection closed for idleness is.
func TestOwnSASLLoginExpires(t *testing.T) {
	c, guard := startCluster(t, append(saslUsers, kfake.BrokerConfigs(map[string]string{"connections.max.reauth.ms": "1500"}))...)
	logins := countLogins(c, "SCRAM-SHA-512")
	var refuse atomic.Bool
	refused := refuseLogins(c, &refuse)
	var logs syncbuf.Buffer
	p := ownLoginProxy(t, c, &logs)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism()), kgo.DisableIdempotentWrite())
	// The login's lifetime, 1.5 s, less the proxy's margin (1 s), is past 0.5 s after it.
	past := func() { time.Sleep(700 * time.Millisecond) }
	first := uniqueTopic(t, "reauth-first")
	produceEach(t, ctx, cl, first, []byte("v"))
	waitFor(t, first+"'s limit", func() bool { return p.limits.known(first) > 0 })
	before := logins.Load()
	past()
	second := uniqueTopic(t, "reauth-second")
	produceEach(t, ctx, cl, second, []byte("v"))
	waitFor(t, second+"'s limit", func() bool { return p.limits.known(second) > 0 })
	if after := logins.Load(); after <= before {
		t.Errorf("%d logins before the lifetime ran out, %d after a lookup past it; want a new one", before, after)
	}
	refuse.Store(true)
	past()
	produceEach(t, ctx, cl, uniqueTopic(t, "reauth-refused"), []byte("v"))
	waitFor(t, "the refused login in the log", func() bool { return strings.Contains(logs.String(), "the proxy's own SASL login") })
	if n := refused.Load(); n != 1 {
		t.Errorf("%d refused logins for one lookup, want 1", n)
	}
	guard.check(t)
}

// TestOwnSASLLoginOverTLS: SASL_SSL, as managed clusters such as Confluent Cloud (PLAIN over TLS)
// run it: the proxy's own connections do TLS, then ApiVersions, then the login, and read topic
// limits, so a batch the header would grow past its topic's limit is stored as it came.
func TestOwnSASLLoginOverTLS(t *testing.T) {
	pki := testpki.New(t, "kafka sasl_ssl test CA")
	_, _, brokerPair := pki.Issue(t, "kfake")
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{brokerPair}})}, saslUsers...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	up := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{RootCAs: pki.Pool}}
	p := startProxy(t, c, func(cfg *Config) {
		cfg.SASL = plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism()
		cfg.Listener.Dial = up.DialContext
	})
	answeredLimits(p)
	ctx := testCtx(t)
	if n, err := p.learnNodes(ctx); err != nil || n != 1 {
		t.Fatalf("the proxy's own Metadata over TLS: %d brokers, %v; want 1", n, err)
	}
	login := kgo.SASL(scram.Auth{User: "scram256", Pass: "pw256"}.AsSha256Mechanism())
	cl := kgoClient(t, p, login, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))
	limit := "2000"
	topic := uniqueTopic(t, "sasl-ssl")
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
		t.Fatal(err)
	}
	produceEach(t, ctx, cl, topic, bytes.Repeat([]byte("n"), 1900), []byte("small"))
	got := readTopic(t, ctx, p, topic, 2, login)
	if hasContext(got[0]) || !hasContext(got[1]) {
		t.Errorf("pathway header on the near-limit record %v, on the small one %v; want false, true", hasContext(got[0]), hasContext(got[1]))
	}
}
