package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// CertRefusalFields adds to ev, a line about a failed TLS handshake of tc with a client, what can
// be told of a refused certificate: the client refusing the front's (client_alert, hint, and
// problem: what is wrong with the one conf serves), or the front refusing the client's
// (client_cert, hint). Other failures add nothing.
func CertRefusalFields(ev *zerolog.Event, err error, tc *tls.Conn, conf *tls.Config) *zerolog.Event {
	if alert, problem, ok := refusedCertificate(err, tc, conf, time.Now()); ok {
		ev = ev.Str("client_alert", alert).Str("hint", refusedCertHint)
		if problem != "" {
			ev = ev.Str("problem", problem)
		}
	} else if hint, subject, ok := refusedClientCertificate(err); ok {
		if subject != "" {
			ev = ev.Str("client_cert", subject)
		}
		ev = ev.Str("hint", hint)
	}
	return ev
}

// refusedCertHint is the hint of a line about a client that refused the front's certificate.
const refusedCertHint = "the client refused the certificate this front serves: it must be valid now, name the host the client dials, " +
	"and be signed by a CA the client trusts (Kafka ssl.ca.location, the Java truststore, the AMQP client's CA file, AWS_CA_BUNDLE); " +
	"replace tls.cert_file and key_file, then send SIGHUP"

// certAlerts are the alerts a client sends when it refuses the server's certificate.
var certAlerts = []tls.AlertError{42, 43, 44, 45, 46, 48} // bad, unsupported, revoked, expired, unknown certificate; unknown CA

// refusedCertificate reports whether err, from a failed handshake of tc with a client, is the
// client refusing the certificate the front served (conf's): the alert the client sent and what
// the proxy can tell is wrong with the certificate ("" when nothing). Go names an alert OpenSSL
// clients send unencrypted in TLS 1.3 only "bad record MAC": the bytes read say which it was.
func refusedCertificate(err error, tc *tls.Conn, conf *tls.Config, now time.Time) (alert, problem string, ok bool) {
	var a error
	var oe *net.OpError
	switch {
	case errors.As(err, &oe) && oe.Op == "remote error":
		a = oe.Err
	default:
		if fb, isFB := tc.NetConn().(*FirstByteConn); isFB && strings.Contains(err.Error(), "bad record MAC") {
			if pa, found := fb.PlaintextAlert(); found {
				a = pa
			}
		}
	}
	if a == nil {
		return "", "", false
	}
	name := a.Error()
	refused := false
	for _, ca := range certAlerts {
		refused = refused || name == ca.Error()
	}
	if !refused {
		return "", "", false
	}
	return strings.TrimPrefix(name, "tls: "), servedProblem(conf, tc.ConnectionState().ServerName, now), true
}

// servedProblem says what is wrong at now with the certificate conf serves: expired, not valid
// yet, or not naming sni (the host the client asked for; IP clients send none); "" otherwise.
func servedProblem(conf *tls.Config, sni string, now time.Time) string {
	leaf := servedLeaf(conf)
	if leaf == nil {
		return ""
	}
	var problems []string
	switch {
	case now.After(leaf.NotAfter):
		problems = append(problems, "the certificate expired at "+leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		problems = append(problems, "the certificate is not valid before "+leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if sni != "" && leaf.VerifyHostname(sni) != nil {
		problems = append(problems, "the certificate does not name "+sni+", the host the client asked for")
	}
	return strings.Join(problems, "; ")
}

// servedLeaf is the certificate conf serves now (ServerTLS's serves the last one loaded).
func servedLeaf(conf *tls.Config) *x509.Certificate {
	if conf == nil {
		return nil
	}
	if conf.GetConfigForClient != nil {
		if c, err := conf.GetConfigForClient(&tls.ClientHelloInfo{}); err == nil && c != nil {
			conf = c
		}
	}
	if len(conf.Certificates) == 0 {
		return nil
	}
	return conf.Certificates[0].Leaf
}

// refusedClientCertificate reports whether err, from a failed handshake with a client, is the
// front (client_ca_file) refusing the client's certificate or its lack of one: the hint to log,
// and the subject of the certificate refused ("" when the client sent none). Go's "certificate
// signed by unknown authority" alone reads like the client refusing the front's certificate.
func refusedClientCertificate(err error) (hint, subject string, ok bool) {
	var cve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &cve):
		if len(cve.UnverifiedCertificates) > 0 {
			subject = cve.UnverifiedCertificates[0].Subject.String()
		}
		return "the front refused the client's certificate: it must be valid now and signed by a CA in the front's tls.client_ca_file " +
			"(issue the client one from that CA, or add its CA to client_ca_file and send SIGHUP)", subject, true
	case strings.Contains(err.Error(), "client didn't provide a certificate"):
		return "the front requires the client's certificate (tls.client_ca_file) and the client sent none: give the client a certificate " +
			"signed by that CA (Kafka ssl.certificate.location and ssl.key.location, Java keystore, the AMQP client's cert and key files), " +
			"or remove client_ca_file", "", true
	}
	return "", "", false
}
