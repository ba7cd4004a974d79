package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Clients keep the broker addresses of their last Metadata. After a restart, or behind a second
// replica, they dial node ports this proxy has not opened yet, because it opens a node's
// listener when a response names the node; a Java client that does not re-bootstrap then never
// gets one. So when node ports are fixed, the proxy asks the cluster for its brokers itself at
// start, and learns the topic ids clients that cached them produce and fetch by (v13+; a topic
// created since is asked for at its first miss, topics.go). A
// cluster that wants SASL before Metadata closes such a connection unless the proxy has a login
// of its own (Config.SASL): its nodes open with the first client's Metadata, as before.

// discoverRetry bounds the wait between attempts while no bootstrap broker answers.
const discoverRetry = 30 * time.Second

// discoverNodes opens a listener for every broker of the cluster, retrying while no bootstrap
// broker can be reached, until it succeeds, the cluster refuses, or ctx ends. A refused own login
// is tried again once its credentials change (CredentialVersioner).
func (p *Proxy) discoverNodes(ctx context.Context) { p.discover(ctx, discoverRetry) }

// discover is discoverNodes, looking at refused credentials every poll.
func (p *Proxy) discover(ctx context.Context, poll time.Duration) {
	wait := 500 * time.Millisecond
	told := ""
	cuts := 0
	for {
		n, err := p.learnNodes(ctx)
		if err == nil {
			p.log.Info().Int("nodes", n).Msg("broker node listeners opened from the cluster's metadata")
			return
		}
		if ctx.Err() != nil {
			// Stopped (a drain, or another front that failed to start): the request was cut
			// by the proxy, and says nothing of the cluster.
			return
		}
		var refused errRefused
		var cut errLoginCut
		var local errNodeListener
		if cuts++; !errors.As(err, &cut) {
			cuts = 0
		}
		switch {
		case tlsRefused(err):
			// Before the refusal below: a TLS refusal can end before the first request (a client
			// certificate missing in TLS 1.3) and look like a broker refusing the proxy. Its cause
			// is the upstream TLS settings, which a SIGHUP can reload: tried again.
			if err.Error() != told {
				p.log.Warn().Err(err).Stringer("retry_in", wait).Msg("the TLS handshake with a bootstrap broker failed (upstream_tls: ca_file, server_name, client certificate?): clients' connections will fail the same way")
				told = err.Error()
			} else {
				p.log.Debug().Err(err).Stringer("retry_in", wait).Msg("learning the broker nodes")
			}
		case errors.As(err, &refused) && errors.As(err, new(errNoApiVersions)):
			// Not a login matter: brokers answer ApiVersions before any login, SASL or not. Every
			// client asks it first too, and fails the same way.
			framingFields(p.log.Warn().Err(err), err, false).Msg("a bootstrap broker did not answer the proxy's ApiVersions, which every Kafka listener answers before any login: is it a Kafka listener, and does it want TLS (upstream_tls)? Clients will fail the same way; node listeners open with the first client's Metadata")
			return
		case errors.As(err, &refused) || cuts == loginCutsTold:
			if refused.err != nil {
				p.log.Info().Err(err).Msg("the cluster answered no Metadata to the proxy itself (SASL without the proxy's own login, or a refused one?): node listeners open with the first client's Metadata")
			} else {
				// Each try would be one more failed login in the broker's log.
				p.log.Info().Err(err).Int("tries", cuts).Msg(loginCutMsg + ": node listeners open with the first client's Metadata")
				refused = errRefused{login: true, creds: cut.creds}
			}
			if !refused.login || !p.awaitNewCredentials(ctx, refused.creds, poll) {
				return
			}
			wait, cuts = 500*time.Millisecond, 0
			continue
		case errors.As(err, &cut):
			// A login cut once is a restart or a network fault; every time, a wrong password
			// (told above at the third): either way no bootstrap that is wrong or down.
			p.log.Debug().Err(err).Int("tries", cuts).Stringer("retry_in", wait).Msg("the broker closed the connection during the proxy's own SASL login")
		case errors.As(err, &local) && err.Error() != told:
			// The proxy's own fault, not the cluster's: clients' answers leave the node out.
			p.log.Error().Err(err).Stringer("retry_in", wait).Msg("a broker node listener cannot open: clients cannot reach that node through this proxy, as if it were down")
			told = err.Error()
		case err.Error() != told:
			// Once per cause, so that a wrong or unreachable bootstrap is in the log at start,
			// not only at the first client's connection: the bootstrap is unreachable, or does
			// not answer in time.
			p.log.Warn().Err(err).Strs("bootstrap", p.cfg.Bootstrap).Stringer("retry_in", wait).
				Msg("cannot learn the broker nodes from the bootstrap brokers yet (is bootstrap right, and are they up?): trying again; clients' connections fail meanwhile")
			told = err.Error()
		default:
			p.log.Debug().Err(err).Stringer("retry_in", wait).Msg("learning the broker nodes")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, discoverRetry)
	}
}

// awaitNewCredentials waits until Config.SASL's credentials are no longer those of version
// creds, looking every poll; false when they cannot change or ctx ends first.
func (p *Proxy) awaitNewCredentials(ctx context.Context, creds uint64, poll time.Duration) bool {
	if _, ok := p.cfg.SASL.(CredentialVersioner); !ok {
		return false
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(poll):
		}
		if p.credentialVersion() != creds {
			p.log.Info().Msg("the proxy's own SASL credentials changed since the cluster refused them: learning the broker nodes again")
			return true
		}
	}
}

// errNodeListener: a broker node's listener could not open.
type errNodeListener struct{ err error }

func (e errNodeListener) Error() string { return e.err.Error() }
func (e errNodeListener) Unwrap() error { return e.err }

// errRefused: a bootstrap broker took the proxy's own connection and ended it instead of
// answering, or cannot answer what the proxy asks. login: it refused the proxy's own login,
// tried with the credentials of version creds (CredentialVersioner).
type errRefused struct {
	err   error
	login bool
	creds uint64
}

func (e errRefused) Error() string { return "refused: " + e.err.Error() }
func (e errRefused) Unwrap() error { return e.err }

// learnNodes asks one bootstrap broker for the cluster's metadata, opens each broker's listener
// and learns the topic ids; it returns how many brokers there are.
func (p *Proxy) learnNodes(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := p.dialOwn(ctx)
	var unanswered errNoApiVersions
	if errors.As(err, &unanswered) {
		return 0, errRefused{err: err}
	}
	if err != nil {
		return 0, err // no bootstrap broker reached: retried
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	mr, err := c.allTopics() // their ids are what produce and fetch v13+ name them by
	if err != nil {
		return 0, errRefused{err: err}
	}
	// What a relayed Metadata response does: learn the cluster id and the topic ids, then open
	// the nodes' listeners.
	if _, err := p.rewriteResponseAddresses(mr); err != nil {
		return 0, errNodeListener{err}
	}
	return len(mr.Brokers), nil
}

// errNoMetadataVersion: the broker lists no Metadata version from v1 that the proxy speaks.
var errNoMetadataVersion = errors.New("the broker lists no Metadata version from v1 that the proxy speaks")

// allTopics asks c for the metadata of every topic, at the highest version both speak.
func (c *ownConn) allTopics() (*kmsg.MetadataResponse, error) {
	v := ownVersion(c.versions, kmsg.NewPtrMetadataRequest())
	if v < 1 {
		return nil, errNoMetadataVersion
	}
	req := kmsg.NewPtrMetadataRequest()
	req.Version = v // Topics nil: every topic
	resp := kmsg.NewPtrMetadataResponse()
	if err := c.roundTrip(req, resp); err != nil {
		return nil, fmt.Errorf("metadata request v%d: %w", v, err)
	}
	return resp, nil
}

// dialOwn opens a connection of the proxy's own to a bootstrap broker (never a client's), asks
// its ApiVersions, v0, which every broker answers, and logs in when Config.SASL is set. A broker
// that takes the connection and does not answer gives errNoApiVersions; a failed login, errRefused.
func (p *Proxy) dialOwn(ctx context.Context) (*ownConn, error) {
	c, addr, err := p.dialBootstrapAddr(ctx, "tcp")
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	oc := &ownConn{Conn: c, addr: addr, versions: kmsg.NewPtrApiVersionsResponse()}
	versions := kmsg.NewPtrApiVersionsRequest()
	versions.Version = 0
	if err := oc.roundTrip(versions, oc.versions); err != nil {
		c.Close()
		if wrong := notKafka(err); wrong != nil {
			p.wrong.Wrong(addr, wrong)
		}
		return nil, errNoApiVersions{err}
	}
	p.wrong.Answered(addr)
	if p.cfg.SASL != nil {
		if err := p.login(ctx, oc); err != nil {
			c.Close()
			return nil, err
		}
	}
	return oc, nil
}

// UpstreamProblem says why bootstrap broker addr, as configured, is not a Kafka broker although
// it takes connections: it answered the proxy's ApiVersions, or a client's request, with another
// protocol (nil when it did not, or answered as Kafka since). While that is recorded, each call
// asks addr for its ApiVersions again, so that a broker put right is seen without a client.
func (p *Proxy) UpstreamProblem(ctx context.Context, addr string) error {
	return p.wrong.Recheck(ctx, addr, p.checkKafka)
}

// checkKafka asks addr for its ApiVersions: wrong when the answer is another protocol's; err when
// it says nothing of that (the dial failed, the broker closed or did not answer in time).
func (p *Proxy) checkKafka(ctx context.Context, addr string) (wrong, err error) {
	c, err := p.baseDial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	req := kmsg.NewPtrApiVersionsRequest()
	req.Version = 0
	err = roundTrip(c, 1, req, kmsg.NewPtrApiVersionsResponse())
	if wrong := notKafka(err); wrong != nil {
		return wrong, nil
	}
	return nil, err
}

// errNoApiVersions: a bootstrap broker took the connection but did not answer ApiVersions.
type errNoApiVersions struct{ err error }

func (e errNoApiVersions) Error() string { return "ApiVersions: " + e.err.Error() }
func (e errNoApiVersions) Unwrap() error { return e.err }

// ownVersion is the highest version of req's API that both the broker (vr) and kmsg speak, or -1.
func ownVersion(vr *kmsg.ApiVersionsResponse, req kmsg.Request) int16 {
	for _, k := range vr.ApiKeys {
		if k.ApiKey == req.Key() {
			if v := min(k.MaxVersion, req.MaxVersion()); v >= k.MinVersion {
				return v
			}
		}
	}
	return -1
}

// roundTrip sends req on c with correlation id corr and reads its response into resp.
func roundTrip(c net.Conn, corr int32, req kmsg.Request, resp kmsg.Response) error {
	frame := kmsg.NewRequestFormatter(kmsg.FormatterClientID("dsmproxy")).AppendRequest(nil, req, corr)
	if _, err := c.Write(frame); err != nil {
		return err
	}
	frame, err := readFrame(c, DefaultMaxFrameBytes)
	if err != nil {
		return err
	}
	resp.SetVersion(req.GetVersion())
	start, err := responseBodyStart(frame, req.Key(), resp.IsFlexible())
	if err != nil {
		return fmt.Errorf("%s response: %w", kmsg.NameForKey(req.Key()), err)
	}
	if got := int32(binary.BigEndian.Uint32(frame[4:])); got != corr {
		return fmt.Errorf("%s response for correlation id %d, sent %d", kmsg.NameForKey(req.Key()), got, corr)
	}
	return resp.ReadFrom(frame[start:])
}

// tlsRefused reports whether err is a TLS handshake that one side refused (a certificate not
// trusted or not matching, an alert from the broker, a peer that does not speak TLS) rather than
// a network fault.
func tlsRefused(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		header   tls.RecordHeaderError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		op       *net.OpError
	)
	// An alert the peer sent arrives as a *net.OpError "remote error" (tls.AlertError is QUIC's).
	return errors.As(err, &verify) || errors.As(err, &header) || errors.As(err, &unknown) ||
		errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &op) && op.Op == "remote error"
}
