package amqp

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/internal/rabbitnode"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// privateRabbit is a RabbitMQ node of the test run's own, beside the machine's: tests that raise
// a resource alarm or need a TLS listener run against it, so the shared broker on 5672 never
// blocks a publisher or changes its configuration. It is started by the first test that asks for
// it and stopped by TestMain.
type privateRabbit struct {
	*rabbitnode.Node
	addr    string // plain AMQP listener
	tlsAddr string // AMQP over TLS listener
	ca      *testpki.PKI
}

var (
	privateOnce sync.Once
	privateNode *privateRabbit
	privateErr  error
)

// TestMain stops the private node, when a test started one.
func TestMain(m *testing.M) {
	code := m.Run()
	if privateNode != nil {
		privateNode.Stop()
	}
	os.Exit(code)
}

// needPrivateRabbit returns the run's private node, starting it on first use; like needRabbit it
// fails rather than skips when the node cannot run.
func needPrivateRabbit(t *testing.T) *privateRabbit {
	t.Helper()
	privateOnce.Do(func() {
		privateErr = errors.New("the test that started it stopped first") // stays if a t.Fatal ends the start
		ca := testpki.New(t, "dsmproxy private RabbitMQ CA")
		cert, key, _ := ca.Issue(t, "rabbitmq")
		n, err := rabbitnode.Start(rabbitnode.Config{Name: "dsmproxy-test", TLS: &rabbitnode.TLS{CertPEM: cert, KeyPEM: key, CAPEM: ca.CAPEM}})
		if err != nil {
			privateErr = err
			return
		}
		privateNode, privateErr = &privateRabbit{Node: n, addr: n.Addr, tlsAddr: n.TLSAddr, ca: ca}, nil
	})
	if privateErr != nil {
		t.Fatalf("private RabbitMQ node: %v", privateErr)
	}
	return privateNode
}

// ctl runs rabbitmqctl against the node.
func (r *privateRabbit) ctl(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	if out, err := r.Ctl(ctx, time.Minute, args...).CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}
