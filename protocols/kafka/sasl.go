package kafka

import (
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// SASL passes through untouched. SaslHandshake v1 is followed by SaslAuthenticate requests, which
// are ordinary frames. SaslHandshake v0 (pre-1.0 clients) is followed by raw tokens: int32 length
// + bytes, with no Kafka header in either direction. The proxy relays that many raw exchanges for
// the mechanism (PLAIN and OAUTHBEARER one, SCRAM two) and then goes back to parsing frames; for a
// mechanism whose exchange count it does not know (GSSAPI...) it relays bytes for the rest of the
// connection, which stays transparent but unobserved.

// rawExchanges is the number of client token / server token round trips of mechanism after a
// SaslHandshake v0, or -1 when unknown.
func rawExchanges(mechanism string) int32 {
	switch m := strings.ToUpper(mechanism); {
	case m == "PLAIN", m == "OAUTHBEARER":
		return 1
	case strings.HasPrefix(m, "SCRAM-"):
		return 2
	}
	return -1
}

func (s *session) saslHandshakeResponse(pd *pending, frame []byte) {
	mech, _ := pd.facts.(string)
	resp := kmsg.NewPtrSASLHandshakeResponse()
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	if resp.ErrorCode != 0 {
		// UNSUPPORTED_SASL_MECHANISM: the client's login cannot start. It reconnects and asks
		// again; its application sees at most a timeout.
		s.loginRefused(keySaslHandshake, resp.ErrorCode, fmt.Sprintf("mechanism %s refused; the broker offers %s",
			mech, strings.Join(resp.SupportedMechanisms, ", ")))
		return
	}
	if pd.version != 0 {
		return
	}
	// v0: the tokens that follow are raw, and no SaslAuthenticate answer will say the login
	// succeeded; a broker that accepts the handshake authenticates clients.
	s.p.saslSeen.Store(true)
	n := rawExchanges(mech)
	s.rawOAuth = strings.EqualFold(mech, "OAUTHBEARER")
	s.rawLeft.Store(n)
	if n < 0 {
		s.log.Info().Str("mechanism", mech).Msg("SASL v0 with an unknown mechanism: relaying bytes for the rest of the connection")
	}
}

// rawTokenAnswered counts one finished raw exchange. An OAUTHBEARER server token that is not empty
// is an error challenge: the client answers it with one more raw token before the broker closes.
func (s *session) rawTokenAnswered(frame []byte) {
	left := s.rawLeft.Add(-1)
	if s.rawOAuth && len(frame) > 4 && left == 0 {
		s.rawLeft.Store(1)
		s.rawOAuth = false
	}
}

// saslLogin is the facts of a SaslAuthenticate request: the mechanism its handshake named.
type saslLogin string

// saslAuthenticateResponse notes a login the cluster accepted: it authenticates its clients, and
// the proxy's own requests would be refused unless it has a login of its own (Config.SASL,
// topicconfig.go). A refused login (a wrong password, or a cluster without SASL) says nothing
// about the cluster, and is tracked.
func (s *session) saslAuthenticateResponse(pd *pending, frame []byte) {
	resp := kmsg.NewPtrSASLAuthenticateResponse()
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	if resp.ErrorCode == 0 {
		s.p.saslSeen.Store(true)
		return
	}
	mech, _ := pd.facts.(saslLogin)
	msg := "mechanism " + string(mech)
	if resp.ErrorMessage != nil && *resp.ErrorMessage != "" {
		msg += ": " + *resp.ErrorMessage
	}
	s.loginRefused(keySaslAuth, resp.ErrorCode, msg)
}

// loginClosed reports a login the broker ended the connection over: Kafka answers a refused
// SaslAuthenticate and then closes, but some brokers (kfake among them) close without the
// answer, and the client shows no more than a lost connection, and tries again. After a
// SaslHandshake v0 the broker can say no otherwise: a raw token it refuses is never answered,
// and the connection closes. err is how
// the response relay ended: only the upstream's own end (EOF, a reset) counts, not the proxy's
// close after the client left. It says whether it reported one.
func (s *session) loginClosed(err error) bool {
	if !endedByBroker(err) {
		return false
	}
	s.mu.Lock()
	var login *pending
	for _, pd := range s.queue {
		if (pd.key == keySaslAuth || pd.rawToken) && pd.synthetic == nil {
			login = pd
			break
		}
	}
	s.mu.Unlock()
	if login == nil {
		return false
	}
	mech, _ := login.facts.(saslLogin)
	what := "SaslAuthenticate"
	if login.rawToken {
		what = "the client's raw token (SaslHandshake v0)"
	}
	s.loginRefused(keySaslAuth, kerr.SaslAuthenticationFailed.Code,
		"mechanism "+string(mech)+": the broker closed the connection without answering "+what+": it refused the login")
	return true
}

// loginRefused tracks a refused client login on the cluster's edge: a login names no topic.
func (s *session) loginRefused(op, code int16, message string) {
	s.p.brokerErrorMessage(op, code, message, s.info.Load().service,
		pathway.Edge{Type: pathway.TypeKafka, ClusterID: s.p.cluster()}, -1, 0)
}
