package kafka

import (
	"encoding/binary"

	"net"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// rawRequest writes one request frame with the given header and body to conn and reads one
// response frame.
func rawRequest(t *testing.T, conn net.Conn, key, version int16, corr int32, body []byte) []byte {
	t.Helper()
	frame := make([]byte, 4, 64+len(body))
	frame = binary.BigEndian.AppendUint16(frame, uint16(key))
	frame = binary.BigEndian.AppendUint16(frame, uint16(version))
	frame = binary.BigEndian.AppendUint32(frame, uint32(corr))
	frame = binary.BigEndian.AppendUint16(frame, 4)
	frame = append(frame, "test"...)
	if isFlexible(key, version) || key == keyApiVersions && version >= 3 {
		frame = append(frame, 0)
	}
	frame = append(frame, body...)
	putSize(frame)
	if _, err := conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	resp, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	if got := int32(binary.BigEndian.Uint32(resp[4:])); got != corr {
		t.Fatalf("response correlation id %d, want %d", got, corr)
	}
	return resp
}

func TestApiVersionsCapped(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)

	// A version newer than kmsg knows: the proxy answers itself, UNSUPPORTED_VERSION in a v0 body.
	tooNew := maxVersion(keyApiVersions) + 3
	resp := rawRequest(t, conn, keyApiVersions, tooNew, 7, []byte{0, 0, 0})
	v0 := kmsg.NewPtrApiVersionsResponse()
	v0.SetVersion(0)
	if err := v0.ReadFrom(resp[8:]); err != nil {
		t.Fatal(err)
	}
	if v0.ErrorCode != errUnsupportedVersion || len(v0.ApiKeys) != 1 || v0.ApiKeys[0].ApiKey != keyApiVersions || v0.ApiKeys[0].MaxVersion != maxVersion(keyApiVersions) {
		t.Fatalf("too-new ApiVersions answered %+v", v0)
	}

	// A real request: every decoded key capped at kmsg's max, unknown keys removed, mins untouched.
	req := kmsg.NewPtrApiVersionsRequest()
	req.Version = 3
	req.ClientSoftwareName, req.ClientSoftwareVersion = "test", "1"
	resp = rawRequest(t, conn, keyApiVersions, 3, 8, req.AppendTo(nil))
	got := kmsg.NewPtrApiVersionsResponse()
	got.SetVersion(3)
	if err := got.ReadFrom(resp[8:]); err != nil {
		t.Fatal(err)
	}
	direct := directApiVersions(t, c.ListenAddrs()[0])
	mins := map[int16]int16{}
	for _, k := range direct.ApiKeys {
		mins[k.ApiKey] = k.MinVersion
	}
	seen := map[int16]bool{}
	for _, k := range got.ApiKeys {
		seen[k.ApiKey] = true
		if max := maxVersion(k.ApiKey); max < 0 || decodedKeys[k.ApiKey] && k.MaxVersion > max {
			t.Errorf("key %d advertised up to v%d, proxy decodes up to v%d", k.ApiKey, k.MaxVersion, max)
		}
		if k.MinVersion != mins[k.ApiKey] {
			t.Errorf("key %d min changed %d -> %d", k.ApiKey, mins[k.ApiKey], k.MinVersion)
		}
	}
	for _, k := range []int16{keyProduce, keyFetch, keyMetadata, keyApiVersions} {
		if !seen[k] {
			t.Errorf("key %d missing from capped ApiVersions", k)
		}
	}
	if p.Stats().SyntheticReplies != 1 {
		t.Errorf("synthetic replies %d, want 1", p.Stats().SyntheticReplies)
	}
}

// directApiVersions asks a broker directly (the test's reference, not a client path).
func directApiVersions(t *testing.T, addr string) *kmsg.ApiVersionsResponse {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp := rawRequest(t, conn, keyApiVersions, 0, 1, nil)
	r := kmsg.NewPtrApiVersionsResponse()
	r.SetVersion(0)
	if err := r.ReadFrom(resp[8:]); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCapVersions(t *testing.T) {
	resp := &kmsg.ApiVersionsResponse{ApiKeys: []kmsg.ApiVersionsResponseApiKey{
		{ApiKey: keyProduce, MinVersion: 0, MaxVersion: 99}, // capped, min kept at 0 (KAFKA-18659)
		{ApiKey: keyFetch, MinVersion: 4, MaxVersion: 12},   // under the cap: unchanged
		{ApiKey: 32, MinVersion: 0, MaxVersion: 99},         // DescribeConfigs: not decoded, unchanged
		{ApiKey: 9999, MinVersion: 0, MaxVersion: 1},        // unknown to kmsg: removed
	}}
	if !capVersions(resp) {
		t.Fatal("capVersions reported no change")
	}
	want := []kmsg.ApiVersionsResponseApiKey{
		{ApiKey: keyProduce, MinVersion: 0, MaxVersion: maxVersion(keyProduce)},
		{ApiKey: keyFetch, MinVersion: 4, MaxVersion: 12},
		{ApiKey: 32, MinVersion: 0, MaxVersion: 99},
	}
	if len(resp.ApiKeys) != len(want) {
		t.Fatalf("got %+v", resp.ApiKeys)
	}
	for i := range want {
		if g := resp.ApiKeys[i]; g.ApiKey != want[i].ApiKey || g.MinVersion != want[i].MinVersion || g.MaxVersion != want[i].MaxVersion {
			t.Errorf("key %d: got %+v want %+v", i, resp.ApiKeys[i], want[i])
		}
	}
}
