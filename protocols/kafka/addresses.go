package kafka

import (
	"encoding/binary"
	"errors"
	"slices"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// rewriteAddresses rewrites the broker addresses of Metadata, FindCoordinator and DescribeCluster
// responses to the proxy's per-node listeners (opening them as needed); ShareFetch and
// ShareAcknowledge responses come through rewriteDecoded (sharefetch.go). Metadata also feeds
// the topic id map, and its per-topic error codes are reported (metadataErrors).
func (s *session) rewriteAddresses(pd *pending, frame []byte) []byte {
	var resp kmsg.Response
	switch pd.key {
	case keyMetadata:
		resp = kmsg.NewPtrMetadataResponse()
	case keyFindCoordinator:
		resp = kmsg.NewPtrFindCoordinatorResponse()
	case keyDescribeCluster:
		resp = kmsg.NewPtrDescribeClusterResponse()
	default:
		return frame
	}
	start, ok := s.decodeResponse(pd, frame, resp)
	if !ok {
		return frame
	}
	if r, ok := resp.(*kmsg.FindCoordinatorResponse); ok {
		// The broker's codes, before rewriteDecoded: a coordinator whose node has no listener
		// becomes the proxy's own COORDINATOR_NOT_AVAILABLE, told as an advertise failure.
		s.findCoordinatorErrors(pd, r)
	}
	out := s.rewriteDecoded(pd, frame, start, resp)
	if r, ok := resp.(*kmsg.MetadataResponse); ok { // after rewriteDecoded: it notes the cluster id
		s.metadataErrors(r)
	}
	return out
}

// rewriteDecoded is rewriteAddresses for a response already decoded (its body at start).
func (s *session) rewriteDecoded(pd *pending, frame []byte, start int, resp kmsg.Response) []byte {
	if !s.rewriteNodes(pd, resp) {
		return frame
	}
	return encodeResponse(frame, start, resp)
}

// rewriteNodes is rewriteResponseAddresses for a client's answer; it tells of the nodes left out.
func (s *session) rewriteNodes(pd *pending, resp kmsg.Response) (changed bool) {
	changed, err := s.p.rewriteResponseAddresses(resp)
	if err != nil {
		s.advertiseFailed(pd, err)
	}
	return changed
}

// advertiseFailed logs an answer that named a broker node without a listener (its address is
// taken, say), left out of it. While the node's listener cannot open every client's Metadata
// meets it, and clients ask again many times a second: the first 10 and every 1000th are logged
// at Error with the running total, the rest at Debug (the discovery's own line and /readyz say it
// too).
func (s *session) advertiseFailed(pd *pending, err error) {
	n := s.p.advertiseFailures.Add(1)
	ev := s.log.Debug()
	// During a drain a node that appears gets no listener on purpose: no fault to raise.
	if proxy.LogNth(n) && !errors.Is(err, errNotRunning) {
		ev = s.log.Error()
	}
	ev.Err(err).Str("api", kmsg.NameForKey(pd.key)).Uint64("advertise_failures_total", n).
		Msg("cannot advertise a broker node: it is left out of the answer, as a broker that is down")
}

// rewriteResponseAddresses replaces every broker host/port in resp (a decoded response of an API
// that carries them) with the node's proxy address. It reports whether anything changed. A node
// the proxy cannot listen for is left out, as a broker that is down would be (err says which;
// resp is still fit to forward): the real address would let the client bypass the proxy, and
// ending the connection instead made every client of the cluster fail, all of whose answers name
// every node.
func (p *Proxy) rewriteResponseAddresses(resp kmsg.Response) (bool, error) {
	changed := false
	var failed []int32
	var errs []error
	fix := func(id int32, host *string, port *int32) bool {
		if id < 0 || *host == "" {
			return true
		}
		h, pt, err := p.advertise(id, *host, *port)
		if err != nil {
			if !slices.Contains(failed, id) {
				failed, errs = append(failed, id), append(errs, err)
			}
			changed = true
			return false
		}
		if h != *host || pt != *port {
			*host, *port = h, pt
			changed = true
		}
		return true
	}
	gone := func(id int32) bool { return slices.Contains(failed, id) }
	// KIP-951 leader hints: a hint naming a node left out is no hint (-1), and the client asks
	// Metadata.
	noHint := func(id, epoch *int32) {
		if gone(*id) {
			*id, *epoch = -1, -1
		}
	}
	switch r := resp.(type) {
	case *kmsg.MetadataResponse:
		// The ids before the listeners open: a client that cached the node addresses produces
		// and fetches by id as soon as a listener takes its connection, with no Metadata of its
		// own. The cluster first: a topic created again is told with its cluster.
		if r.ClusterID != nil {
			p.noteCluster(*r.ClusterID)
		}
		p.learnTopics(r)
		r.Brokers = keepNodes(r.Brokers, func(b *kmsg.MetadataResponseBroker) bool { return fix(b.NodeID, &b.Host, &b.Port) })
		if len(failed) > 0 {
			// What a broker answers for a partition whose leader is offline.
			for i := range r.Topics {
				for j := range r.Topics[i].Partitions {
					pt := &r.Topics[i].Partitions[j]
					if gone(pt.Leader) {
						pt.Leader = -1
						if pt.ErrorCode == 0 {
							pt.ErrorCode = kerr.LeaderNotAvailable.Code
						}
					}
					// A replica on a node that is down stays assigned, out of sync and offline.
					pt.ISR = slices.DeleteFunc(pt.ISR, gone)
					for _, id := range pt.Replicas {
						if gone(id) && !slices.Contains(pt.OfflineReplicas, id) {
							pt.OfflineReplicas = append(pt.OfflineReplicas, id)
						}
					}
				}
			}
			if gone(r.ControllerID) {
				r.ControllerID = -1
			}
		}
		p.forgetGoneNodes(r.Brokers, failed)
	case *kmsg.FindCoordinatorResponse:
		noCoordinator := func(code *int16, id *int32, host *string, port *int32) {
			if *code == 0 && !fix(*id, host, port) {
				*code, *id, *host, *port = kerr.CoordinatorNotAvailable.Code, -1, "", -1
			}
		}
		noCoordinator(&r.ErrorCode, &r.NodeID, &r.Host, &r.Port)
		for i := range r.Coordinators {
			c := &r.Coordinators[i]
			noCoordinator(&c.ErrorCode, &c.NodeID, &c.Host, &c.Port)
		}
	case *kmsg.DescribeClusterResponse:
		// EndpointType 2 lists controllers (bootstrap.controllers clients talk to them directly, not
		// through this proxy); their ids are not broker node ids, so they are left alone.
		if r.EndpointType != 2 {
			r.Brokers = keepNodes(r.Brokers, func(b *kmsg.DescribeClusterResponseBroker) bool { return fix(b.NodeID, &b.Host, &b.Port) })
			if gone(r.ControllerID) {
				r.ControllerID = -1
			}
		}
	case *kmsg.ProduceResponse:
		r.Brokers = keepNodes(r.Brokers, func(b *kmsg.ProduceResponseBroker) bool { return fix(b.NodeID, &b.Host, &b.Port) })
		for i := range r.Topics {
			for j := range r.Topics[i].Partitions {
				l := &r.Topics[i].Partitions[j].CurrentLeader
				noHint(&l.LeaderID, &l.LeaderEpoch)
			}
		}
	case *kmsg.FetchResponse:
		r.Brokers = keepNodes(r.Brokers, func(b *kmsg.FetchResponseBroker) bool { return fix(b.NodeID, &b.Host, &b.Port) })
		for i := range r.Topics {
			for j := range r.Topics[i].Partitions {
				l := &r.Topics[i].Partitions[j].CurrentLeader
				noHint(&l.LeaderID, &l.LeaderEpoch)
			}
		}
	case *kmsg.ShareFetchResponse:
		r.NodeEndpoints = keepNodes(r.NodeEndpoints, func(b *kmsg.ShareFetchResponseNodeEndpoint) bool { return fix(b.NodeID, &b.Host, &b.Port) })
		for i := range r.Topics {
			for j := range r.Topics[i].Partitions {
				l := &r.Topics[i].Partitions[j].CurrentLeader
				noHint(&l.LeaderID, &l.LeaderEpoch)
			}
		}
	case *kmsg.ShareAcknowledgeResponse:
		r.NodeEndpoints = keepNodes(r.NodeEndpoints, func(b *kmsg.ShareAcknowledgeResponseNodeEndpoint) bool { return fix(b.NodeID, &b.Host, &b.Port) })
		for i := range r.Topics {
			for j := range r.Topics[i].Partitions {
				l := &r.Topics[i].Partitions[j].CurrentLeader
				noHint(&l.LeaderID, &l.LeaderEpoch)
			}
		}
	}
	return changed, errors.Join(errs...)
}

// keepNodes is list without the nodes fix refuses (fix rewrites the others in place).
func keepNodes[E any](list []E, fix func(*E) bool) []E {
	kept := list[:0]
	for i := range list {
		if fix(&list[i]) {
			kept = append(kept, list[i])
		}
	}
	return kept
}

// forgetGoneNodes drops the listener problems of nodes a Metadata response no longer lists (it
// lists every live broker; left out: those the proxy left out of it): no client is told of them
// any more.
func (p *Proxy) forgetGoneNodes(brokers []kmsg.MetadataResponseBroker, leftOut []int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.nodeProblems {
		if !slices.Contains(leftOut, id) && !slices.ContainsFunc(brokers, func(b kmsg.MetadataResponseBroker) bool { return b.NodeID == id }) {
			delete(p.nodeProblems, id)
		}
	}
}

// leftOutNodes is the test for a broker node the proxy leaves out of its answers (its listener
// could not open, or a drain is under way and it has none), or nil when no node is left out.
func (p *Proxy) leftOutNodes() func(id int32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	draining := p.closed || p.ctx == nil
	if len(p.nodeProblems) == 0 && !draining {
		return nil
	}
	open := make(map[int32]bool, len(p.nodes))
	for id := range p.nodes {
		open[id] = true
	}
	problems := make(map[int32]bool, len(p.nodeProblems))
	for id := range p.nodeProblems {
		problems[id] = true
	}
	return func(id int32) bool { return !open[id] && (draining || problems[id]) }
}

// listenersMissing reports whether a broker node is left out because its listener could not open
// (not for a drain, whose nodes left out are new ones that get none on purpose).
func (p *Proxy) listenersMissing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.nodeProblems) > 0
}

// clearLeftOutReplicas sets to -1 ("read from the leader") each preferred read replica (Fetch
// v11+, KIP-392) of body, a Fetch response body, that names a node left out: a broker names only
// replicas the client can reach, and the client would look for a node it was never told of. It
// changes body in place (the field has a fixed width), and reports how many it cleared and
// whether the walk got through body.
func clearLeftOutReplicas(body []byte, version int16, leftOut func(int32) bool) (cleared int, ok bool) {
	if version < 11 {
		return 0, true
	}
	ok = walkFetchBody(&kbin.Reader{Src: body}, version, func(f []byte) { cleared += clearLeftOutReplica(f, leftOut) })
	return cleared, ok
}

// clearLeftOutReplica sets a preferred_read_replica field naming a node left out to -1, and
// reports 1 if it did.
func clearLeftOutReplica(f []byte, leftOut func(int32) bool) int {
	if id := int32At(f); len(f) == 4 && id >= 0 && leftOut(id) {
		binary.BigEndian.PutUint32(f, 0xffffffff)
		return 1
	}
	return 0
}
