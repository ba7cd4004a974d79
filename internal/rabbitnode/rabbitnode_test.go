package rabbitnode

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// TestStartServeStop: a node answers AMQP on its plain and TLS listeners under its own name, and
// Stop leaves neither its Erlang process nor its directory behind (a leaked node keeps a
// distribution port and memory until the machine restarts).
func TestStartServeStop(t *testing.T) {
	ca := testpki.New(t, "rabbitnode test CA")
	cert, key, _ := ca.Issue(t, "rabbitmq")
	n, err := Start(Config{Name: "rabbitnode-test", TLS: &TLS{CertPEM: cert, KeyPEM: key, CAPEM: ca.CAPEM}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			n.Stop()
		}
	})
	if !strings.HasPrefix(n.Name, "rabbitnode-test-") || n.Addr == "" || n.TLSAddr == "" {
		t.Fatalf("node %+v", n)
	}

	c, err := amqp091.Dial(n.URL())
	if err != nil {
		t.Fatalf("plain listener: %v", err)
	}
	c.Close()
	c, err = amqp091.DialTLS("amqps://guest:guest@"+n.TLSAddr+"/", &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("TLS listener: %v", err)
	}
	c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	out, err := n.Ctl(ctx, time.Minute, "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), n.Name) {
		t.Fatalf("rabbitmqctl status: %v\n%s", err, out)
	}

	b, err := os.ReadFile(filepath.Join(n.dir, "node.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("node.pid %q", b)
	}
	n.Stop()
	stopped = true
	if _, err := os.Stat(n.dir); !os.IsNotExist(err) {
		t.Errorf("node directory %s left after Stop (%v)", n.dir, err)
	}
	// A killed process may take a moment to be reaped.
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil || len(processesNaming(n.Name)) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after Stop, the node's Erlang process %d or processes %v still run", pid, processesNaming(n.Name))
		}
	}
}

// TestStartTimesOutAndCleansUp: a node that does not answer within Boot makes Start fail with an
// error that names it, and leaves no process of it running.
func TestStartTimesOutAndCleansUp(t *testing.T) {
	n, err := Start(Config{Name: "rabbitnode-test-slow", Boot: time.Millisecond})
	if err == nil {
		n.Stop()
		t.Fatal("a node answered AMQP within a millisecond of its start")
	}
	if !strings.Contains(err.Error(), "rabbitnode-test-slow-") || !strings.Contains(err.Error(), "did not answer") {
		t.Errorf("error %q does not say which node did not answer", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		pids := processesNaming("rabbitnode-test-slow-")
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v of the node still run after Start failed", pids)
		}
	}
}

// processesNaming returns the pids whose command line or environment contains s (the server
// script gets the node name in RABBITMQ_NODENAME, the Erlang VM on its command line).
func processesNaming(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), f)); err == nil && strings.Contains(string(b), s) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// TestStartAgainWhenAPortIsTaken: a node whose distribution port another process took between
// the pick and the bind (what made a CI run fail: "dist_port_already_used") is started again on
// other ports, and answers.
func TestStartAgainWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "0.0.0.0:0") // the node binds its distribution port on every interface
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	pickPorts = func(n int) ([]int, error) {
		picks++
		ports, err := freePorts(n)
		if err == nil && picks == 1 {
			ports[2] = taken.Addr().(*net.TCPAddr).Port // the distribution port
		}
		return ports, err
	}
	t.Cleanup(func() { pickPorts = freePorts })
	n, err := Start(Config{Name: "rabbitnode-port-test"})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer n.Stop()
	if picks != 2 {
		t.Errorf("%d port picks, want 2 (the taken one, then another)", picks)
	}
	c, err := amqp091.Dial(n.URL())
	if err != nil {
		t.Fatalf("the node started again: %v", err)
	}
	c.Close()
}
