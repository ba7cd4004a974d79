package amqp

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// javaPeer is the RabbitMQ Java client's peer program, compiled by the test.
var javaPeer = filepath.Join("..", "..", "testdata", "amqp", "java", "Peer.java")

// javaJars are Debian's RabbitMQ Java client and the slf4j it logs through (nop: quiet), with
// the package that installs each.
var javaJars = []struct{ path, pkg string }{
	{"/usr/share/java/amqp-client.jar", "librabbitmq-client-java"},
	{"/usr/share/java/slf4j-api.jar", "libslf4j-java"},
	{"/usr/share/java/slf4j-nop.jar", "libslf4j-java"},
}

// buildJavaPeer compiles Peer.java into a temporary directory and returns the class path to run
// it with, failing with what to install when the JDK or a jar is missing.
func buildJavaPeer(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"javac", "java"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required for the RabbitMQ Java client's tests: install a JDK with `apt-get install -y default-jdk-headless` (%v)", tool, err)
		}
	}
	jars := make([]string, 0, len(javaJars))
	for _, j := range javaJars {
		if _, err := os.Stat(j.path); err != nil {
			t.Fatalf("%s is required (the RabbitMQ Java client's tests): install it with `apt-get install -y %s` (%v)", j.path, j.pkg, err)
		}
		jars = append(jars, j.path)
	}
	dir := t.TempDir()
	cp := strings.Join(jars, ":")
	if out, err := exec.CommandContext(t.Context(), "javac", "-cp", cp, "-d", dir, javaPeer).CombinedOutput(); err != nil {
		t.Fatalf("javac %s: %v\n%s", javaPeer, err, out)
	}
	return dir + ":" + cp
}

// runJavaPeer runs the peer and decodes the JSON lines it prints (a line may be long: no
// bufio.Scanner limit).
func runJavaPeer(t *testing.T, cp string, env []string, args ...string) []map[string]any {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "java", append([]string{"-cp", cp, "Peer"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, stderr.String())
	}
	var lines []map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s printed %q: %v", cmd, out, err)
		}
		lines = append(lines, m)
	}
	if len(lines) == 0 || lines[len(lines)-1]["kind"] != "summary" {
		t.Fatalf("%s printed no summary:\n%s\n%s", cmd, out, stderr.String())
	}
	if p, _ := lines[len(lines)-1]["problems"].([]any); len(p) > 0 {
		t.Errorf("the Java peer got back messages that differ from what it published (%s):\n%s", args[0], strings.Join(anyStrings(p), "\n"))
	}
	return lines
}

func anyStrings(v []any) []string {
	out := make([]string, len(v))
	for i, x := range v {
		out[i], _ = x.(string)
	}
	return out
}

// javaHeaders is the headers table of a line's properties, as the peer prints it ({"F": {...}}).
func javaHeaders(line map[string]any) (map[string]any, bool) {
	props, _ := line["properties"].(map[string]any)
	h, ok := props["headers"].(map[string]any)
	if !ok {
		return nil, false
	}
	f, ok := h["F"].(map[string]any)
	return f, ok
}

// javaConnStreams collects what each client connection of a proxy sent and was sent.
type javaConnStreams struct {
	mu     sync.Mutex
	client map[uint64]*bytes.Buffer
	broker map[uint64]*bytes.Buffer
}

type lockedBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (s *javaConnStreams) tap(side *map[uint64]*bytes.Buffer) func(uint64) io.Writer {
	return func(id uint64) io.Writer {
		s.mu.Lock()
		defer s.mu.Unlock()
		if *side == nil {
			*side = map[uint64]*bytes.Buffer{}
		}
		if (*side)[id] == nil {
			(*side)[id] = &bytes.Buffer{}
		}
		return lockedBuf{&s.mu, (*side)[id]}
	}
}

// all returns a copy of each connection's streams: what the client sent, what it was sent.
func (s *javaConnStreams) all() [][2][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][2][]byte
	for id, b := range s.client {
		var from []byte
		if s.broker[id] != nil {
			from = bytes.Clone(s.broker[id].Bytes())
		}
		out = append(out, [2][]byte{bytes.Clone(b.Bytes()), from})
	}
	return out
}

// streamHeaders returns the content-header payloads in a stream of frames (a client's begins
// with the protocol header).
func streamHeaders(t *testing.T, s []byte) [][]byte {
	t.Helper()
	s = bytes.TrimPrefix(s, protocolHeader[:])
	var out [][]byte
	for len(s) > 0 {
		f, rest, err := splitFrame(s)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if f.Type == frameHeader {
			out = append(out, bytes.Clone(f.Payload))
		}
		s = rest
	}
	return out
}

// TestJavaClientThroughProxy: the official RabbitMQ Java client (Debian's amqp-client 5.0.0,
// automatic recovery off) runs the same program directly and through the proxy: publishes to
// the default exchange, a direct and a topic exchange with and without every basic property and
// a headers table of every type the client writes (nested tables and arrays too), a body of
// several frame_max, publisher confirms waited for and listened to, mandatory publishes
// returned, transactions committed and rolled back, consumers on four channels with prefetch
// and manual acks, a cancel, and basic.get. What it receives is what it published and what it
// receives directly, plus the pathway header; every content header the broker hands it through
// the proxy is, byte for byte, one it published with the entry appended; and every consume
// checkpoint chains to the publish of its route. It runs with the client's default blocking
// frame handler and the broker's frame_max, then with its NIO one and frame_max 4096.
func TestJavaClientThroughProxy(t *testing.T) {
	cp := buildJavaPeer(t)
	for _, v := range []struct {
		name     string
		env      []string
		frameMax float64 // 0: the broker's
	}{
		{"blocking io", nil, 0},
		{"nio frame_max 4096", []string{"PEER_NIO=1", "PEER_FRAME_MAX=4096"}, 4096},
	} {
		t.Run(v.name, func(t *testing.T) { javaScenario(t, cp, v.env, v.frameMax) })
	}
}

func javaScenario(t *testing.T, cp string, env []string, frameMax float64) {
	var streams javaConnStreams
	h := startProxyWith(t, nil, func(p *Proxy) {
		p.tap, p.tapBroker = streams.tap(&streams.client), streams.tap(&streams.broker)
	})
	c := dial(t, directURL, "setup", 0)
	type names struct{ qDefault, qDirect, qTopic, qGet, qTx, qCancel, exDirect, exTopic string }
	run := func(url string) ([]map[string]any, names) {
		n := names{
			qDefault: declareQueue(t, c, unique("java-default")), qDirect: declareQueue(t, c, unique("java-direct")),
			qTopic: declareQueue(t, c, unique("java-topic")), qGet: declareQueue(t, c, unique("java-get")),
			qTx: declareQueue(t, c, unique("java-tx")), qCancel: declareQueue(t, c, unique("java-cancel")),
			exDirect: unique("java-direct-x"), exTopic: unique("java-topic-x"),
		}
		declareExchange(t, c, n.exDirect, "direct", n.qDirect, "java-direct")
		declareExchange(t, c, n.exTopic, "topic", n.qTopic, "java.*.event")
		return runJavaPeer(t, cp, env, "scenario", url, n.qDefault, n.qDirect, n.qTopic, n.qGet, n.qTx, n.qCancel, n.exDirect, n.exTopic), n
	}
	direct, _ := run(directURL)
	prox, n := run(h.url)

	// 17 deliveries, 5 gets, 3 returns and the summary.
	if len(direct) != 26 || len(prox) != 26 {
		t.Fatalf("the peer printed %d lines direct, %d through the proxy, want 26", len(direct), len(prox))
	}
	for i := range direct {
		d, p := direct[i], prox[i]
		if d["kind"] != "summary" {
			dh, dok := javaHeaders(d)
			if _, ok := dh[pathway.HeaderKey]; ok {
				t.Errorf("line %d (%v): direct delivery has a pathway header", i, d["body"])
			}
			ph, _ := javaHeaders(p)
			v, _ := ph[pathway.HeaderKey].(map[string]any)
			s, _ := v["S"].(string)
			if _, err := pathway.DecodeBase64String(s); err != nil {
				t.Errorf("line %d (%v): pathway header %v through the proxy: %v", i, p["body"], v, err)
			}
			delete(ph, pathway.HeaderKey)
			if len(ph) == 0 && !dok {
				delete(p["properties"].(map[string]any), "headers") // the proxy added the table for it
			}
		}
		if !reflect.DeepEqual(d, p) {
			dj, _ := json.Marshal(d)
			pj, _ := json.Marshal(p)
			t.Errorf("line %d differs:\ndirect %s\nproxy  %s", i, dj, pj)
		}
	}
	sum := prox[len(prox)-1]
	if frameMax != 0 && sum["frameMax"] != frameMax {
		t.Errorf("the client negotiated frame_max %v, want %v", sum["frameMax"], frameMax)
	}
	if sum["asyncAcked"] != 10.0 || sum["syncConfirmed"] != 11.0 || sum["asyncNacked"] != 0.0 || sum["cancelOk"] != true ||
		sum["deliveredAfterCancel"] != 0.0 || sum["getEmpty"] != true {
		t.Errorf("through the proxy: %v", sum)
	}

	// Byte for byte: what the broker handed the Java client through the proxy is what it
	// published, plus the entry at the end of the table (added with the table when it had none).
	var published, handed [][]byte
	for _, s := range streams.all() {
		published = append(published, streamHeaders(t, s[0])...)
		handed = append(handed, streamHeaders(t, s[1])...)
	}
	// 11+10+5 publishes; 17 deliveries, 5 get-oks, 3 returns.
	if len(published) != 26 || len(handed) != 25 {
		t.Fatalf("%d content headers published and %d handed through the proxy, want 26 and 25", len(published), len(handed))
	}
	for i, p := range published {
		if ph, err := parseContentHeader(p); err != nil || ph.CtxEnd != 0 {
			t.Errorf("published content header %d: %v, pathway entry at %d", i, err, ph.CtxEnd)
		}
	}
	for i, got := range handed {
		gh, err := parseContentHeader(got)
		if err != nil || gh.CtxEnd == 0 || gh.CtxEnd != gh.TableEnd {
			t.Errorf("content header %d handed through the proxy: %v, pathway entry at %d..%d of a table ending at %d", i, err, gh.CtxAt, gh.CtxEnd, gh.TableEnd)
			continue
		}
		found := false
		for _, hadTable := range []bool{true, false} {
			if hadTable || gh.CtxAt == gh.TableAt+4 { // the table holds the entry alone
				back := unsplice(t, got, hadTable)
				for _, p := range published {
					found = found || bytes.Equal(back, p)
				}
			}
		}
		if !found {
			t.Errorf("content header %d handed through the proxy is no published one plus the pathway entry: %x", i, got)
		}
	}

	// DSM: every routed, confirmed or committed publish is a checkpoint (not the returned and
	// rolled-back ones); every delivery and get is one, chained to the publish of its route, and
	// each message counts the same size at both ends.
	pubEdge := map[string]string{
		n.qDefault: "topic:" + n.qDefault, n.qDirect: "exchange:" + n.exDirect, n.qTopic: "exchange:" + n.exTopic,
		n.qGet: "topic:" + n.qGet, n.qTx: "topic:" + n.qTx, n.qCancel: "topic:" + n.qCancel,
	}
	wantIn := map[string]int{n.qDefault: 4, n.qDirect: 1, n.qTopic: 11, n.qGet: 1, n.qTx: 3, n.qCancel: 2}
	pts := h.rec.points()
	outs, ins := with(pts, "direction:out"), with(pts, "direction:in")
	if len(outs) != 22 || len(ins) != 22 {
		t.Fatalf("%d publish and %d consume points, want 22 and 22", len(outs), len(ins))
	}
	byHash := map[uint64]string{}
	outSizes, inSizes := map[string][]int64{}, map[string][]int64{}
	for _, p := range outs {
		if p.Service != "java-peer" {
			t.Errorf("publish service %q, want the client's connection name java-peer", p.Service)
		}
		e := hasTag(p, "topic:") + hasTag(p, "exchange:")
		byHash[p.Hash] = e
		outSizes[e] = append(outSizes[e], p.PayloadSize)
	}
	for _, p := range ins {
		q := strings.TrimPrefix(hasTag(p, "topic:"), "topic:")
		if e, ok := byHash[p.ParentHash]; !ok || e != pubEdge[q] {
			t.Errorf("consume point on %s chains to %q (parent %x), want the publish on %s", q, e, p.ParentHash, pubEdge[q])
		}
		inSizes[pubEdge[q]] = append(inSizes[pubEdge[q]], p.PayloadSize)
	}
	for q, k := range wantIn {
		e := pubEdge[q]
		slices.Sort(outSizes[e])
		slices.Sort(inSizes[e])
		if len(inSizes[e]) != k || !slices.Equal(outSizes[e], inSizes[e]) {
			t.Errorf("%s: published sizes %v, consumed sizes %v from %s, want %d of each, alike", e, outSizes[e], inSizes[e], q, k)
		}
	}
	var returned []string
	for _, e := range h.errs.events() {
		if e.Category == errtrack.LostMessage {
			returned = append(returned, e.Name+" "+e.Edge.Topic+e.Edge.Exchange)
		}
	}
	slices.Sort(returned)
	want := []string{"NO_ROUTE " + n.exDirect, "NO_ROUTE " + n.qDefault + "-nobody", "NO_ROUTE " + n.qTx + "-nobody"}
	if slices.Sort(want); !slices.Equal(returned, want) {
		t.Errorf("lost-message events %v, want the returns %v", returned, want)
	}
	if st := h.p.Stats(); st.Injected != 26 || st.Returns != 3 || st.DecodeErrors != 0 || st.UnknownQueue != 0 || st.Unconfirmed != 0 {
		t.Errorf("stats %+v: want 26 injected, 3 returns, no decode errors, unknown queues or unconfirmed", st)
	}
}

// TestJavaConsumesMessagesWithoutHeaders: messages the Java client publishes directly with no
// properties at all (no headers table) and consumes through the proxy, with a consumer and with
// basic.get, reach it as they do directly, and each is a consume checkpoint (with no parent).
func TestJavaConsumesMessagesWithoutHeaders(t *testing.T) {
	cp := buildJavaPeer(t)
	h := startProxy(t, nil)
	c := dial(t, directURL, "setup", 0)
	direct := runJavaPeer(t, cp, nil, "plain", directURL, directURL, declareQueue(t, c, unique("java-plain")))
	q := declareQueue(t, c, unique("java-plain"))
	prox := runJavaPeer(t, cp, nil, "plain", directURL, h.url, q)
	if len(prox) != 4 || !reflect.DeepEqual(direct, prox) {
		t.Errorf("consumed through the proxy:\n%v\ndirect:\n%v", prox, direct)
	}
	for _, l := range prox[:len(prox)-1] {
		if l["headersTable"] != false {
			t.Errorf("%v: a headers table reached the consumer", l["body"])
		}
	}
	pts := h.rec.points()
	if out := with(pts, "direction:out"); len(out) != 0 {
		t.Errorf("%d publish points for direct publishes", len(out))
	}
	ins := with(pts, "direction:in", "topic:"+q)
	if len(ins) != 3 {
		t.Fatalf("%d consume points on %s, want 3 (2 deliveries and a get)", len(ins), q)
	}
	for _, p := range ins {
		if p.ParentHash != 0 || p.Service != "java-plain-consumer" {
			t.Errorf("consume point %+v: want no parent, service java-plain-consumer", p)
		}
	}
}
