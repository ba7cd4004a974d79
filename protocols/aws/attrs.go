package aws

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// attr is one SQS/SNS message attribute as the wire carries it. Binary values are kept decoded.
type attr struct {
	Name     string
	DataType string
	String   *string
	Binary   []byte
}

// MaxAttributes is SQS's and SNS's limit on message attributes per message.
const MaxAttributes = 10

// DefaultMaxMessageBytes is the SQS/SNS message size limit the injection keeps under: 256 KiB,
// the long-standing limit (queues may be configured lower; a larger limit is configurable).
const DefaultMaxMessageBytes = 256 * 1024

// ddAttr is the attribute name tracers use for the propagation carrier.
const ddAttr = "_datadog"

// attributesMD5 is MD5OfMessageAttributes: names sorted, each attribute written as
// len+name, len+DataType, a transport byte (1 string, 2 binary), len+value.
func attributesMD5(attrs []attr) string {
	if len(attrs) == 0 {
		return ""
	}
	sorted := make([]*attr, len(attrs))
	for i := range attrs {
		sorted[i] = &attrs[i]
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	h := md5.New()
	var n [4]byte
	put := func(b []byte) {
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, a := range sorted {
		put([]byte(a.Name))
		put([]byte(a.DataType))
		if a.String != nil {
			h.Write([]byte{1})
			put([]byte(*a.String))
		} else {
			h.Write([]byte{2})
			put(a.Binary)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// attrSize is what an attribute counts toward the message size limit: name, type and value.
func attrSize(a *attr) int {
	n := len(a.Name) + len(a.DataType) + len(a.Binary)
	if a.String != nil {
		n += len(*a.String)
	}
	return n
}

// jsonAttrValue is an attribute value in the JSON protocols (SQS JSON, SNS JSON).
type jsonAttrValue struct {
	DataType    string  `json:"DataType"`
	StringValue *string `json:"StringValue,omitempty"`
	BinaryValue []byte  `json:"BinaryValue,omitempty"`
}

// parseJSONAttrs decodes a MessageAttributes object with the byte scanner (no reflection: this
// runs for every message sent and received).
func parseJSONAttrs(raw []byte) ([]attr, error) {
	ms, _, err := objectMembers(raw, 0)
	if err != nil {
		return nil, err
	}
	out := make([]attr, 0, len(ms))
	for i := range ms {
		vms, _, err := objectMembers(raw, ms[i].VS)
		if err != nil {
			return nil, err
		}
		a := attr{Name: string(ms[i].Key)}
		a.DataType, _ = jsonString(raw, find(vms, "DataType"))
		if s, ok := jsonString(raw, find(vms, "StringValue")); ok {
			a.String = &s
		} else if s, ok := jsonString(raw, find(vms, "BinaryValue")); ok {
			if a.Binary, err = base64.StdEncoding.DecodeString(s); err != nil {
				return nil, fmt.Errorf("attribute %q: BinaryValue: %w", a.Name, err)
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// carrierJSON is the `_datadog` JSON object carrying ctx: existing, when it is a trace carrier,
// with its pathway member set, else a new object holding only that member.
func carrierJSON(existing []byte, ctx pathway.Context) []byte {
	val := make([]byte, 0, 48)
	val = append(val, '"')
	val = append(ctx.AppendBase64(val), '"')
	// A tracer's carrier keeps its bytes (member order, spacing, escapes): only the context's
	// value is replaced, or the member added before its '}'.
	if isCarrier(existing) {
		if ms, end, err := objectMembers(existing, 0); err == nil {
			var ed edit
			if m, ok := pathwayMember(ms); ok {
				// The whole member, so that a key in another case becomes the one Go and
				// Python tracers look up.
				ed = appendMember(nil, m.MS, pathway.HeaderKey, val)
				ed.E = m.VE
			} else {
				ed = appendMember(ms, end, pathway.HeaderKey, val)
			}
			return applyEdits(make([]byte, 0, len(existing)+len(ed.New)), existing, []edit{ed})
		}
	}
	b := make([]byte, 0, len(val)+32)
	b = append(b, `{"`+pathway.HeaderKey+`":`...)
	b = append(b, val...)
	return append(b, '}')
}

// isCarrier reports whether a `_datadog` value is a trace carrier the pathway context can be
// merged into: a JSON object with members (tracers put trace ids there). Any other value (a
// string, null, an empty object) is the application's own, which merging would replace.
func isCarrier(b []byte) bool {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' || !json.Valid(b) {
		return false
	}
	ms, _, err := objectMembers(b, i)
	return err == nil && len(ms) > 0
}

// notJSONMessage says why a Kinesis record whose data is no JSON object goes without `_datadog`.
const notJSONMessage = "record data is not a JSON object; sent without _datadog"

// notCarrierMessage says why a message whose `_datadog` is no trace carrier goes unmodified.
const notCarrierMessage = "the message's own _datadog is no trace carrier (not a JSON object with members): sent as it is, without the pathway context"

// carrierPathway finds the dd-pathway-ctx-base64 member of the `_datadog` JSON object b (the key
// compared case-insensitively, as Java does).
func carrierPathway(b []byte) (member, bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return member{}, false
	}
	ms, _, err := objectMembers(b, i)
	if err != nil {
		return member{}, false
	}
	return pathwayMember(ms)
}

// pathwayMember is the first of a carrier's members named dd-pathway-ctx-base64, in any case.
func pathwayMember(ms []member) (member, bool) {
	for j := range ms {
		if strings.EqualFold(string(ms[j].Key), pathway.HeaderKey) {
			return ms[j], true
		}
	}
	return member{}, false
}

// carrierHasPathway reports whether the `_datadog` JSON object b has a pathway context member
// (whether or not it decodes: a newer tracer's encoding is not overwritten).
func carrierHasPathway(b []byte) bool {
	_, ok := carrierPathway(b)
	return ok
}

// contextFromCarrier reads dd-pathway-ctx-base64 out of a `_datadog` JSON value.
func contextFromCarrier(b []byte) pathway.Context {
	m, ok := carrierPathway(b)
	if !ok {
		return pathway.Context{}
	}
	s, ok := jsonString(b, &m)
	if !ok {
		return pathway.Context{}
	}
	c, err := pathway.DecodeBase64String(s)
	if err != nil {
		return pathway.Context{}
	}
	return c
}

// contextFromAttr reads the context from a `_datadog` attribute, String (SQS) or Binary (SNS raw).
func contextFromAttr(a *attr) pathway.Context {
	if a == nil {
		return pathway.Context{}
	}
	if a.String != nil {
		return contextFromCarrier([]byte(*a.String))
	}
	return contextFromCarrier(a.Binary)
}

// contextFromSNSEnvelope reads the context from an SNS notification JSON delivered as an SQS body
// (non-raw delivery): MessageAttributes._datadog {Type, Value}. Only those members are decoded,
// by their exact names, as the tracers' JSON readers find them: another member's value, of
// whatever type, does not hide the context.
func contextFromSNSEnvelope(body string) pathway.Context {
	if len(body) < 2 || body[0] != '{' || !strings.Contains(body, ddAttr) {
		return pathway.Context{}
	}
	var env map[string]json.RawMessage
	var attrs map[string]json.RawMessage
	var a struct {
		Type  string `json:"Type"`
		Value string `json:"Value"`
	}
	if json.Unmarshal([]byte(body), &env) != nil || json.Unmarshal(env["MessageAttributes"], &attrs) != nil ||
		json.Unmarshal(attrs[ddAttr], &a) != nil {
		return pathway.Context{}
	}
	if a.Type == "Binary" {
		raw, err := base64.StdEncoding.DecodeString(a.Value)
		if err != nil {
			return pathway.Context{}
		}
		return contextFromCarrier(raw)
	}
	return contextFromCarrier([]byte(a.Value))
}

// wantsAttr reports whether a ReceiveMessage MessageAttributeNames list returns name.
func wantsAttr(names []string, name string) bool {
	for _, n := range names {
		switch {
		case n == "All" || n == ".*":
			return true
		case n == name:
			return true
		case strings.HasSuffix(n, ".*") && strings.HasPrefix(name, n[:len(n)-1]):
			return true
		}
	}
	return false
}

// queueName is the last path segment of a queue URL.
func queueName(u string) string {
	if i := strings.LastIndexByte(strings.TrimRight(u, "/"), '/'); i >= 0 {
		return strings.TrimRight(u, "/")[i+1:]
	}
	return u
}

// topicName is the last ':' segment of an SNS topic ARN.
func topicName(arn string) string {
	if i := strings.LastIndexByte(arn, ':'); i >= 0 {
		return arn[i+1:]
	}
	return arn
}

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func encodeB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
