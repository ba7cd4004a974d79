package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// ownConn is a connection of the proxy's own to a bootstrap broker (topic configs, node
// discovery), after ApiVersions and, when Config.SASL is set, its login.
type ownConn struct {
	net.Conn
	addr     string // the bootstrap address dialed
	versions *kmsg.ApiVersionsResponse
	corr     int32     // the last correlation id sent
	expires  time.Time // KIP-368: the broker ends the login then (zero: never)
}

// roundTrip sends req with the next correlation id and reads its response into resp.
func (c *ownConn) roundTrip(req kmsg.Request, resp kmsg.Response) error {
	c.corr++
	return roundTrip(c.Conn, c.corr, req, resp)
}

// expired reports whether the broker may have ended the connection's login by now (expires is set
// early, by login, to leave room for the round trip about to start): such a connection is closed,
// not used.
func (c *ownConn) expired(now time.Time) bool {
	return !c.expires.IsZero() && now.After(c.expires)
}

// CredentialVersioner is a Config.SASL mechanism whose credentials can change while the proxy
// runs, such as a password file that an orchestrator rotates. A refused login is otherwise tried
// again an hour later (each try is a failed login in the broker's log); with a new version, it is
// tried at the next lookup.
type CredentialVersioner interface {
	// CredentialVersion changes when the credentials the next login would use change. It is
	// called before each login and, while a refused login waits, for each batch of topics
	// asked for (each topic at most every 10 s) and by node discovery every 30 s: reading a
	// small local file is fine; a call that can block for long (a network mount that hangs)
	// holds up topic config lookups and Shutdown.
	CredentialVersion() uint64
}

// credentialVersion is the version of Config.SASL's credentials (0 when it cannot tell).
func (p *Proxy) credentialVersion() uint64 {
	if v, ok := p.cfg.SASL.(CredentialVersioner); ok {
		return v.CredentialVersion()
	}
	return 0
}

// maxLoginSteps bounds the SaslAuthenticate round trips of one login; SCRAM takes two.
const maxLoginSteps = 8

// login authenticates c with the proxy's own credentials (Config.SASL): SaslHandshake v1, then
// SaslAuthenticate until the mechanism is done. Clients' logins are never borrowed: they pass
// through the proxy untouched. A broker that answers with an error refuses the login (errRefused):
// trying again soon would be one more failed login in its log. A connection that breaks or times
// out during the login is not a refusal (Kafka answers a wrong password with
// SASL_AUTHENTICATION_FAILED before it closes).
func (p *Proxy) login(ctx context.Context, c *ownConn) error {
	m := p.cfg.SASL
	creds := p.credentialVersion() // before Authenticate: credentials that change during it are new
	fail := func(err error) error {
		err = fmt.Errorf("the proxy's own SASL login (%s): %w", m.Name(), err)
		if isNetErr(err) {
			return errLoginCut{err: err, creds: creds}
		}
		return errRefused{err: err, login: true, creds: creds}
	}
	hs := kmsg.NewPtrSASLHandshakeRequest()
	if hs.Version = ownVersion(c.versions, hs); hs.Version < 1 {
		// v0 would have the login's tokens sent without Kafka framing; brokers from 1.0 speak v1.
		return fail(errors.New("the broker lists no SaslHandshake v1"))
	}
	hs.Mechanism = m.Name()
	hsr := kmsg.NewPtrSASLHandshakeResponse()
	if err := c.roundTrip(hs, hsr); err != nil {
		return fail(fmt.Errorf("SaslHandshake v%d: %w", hs.Version, err))
	}
	if err := kerr.ErrorForCode(hsr.ErrorCode); err != nil {
		return fail(fmt.Errorf("SaslHandshake v%d: %w (the broker enables %v)", hs.Version, err, hsr.SupportedMechanisms))
	}
	authVersion := ownVersion(c.versions, kmsg.NewPtrSASLAuthenticateRequest())
	if authVersion < 0 {
		return fail(errors.New("the broker lists no SaslAuthenticate version the proxy speaks"))
	}
	session, msg, err := m.Authenticate(ctx, c.addr)
	if err != nil {
		return fail(err)
	}
	if len(msg) == 0 {
		return fail(errors.New("the mechanism has no first message (only client-first mechanisms are supported)"))
	}
	var sent time.Time // before the last SaslAuthenticate: the lifetime counts from its answer
	var lifetime int64
	for step, done := 0, false; !done || len(msg) > 0; step++ {
		if step == maxLoginSteps {
			return fail(fmt.Errorf("not done after %d SaslAuthenticate round trips", step))
		}
		req := kmsg.NewPtrSASLAuthenticateRequest()
		req.Version, req.SASLAuthBytes = authVersion, msg
		resp := kmsg.NewPtrSASLAuthenticateResponse()
		sent = time.Now()
		if err := c.roundTrip(req, resp); err != nil {
			return fail(fmt.Errorf("SaslAuthenticate v%d: %w", authVersion, err))
		}
		if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
			if resp.ErrorMessage != nil {
				err = fmt.Errorf("%w: %s", err, *resp.ErrorMessage)
			}
			return fail(fmt.Errorf("SaslAuthenticate v%d: %w", authVersion, err))
		}
		lifetime = resp.SessionLifetimeMillis
		msg = nil
		if !done {
			if done, msg, err = session.Challenge(resp.SASLAuthBytes); err != nil {
				return fail(err)
			}
		}
	}
	if lifetime > 0 {
		// Counted from before the last request, and ended early by a tenth (at least a second):
		// a connection past it is replaced before a lookup, not found closed by one.
		d := time.Duration(min(lifetime, int64(365*24*time.Hour/time.Millisecond))) * time.Millisecond
		c.expires = sent.Add(d - max(d/10, time.Second))
	}
	return nil
}

// errLoginCut: the connection broke during the proxy's own login (tried with credentials of
// version creds), after it had answered ApiVersions. Once is a restart or a network fault; every
// time, a broker that closes instead of answering a wrong password (kfake does): loginCutsTold in
// a row are told and then taken as a refusal.
type errLoginCut struct {
	err   error
	creds uint64
}

func (e errLoginCut) Error() string { return e.err.Error() }
func (e errLoginCut) Unwrap() error { return e.err }

// loginCutsTold: logins cut in a row before the proxy says its credentials may be wrong.
const loginCutsTold = 3

// loginCutMsg says what logins cut every time may mean.
const loginCutMsg = "the broker closed the connection during the proxy's own SASL login each time it tried (a broker that closes instead of answering a wrong password? check kafka sasl: username and password)"

// isNetErr reports whether err came from the connection (a timeout, a broken or closed socket)
// rather than from the broker's answer or the mechanism.
func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}
