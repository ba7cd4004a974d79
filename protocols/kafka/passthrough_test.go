package kafka

// What the proxy leaves as the client made it, and the addresses it rewrites: no request of the
// proxy's own on a client's connection; answers it does not decode relayed byte for byte; the
// advertised host in every broker address; a broker node added while clients run.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// ptOwnClientID is the client id of the requests the proxy sends on connections of its own
// (roundTrip in discover.go): Metadata to learn the nodes, DescribeConfigs to learn topic limits.
const ptOwnClientID = "dsmproxy"

// ptReq is one request frame as it crossed a connection.
type ptReq struct {
	key, version int16
	corr         int32
	clientID     *string
	frame        []byte // the whole frame, size prefix included
}

func (r ptReq) String() string {
	id := "null"
	if r.clientID != nil {
		id = strconv.Quote(*r.clientID)
	}
	return fmt.Sprintf("%s v%d corr %d client %s", kmsg.NameForKey(r.key), r.version, r.corr, id)
}

// ptWire is the request stream of one TCP connection, split into frames as its bytes cross it.
// The header is read here with kbin, not with the proxy's own parser.
type ptWire struct {
	desc string
	mu   sync.Mutex
	buf  []byte
	reqs []ptReq
	err  error
}

func (w *ptWire) add(b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for w.err == nil && len(w.buf) >= 4 {
		n := int(binary.BigEndian.Uint32(w.buf))
		if len(w.buf) < 4+n {
			return
		}
		frame := append([]byte(nil), w.buf[:4+n]...)
		w.buf = w.buf[4+n:]
		rd := kbin.Reader{Src: frame[4:]}
		r := ptReq{key: rd.Int16(), version: rd.Int16(), corr: rd.Int32(), clientID: rd.NullableString(), frame: frame}
		if !rd.Ok() {
			w.err = fmt.Errorf("undecodable request header in a %d-byte frame", len(frame))
			return
		}
		w.reqs = append(w.reqs, r)
	}
}

func (w *ptWire) requests() ([]ptReq, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.reqs), w.err
}

// ptTaps is every tapped connection of one side.
type ptTaps struct {
	mu    sync.Mutex
	wires []*ptWire
}

func (ts *ptTaps) open(desc string) *ptWire {
	w := &ptWire{desc: desc}
	ts.mu.Lock()
	ts.wires = append(ts.wires, w)
	ts.mu.Unlock()
	return w
}

func (ts *ptTaps) all() []*ptWire {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return slices.Clone(ts.wires)
}

// ptWriteTap records what a client writes on its connection.
type ptWriteTap struct {
	net.Conn
	w *ptWire
}

func (c *ptWriteTap) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.w.add(b[:n])
	return n, err
}

// ptReadTap records what a broker reads from its connection.
type ptReadTap struct {
	net.Conn
	w *ptWire
}

func (c *ptReadTap) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.w.add(b[:n])
	return n, err
}

// ptTappedListener is a broker listener whose connections record what the broker reads.
type ptTappedListener struct {
	net.Listener
	taps *ptTaps
}

func (l *ptTappedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	return &ptReadTap{Conn: c, w: l.taps.open(c.RemoteAddr().String() + " -> broker " + l.Addr().String())}, nil
}

// ptSignature identifies a connection's request stream for matching: every request's key,
// version, correlation id and client id in order, and its bytes except Produce's (the proxy
// splices the pathway header into produced records; nothing else is rewritten).
func ptSignature(reqs []ptReq) string {
	var b strings.Builder
	for _, r := range reqs {
		b.WriteString(r.String())
		if r.key != keyProduce {
			fmt.Fprintf(&b, " %x", sha256.Sum256(r.frame))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// ptDivergence describes where broker-side stream got departs from the client stream that
// shares the longest prefix with it.
func ptDivergence(got []ptReq, clients [][]ptReq) string {
	best, bestLen := -1, -1
	for i, c := range clients {
		n := 0
		for n < len(got) && n < len(c) && ptSignature(got[n:n+1]) == ptSignature(c[n:n+1]) {
			n++
		}
		if n > bestLen {
			best, bestLen = i, n
		}
	}
	if best < 0 {
		return "no client connection to compare with"
	}
	c := clients[best]
	switch {
	case bestLen < len(got) && bestLen < len(c):
		return fmt.Sprintf("request #%d is %s; the closest client connection sent %s there", bestLen, got[bestLen], c[bestLen])
	case bestLen < len(got):
		return fmt.Sprintf("request #%d (%s) follows all %d requests the closest client connection sent", bestLen, got[bestLen], len(c))
	default:
		return fmt.Sprintf("it stops after %d of the closest client connection's %d requests (next: %s)", len(got), len(c), c[bestLen])
	}
}

// ptClientStreamProblems compares, at one instant, the request streams the clients wrote with
// those the brokers read. Every broker connection carrying a client's requests must have
// received exactly the stream one client connection wrote (a bijection); every broker connection
// carrying a request with the proxy's client id must carry nothing else. It returns what does not
// hold, and the proxy's own streams.
func ptClientStreamProblems(clients, brokers *ptTaps) (problems []string, own [][]ptReq) {
	var clientStreams [][]ptReq
	want := map[string]int{}
	for _, w := range clients.all() {
		reqs, err := w.requests()
		if err != nil {
			problems = append(problems, fmt.Sprintf("client connection %s: %v", w.desc, err))
			continue
		}
		for _, r := range reqs {
			if r.clientID != nil && *r.clientID == ptOwnClientID {
				problems = append(problems, fmt.Sprintf("client connection %s: the test client wrote the proxy's client id: %s", w.desc, r))
			}
		}
		clientStreams = append(clientStreams, reqs)
		want[ptSignature(reqs)]++
	}
	type brokerStream struct {
		desc string
		reqs []ptReq
	}
	var unmatched []brokerStream
	for _, w := range brokers.all() {
		reqs, err := w.requests()
		if err != nil {
			problems = append(problems, fmt.Sprintf("broker connection %s: %v", w.desc, err))
			continue
		}
		if slices.ContainsFunc(reqs, func(r ptReq) bool { return r.clientID != nil && *r.clientID == ptOwnClientID }) {
			for i, r := range reqs {
				if r.clientID == nil || *r.clientID != ptOwnClientID {
					problems = append(problems, fmt.Sprintf("broker connection %s carries the proxy's own requests and a client's: request #%d is %s (all: %v)", w.desc, i, r, reqs))
				}
			}
			own = append(own, reqs)
			continue
		}
		sig := ptSignature(reqs)
		if want[sig] > 0 {
			want[sig]--
			continue
		}
		unmatched = append(unmatched, brokerStream{w.desc, reqs})
	}
	for _, b := range unmatched {
		problems = append(problems, fmt.Sprintf("broker connection %s received %d requests that no client connection sent as one stream: %s",
			b.desc, len(b.reqs), ptDivergence(b.reqs, clientStreams)))
	}
	for _, c := range clientStreams {
		if n := want[ptSignature(c)]; n > 0 {
			want[ptSignature(c)] = n - 1
			last := "none"
			if len(c) > 0 {
				last = c[len(c)-1].String()
			}
			problems = append(problems, fmt.Sprintf("a client connection's %d requests (last %s) reached no broker connection as they were sent", len(c), last))
		}
	}
	return problems, own
}

// TestPassthruNoProxyRequestOnClientConnections: the proxy sends requests of its own (Metadata
// to learn the nodes when node addresses are fixed, DescribeConfigs to learn topic limits), but
// only on connections of its own: a client's connection carries exactly the requests the client
// wrote, in its order, with its correlation ids.
//
// Design: kfake's control hooks see a decoded kmsg.Request and the node (CurrentNode), but not
// the connection, client id or correlation id, so they cannot tell which connection a request
// arrived on. Instead the brokers' listeners (kfake.ListenFn) record the request frames each
// broker connection reads, and the kgo clients' dialer records the frames each client connection
// writes. kgo numbers correlation ids per connection from 0, so streams match only as wholes.
// The check: the client-side streams and the broker-side streams carrying client requests are the
// same multiset (each broker stream equals one client stream, request for request: header, client
// id, correlation id, and bytes except Produce's, which get the pathway header); every broker
// connection with a request in the proxy's client id carries only such requests. A request the
// proxy slipped onto a client's connection, with any client id, leaves a broker stream that no
// client wrote. The streams are compared at an instant when no request is in flight between the
// taps (retried until one comes: the consumer keeps heartbeating and fetching).
func TestPassthruNoProxyRequestOnClientConnections(t *testing.T) {
	guard := &brokerGuard{}
	brokerTaps := &ptTaps{}
	c, _ := startCluster(t, kfake.ListenFn(func(network, addr string) (net.Listener, error) {
		ln, err := guard.listen(network, addr)
		if err != nil {
			return nil, err
		}
		return &ptTappedListener{Listener: ln, taps: brokerTaps}, nil
	}))
	// Fixed node addresses: the proxy asks the cluster for its brokers itself at start
	// (discover.go). Produce makes it read the topic's configs (topicconfig.go).
	p := startProxy(t, c, func(cfg *Config) {
		cfg.NodeAddrs = map[int32]string{0: "127.0.0.1:0", 1: "127.0.0.1:0", 2: "127.0.0.1:0"}
	})
	ctx := testCtx(t)
	suffix := strconv.FormatInt(time.Now().UnixNano()%1e9, 10)
	topic := "pt-own-" + suffix
	group := "pt-own-group-" + suffix
	prodID, consID := "pt-producer-"+suffix, "pt-consumer-"+suffix

	clientTaps := &ptTaps{}
	var strayMu sync.Mutex
	var strays []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if !p.isProxyAddr(addr) {
			strayMu.Lock()
			strays = append(strays, addr)
			strayMu.Unlock()
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &ptWriteTap{Conn: conn, w: clientTaps.open(conn.LocalAddr().String() + " -> proxy " + addr)}, nil
	}

	prod := kgoClient(t, p, kgo.Dialer(dial), kgo.ClientID(prodID), kgo.DefaultProduceTopic(topic))
	const n = 30
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Key: []byte(fmt.Sprintf("k%d", i)), Value: []byte(fmt.Sprintf("value-%d", i))}
	}
	if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	cons := kgoClient(t, p, kgo.Dialer(dial), kgo.ClientID(consID), kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	for got := 0; got < n; {
		fs := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records: %v", got, n, err)
		}
		fs.EachError(func(tp string, part int32, err error) { t.Logf("fetch error %s/%d: %v", tp, part, err) })
		got += fs.NumRecords()
	}
	if err := cons.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}

	// The proxy's own requests happen on their own schedule: wait until both kinds reached a broker.
	ownKeys := func() (keys map[int16]bool) {
		keys = map[int16]bool{}
		for _, w := range brokerTaps.all() {
			reqs, _ := w.requests()
			for _, r := range reqs {
				if r.clientID != nil && *r.clientID == ptOwnClientID {
					keys[r.key] = true
				}
			}
		}
		return keys
	}
	waitFor(t, "the proxy's own Metadata and DescribeConfigs", func() bool {
		k := ownKeys()
		return k[keyMetadata] && k[kmsg.DescribeConfigs.Int16()]
	})

	var problems []string
	var own [][]ptReq
	deadline := time.Now().Add(20 * time.Second) // a correctness bound: in-flight requests settle in milliseconds
	for {
		problems, own = ptClientStreamProblems(clientTaps, brokerTaps)
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, pr := range problems {
		t.Error(pr)
	}

	// The scenario must have covered what it claims: client streams with every kind of request,
	// and the proxy's own on connections of their own.
	seen := map[int16]int{}
	for _, w := range clientTaps.all() {
		reqs, _ := w.requests()
		for _, r := range reqs {
			seen[r.key]++
		}
	}
	for _, k := range []int16{keyApiVersions, keyMetadata, keyProduce, keyFetch, keyFindCoordinator, keyJoinGroup, keySyncGroup, keyOffsetCommit} {
		if seen[k] == 0 {
			t.Errorf("the clients sent no %s: the scenario does not cover it", kmsg.NameForKey(k))
		}
	}
	ownSeen := map[int16]int{}
	for _, s := range own {
		for _, r := range s {
			ownSeen[r.key]++
		}
	}
	if ownSeen[keyMetadata] == 0 || ownSeen[kmsg.DescribeConfigs.Int16()] == 0 {
		t.Errorf("the proxy's own connections carried %v: want Metadata and DescribeConfigs", ownSeen)
	}
	t.Logf("client connections: %d, requests by key %v; broker connections with the proxy's own requests: %d, by key %v",
		len(clientTaps.all()), seen, len(own), ownSeen)
	strayMu.Lock()
	if len(strays) > 0 {
		t.Errorf("kgo dialed addresses that are not proxy listeners: %v", strays)
	}
	strayMu.Unlock()
	guard.check(t)
}

// TestPassthruAdvertisedHostInEveryBrokerAddress: with AdvertisedHost set to a name other than
// the host the proxy listens on (localhost vs 127.0.0.1), every broker address the proxy hands
// out carries that host and the port of that node's listener: Metadata at every version the
// proxy offers, FindCoordinator (top-level address up to v3, Coordinators from v4) and
// DescribeCluster. A kgo client then dials brokers by that name only and produces.
func TestPassthruAdvertisedHostInEveryBrokerAddress(t *testing.T) {
	c, guard := startCluster(t)
	const adv = "localhost"
	p := startProxy(t, c, func(cfg *Config) { cfg.AdvertisedHost = adv })
	if h, _, _ := net.SplitHostPort(p.Addr().String()); h == adv {
		t.Fatalf("the proxy listens on %s: the advertised host must differ from it", p.Addr())
	}
	conn := rawClient(t, p)
	corr := int32(0)
	ask := func(req kmsg.Request) kmsg.Response {
		t.Helper()
		corr++
		if _, err := conn.Write(requestFrame(req, corr)); err != nil {
			t.Fatal(err)
		}
		resp := req.ResponseKind()
		resp.SetVersion(req.GetVersion())
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		readResponse(t, conn, resp)
		conn.SetReadDeadline(time.Time{})
		return resp
	}
	av := ask(kmsg.NewPtrApiVersionsRequest()).(*kmsg.ApiVersionsResponse)
	offered := map[int16][2]int16{}
	for _, k := range av.ApiKeys {
		offered[k.ApiKey] = [2]int16{k.MinVersion, k.MaxVersion}
	}
	brokers := c.ListenAddrs()
	checks := 0
	check := func(what string, id int32, host string, port int32) {
		t.Helper()
		checks++
		addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
		if slices.Contains(brokers, addr) {
			t.Errorf("%s: node %d at the real broker %s", what, id, addr)
			return
		}
		ln, ok := p.NodeAddr(id)
		if !ok {
			t.Errorf("%s: node %d at %s, and the proxy has no listener for it", what, id, addr)
			return
		}
		if host != adv || int(port) != ln.(*net.TCPAddr).Port {
			t.Errorf("%s: node %d at %s, want %s (the advertised host, the port of its listener %s)",
				what, id, addr, net.JoinHostPort(adv, strconv.Itoa(ln.(*net.TCPAddr).Port)), ln)
		}
	}

	mv := offered[keyMetadata]
	for v := mv[0]; v <= mv[1]; v++ {
		req := kmsg.NewPtrMetadataRequest()
		req.Version = v
		resp := ask(req).(*kmsg.MetadataResponse)
		what := fmt.Sprintf("Metadata v%d", v)
		var ids []int32
		for _, b := range resp.Brokers {
			ids = append(ids, b.NodeID)
			check(what, b.NodeID, b.Host, b.Port)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []int32{0, 1, 2}) {
			t.Errorf("%s: brokers %v, want nodes 0, 1, 2", what, ids)
		}
	}
	fv := offered[keyFindCoordinator]
	for v := fv[0]; v <= fv[1]; v++ {
		req := kmsg.NewPtrFindCoordinatorRequest()
		req.Version, req.CoordinatorKey, req.CoordinatorKeys = v, "pt-adv-group", []string{"pt-adv-group"}
		resp := ask(req).(*kmsg.FindCoordinatorResponse)
		what := fmt.Sprintf("FindCoordinator v%d", v)
		if v < 4 {
			if resp.ErrorCode != 0 {
				t.Errorf("%s: error %d", what, resp.ErrorCode)
				continue
			}
			check(what, resp.NodeID, resp.Host, resp.Port)
			continue
		}
		if len(resp.Coordinators) != 1 || resp.Coordinators[0].ErrorCode != 0 {
			t.Errorf("%s: coordinators %+v, want one without error", what, resp.Coordinators)
			continue
		}
		co := resp.Coordinators[0]
		check(what, co.NodeID, co.Host, co.Port)
	}
	dv, ok := offered[keyDescribeCluster]
	if !ok {
		t.Fatalf("the proxy offers no DescribeCluster (offered %v)", offered)
	}
	for v := dv[0]; v <= dv[1]; v++ {
		req := kmsg.NewPtrDescribeClusterRequest()
		req.Version = v
		resp := ask(req).(*kmsg.DescribeClusterResponse)
		if len(resp.Brokers) != 3 {
			t.Errorf("DescribeCluster v%d: %d brokers, want 3", v, len(resp.Brokers))
		}
		for _, b := range resp.Brokers {
			check(fmt.Sprintf("DescribeCluster v%d", v), b.NodeID, b.Host, b.Port)
		}
	}
	if checks == 0 {
		t.Fatal("no broker address checked")
	}

	// A client that knows only the bootstrap address reaches every node by the advertised name.
	ctx := testCtx(t)
	var mu sync.Mutex
	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	topic := uniqueTopic(t, "pt-adv")
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.Dialer(dial), kgo.AllowAutoTopicCreation(),
		kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for part := range int32(3) { // kfake's default: 3 partitions, so every node leads one
		if err := cl.ProduceSync(ctx, &kgo.Record{Partition: part, Value: []byte("advertised")}).FirstErr(); err != nil {
			t.Fatalf("produce to %s/%d: %v", topic, part, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	byName := 0
	for _, a := range dialed {
		if a == p.Addr().String() {
			continue
		}
		host, port, _ := net.SplitHostPort(a)
		if host != adv {
			t.Errorf("kgo dialed %s: not the advertised host %s", a, adv)
			continue
		}
		found := false
		for id := range int32(3) {
			if ln, ok := p.NodeAddr(id); ok && strconv.Itoa(ln.(*net.TCPAddr).Port) == port {
				found = true
			}
		}
		if !found {
			t.Errorf("kgo dialed %s: no node listener has that port", a)
		}
		byName++
	}
	if byName == 0 {
		t.Errorf("kgo dialed only %v: no node by the advertised name", dialed)
	}
	guard.check(t)
}

// TestPassthruUndecodedAnswersAreByteIdentical: requests of APIs the proxy does not decode
// (DescribeConfigs, OffsetFetch, DescribeGroups, ListGroups, DescribeAcls), at every version
// kfake and kmsg both speak, sent to each node through the proxy's listener for it and straight
// to that broker with the same correlation id, get the same answer to the byte. The broker is
// asked twice, before and after the proxy, and must answer the same both times: an answer that
// legitimately varies (generated ids, times) would make the comparison meaningless.
func TestPassthruUndecodedAnswersAreByteIdentical(t *testing.T) {
	// The test dials the brokers itself for the answers to compare with, so no brokerGuard check.
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	suffix := strconv.FormatInt(time.Now().UnixNano()%1e9, 10)
	topic, group, offsetMeta := "pt-bytes-"+suffix, "pt-bytes-group-"+suffix, "pt-bytes-meta-"+suffix
	if err := c.CreateTopic(topic, 3, map[string]string{"max.message.bytes": "654321", "retention.ms": "7200000"}); err != nil {
		t.Fatal(err)
	}
	// Committed offsets, so OffsetFetch, DescribeGroups and ListGroups have something to say.
	var offs kadm.Offsets
	for part := range int32(3) {
		offs.Add(kadm.Offset{Topic: topic, Partition: part, At: 0, LeaderEpoch: -1, Metadata: offsetMeta})
	}
	if cr, err := kadm.NewClient(kgoClient(t, p)).CommitOffsets(ctx, group, offs); err != nil || cr.Error() != nil {
		t.Fatalf("commit offsets for %s: %v %v", group, err, cr.Error())
	}

	openNodes(t, rawClient(t, p))
	exchange := func(conn net.Conn, req kmsg.Request, corr int32) []byte {
		t.Helper()
		if _, err := conn.Write(requestFrame(req, corr)); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		frame, err := readFrame(conn, DefaultMaxFrameBytes)
		if err != nil {
			t.Fatalf("%s v%d: %v", kmsg.NameForKey(req.Key()), req.GetVersion(), err)
		}
		conn.SetReadDeadline(time.Time{})
		return frame
	}
	dial := func(addr string) net.Conn {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}

	// The brokers' own addresses, versions and the topic's id, asked straight from a broker.
	direct0 := dial(c.ListenAddrs()[0])
	md := kmsg.NewPtrMetadataRequest()
	md.Version = 12
	mdt := kmsg.NewMetadataRequestTopic()
	mdt.Topic = &topic
	md.Topics = []kmsg.MetadataRequestTopic{mdt}
	mr := kmsg.NewPtrMetadataResponse()
	mr.Version = md.Version
	if err := roundTrip(direct0, 1, md, mr); err != nil || len(mr.Topics) != 1 {
		t.Fatalf("metadata: %v", err)
	}
	topicID := mr.Topics[0].TopicID
	brokerAddr := map[int32]string{}
	for _, b := range mr.Brokers {
		brokerAddr[b.NodeID] = net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))
	}
	vr := kmsg.NewPtrApiVersionsResponse()
	if err := roundTrip(direct0, 2, kmsg.NewPtrApiVersionsRequest(), vr); err != nil {
		t.Fatal(err)
	}

	// want: what an answer must contain on a node (so the comparison is not of empty answers).
	coordinator := c.CoordinatorFor(group)
	onCoordinator := func(s string) func(int32) string {
		return func(node int32) string {
			if node == coordinator {
				return s
			}
			return ""
		}
	}
	apis := []struct {
		key   int16
		build func(node int32) kmsg.Request
		want  func(node int32) string
	}{
		{kmsg.DescribeConfigs.Int16(), func(node int32) kmsg.Request {
			// kfake lists a resource's configs in map order: one config per resource keeps the
			// answer deterministic (a resource's synonyms come in a fixed order).
			req := kmsg.NewPtrDescribeConfigsRequest()
			add := func(typ kmsg.ConfigResourceType, name, config string) {
				r := kmsg.NewDescribeConfigsRequestResource()
				r.ResourceType, r.ResourceName, r.ConfigNames = typ, name, []string{config}
				req.Resources = append(req.Resources, r)
			}
			for _, cfg := range []string{"max.message.bytes", "retention.ms", "cleanup.policy"} {
				add(kmsg.ConfigResourceTypeTopic, topic, cfg)
			}
			for _, cfg := range []string{"broker.id", "broker.rack", "sasl.enabled.mechanisms"} {
				add(kmsg.ConfigResourceTypeBroker, strconv.Itoa(int(node)), cfg)
			}
			req.IncludeSynonyms, req.IncludeDocumentation = true, true
			return req
		}, func(int32) string { return "654321" }},
		{kmsg.OffsetFetch.Int16(), func(int32) kmsg.Request {
			req := kmsg.NewPtrOffsetFetchRequest()
			rt := kmsg.NewOffsetFetchRequestTopic()
			rt.Topic, rt.Partitions = topic, []int32{0, 1, 2}
			req.Group, req.Topics = group, []kmsg.OffsetFetchRequestTopic{rt}
			g := kmsg.NewOffsetFetchRequestGroup()
			gt := kmsg.NewOffsetFetchRequestGroupTopic()
			gt.Topic, gt.TopicID, gt.Partitions = topic, topicID, []int32{0, 1, 2}
			g.Group, g.Topics = group, []kmsg.OffsetFetchRequestGroupTopic{gt}
			req.Groups = []kmsg.OffsetFetchRequestGroup{g}
			return req
		}, onCoordinator(offsetMeta)},
		{kmsg.DescribeGroups.Int16(), func(int32) kmsg.Request {
			req := kmsg.NewPtrDescribeGroupsRequest()
			req.Groups, req.IncludeAuthorizedOperations = []string{group}, true
			return req
		}, onCoordinator(group)},
		{kmsg.ListGroups.Int16(), func(int32) kmsg.Request { return kmsg.NewPtrListGroupsRequest() }, onCoordinator(group)},
		{kmsg.DescribeACLs.Int16(), func(int32) kmsg.Request {
			req := kmsg.NewPtrDescribeACLsRequest()
			req.ResourceType, req.ResourcePatternType = kmsg.ACLResourceTypeAny, kmsg.ACLResourcePatternTypeAny
			req.Operation, req.PermissionType = kmsg.ACLOperationAny, kmsg.ACLPermissionTypeAny
			return req
		}, func(int32) string { return "" }},
	}
	compared := 0
	for _, id := range []int32{0, 1, 2} {
		ln, ok := p.NodeAddr(id)
		if !ok || brokerAddr[id] == "" {
			t.Fatalf("node %d: proxy listener %v (open %v), broker %q", id, ln, ok, brokerAddr[id])
		}
		via, direct := dial(ln.String()), dial(brokerAddr[id])
		corr := int32(100)
		for _, api := range apis {
			if decodedKeys[api.key] {
				t.Fatalf("%s is decoded by the proxy: pick an API it relays as bytes", kmsg.NameForKey(api.key))
			}
			lo, hi := int16(-1), int16(-2)
			for _, k := range vr.ApiKeys {
				if k.ApiKey == api.key {
					lo, hi = k.MinVersion, min(k.MaxVersion, maxVersion(api.key))
				}
			}
			if lo > hi {
				t.Fatalf("kfake and kmsg share no version of %s", kmsg.NameForKey(api.key))
			}
			for v := lo; v <= hi; v++ {
				req := api.build(id)
				req.SetVersion(v)
				corr++
				what := fmt.Sprintf("node %d %s v%d", id, kmsg.NameForKey(api.key), v)
				before := exchange(direct, req, corr)
				proxied := exchange(via, req, corr)
				after := exchange(direct, req, corr)
				if !bytes.Equal(before, after) {
					t.Fatalf("%s: the broker answers the same request differently (%d, then %d bytes): not an API to compare byte for byte",
						what, len(before), len(after))
				}
				compared++
				if w := api.want(id); w != "" && !bytes.Contains(before, []byte(w)) {
					t.Errorf("%s: the broker's answer does not contain %q: %x", what, w, before)
				}
				if !bytes.Equal(proxied, before) {
					i := 0
					for i < len(proxied) && i < len(before) && proxied[i] == before[i] {
						i++
					}
					t.Errorf("%s: the answer through the proxy (%d bytes) differs from the broker's (%d bytes) from byte %d\nproxy:  %x\nbroker: %x",
						what, len(proxied), len(before), i, proxied, before)
				}
			}
		}
	}
	t.Logf("%d answers compared", compared)
}

// TestPassthruNodeAddedMidRunGetsAListener: a broker node that joins the cluster while a client
// produces through the proxy gets a proxy listener once a response names it, and the client
// reaches it through that listener only: a partition moved to the new node takes the client's
// next record there (kfake's control hook sees the new node handle a Produce), the client dials
// the node's proxy listener, Metadata through the proxy names the node at that listener, and no
// connection reaches any broker except from the proxy.
func TestPassthruNodeAddedMidRunGetsAListener(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "pt-newnode")
	if err := c.CreateTopic(topic, 3, nil); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	cl := kgoClient(t, p, kgo.Dialer(dial), kgo.ClientID("pt-newnode-client"), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	produce := func(part int32, value string) {
		t.Helper()
		if err := cl.ProduceSync(ctx, &kgo.Record{Partition: part, Value: []byte(value)}).FirstErr(); err != nil {
			t.Fatalf("produce %q to %s/%d: %v", value, topic, part, err)
		}
	}
	for part := range int32(3) {
		produce(part, "before the new node")
	}

	newID, _, err := c.AddNode(-1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var onNew atomic.Int64
	c.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if c.CurrentNode() == newID {
			onNew.Add(1)
		}
		return nil, nil, false // observe only
	})
	if err := c.MoveTopicPartition(topic, 0, newID); err != nil {
		t.Fatal(err)
	}
	produce(0, "on the new node")
	if l := c.LeaderFor(topic, 0); l != newID {
		t.Fatalf("partition 0's leader is %d, want the new node %d", l, newID)
	}
	if onNew.Load() == 0 {
		t.Errorf("node %d handled no Produce: the record did not go to the new node", newID)
	}
	ln, ok := p.NodeAddr(newID)
	mu.Lock()
	switch {
	case !ok:
		t.Errorf("the proxy has no listener for the new node %d", newID)
	case !slices.Contains(dialed, ln.String()):
		t.Errorf("the client did not dial the new node's listener %s (dialed %v)", ln, dialed)
	}
	for _, a := range dialed {
		if !p.isProxyAddr(a) {
			t.Errorf("the client dialed %s, which is not a proxy listener", a)
		}
	}
	mu.Unlock()

	conn := rawClient(t, p)
	if _, err := conn.Write(requestFrame(emptyMetadata(), 1)); err != nil {
		t.Fatal(err)
	}
	mr := kmsg.NewPtrMetadataResponse()
	mr.Version = 1
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	readResponse(t, conn, mr)
	want, ok := txncoordNodeAddr(p, newID)
	if !ok {
		want = "(no listener)"
	}
	found := false
	for _, b := range mr.Brokers {
		addr := net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))
		if !p.isProxyAddr(addr) {
			t.Errorf("Metadata names node %d at %s, not a proxy listener", b.NodeID, addr)
		}
		if b.NodeID == newID {
			found = true
			if addr != want {
				t.Errorf("Metadata names the new node %d at %s, want its listener %s", newID, addr, want)
			}
		}
	}
	if !found {
		t.Errorf("Metadata through the proxy does not name the new node %d: %+v", newID, mr.Brokers)
	}
	guard.check(t)
}
