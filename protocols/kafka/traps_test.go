package kafka

// Protocol traps (shared/docs/protocol-traps.md section 1) checked against a real kfake cluster:
// replies the cluster does not send on its own are scripted with a kfake control hook, one reply
// kind per test, and read by a raw client (or kgo) through the proxy.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// trapExchange writes req on conn with correlation id corr and returns the response frame.
func trapExchange(t *testing.T, conn net.Conn, req kmsg.Request, corr int32) []byte {
	t.Helper()
	if _, err := conn.Write(requestFrame(req, corr)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	frame, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("%s v%d: no answer: %v", kmsg.NameForKey(req.Key()), req.GetVersion(), err)
	}
	if got := int32(binary.BigEndian.Uint32(frame[4:])); got != corr {
		t.Fatalf("%s v%d: answer for correlation id %d, sent %d", kmsg.NameForKey(req.Key()), req.GetVersion(), got, corr)
	}
	return frame
}

// trapDecode reads frame's body into resp, whose version is set. It finds the body itself (not
// with responseBodyStart, which some of these tests check).
func trapDecode(t *testing.T, frame []byte, resp kmsg.Response) {
	t.Helper()
	body := kbin.Reader{Src: frame[8:]}
	if resp.IsFlexible() && resp.Key() != keyApiVersions {
		kmsg.SkipTags(&body) // response header v1
	}
	err := body.Complete()
	if err == nil {
		err = resp.ReadFrom(body.Src)
	}
	if err != nil {
		t.Fatalf("%s v%d answer does not decode: %v", kmsg.NameForKey(resp.Key()), resp.GetVersion(), err)
	}
}

// trapFrame is the frame a broker writes for resp: response header v1 (an empty tag section) for
// flexible versions, except ApiVersions, whose header is always v0.
func trapFrame(resp kmsg.Response, corr int32) []byte {
	out := binary.BigEndian.AppendUint32(make([]byte, 4, 256), uint32(corr))
	if resp.IsFlexible() && resp.Key() != keyApiVersions {
		out = append(out, 0)
	}
	out = resp.AppendTo(out)
	putSize(out)
	return out
}

// trapOffered is the version range of key that the proxy advertises on conn.
func trapOffered(t *testing.T, conn net.Conn, key int16) (int16, int16) {
	t.Helper()
	req := kmsg.NewPtrApiVersionsRequest()
	req.Version, req.ClientSoftwareName, req.ClientSoftwareVersion = 3, "trap", "1"
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.Version = req.Version
	trapDecode(t, trapExchange(t, conn, req, 1<<30), resp)
	for _, k := range resp.ApiKeys {
		if k.ApiKey == key {
			return k.MinVersion, k.MaxVersion
		}
	}
	t.Fatalf("the proxy does not offer %s (error %d)", kmsg.NameForKey(key), resp.ErrorCode)
	return 0, 0
}

// trapDialBroker dials a broker directly from the proxy's source address, for the test's own
// reference answers: brokerGuard counts only other sources as clients bypassing the proxy.
func trapDialBroker(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxySourceIP)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// trapHostPort splits a host:port the cluster listens on.
func trapHostPort(t *testing.T, addr string) (string, int32) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return host, int32(n)
}

// trapCheckProxied fails unless node id at host:port is the proxy's listener for that node, and
// no broker's own address.
func trapCheckProxied(t *testing.T, p *testProxy, brokers []string, what string, id int32, host string, port int32) {
	t.Helper()
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
	if slices.Contains(brokers, addr) {
		t.Errorf("%s: node %d advertised at the real broker %s", what, id, addr)
		return
	}
	want, ok := p.NodeAddr(id)
	if !ok || addr != want.String() {
		t.Errorf("%s: node %d at %s, want its proxy listener %v", what, id, addr, want)
	}
}

// TestApiVersionsRewriteAsSent: the cluster's ApiVersions answer is scripted to advertise Produce
// (with minimum 0) and Metadata above what kmsg decodes, DescribeConfigs (which the proxy does
// not decode) above kmsg too, an API key kmsg does not know, and a feature of its own. For every
// ApiVersions version a client can send, the answer's bytes must be exactly the broker's answer
// with Produce and Metadata capped to kmsg's maximum, the unknown key removed and nothing else
// changed: response header v0 (no tag byte after the correlation id, flexible or not), minimum
// versions as sent, DescribeConfigs as sent, features and the finalized epoch kept. Then kgo
// produces and consumes a record through the proxy with the same script in place.
func TestApiVersionsRewriteAsSent(t *testing.T) {
	c, guard := startCluster(t)

	// kfake's own list, trimmed to what kmsg knows, so that only what the script raises exceeds it.
	ref := kmsg.NewPtrApiVersionsRequest()
	ref.Version, ref.ClientSoftwareName, ref.ClientSoftwareVersion = 3, "trap", "1"
	own := kmsg.NewPtrApiVersionsResponse()
	own.Version = ref.Version
	trapDecode(t, trapExchange(t, trapDialBroker(t, c.ListenAddrs()[0]), ref, 1), own)
	var base []kmsg.ApiVersionsResponseApiKey
	for _, k := range own.ApiKeys {
		if max := maxVersion(k.ApiKey); max >= k.MinVersion {
			k.MaxVersion = min(k.MaxVersion, max)
			base = append(base, k)
		}
	}

	const unknownKey, feature = 9999, "dsmproxy.trap.feature"
	describeConfigs := kmsg.DescribeConfigs.Int16()
	scripted := func(version int16) *kmsg.ApiVersionsResponse {
		resp := kmsg.NewPtrApiVersionsResponse()
		resp.Version = version
		resp.ApiKeys = slices.Clone(base)
		for i := range resp.ApiKeys {
			k := &resp.ApiKeys[i]
			switch k.ApiKey {
			case keyProduce:
				k.MinVersion, k.MaxVersion = 0, maxVersion(keyProduce)+3
			case keyMetadata:
				k.MaxVersion = 99
			case describeConfigs:
				k.MaxVersion = maxVersion(describeConfigs) + 2
			}
		}
		resp.ApiKeys = append(resp.ApiKeys, kmsg.ApiVersionsResponseApiKey{ApiKey: unknownKey, MinVersion: 0, MaxVersion: 7})
		resp.SupportedFeatures = append(slices.Clone(own.SupportedFeatures),
			kmsg.ApiVersionsResponseSupportedFeature{Name: feature, MinVersion: 1, MaxVersion: 4})
		resp.FinalizedFeaturesEpoch = 42
		resp.FinalizedFeatures = append(slices.Clone(own.FinalizedFeatures),
			kmsg.ApiVersionsResponseFinalizedFeature{Name: feature, MinVersionLevel: 3, MaxVersionLevel: 3})
		return resp
	}
	var hooked atomic.Int32
	c.ControlKey(kmsg.ApiVersions.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		hooked.Add(1)
		return scripted(req.GetVersion()), nil, true
	})
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)

	for v := int16(0); v <= maxVersion(keyApiVersions); v++ {
		req := kmsg.NewPtrApiVersionsRequest()
		req.Version, req.ClientSoftwareName, req.ClientSoftwareVersion = v, "trap", "1"
		req.NodeID = -1
		before := hooked.Load()
		corr := int32(100 + v)
		frame := trapExchange(t, conn, req, corr)
		if hooked.Load() == before {
			t.Fatalf("v%d: the scripted answer was not used", v)
		}

		got := kmsg.NewPtrApiVersionsResponse()
		got.Version = v
		trapDecode(t, frame, got)
		keys := map[int16]kmsg.ApiVersionsResponseApiKey{}
		for _, k := range got.ApiKeys {
			keys[k.ApiKey] = k
		}
		if k, ok := keys[unknownKey]; ok {
			t.Errorf("v%d: key %d, unknown to kmsg, still advertised: %+v", v, unknownKey, k)
		}
		for _, w := range []kmsg.ApiVersionsResponseApiKey{
			{ApiKey: keyProduce, MinVersion: 0, MaxVersion: maxVersion(keyProduce)},
			{ApiKey: keyMetadata, MinVersion: keys[keyMetadata].MinVersion, MaxVersion: maxVersion(keyMetadata)},
			{ApiKey: describeConfigs, MinVersion: keys[describeConfigs].MinVersion, MaxVersion: maxVersion(describeConfigs) + 2},
		} {
			if k := keys[w.ApiKey]; k.MinVersion != w.MinVersion || k.MaxVersion != w.MaxVersion {
				t.Errorf("v%d: %s advertised v%d-v%d, want v%d-v%d", v, kmsg.NameForKey(w.ApiKey), k.MinVersion, k.MaxVersion, w.MinVersion, w.MaxVersion)
			}
		}
		if v >= 3 && (len(got.SupportedFeatures) != len(own.SupportedFeatures)+1 || got.FinalizedFeaturesEpoch != 42 ||
			!slices.ContainsFunc(got.FinalizedFeatures, func(f kmsg.ApiVersionsResponseFinalizedFeature) bool { return f.Name == feature })) {
			t.Errorf("v%d: features not kept: supported %+v, finalized %+v at epoch %d", v, got.SupportedFeatures, got.FinalizedFeatures, got.FinalizedFeaturesEpoch)
		}

		// Byte for byte: the broker's answer with the two caps and without the unknown key,
		// after a v0 header.
		want := scripted(v)
		want.ApiKeys = slices.DeleteFunc(want.ApiKeys, func(k kmsg.ApiVersionsResponseApiKey) bool { return k.ApiKey == unknownKey })
		for i := range want.ApiKeys {
			if k := &want.ApiKeys[i]; k.ApiKey == keyProduce || k.ApiKey == keyMetadata {
				k.MaxVersion = maxVersion(k.ApiKey)
			}
		}
		if wf := trapFrame(want, corr); !bytes.Equal(frame, wf) {
			t.Errorf("v%d: the client got\n%x\nwant (header v0, then the capped body)\n%x", v, frame, wf)
		}
	}
	if st := p.Stats(); st.DecodeErrors != 0 || st.SyntheticReplies != 0 {
		t.Errorf("decode errors %d, synthetic replies %d; want 0 and 0", st.DecodeErrors, st.SyntheticReplies)
	}

	// A real client negotiates from the rewritten answer and works.
	ctx := testCtx(t)
	topic := uniqueTopic(t, "trap-apiversions")
	before := hooked.Load()
	cl := kgoClient(t, p)
	produceKgo(t, ctx, cl, topic, testRecords(1, time.UnixMilli(1700003000000)))
	got := readTopic(t, ctx, p, topic, 1)
	if len(got) != 1 || string(got[0].Key) != "k0" || string(got[0].Value) != "value-0" || !hasContext(got[0]) {
		t.Errorf("read back %+v, want k0=value-0 with a pathway header", got)
	}
	if hooked.Load() == before {
		t.Error("kgo's ApiVersions did not get the scripted answer")
	}
	guard.check(t)
}

// trapPortBase returns a port base such that base..base+n-1 were all free a moment ago.
func trapPortBase(t *testing.T, n int) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := ln.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{ln}
		for i := 1; i < n; i++ {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i)))
			if err != nil {
				break
			}
			lns = append(lns, l)
		}
		for _, l := range lns {
			l.Close()
		}
		if len(lns) == n {
			return base
		}
	}
	t.Fatalf("found no %d free consecutive ports", n)
	return 0
}

// TestFindCoordinatorErrorEntries: the coordinator of a key is scripted as
// COORDINATOR_NOT_AVAILABLE with node -1, no host and port -1, as a broker answers before the
// coordinator is loaded. The proxy has a fixed node port base, under which node -1 has no port:
// advertising it would fail and close the connection. At every version the proxy offers, the
// error reaches the client as the broker sent it (v0-v3: the very bytes; v4+: the entry, next
// to a good coordinator of another key that is rewritten to node 0's listener), and the same
// connection answers the next request.
func TestFindCoordinatorErrorEntries(t *testing.T) {
	c, guard := startCluster(t)
	brokers := c.ListenAddrs()
	host0, port0 := trapHostPort(t, brokers[0])
	const errKey, okKey = "trap-fc-unavailable", "trap-fc-available"
	msg := "The coordinator is not available."
	answer := func(req *kmsg.FindCoordinatorRequest) *kmsg.FindCoordinatorResponse {
		resp := req.ResponseKind().(*kmsg.FindCoordinatorResponse)
		if req.Version < 4 {
			resp.ErrorCode, resp.NodeID, resp.Host, resp.Port = kerr.CoordinatorNotAvailable.Code, -1, "", -1
			resp.ErrorMessage = &msg
			return resp
		}
		for _, key := range req.CoordinatorKeys {
			co := kmsg.NewFindCoordinatorResponseCoordinator()
			co.Key = key
			if key == errKey {
				co.ErrorCode, co.NodeID, co.Host, co.Port, co.ErrorMessage = kerr.CoordinatorNotAvailable.Code, -1, "", -1, &msg
			} else {
				co.NodeID, co.Host, co.Port = 0, host0, port0
			}
			resp.Coordinators = append(resp.Coordinators, co)
		}
		return resp
	}
	c.ControlKey(kmsg.FindCoordinator.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		req := kr.(*kmsg.FindCoordinatorRequest)
		if req.CoordinatorKey != errKey && !slices.Contains(req.CoordinatorKeys, errKey) {
			return nil, nil, false
		}
		c.KeepControl()
		return answer(req), nil, true
	})
	base := trapPortBase(t, len(brokers))
	p := startProxy(t, c, func(cfg *Config) { cfg.NodePortBase = base })
	conn := rawClient(t, p)
	_, maxV := trapOffered(t, conn, keyFindCoordinator)
	if maxV < 4 {
		t.Fatalf("FindCoordinator up to v%d offered: the test needs v4+", maxV)
	}
	t.Logf("FindCoordinator v0..v%d, node port base %d", maxV, base)

	corr := int32(0)
	for v := int16(0); v <= maxV; v++ {
		req := kmsg.NewPtrFindCoordinatorRequest()
		req.Version = v
		if v < 4 {
			req.CoordinatorKey = errKey
		} else {
			req.CoordinatorKeys = []string{errKey, okKey}
		}
		corr++
		frame := trapExchange(t, conn, req, corr)
		resp := req.ResponseKind().(*kmsg.FindCoordinatorResponse)
		resp.Version = v
		trapDecode(t, frame, resp)
		if v < 4 {
			if resp.ErrorCode != kerr.CoordinatorNotAvailable.Code || resp.NodeID != -1 || resp.Host != "" || resp.Port != -1 {
				t.Errorf("v%d: error %d, node %d at %q:%d; want error 15, node -1 at \"\":-1", v, resp.ErrorCode, resp.NodeID, resp.Host, resp.Port)
			}
			if want := trapFrame(answer(req), corr); !bytes.Equal(frame, want) {
				t.Errorf("v%d: the client got\n%x\nthe broker sent\n%x", v, frame, want)
			}
		} else {
			if len(resp.Coordinators) != 2 {
				t.Fatalf("v%d: %d coordinators, want 2: %+v", v, len(resp.Coordinators), resp.Coordinators)
			}
			bad, good := resp.Coordinators[0], resp.Coordinators[1]
			if bad.Key != errKey || bad.ErrorCode != kerr.CoordinatorNotAvailable.Code || bad.NodeID != -1 || bad.Host != "" || bad.Port != -1 ||
				bad.ErrorMessage == nil || *bad.ErrorMessage != msg {
				t.Errorf("v%d: error entry %+v, want key %q error 15, node -1 at \"\":-1 and its message", v, bad, errKey)
			}
			if good.Key != okKey || good.ErrorCode != 0 {
				t.Errorf("v%d: second entry %+v, want key %q without error", v, good, okKey)
			}
			trapCheckProxied(t, p, brokers, fmt.Sprintf("v%d coordinator of %q", v, okKey), good.NodeID, good.Host, good.Port)
			if good.Port != int32(base) {
				t.Errorf("v%d: node 0 advertised on port %d, the port base is %d", v, good.Port, base)
			}
		}

		// The connection is still usable.
		corr++
		md := kmsg.NewPtrMetadataResponse()
		md.Version = 1
		trapDecode(t, trapExchange(t, conn, emptyMetadata(), corr), md)
		if len(md.Brokers) != len(brokers) {
			t.Errorf("after FindCoordinator v%d: Metadata names %d brokers, want %d", v, len(md.Brokers), len(brokers))
		}
	}
	if err := p.Problem(); err != nil {
		t.Errorf("proxy problem: %v", err)
	}
	guard.check(t)
}

// TestProduceNotLeaderEndpointsRewritten: a Produce at every version from v10 (KIP-951) to the
// highest the proxy offers, sent to a broker that does not lead the partition. kfake answers
// NOT_LEADER_OR_FOLLOWER with the current leader and the node endpoints of every broker; each
// endpoint must reach the client as the proxy listener of its node, never a broker's address.
func TestProduceNotLeaderEndpointsRewritten(t *testing.T) {
	c, guard := startCluster(t)
	brokers := c.ListenAddrs()
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "trap-produce-nl")
	cl := kgoClient(t, p)
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	id := topicID(t, ctx, cl, topic) // also teaches the proxy the name of the id (v13)
	leader := c.LeaderFor(topic, 0)
	follower := (leader + 1) % int32(len(brokers))
	addr, ok := p.NodeAddr(follower)
	if !ok {
		t.Fatalf("no proxy listener for node %d", follower)
	}
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_, maxV := trapOffered(t, conn, keyProduce)
	if maxV < 10 {
		t.Fatalf("Produce up to v%d offered: node endpoints need v10+", maxV)
	}
	t.Logf("Produce v10..v%d to node %d, leader %d", maxV, follower, leader)

	for v := int16(10); v <= maxV; v++ {
		req := kmsg.NewPtrProduceRequest()
		req.Version, req.Acks, req.TimeoutMillis = v, -1, 5000
		rt := kmsg.NewProduceRequestTopic()
		rt.Topic, rt.TopicID = topic, id
		rp := kmsg.NewProduceRequestTopicPartition()
		rp.Partition, rp.Records = 0, buildBatchHeader(t, 1, 8, nil, "trap", []byte("nl"))
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		resp.Version = v
		trapDecode(t, trapExchange(t, conn, req, int32(v)), resp)

		if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
			t.Fatalf("v%d: answer %+v, want one partition", v, resp.Topics)
		}
		part := resp.Topics[0].Partitions[0]
		if part.ErrorCode != kerr.NotLeaderForPartition.Code || part.CurrentLeader.LeaderID != leader {
			t.Fatalf("v%d from node %d: error %d, current leader %d; want NOT_LEADER_OR_FOLLOWER and leader %d",
				v, follower, part.ErrorCode, part.CurrentLeader.LeaderID, leader)
		}
		if len(resp.Brokers) != len(brokers) {
			t.Fatalf("v%d: %d node endpoints, want the %d brokers: %+v", v, len(resp.Brokers), len(brokers), resp.Brokers)
		}
		for _, b := range resp.Brokers {
			trapCheckProxied(t, p, brokers, fmt.Sprintf("Produce v%d", v), b.NodeID, b.Host, b.Port)
		}
	}
	guard.check(t)
}

// TestShareAcknowledgeEndpointsThroughProxy: kfake sends no node endpoints in ShareAcknowledge
// answers, so its answer is scripted: NOT_LEADER_OR_FOLLOWER for the partition and every broker's
// real address as a node endpoint. Sent through the proxy at every version it offers, each
// endpoint must arrive as the proxy listener of its node.
func TestShareAcknowledgeEndpointsThroughProxy(t *testing.T) {
	c, guard := startCluster(t)
	brokers := c.ListenAddrs()
	var endpoints []kmsg.ShareAcknowledgeResponseNodeEndpoint
	for i, a := range brokers { // node i listens on the cluster's i-th address
		ep := kmsg.NewShareAcknowledgeResponseNodeEndpoint()
		ep.NodeID = int32(i)
		ep.Host, ep.Port = trapHostPort(t, a)
		endpoints = append(endpoints, ep)
	}
	const group = "trap-shareack"
	var answered atomic.Int32
	c.ControlKey(kmsg.ShareAcknowledge.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		req := kr.(*kmsg.ShareAcknowledgeRequest)
		if req.GroupID == nil || *req.GroupID != group {
			return nil, nil, false
		}
		c.KeepControl()
		resp := req.ResponseKind().(*kmsg.ShareAcknowledgeResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewShareAcknowledgeResponseTopic()
			st.TopicID = rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewShareAcknowledgeResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, kerr.NotLeaderForPartition.Code
				sp.CurrentLeader.LeaderID, sp.CurrentLeader.LeaderEpoch = 1, 7
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		resp.NodeEndpoints = slices.Clone(endpoints)
		answered.Add(1)
		return resp, nil, true
	})
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	minV, maxV := trapOffered(t, conn, keyShareAck)
	t.Logf("ShareAcknowledge v%d..v%d", minV, maxV)

	id := [16]byte{0x7a, 1, 2, 3}
	for v := minV; v <= maxV; v++ {
		req := kmsg.NewPtrShareAcknowledgeRequest()
		g, member := group, "bWVtYmVyLXRyYXAtc2hhcmVhY2s"
		req.Version, req.GroupID, req.MemberID, req.ShareSessionEpoch = v, &g, &member, 1
		rt := kmsg.NewShareAcknowledgeRequestTopic()
		rt.TopicID = id
		rp := kmsg.NewShareAcknowledgeRequestTopicPartition()
		rp.Partition = 0
		ab := kmsg.NewShareAcknowledgeRequestTopicPartitionAcknowledgementBatch()
		ab.FirstOffset, ab.LastOffset, ab.AcknowledgeTypes = 0, 0, []int8{1}
		rp.AcknowledgementBatches = append(rp.AcknowledgementBatches, ab)
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		before := answered.Load()
		resp := req.ResponseKind().(*kmsg.ShareAcknowledgeResponse)
		resp.Version = v
		trapDecode(t, trapExchange(t, conn, req, int32(10+v)), resp)
		if answered.Load() == before {
			t.Fatalf("v%d: the scripted answer was not used (error %d)", v, resp.ErrorCode)
		}
		if resp.ErrorCode != 0 || len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 ||
			resp.Topics[0].Partitions[0].ErrorCode != kerr.NotLeaderForPartition.Code {
			t.Fatalf("v%d: answer error %d, topics %+v; want the scripted NOT_LEADER_OR_FOLLOWER", v, resp.ErrorCode, resp.Topics)
		}
		if len(resp.NodeEndpoints) != len(brokers) {
			t.Fatalf("v%d: %d node endpoints, want %d", v, len(resp.NodeEndpoints), len(brokers))
		}
		for _, ep := range resp.NodeEndpoints {
			trapCheckProxied(t, p, brokers, fmt.Sprintf("ShareAcknowledge v%d", v), ep.NodeID, ep.Host, ep.Port)
		}
	}
	guard.check(t)
}

// TestApiVersionsBrokerUnsupportedVersion: a cluster that speaks ApiVersions up to v2 answers
// v3 and later with UNSUPPORTED_VERSION in a v0 body (KIP-511). The proxy decodes ApiVersions up
// to kmsg's maximum, so it forwards those requests, and the broker's answer must reach the client
// byte for byte as the broker sends it to a direct connection: not decoded as the requested
// (flexible) version, not counted as a decode error, not answered by the proxy itself. (Versions
// above kmsg's the proxy answers itself: TestApiVersionsCapped.) The client's retry at v2 then
// gets an ordinary answer.
func TestApiVersionsBrokerUnsupportedVersion(t *testing.T) {
	vs := kversion.Stable()
	vs.SetMaxKeyVersion(keyApiVersions, 2)
	c, guard := startCluster(t, kfake.MaxVersions(vs))
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	direct := trapDialBroker(t, c.ListenAddrs()[0])

	if maxVersion(keyApiVersions) < 3 {
		t.Fatalf("kmsg decodes ApiVersions up to v%d: no version left between the cluster's and kmsg's", maxVersion(keyApiVersions))
	}
	for v := int16(3); v <= maxVersion(keyApiVersions); v++ {
		req := kmsg.NewPtrApiVersionsRequest()
		req.Version, req.ClientSoftwareName, req.ClientSoftwareVersion = v, "trap", "1"
		req.NodeID = -1
		corr := int32(20 + v)
		want := trapExchange(t, direct, req, corr)
		ref := kmsg.NewPtrApiVersionsResponse()
		ref.Version = 0
		trapDecode(t, want, ref)
		if ref.ErrorCode != errUnsupportedVersion || len(ref.ApiKeys) != 1 || ref.ApiKeys[0].MaxVersion != 2 {
			t.Fatalf("v%d: the broker itself answered error %d, %+v; want UNSUPPORTED_VERSION retry at v2", v, ref.ErrorCode, ref.ApiKeys)
		}
		if got := trapExchange(t, conn, req, corr); !bytes.Equal(got, want) {
			t.Errorf("v%d: the client got\n%x\nthe broker sends\n%x", v, got, want)
		}
	}
	if st := p.Stats(); st.SyntheticReplies != 0 || st.DecodeErrors != 0 {
		t.Errorf("synthetic replies %d, decode errors %d; want 0 and 0 (the broker's v0 error body is forwarded as it is)", st.SyntheticReplies, st.DecodeErrors)
	}

	retry := kmsg.NewPtrApiVersionsRequest()
	retry.Version = 2
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.Version = 2
	trapDecode(t, trapExchange(t, conn, retry, 99), resp)
	if resp.ErrorCode != 0 || !slices.ContainsFunc(resp.ApiKeys, func(k kmsg.ApiVersionsResponseApiKey) bool { return k.ApiKey == keyProduce }) {
		t.Errorf("the retry at v2: error %d, %d keys", resp.ErrorCode, len(resp.ApiKeys))
	}
	guard.check(t)
}

// TestDescribeClusterControllersUntouched: DescribeCluster with EndpointType 2 lists controllers
// (KIP-919, admin clients with bootstrap.controllers), which kfake does not model, so that answer
// is scripted; its ids are no broker node ids and its addresses are not the proxy's to rewrite.
// At every version with EndpointType, the controllers' answer reaches the client byte for byte
// and opens no listener, while the brokers' answer (EndpointType 1, kfake's own) is rewritten.
func TestDescribeClusterControllersUntouched(t *testing.T) {
	c, guard := startCluster(t)
	brokers := c.ListenAddrs()
	controllers := func(version int16) *kmsg.DescribeClusterResponse {
		resp := kmsg.NewPtrDescribeClusterResponse()
		resp.Version, resp.EndpointType, resp.ClusterID, resp.ControllerID = version, 2, "trap-cluster", 3000
		for i, host := range []string{"127.0.0.1", "controller-1.trap.internal"} {
			b := kmsg.NewDescribeClusterResponseBroker()
			b.NodeID, b.Host, b.Port = 3000+int32(i), host, 9093+int32(i)
			resp.Brokers = append(resp.Brokers, b)
		}
		return resp
	}
	c.ControlKey(kmsg.DescribeCluster.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		req := kr.(*kmsg.DescribeClusterRequest)
		if req.EndpointType != 2 {
			return nil, nil, false // brokers: kfake's own answer
		}
		c.KeepControl()
		return controllers(req.Version), nil, true
	})
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	minV, maxV := trapOffered(t, conn, keyDescribeCluster)
	t.Logf("DescribeCluster v%d..v%d", max(minV, 1), maxV)

	corr := int32(0)
	for v := max(minV, 1); v <= maxV; v++ {
		for _, endpointType := range []int8{1, 2} {
			req := kmsg.NewPtrDescribeClusterRequest()
			req.Version, req.EndpointType = v, endpointType
			corr++
			frame := trapExchange(t, conn, req, corr)
			if endpointType == 2 {
				if want := trapFrame(controllers(v), corr); !bytes.Equal(frame, want) {
					t.Errorf("v%d controllers: the client got\n%x\nthe broker sent\n%x", v, frame, want)
				}
				continue
			}
			resp := req.ResponseKind().(*kmsg.DescribeClusterResponse)
			resp.Version = v
			trapDecode(t, frame, resp)
			if len(resp.Brokers) != len(brokers) {
				t.Fatalf("v%d brokers: %d listed, want %d", v, len(resp.Brokers), len(brokers))
			}
			for _, b := range resp.Brokers {
				trapCheckProxied(t, p, brokers, fmt.Sprintf("DescribeCluster v%d brokers", v), b.NodeID, b.Host, b.Port)
			}
		}
	}
	for _, id := range []int32{3000, 3001} {
		if a, ok := p.NodeAddr(id); ok {
			t.Errorf("the proxy opened a listener %v for controller %d", a, id)
		}
	}
	guard.check(t)
}

// TestMetadataUnknownTagsSurviveRewrite: a Metadata answer at a flexible version, scripted to
// carry tagged fields kmsg does not know at the top level, in every broker and in the topic. The
// proxy decodes it and re-encodes it with its own broker addresses; the client must get exactly
// the broker's answer with only the brokers' host and port changed, the unknown tags included.
func TestMetadataUnknownTagsSurviveRewrite(t *testing.T) {
	c, guard := startCluster(t)
	brokers := c.ListenAddrs()
	const marker = "trap-unknown-tags"
	answer := func(version int16) *kmsg.MetadataResponse {
		resp := kmsg.NewPtrMetadataResponse()
		resp.Version, resp.ControllerID = version, 0
		for i, a := range brokers { // node i listens on the cluster's i-th address
			host, port, _ := net.SplitHostPort(a) // no t.Fatal: this runs in kfake's control goroutine
			b := kmsg.NewMetadataResponseBroker()
			b.NodeID, b.Host = int32(i), host
			n, _ := strconv.Atoi(port)
			b.Port = int32(n)
			b.UnknownTags.Set(42, []byte(fmt.Sprintf("broker-%d", i)))
			resp.Brokers = append(resp.Brokers, b)
		}
		mt := kmsg.NewMetadataResponseTopic()
		name := marker
		mt.Topic, mt.ErrorCode = &name, kerr.UnknownTopicOrPartition.Code
		mt.UnknownTags.Set(77, []byte("topic"))
		resp.Topics = append(resp.Topics, mt)
		resp.UnknownTags.Set(99, []byte("top-level"))
		resp.UnknownTags.Set(1000, []byte{0, 1, 2})
		return resp
	}
	c.ControlKey(kmsg.Metadata.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		req := kr.(*kmsg.MetadataRequest)
		if len(req.Topics) != 1 || req.Topics[0].Topic == nil || *req.Topics[0].Topic != marker {
			return nil, nil, false
		}
		c.KeepControl()
		return answer(req.Version), nil, true
	})
	p := startProxy(t, c, nil)
	conn := rawClient(t, p)
	_, maxV := trapOffered(t, conn, keyMetadata)
	t.Logf("Metadata v9..v%d", maxV)

	first := int16(9) // Metadata's first flexible version
	for v := first; v <= maxV; v++ {
		req := kmsg.NewPtrMetadataRequest()
		req.Version = v
		mt := kmsg.NewMetadataRequestTopic()
		name := marker
		mt.Topic = &name
		req.Topics = append(req.Topics, mt)
		corr := int32(30 + v)
		frame := trapExchange(t, conn, req, corr)
		resp := kmsg.NewPtrMetadataResponse()
		resp.Version = v
		trapDecode(t, frame, resp)

		tags := func(tg *kmsg.Tags) map[uint32]string {
			m := map[uint32]string{}
			tg.Each(func(k uint32, v []byte) { m[k] = string(v) })
			return m
		}
		if got := tags(&resp.UnknownTags); got[99] != "top-level" || got[1000] != "\x00\x01\x02" {
			t.Errorf("v%d: top-level unknown tags %v", v, got)
		}
		if len(resp.Topics) != 1 || tags(&resp.Topics[0].UnknownTags)[77] != "topic" {
			t.Errorf("v%d: topic's unknown tags lost: %+v", v, resp.Topics)
		}
		if len(resp.Brokers) != len(brokers) {
			t.Fatalf("v%d: %d brokers, want %d", v, len(resp.Brokers), len(brokers))
		}
		for _, b := range resp.Brokers {
			trapCheckProxied(t, p, brokers, fmt.Sprintf("Metadata v%d", v), b.NodeID, b.Host, b.Port)
			if got := tags(&b.UnknownTags)[42]; got != fmt.Sprintf("broker-%d", b.NodeID) {
				t.Errorf("v%d: broker %d's unknown tag 42 is %q", v, b.NodeID, got)
			}
		}

		// Byte for byte: the scripted answer with the proxy's addresses and nothing else changed.
		want := answer(v)
		for i := range want.Brokers {
			if a, ok := p.NodeAddr(want.Brokers[i].NodeID); ok {
				want.Brokers[i].Host, want.Brokers[i].Port = trapHostPort(t, a.String())
			}
		}
		if wf := trapFrame(want, corr); !bytes.Equal(frame, wf) {
			t.Errorf("v%d: the client got\n%x\nwant\n%x", v, frame, wf)
		}
	}
	guard.check(t)
}

// TestControlledShutdownV0Header: ControlledShutdown v0 is the one request whose header has no
// client id; its body (the broker id) starts right after the correlation id. Parsed as if it had
// one, the broker id's first two bytes would be taken as a client id length: a wrong body start,
// a made-up client id, or a "truncated" header that closes the connection. Each request is
// followed in the stream by an ordinary Metadata request, which must parse as usual.
func TestControlledShutdownV0Header(t *testing.T) {
	// kmsg's formatter writes no body (and no size) for this request, so it is built by hand.
	v0 := func(brokerID int32, corr int32) []byte {
		f := make([]byte, 4, 16)
		f = binary.BigEndian.AppendUint16(f, 7)
		f = binary.BigEndian.AppendUint16(f, 0)
		f = binary.BigEndian.AppendUint32(f, uint32(corr))
		f = binary.BigEndian.AppendUint32(f, uint32(brokerID))
		putSize(f)
		return f
	}
	later := func(version int16, brokerID int32, corr int32) []byte {
		req := kmsg.NewPtrControlledShutdownRequest()
		req.Version, req.BrokerID = version, brokerID
		return kmsg.NewRequestFormatter(kmsg.FormatterClientID("ctl")).AppendRequest(nil, req, corr)
	}
	for _, tc := range []struct {
		name     string
		frame    []byte
		version  int16
		broker   int32
		clientID []byte
		flexible bool
	}{
		// Broker 1001 (00 00 03 e9) would read as an empty client id.
		{"v0 broker 1001", v0(1001, 11), 0, 1001, nil, false},
		// Broker 65537 (00 01 00 01) would read as the one-byte client id "\x00".
		{"v0 broker 65537", v0(65537, 11), 0, 65537, nil, false},
		// Broker 0x7fff0001 would read as a 32767-byte client id: a truncated header.
		{"v0 broker 0x7fff0001", v0(0x7fff0001, 11), 0, 0x7fff0001, nil, false},
		{"v1 with client id", later(1, 1001, 11), 1, 1001, []byte("ctl"), false},
		{"v3 flexible", later(3, 1001, 11), 3, 1001, []byte("ctl"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := bytes.NewReader(append(slices.Clone(tc.frame), requestFrame(emptyMetadata(), 12)...))

			frame, err := readFrame(stream, DefaultMaxFrameBytes)
			if err != nil {
				t.Fatal(err)
			}
			h, err := parseRequestHeader(frame)
			if err != nil {
				t.Fatalf("ControlledShutdown v%d header: %v", tc.version, err)
			}
			if h.Key != 7 || h.Version != tc.version || h.CorrID != 11 || h.Flexible != tc.flexible || !bytes.Equal(h.ClientID, tc.clientID) ||
				(h.ClientID == nil) != (tc.clientID == nil) {
				t.Errorf("header %+v, want key 7 v%d corr 11, client id %q (nil: %v), flexible %v", h, tc.version, tc.clientID, tc.clientID == nil, tc.flexible)
			}
			req := kmsg.NewPtrControlledShutdownRequest()
			req.Version = tc.version
			if h.BodyStart > len(frame) {
				t.Fatalf("body start %d past the %d-byte frame", h.BodyStart, len(frame))
			}
			if err := req.ReadFrom(frame[h.BodyStart:]); err != nil || req.BrokerID != tc.broker {
				t.Errorf("body from offset %d: broker %d, %v; want broker %d", h.BodyStart, req.BrokerID, err, tc.broker)
			}

			next, err := readFrame(stream, DefaultMaxFrameBytes)
			if err != nil {
				t.Fatalf("the request after it: %v", err)
			}
			nh, err := parseRequestHeader(next)
			if err != nil || nh.Key != keyMetadata || nh.Version != 1 || nh.CorrID != 12 || string(nh.ClientID) != "raw" {
				t.Fatalf("the Metadata request after it: header %+v, %v", nh, err)
			}
			md := kmsg.NewPtrMetadataRequest()
			md.Version = 1
			if err := md.ReadFrom(next[nh.BodyStart:]); err != nil || md.Topics == nil || len(md.Topics) != 0 {
				t.Errorf("the Metadata body: topics %v, %v; want an empty list", md.Topics, err)
			}
			if stream.Len() != 0 {
				t.Errorf("%d bytes left in the stream", stream.Len())
			}
		})
	}
}
