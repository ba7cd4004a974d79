package kafka

import (
	"encoding/binary"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// errUnsupportedVersion is Kafka's UNSUPPORTED_VERSION error code.
const errUnsupportedVersion int16 = 35

// maxVersion is the highest version of key kmsg (the proxy's codec) understands, or -1.
func maxVersion(key int16) int16 {
	r := kmsg.RequestForKey(key)
	if r == nil {
		return -1
	}
	return r.MaxVersion()
}

// apiVersionsRequest learns the client software name (v3+) and, for an ApiVersions version newer
// than the proxy can decode, answers the way a broker does: UNSUPPORTED_VERSION in a v0 body
// whose only entry tells the client which version to retry with (KIP-511).
func (s *session) apiVersionsRequest(h requestHeader, frame []byte, pd *pending) {
	if max := maxVersion(keyApiVersions); h.Version > max {
		resp := kmsg.ApiVersionsResponse{Version: 0, ErrorCode: errUnsupportedVersion,
			ApiKeys: []kmsg.ApiVersionsResponseApiKey{{ApiKey: keyApiVersions, MinVersion: 0, MaxVersion: max}}}
		out := make([]byte, 8, 32)
		binary.BigEndian.PutUint32(out[4:], uint32(h.CorrID))
		out = resp.AppendTo(out)
		putSize(out)
		pd.synthetic = out
		s.p.stats.synthetic.Add(1)
		s.log.Debug().Int16("version", h.Version).Int16("max", max).Msg("ApiVersions version too new: answered UNSUPPORTED_VERSION")
		return
	}
	software := s.info.Load().software
	if h.Version >= 3 {
		if name, ok := s.firstString(h, frame); ok {
			software = name
		}
	}
	// Both at once: the client is identified (and logged) once, with its software name.
	s.noteClientID(h.ClientID, software)
}

// namesSoftware reports whether h is a request whose body apiVersionsRequest reads the client
// software name from (ApiVersions v3+, at a version the proxy decodes).
func namesSoftware(h requestHeader) bool {
	return h.Key == keyApiVersions && h.Version >= 3 && h.Version <= maxVersion(keyApiVersions)
}

// apiVersionsResponse caps what the broker advertises so clients only use versions the proxy can
// decode: decoded APIs get at most kmsg's max version, APIs kmsg does not know are removed (a
// future API might carry broker addresses the proxy could not rewrite), and minimum versions are
// never raised (librdkafka turns compression off when Produce's minimum is above 0: KAFKA-18659).
func (s *session) apiVersionsResponse(pd *pending, frame []byte) []byte {
	// ApiVersions responses use header v0 even when flexible; an error response is a v0 body.
	if len(frame) < 10 || int16(binary.BigEndian.Uint16(frame[8:])) != 0 {
		return frame
	}
	resp := kmsg.NewPtrApiVersionsResponse()
	start, ok := s.decodeResponse(pd, frame, resp)
	if !ok {
		return frame
	}
	if !capVersions(resp) {
		return frame
	}
	return encodeResponse(frame, start, resp)
}

// capVersions applies the cap to resp and reports whether anything changed.
func capVersions(resp *kmsg.ApiVersionsResponse) bool {
	changed := false
	keys := resp.ApiKeys[:0]
	for _, k := range resp.ApiKeys {
		max := maxVersion(k.ApiKey)
		if max < 0 {
			changed = true
			continue
		}
		if decodedKeys[k.ApiKey] && k.MaxVersion > max && max >= k.MinVersion {
			k.MaxVersion = max
			changed = true
		}
		keys = append(keys, k)
	}
	resp.ApiKeys = keys
	return changed
}
