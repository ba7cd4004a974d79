// Package pathway is the DSM vocabulary and arithmetic shared by every protocol: edge tags, node and
// pathway hashes (FNV-1 64, as Datadog's tracers compute them), the pathway context carried in
// message headers, and the Checkpointer that turns an observed message into a stats point and the
// context to write back. It does no I/O and starts no goroutines.
package pathway

import (
	"encoding/binary"
	"strings"
)

// FNV-1 (not FNV-1a): multiply first, then XOR. Written by hand so hashing strings never allocates.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h *= fnvPrime64
		h ^= uint64(s[i])
	}
	return h
}

func fnvBytes(h uint64, b []byte) uint64 {
	for _, c := range b {
		h *= fnvPrime64
		h ^= uint64(c)
	}
	return h
}

// HashPathway combines a node hash with the parent's pathway hash: FNV-1 over both, little-endian.
func HashPathway(node, parent uint64) uint64 {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], node)
	binary.LittleEndian.PutUint64(b[8:], parent)
	return fnvBytes(fnvOffset64, b[:])
}

// HashNode is dd-trace-go's node hash without process tags: FNV-1 over service, env and every
// hashable tag, in the order given (callers pass them sorted). Tags whose key is not hashable are
// skipped, as the Go tracer does.
func HashNode(service, env string, sortedTags []string) uint64 {
	h := fnvString(fnvOffset64, service)
	h = fnvString(h, env)
	for _, t := range sortedTags {
		if Hashable(t) {
			h = fnvString(h, t)
		}
	}
	return h
}

// Hashable reports whether a tag's key (the text before the first ':') is one the Go tracer puts
// into the node hash. A tag without a colon has no key, and is not hashed whatever its text
// (dd-trace-go internal/datastreams/pathway.go, isWellFormedEdgeTag: strings.Cut must find one).
func Hashable(tag string) bool {
	key, _, ok := strings.Cut(tag, ":")
	if !ok {
		return false
	}
	switch key {
	case "event_type", "exchange", "group", "kafka_cluster_id", "topic", "type", "direction", "segment_name":
		return true
	}
	return false
}
