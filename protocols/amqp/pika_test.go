package amqp

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// pikaPeer is pika's peer script; /usr/bin/python3 is Debian's, which python3-pika installs into.
var pikaPeer = filepath.Join("..", "..", "testdata", "amqp", "python", "peer.py")

const debianPython = "/usr/bin/python3"

// needPika fails, saying how to install it, when Debian's python3-pika is missing.
func needPika(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(debianPython, "-c", "import pika").CombinedOutput(); err != nil {
		t.Fatalf("pika (Python's AMQP client) is required: install it with `apt-get install -y python3-pika` (%v: %s)", err, out)
	}
}

// TestPikaThroughProxy: Python's pika, a fourth AMQP client with a codec of its own, publishes
// with confirms (one mandatory publish comes back returned), consumes and gets through the proxy;
// it receives what it receives directly plus the pathway header, and DSM chains.
func TestPikaThroughProxy(t *testing.T) {
	needPika(t)
	h := startProxy(t, nil)
	c := dial(t, directURL, "setup", 0)
	run := func(url string) []peerMsg {
		q, gq := declareQueue(t, c, unique("pika-q")), declareQueue(t, c, unique("pika-g"))
		return runPeer(t, exec.Command(debianPython, pikaPeer, url, q, gq))
	}
	direct, prox := run(directURL), run(h.url)
	checkPeerRuns(t, h, direct, prox, 4, "pika-peer", 3, 3) // the returned publish is not counted
	if got := prox[len(prox)-1].Confirms; len(got) != 4 || got[3] != "returned" {
		t.Errorf("pika's confirms through the proxy: %v, want 3 acks and the mandatory publish returned", got)
	}
}
