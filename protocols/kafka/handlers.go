package kafka

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// API keys the proxy decodes.
const (
	keyProduce         int16 = 0
	keyFetch           int16 = 1
	keyListOffsets     int16 = 2
	keyMetadata        int16 = 3
	keyOffsetCommit    int16 = 8
	keyFindCoordinator int16 = 10
	keyJoinGroup       int16 = 11
	keyHeartbeat       int16 = 12
	keyLeaveGroup      int16 = 13
	keySyncGroup       int16 = 14
	keySaslHandshake   int16 = 17
	keyApiVersions     int16 = 18
	keySaslAuth        int16 = 36
	keyEndTxn          int16 = 26
	keyTxnOffsetCommit int16 = 28
	keyDescribeCluster int16 = 60
	keyCGHeartbeat     int16 = 68
	keyShareFetch      int16 = 78
	keyShareAck        int16 = 79
)

// decodedKeys are the APIs whose bodies the proxy reads or rewrites; ApiVersions caps them to the
// highest version kmsg understands.
var decodedKeys = map[int16]bool{
	keyProduce: true, keyFetch: true, keyListOffsets: true, keyMetadata: true, keyOffsetCommit: true, keyFindCoordinator: true,
	keyJoinGroup: true, keyHeartbeat: true, keyLeaveGroup: true, keySyncGroup: true, keySaslHandshake: true, keyApiVersions: true,
	keyTxnOffsetCommit: true, keyDescribeCluster: true, keyCGHeartbeat: true, keyShareFetch: true, keyShareAck: true,
	keyEndTxn: true, keySaslAuth: true,
}

// requestParseError reports a request body the proxy could not read; the request is forwarded.
func (s *session) requestParseError(h requestHeader, err error) {
	s.p.decodeError(kmsg.NameForKey(h.Key)+" request", h.Key, h.Version, err)
	s.log.Debug().Err(err).Int16("key", h.Key).Int16("version", h.Version).Msg("request forwarded undecoded")
}

func (s *session) firstString(h requestHeader, frame []byte) (string, bool) {
	if !knownVersion(h.Key, h.Version) {
		return "", false
	}
	v, err := parseFirstString(h, frame)
	if err != nil {
		s.requestParseError(h, err)
		return "", false
	}
	return v, true
}

// handleRequest acts on one request and returns the bytes to forward and its pending entry (nil
// when no response will come: acks=0 produce).
func (s *session) handleRequest(h requestHeader, frame []byte) ([]byte, *pending) {
	pd := &pending{corr: h.CorrID, key: h.Key, version: h.Version, flexible: h.Flexible}
	switch h.Key {
	case keyProduce:
		return s.produceRequest(h, frame, pd)
	case keyFetch:
		frame = s.fetchRequest(h, frame, pd)
	case keyApiVersions:
		s.apiVersionsRequest(h, frame, pd)
	case keyOffsetCommit:
		s.offsetCommitRequest(h, frame, pd)
	case keyTxnOffsetCommit:
		s.txnOffsetCommitRequest(h, frame, pd)
	case keyEndTxn:
		s.endTxnRequest(h, frame, pd)
	case keyFindCoordinator, keyOffsetFetch, keyInitProducerID, keyAddPartitionsToTxn, keyAddOffsetsToTxn:
		s.coordinatorRequest(h, frame, pd)
	case keyOffsetDelete:
		s.offsetDeleteRequest(h, frame, pd)
	case keyJoinGroup:
		// Learned from the answer, once the coordinator accepts the member: a request alone
		// may come from a client the broker refuses.
		if group, ok := s.firstString(h, frame); ok {
			pd.facts = group
		}
	case keySyncGroup, keyHeartbeat: // both begin with group, generation, member id
		if !knownVersion(h.Key, h.Version) {
			break
		}
		if m, err := parseSyncGroup(h, frame); err != nil {
			s.requestParseError(h, err)
		} else {
			pd.facts = m
		}
	case keyLeaveGroup:
		if !knownVersion(h.Key, h.Version) {
			break
		}
		if leave, err := parseLeaveGroup(h, frame); err != nil {
			s.requestParseError(h, err)
		} else {
			pd.facts = leave
		}
	case keyCGHeartbeat:
		if !knownVersion(h.Key, h.Version) {
			break
		}
		m, epoch, err := parseGroupHeartbeat(h, frame)
		switch {
		case err != nil:
			s.requestParseError(h, err)
		case epoch < 0:
			pd.facts = groupLeave{group: m.group, members: []string{m.member}}
		default:
			pd.facts = m
		}
	case keySaslHandshake:
		if mech, ok := s.firstString(h, frame); ok {
			pd.facts = mech
			s.saslMech = mech
		}
	case keySaslAuth:
		pd.facts = saslLogin(s.saslMech)
	case keyShareFetch, keyShareAck:
		if !knownVersion(h.Key, h.Version) {
			break
		}
		if group, err := parseShareGroup(h, frame); err != nil {
			s.requestParseError(h, err)
		} else {
			pd.facts = shareGroup(group)
		}
	}
	return frame, pd
}

// handleResponse rewrites or observes one response. after runs once the response is forwarded.
func (s *session) handleResponse(pd *pending, frame []byte) (out []byte, after func(), err error) {
	if !knownVersion(pd.key, pd.version) || !interesting(pd.key) {
		return frame, nil, nil
	}
	switch pd.key {
	case keyApiVersions:
		return s.apiVersionsResponse(pd, frame), nil, nil
	case keyShareFetch:
		out, after = s.shareFetchResponse(pd, frame)
		return out, after, nil
	case keyShareAck:
		return s.shareAckResponse(pd, frame), nil, nil
	case keyMetadata, keyFindCoordinator, keyDescribeCluster:
		return s.rewriteAddresses(pd, frame), nil, nil
	case keyProduce:
		return s.produceResponse(pd, frame), nil, nil
	case keyFetch:
		out, after = s.fetchResponse(pd, frame)
		return out, after, nil
	case keyOffsetCommit, keyTxnOffsetCommit:
		s.commitResponse(pd, frame)
	case keyEndTxn:
		s.endTxnResponse(pd, frame)
	case keyOffsetFetch, keyInitProducerID, keyAddPartitionsToTxn, keyAddOffsetsToTxn:
		s.coordinatorResponse(pd, frame)
	case keySyncGroup:
		s.syncGroupResponse(pd, frame)
	case keyCGHeartbeat:
		s.heartbeatResponse(pd, frame)
	case keyJoinGroup, keyHeartbeat, keyLeaveGroup:
		s.groupResponse(pd, frame)
	case keyListOffsets:
		s.listOffsetsResponse(pd, frame)
	case keyDeleteTopics, keyDeleteGroups, keyOffsetDelete:
		s.deletionResponse(pd, frame)
	case keySaslHandshake:
		s.saslHandshakeResponse(pd, frame)
	case keySaslAuth:
		s.saslAuthenticateResponse(pd, frame)
	}
	return frame, nil, nil
}

// interesting: the proxy reads key's answers (decodedKeys, or observedKeys for their codes only).
func interesting(key int16) bool { return decodedKeys[key] || observedKeys[key] }

// decodeResponse reads a response body; false (with a DecodeError event) when it cannot. It
// returns where the body starts so a rewrite can keep the header bytes.
func (s *session) decodeResponse(pd *pending, frame []byte, resp kmsg.Response) (int, bool) {
	start, err := responseBodyStart(frame, pd.key, pd.flexible)
	if err == nil {
		resp.SetVersion(pd.version)
		err = resp.ReadFrom(frame[start:])
	}
	if err != nil {
		s.p.decodeError(kmsg.NameForKey(pd.key)+" response", pd.key, pd.version, err)
		s.log.Debug().Err(err).Int16("key", pd.key).Int16("version", pd.version).Msg("response forwarded undecoded")
		return 0, false
	}
	if t, ok := resp.(interface{ Throttle() (int32, bool) }); ok && pd.key != keyFetch { // Fetch: observeFetch
		if ms, _ := t.Throttle(); ms > 0 {
			s.p.throttled(pd.key, ms, s.info.Load().service)
		}
	}
	return start, true
}

// encodeResponse writes frame's header bytes followed by resp's body and a fresh size prefix.
func encodeResponse(frame []byte, start int, resp kmsg.Response) []byte {
	out := make([]byte, 0, len(frame)+64)
	out = append(out, frame[:start]...)
	out = resp.AppendTo(out)
	putSize(out)
	return out
}

func versionErr(pd *pending, err error) error {
	return fmt.Errorf("%s v%d response: %w", kmsg.NameForKey(pd.key), pd.version, err)
}
