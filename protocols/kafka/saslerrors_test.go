package kafka

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestSASLLoginRefusalsTracked: a client whose login the cluster refuses reconnects and tries
// again, and shows its application no more than a timeout (kgo: "context deadline exceeded"),
// as the AMQP front's refused logins are tracked, so are these: a mechanism the broker does not
// offer (SaslHandshake's UNSUPPORTED_SASL_MECHANISM) and a wrong password or unknown user, which
// kfake, like some brokers, answers by closing the connection instead of with
// SASL_AUTHENTICATION_FAILED. Each is a non-retriable broker error under the request refused,
// named by the client's service, on the cluster's edge (no topic: a login names none).
func TestSASLLoginRefusalsTracked(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	p := startProxy(t, c, nil)
	for _, tc := range []struct {
		name, clientID string
		login          kgo.Opt
		op, code       string
		wantMessage    string
	}{
		{"wrong-password", "refused-plain", kgo.SASL(plain.Auth{User: "plainuser", Pass: "wrong"}.AsMechanism()),
			"SASLAuthenticate", "SASL_AUTHENTICATION_FAILED", "PLAIN"},
		{"unknown-scram-user", "refused-scram", kgo.SASL(scram.Auth{User: "nobody", Pass: "pw"}.AsSha512Mechanism()),
			"SASLAuthenticate", "SASL_AUTHENTICATION_FAILED", "SCRAM-SHA-512"},
		{"unsupported-mechanism", "refused-oauth", kgo.SASL(oauth.Auth{Token: "tok"}.AsMechanism()),
			"SASLHandshake", "UNSUPPORTED_SASL_MECHANISM", "OAUTHBEARER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := kgoClient(t, p, tc.login, kgo.ClientID(tc.clientID))
			ctx, cancel := context.WithTimeout(testCtx(t), 3*time.Second)
			defer cancel()
			if err := cl.Ping(ctx); err == nil {
				t.Fatal("the cluster accepted the login")
			}
			var got []errtrack.Event
			waitFor(t, tc.code+" event for "+tc.clientID, func() bool {
				got = p.errs.where(func(e errtrack.Event) bool { return e.Service == tc.clientID })
				return len(got) > 0
			})
			e := got[0]
			want := pathway.Edge{Type: pathway.TypeKafka, ClusterID: p.cluster()}
			if e.Category != errtrack.BrokerError || e.Protocol != "kafka" || e.Operation != tc.op || e.Name != tc.code || e.Retriable || e.Edge != want {
				t.Errorf("event %+v; want a non-retriable kafka broker error %s on %s, edge %s", e, tc.code, tc.op, want)
			}
			if !strings.Contains(e.Message, tc.wantMessage) {
				t.Errorf("message %q does not name the mechanism %s", e.Message, tc.wantMessage)
			}
		})
	}
	// Each refusal is told as that: the connection kfake closes over it is not also a broker cut.
	// Counted once the sessions ended, which is when a cut would be told.
	waitFor(t, "the client connections to end", func() bool { return p.Stats().OpenConnections == 0 })
	if n := p.Stats().BrokerCuts; n != 0 {
		t.Errorf("BrokerCuts %d after refused logins, want 0", n)
	}
	guard.check(t)
}

// TestClientWithoutSASLCutHinted: a cluster that wants SASL closes a client that sends none at
// its first request past ApiVersions. The proxy's broker-cut line is the one line about it, and
// read alone it says the broker crashed or restarted: once the cluster is known to take logins
// (another client logged in), it must say the likelier cause, the client's missing login (kgo
// says "is SASL missing?").
func TestClientWithoutSASLCutHinted(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	in := kgoClient(t, p, kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism()))
	if err := in.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	in.Close()
	cl := kgoClient(t, p, kgo.ClientID("no-sasl"))
	ctx, cancel := context.WithTimeout(testCtx(t), 2*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err == nil {
		t.Fatal("the cluster served a client without SASL")
	}
	cl.Close()
	waitFor(t, "the client connections to end", func() bool { return p.Stats().OpenConnections == 0 })
	var cuts []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "the broker ended the connection with requests unanswered") {
			cuts = append(cuts, l)
		}
	}
	if len(cuts) == 0 {
		t.Fatalf("no broker-cut line; logs:\n%s", logs.String())
	}
	for _, l := range cuts {
		if !strings.Contains(l, `"hint":`) || !strings.Contains(l, "SASL") {
			t.Errorf("the cut of a client without SASL has no hint at its missing login: %s", l)
		}
	}
	guard.check(t)
}
