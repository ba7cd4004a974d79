package amqp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/dsmproxy/dsmproxy/internal/npmpeer"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// nodeDir holds the amqplib peer; its node_modules is installed by the test when missing.
var nodeDir = filepath.Join("..", "..", "testdata", "amqp", "node")

// needNode installs amqplib and rhea (npm) for the peer scripts, failing with what CI must provide.
func needNode(t *testing.T) {
	t.Helper()
	npmpeer.Install(t, nodeDir, "the AMQP tests (Node's amqplib drives RabbitMQ too)", "amqplib", "rhea")
}

// peerMsg is a line a peer script (amqplib's, pika's) prints: a message it received, or the
// outcome of its confirmed publishes.
type peerMsg struct {
	Via         string         `json:"via"`
	Body        string         `json:"body"`
	DeliveryTag uint64         `json:"deliveryTag"`
	Properties  map[string]any `json:"properties"`
	Confirms    []string       `json:"confirms"`
}

func runNodePeer(t *testing.T, url, q, gq string) []peerMsg {
	t.Helper()
	cmd := exec.Command("node", "peer.js", url, q, gq)
	cmd.Dir = nodeDir
	return runPeer(t, cmd)
}

// runPeer runs a peer script and reads the JSON lines it prints.
func runPeer(t *testing.T, cmd *exec.Cmd) []peerMsg {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, stderr.String())
	}
	var msgs []peerMsg
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var m peerMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s printed %q: %v", cmd, sc.Text(), err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// TestAmqplibThroughProxy: Node's amqplib publishes with confirms, consumes and gets through the
// proxy; it receives what it receives directly plus the pathway header, and DSM chains.
func TestAmqplibThroughProxy(t *testing.T) {
	needNode(t)
	h := startProxy(t, nil)
	c := dial(t, directURL, "setup", 0)
	run := func(url string) []peerMsg {
		return runNodePeer(t, url, declareQueue(t, c, unique("node-q")), declareQueue(t, c, unique("node-g")))
	}
	direct, prox := run(directURL), run(h.url)
	checkPeerRuns(t, h, direct, prox, 4, "node-peer", 3, 3)
}

// checkPeerRuns compares what a peer script printed directly and through the proxy (lines each):
// the same messages, properties, delivery tags and confirms, plus a pathway header that decodes;
// and the proxy's checkpoints: publishes publish points named after service, each of the
// consumes consume points chained to a publish.
func checkPeerRuns(t *testing.T, h *harness, direct, prox []peerMsg, lines int, service string, publishes, consumes int) {
	t.Helper()
	if len(direct) != lines || len(prox) != lines {
		t.Fatalf("the peer printed %d lines direct, %d through the proxy, want %d", len(direct), len(prox), lines)
	}
	for i := range direct {
		d, p := direct[i], prox[i]
		if d.Properties != nil {
			hd, _ := d.Properties["headers"].(map[string]any)
			hp, _ := p.Properties["headers"].(map[string]any)
			if _, ok := hd[pathway.HeaderKey]; ok {
				t.Errorf("%s: direct delivery has a pathway header", d.Body)
			}
			v, _ := hp[pathway.HeaderKey].(string)
			if _, err := pathway.DecodeBase64String(v); err != nil {
				t.Errorf("%s: pathway header %q through the proxy: %v", p.Body, v, err)
			}
			delete(hp, pathway.HeaderKey)
			if len(hp) == 0 && hd == nil {
				// amqplib reports an absent table as undefined; the proxy added one.
				delete(p.Properties, "headers")
				delete(d.Properties, "headers")
			}
		}
		if !reflect.DeepEqual(d, p) {
			t.Errorf("line %d differs:\ndirect %+v\nproxy  %+v", i, d, p)
		}
	}
	pts := h.rec.points()
	outs, ins := with(pts, "direction:out"), with(pts, "direction:in")
	if len(outs) != publishes || len(ins) != consumes {
		t.Fatalf("%d publish and %d consume points, want %d and %d", len(outs), len(ins), publishes, consumes)
	}
	hashes := map[uint64]bool{}
	for _, p := range outs {
		hashes[p.Hash] = true
		if p.Service != service {
			t.Errorf("publish service %q, want the peer's connection_name %q", p.Service, service)
		}
	}
	for _, p := range ins {
		if !hashes[p.ParentHash] {
			t.Errorf("consume point %v does not chain to a publish", p.EdgeTags)
		}
	}
}
