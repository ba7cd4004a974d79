package kafka

import (
	"slices"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// rewriteAddresses rewrites the broker addresses of Metadata, FindCoordinator and DescribeCluster
// responses to the proxy's per-node listeners (opening them as needed); ShareFetch and
// ShareAcknowledge responses come through rewriteDecoded (sharefetch.go). Metadata also feeds
// the topic id map, and its per-topic error codes are reported (metadataErrors). An error (a
// node the proxy cannot listen for) closes the connection: forwarding the real address would
// let the client bypass the proxy.
func (s *session) rewriteAddresses(pd *pending, frame []byte) ([]byte, error) {
	var resp kmsg.Response
	switch pd.key {
	case keyMetadata:
		resp = kmsg.NewPtrMetadataResponse()
	case keyFindCoordinator:
		resp = kmsg.NewPtrFindCoordinatorResponse()
	case keyDescribeCluster:
		resp = kmsg.NewPtrDescribeClusterResponse()
	default:
		return frame, nil
	}
	start, ok := s.decodeResponse(pd, frame, resp)
	if !ok {
		return frame, nil
	}
	out, err := s.rewriteDecoded(pd, frame, start, resp)
	if md, ok := resp.(*kmsg.MetadataResponse); ok && err == nil { // after rewriteDecoded: it notes the cluster id
		s.metadataErrors(md)
	}
	return out, err
}

// rewriteDecoded is rewriteAddresses for a response already decoded (its body at start).
func (s *session) rewriteDecoded(pd *pending, frame []byte, start int, resp kmsg.Response) ([]byte, error) {
	changed, err := s.p.rewriteResponseAddresses(resp)
	if err != nil {
		s.advertiseFailed(pd, err)
		return nil, proxy.Logged(versionErr(pd, err))
	}
	if !changed {
		return frame, nil
	}
	return encodeResponse(frame, start, resp), nil
}

// advertiseFailed logs a connection closed because its answer names a broker node that has no
// listener (its address is taken, say). While the node's listener cannot open every client's
// Metadata meets it, and clients retry many times a second: the first 10 and every 1000th are
// logged at Error with the running total, the rest at Debug (the discovery's own line and
// /readyz say it too).
func (s *session) advertiseFailed(pd *pending, err error) {
	n := s.p.advertiseFailures.Add(1)
	ev := s.log.Debug()
	if proxy.LogNth(n) {
		ev = s.log.Error()
	}
	ev.Err(err).Str("api", kmsg.NameForKey(pd.key)).Uint64("advertise_failures_total", n).Msg("closing connection: cannot advertise a broker node")
}

// rewriteResponseAddresses replaces every broker host/port in resp (a decoded response of an API
// that carries them) with the node's proxy address. It reports whether anything changed.
func (p *Proxy) rewriteResponseAddresses(resp kmsg.Response) (bool, error) {
	changed := false
	fix := func(id int32, host *string, port *int32) error {
		if id < 0 || *host == "" {
			return nil
		}
		h, pt, err := p.advertise(id, *host, *port)
		if err != nil {
			return err
		}
		if h != *host || pt != *port {
			*host, *port = h, pt
			changed = true
		}
		return nil
	}
	switch r := resp.(type) {
	case *kmsg.MetadataResponse:
		for i := range r.Brokers {
			b := &r.Brokers[i]
			if err := fix(b.NodeID, &b.Host, &b.Port); err != nil {
				return false, err
			}
		}
		p.learnTopics(r)
		if r.ClusterID != nil {
			p.noteCluster(*r.ClusterID)
		}
		p.forgetGoneNodes(r.Brokers)
	case *kmsg.FindCoordinatorResponse:
		if r.ErrorCode == 0 {
			if err := fix(r.NodeID, &r.Host, &r.Port); err != nil {
				return false, err
			}
		}
		for i := range r.Coordinators {
			c := &r.Coordinators[i]
			if c.ErrorCode == 0 {
				if err := fix(c.NodeID, &c.Host, &c.Port); err != nil {
					return false, err
				}
			}
		}
	case *kmsg.DescribeClusterResponse:
		// EndpointType 2 lists controllers (bootstrap.controllers clients talk to them directly, not
		// through this proxy); their ids are not broker node ids, so they are left alone.
		if r.EndpointType != 2 {
			for i := range r.Brokers {
				b := &r.Brokers[i]
				if err := fix(b.NodeID, &b.Host, &b.Port); err != nil {
					return false, err
				}
			}
		}
	case *kmsg.ProduceResponse:
		for i := range r.Brokers {
			b := &r.Brokers[i]
			if err := fix(b.NodeID, &b.Host, &b.Port); err != nil {
				return false, err
			}
		}
	case *kmsg.FetchResponse:
		for i := range r.Brokers {
			b := &r.Brokers[i]
			if err := fix(b.NodeID, &b.Host, &b.Port); err != nil {
				return false, err
			}
		}
	case *kmsg.ShareFetchResponse:
		for i := range r.NodeEndpoints {
			b := &r.NodeEndpoints[i]
			if err := fix(b.NodeID, &b.Host, &b.Port); err != nil {
				return false, err
			}
		}
	case *kmsg.ShareAcknowledgeResponse:
		for i := range r.NodeEndpoints {
			b := &r.NodeEndpoints[i]
			if err := fix(b.NodeID, &b.Host, &b.Port); err != nil {
				return false, err
			}
		}
	}
	return changed, nil
}

// forgetGoneNodes drops the listener problems of nodes a Metadata response no longer lists (it
// lists every live broker): no client is told of them any more.
func (p *Proxy) forgetGoneNodes(brokers []kmsg.MetadataResponseBroker) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.nodeProblems {
		if !slices.ContainsFunc(brokers, func(b kmsg.MetadataResponseBroker) bool { return b.NodeID == id }) {
			delete(p.nodeProblems, id)
		}
	}
}
