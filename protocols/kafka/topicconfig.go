package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// configReader reads the max.message.bytes and compression.type of the topics clients produce to
// (topicLimits asks for them), with DescribeConfigs on a connection of the proxy's own to a
// bootstrap broker: the proxy adds no request to a client's connection. That connection logs in
// with Config.SASL when it is set. Without it, a cluster that wants SASL first, or whose ACLs
// deny DescribeConfigs to an anonymous client, leaves the limits unknown; topicLimits.check says
// what that means for a batch. Once the cluster accepts a client's login, a reader without
// credentials that it never answered stops: every attempt would be a failed authentication in
// the broker's log and metrics.
type configReader struct {
	p       *Proxy
	conn    *ownConn
	fresh   bool          // conn has answered nothing but ApiVersions (and the proxy's login)
	version int16         // DescribeConfigs version the broker and kmsg both speak
	retryAt time.Time     // after a failed or refused connection, no dial before this
	backoff time.Duration // doubles per failure, up to configMaxBackoff (configRefusedBackoff)
	told    bool          // the operator was told the configs cannot be read (reset by a success)
	// refusedWith: the credential version the proxy's own login was refused with (refused: it
	// was, since the last success); new credentials end the refusal's backoff.
	refused     bool
	refusedWith uint64
	loginCuts   int // logins cut in a row (errLoginCut)
	// succeeded: a lookup was answered. A cluster that answers the proxy does not need it to
	// stop when clients authenticate (a listener may accept both).
	succeeded bool
}

const (
	maxTopicsPerLookup   = 100
	configMaxBackoff     = 5 * time.Minute
	configRefusedBackoff = time.Hour // a broker that closes instead of answering: a failed login in its logs each time
	configTimeout        = 10 * time.Second
)

// run answers topicLimits' lookups until ctx ends. Topics asked for while a connection may not be
// tried are dropped: topicLimits asks again after topicAskEvery.
func (r *configReader) run(ctx context.Context) {
	defer r.closeConn()
	r.p.limits.noReader.Store(false)
	defer func() { r.p.limits.noReader.Store(true); r.p.limits.settle(nil) }() // no batch waits for it any more
	ask := r.p.limits.ask
	for {
		var topics []string
		names := false // topic ids missed (topics.go): learn every topic's from the cluster
		select {
		case <-ctx.Done():
			return
		case t := <-ask:
			topics = append(topics, t)
		case <-r.p.topics.want:
			names = true
		}
	more:
		for !names && len(topics) < maxTopicsPerLookup {
			select {
			case t := <-ask:
				topics = append(topics, t)
			default:
				break more
			}
		}
		if r.p.saslSeen.Load() && !r.succeeded && r.p.cfg.SASL == nil {
			r.p.log.Info().Msg("clients authenticate with SASL, and the proxy has no credentials of its own (sasl: in its Kafka config): topic configs are not read, nor topic ids asked for; " + r.consequence())
			return
		}
		if time.Now().Before(r.retryAt) && !r.newCredentials() {
			r.p.limits.settle(topics) // an id missed later asks again
			continue
		}
		if names {
			if err := r.learnTopicIDs(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				r.failed(err)
				continue
			}
			r.backoff, r.refused, r.loginCuts = 0, false, 0
			r.p.limits.downUntil.Store(0)
			continue
		}
		unread, err := r.lookup(ctx, topics)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.p.limits.lookupFailures.Add(1)
			r.failed(err)
			r.p.limits.settle(topics)
			continue
		}
		r.p.limits.lookups.Add(1)
		r.backoff, r.refused, r.loginCuts = 0, false, 0
		r.p.limits.downUntil.Store(0)
		r.p.limits.settle(unread)
	}
}

// consequence says what unread topic configs mean for batches.
func (r *configReader) consequence() string {
	msg := "batches grown past a topic's unknown max.message.bytes are refused once (acks=1/all) and then sent without the header"
	if r.p.limits.vouched {
		return msg + "; acks=0 batches get the header (inject_acks0_unknown_limit)"
	}
	return msg + "; acks=0 batches go without the header"
}

// lookup asks for topics' max.message.bytes, records the answers and returns the topics whose
// limit it did not learn. A connection that answered before and fails now was probably closed for
// idleness (connections.max.idle.ms): one retry on a new one.
func (r *configReader) lookup(ctx context.Context, topics []string) ([]string, error) {
	if r.conn != nil && r.conn.expired(time.Now()) {
		r.closeConn() // a new login, before the broker ends this one
	}
	reused := r.conn != nil // not a new one: a refused login would be tried twice
	unread, err := r.describe(ctx, topics)
	if err != nil && reused && ctx.Err() == nil {
		unread, err = r.describe(ctx, topics)
	}
	return unread, err
}

func (r *configReader) describe(ctx context.Context, topics []string) (unread []string, err error) {
	if r.conn == nil {
		if err := r.connect(ctx); err != nil {
			return nil, err
		}
	}
	c, fresh := r.conn, r.fresh
	r.fresh = false
	c.SetDeadline(time.Now().Add(configTimeout)) // before AfterFunc, whose call may come at once
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	req := kmsg.NewPtrDescribeConfigsRequest()
	req.Version = r.version
	for _, t := range topics {
		res := kmsg.NewDescribeConfigsRequestResource()
		res.ResourceType = kmsg.ConfigResourceTypeTopic
		res.ResourceName = t
		res.ConfigNames = []string{"max.message.bytes", "compression.type"}
		req.Resources = append(req.Resources, res)
	}
	resp := kmsg.NewPtrDescribeConfigsResponse()
	if err := c.roundTrip(req, resp); err != nil {
		r.closeConn()
		err = fmt.Errorf("DescribeConfigs v%d: %w", r.version, err)
		// A new connection that answered ApiVersions and closed at DescribeConfigs: the broker
		// wants SASL first (after a login of the proxy's own, it cannot mean that). On an older
		// one it may have been closed for idleness.
		if fresh && r.p.cfg.SASL == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
			return nil, errRefused{err: err}
		}
		return nil, err
	}
	denied := 0
	learned := make(map[string]bool, len(topics))
	for _, res := range resp.Resources {
		if res.ErrorCode != 0 {
			// A topic not created yet, or one the proxy may not describe: asked again later.
			if errors.Is(kerr.ErrorForCode(res.ErrorCode), kerr.TopicAuthorizationFailed) {
				denied++
			}
			r.p.log.Debug().Str("topic", res.ResourceName).Int16("error_code", res.ErrorCode).Msg("topic config not read")
			continue
		}
		limit, compression := 0, ""
		for _, cfg := range res.Configs {
			if cfg.Value == nil {
				continue
			}
			switch cfg.Name {
			case "max.message.bytes":
				limit, _ = strconv.Atoi(*cfg.Value)
			case "compression.type":
				compression = *cfg.Value
			}
		}
		if limit > 0 {
			r.p.limits.learned(res.ResourceName, limit, compression)
			learned[res.ResourceName] = true
		}
	}
	for _, t := range topics {
		if !learned[t] {
			unread = append(unread, t) // refused, not created yet, or not in the answer
		}
	}
	r.succeeded = true
	if denied > 0 {
		r.tell(fmt.Errorf("DescribeConfigs of %d topics: %w", denied, kerr.TopicAuthorizationFailed))
	} else {
		r.told = false // a later refusal is news again
	}
	return unread, nil
}

// learnTopicIDs asks the cluster for every topic (Metadata, as discovery at start does) and
// learns their ids and the cluster id, as from a Metadata answer relayed to a client. A connection
// that answered before and fails now was probably closed for idleness: one retry on a new one.
func (r *configReader) learnTopicIDs(ctx context.Context) error {
	if r.conn != nil && r.conn.expired(time.Now()) {
		r.closeConn()
	}
	reused := r.conn != nil
	n, err := r.metadata(ctx)
	if err != nil && reused && ctx.Err() == nil {
		n, err = r.metadata(ctx)
	}
	if err == nil {
		r.p.log.Debug().Int("topics", n).Msg("learned the cluster's topic ids after a request named one not seen in a Metadata answer")
	}
	return err
}

func (r *configReader) metadata(ctx context.Context) (topics int, err error) {
	if r.conn == nil {
		if err := r.connect(ctx); err != nil {
			return 0, err
		}
	}
	c, fresh := r.conn, r.fresh
	r.fresh = false
	c.SetDeadline(time.Now().Add(configTimeout)) // before AfterFunc, whose call may come at once
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	resp, err := c.allTopics()
	if errors.Is(err, errNoMetadataVersion) {
		return 0, err
	}
	if err != nil {
		r.closeConn()
		// As for DescribeConfigs: a new connection closed at its first request wants SASL.
		if fresh && r.p.cfg.SASL == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
			return 0, errRefused{err: err}
		}
		return 0, err
	}
	if resp.ClusterID != nil {
		r.p.noteCluster(*resp.ClusterID)
	}
	r.p.learnTopics(resp)
	r.succeeded = true
	return len(resp.Topics), nil
}

// connect dials a bootstrap broker and learns which DescribeConfigs version to send.
func (r *configReader) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, configTimeout)
	defer cancel()
	c, err := r.p.dialOwn(ctx) // an ApiVersions failure is not a refusal: every broker answers it
	if err != nil {
		return err
	}
	if r.version = ownVersion(c.versions, kmsg.NewPtrDescribeConfigsRequest()); r.version < 0 {
		c.Close()
		return errRefused{err: errors.New("the broker lists no DescribeConfigs version the proxy speaks")}
	}
	r.conn, r.fresh = c, true
	return nil
}

// failed backs off before the next connection and tells the operator once what a refusal means.
func (r *configReader) failed(err error) {
	var refused errRefused
	var cut errLoginCut
	if r.loginCuts++; !errors.As(err, &cut) {
		r.loginCuts = 0
	}
	switch {
	case errors.As(err, &refused):
		r.backoff = configRefusedBackoff
		if refused.login {
			r.refused, r.refusedWith = true, refused.creds
		}
		r.tell(err)
	case r.loginCuts >= loginCutsTold:
		// As a refusal: each try would be one more failed login in the broker's log.
		r.backoff = configRefusedBackoff
		r.refused, r.refusedWith = true, cut.creds
		if r.loginCuts == loginCutsTold {
			r.p.log.Info().Err(err).Int("tries", r.loginCuts).Msg(loginCutMsg + ": " + r.consequence())
		}
	default:
		r.backoff = min(max(2*r.backoff, time.Second), configMaxBackoff)
		r.p.log.Debug().Err(err).Stringer("retry_in", r.backoff).Msg("reading topic configs")
	}
	r.retryAt = time.Now().Add(r.backoff)
	r.p.limits.downUntil.Store(r.retryAt.UnixNano())
}

// newCredentials reports whether the proxy's own login was refused and its credentials have
// changed since.
func (r *configReader) newCredentials() bool {
	if !r.refused || r.p.credentialVersion() == r.refusedWith {
		return false
	}
	r.p.log.Info().Msg("the proxy's own SASL credentials changed since the cluster refused them: reading topic configs again")
	r.refused, r.told, r.loginCuts = false, false, 0 // a refusal of the new ones is news
	return true
}

func (r *configReader) tell(err error) {
	if r.told {
		r.p.log.Debug().Err(err).Msg("topic configs not read")
		return
	}
	r.told = true
	r.p.log.Info().Err(err).Msg("the cluster does not let the proxy read topic configs (SASL without the proxy's own login, a refused login, or ACLs?): " + r.consequence())
}

func (r *configReader) closeConn() {
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
}
