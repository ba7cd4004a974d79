package kafka

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
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
			p := startProxy(t, c, func(cfg *Config) { cfg.SASL, cfg.Log = tc.own, zerolog.New(&logs) })
			answeredLimits(p)
			ctx := testCtx(t)
			if n, err := p.learnNodes(ctx); err != nil || n != 3 {
				t.Fatalf("the proxy's own Metadata: %d brokers, %v; want 3", n, err)
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
			if s := logs.String(); strings.Contains(s, "does not let the proxy read topic configs") || strings.Contains(s, "topic configs are not read") {
				t.Errorf("the proxy did not read topic configs with its own login:\n%s", s)
			}
		})
	}
	guard.check(t)
}

// TestOwnSASLLoginRefused: credentials the cluster refuses are said once in the log, with the
// broker's reason; the proxy tries them no more than once per connection kind (not once per
// topic: each try is a failed login in the broker's log), and clients are served as without them.
func TestOwnSASLLoginRefused(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	logins := countLogins(c, "SCRAM-SHA-512")
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) {
		cfg.SASL, cfg.Log = scram.Auth{User: "scram512", Pass: "wrong"}.AsSha512Mechanism(), zerolog.New(&logs)
	})
	answeredLimits(p)
	ctx := testCtx(t)
	login := kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism())
	cl := kgoClient(t, p, login, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0))
	for i := range 3 {
		produceEach(t, ctx, cl, uniqueTopic(t, "refused-login-"+string(rune('a'+i))), []byte("v"))
	}
	waitFor(t, "the refused login in the log", func() bool {
		return strings.Contains(logs.String(), "the proxy's own SASL login (SCRAM-SHA-512)")
	})
	// A refusal: the next try is an hour away (configRefusedBackoff), not seconds.
	if wait := time.Until(time.Unix(0, p.limits.downUntil.Load())); wait < 30*time.Minute {
		t.Errorf("the topic configs' connection is tried again in %v after a refused login", wait)
	}
	if n := logins.Load(); n > 2 {
		t.Errorf("%d logins with refused credentials, want at most 2 (node discovery, topic configs)", n)
	}
	if s := logs.String(); strings.Count(s, "the proxy's own SASL login") > 2 {
		t.Errorf("the refusal was told more than once per connection kind:\n%s", s)
	}
	guard.check(t)
}

// TestOwnSASLLoginExpires: a login the broker gives a lifetime (KIP-368,
// connections.max.reauth.ms) is replaced by a new connection before it ends, instead of the
// lookup finding the connection closed.
func TestOwnSASLLoginExpires(t *testing.T) {
	c, guard := startCluster(t, append(saslUsers, kfake.BrokerConfigs(map[string]string{"connections.max.reauth.ms": "1500"}))...)
	logins := countLogins(c, "SCRAM-SHA-512")
	p := startProxy(t, c, func(cfg *Config) { cfg.SASL = scram.Auth{User: "scram512", Pass: "pw512"}.AsSha512Mechanism() })
	answeredLimits(p)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism()), kgo.DisableIdempotentWrite())
	first := uniqueTopic(t, "reauth-first")
	produceEach(t, ctx, cl, first, []byte("v"))
	waitFor(t, first+"'s limit", func() bool { return p.limits.known(first) > 0 })
	before := logins.Load()
	// The login's lifetime, 1.5 s, less the proxy's margin (1 s): past it after 0.5 s.
	time.Sleep(700 * time.Millisecond)
	second := uniqueTopic(t, "reauth-second")
	produceEach(t, ctx, cl, second, []byte("v"))
	waitFor(t, second+"'s limit", func() bool { return p.limits.known(second) > 0 })
	if after := logins.Load(); after <= before {
		t.Errorf("%d logins before the lifetime ran out, %d after a lookup past it; want a new one", before, after)
	}
	guard.check(t)
}
