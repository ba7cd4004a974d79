package amqp

import (
	"os/exec"
	"testing"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

// refusals returns the tracked ACCESS_REFUSED events.
func refusals(h *harness) []errtrack.Event {
	var out []errtrack.Event
	for _, e := range h.errs.events() {
		if e.Code == 403 {
			out = append(out, e)
		}
	}
	return out
}

// TestRefusedLoginWithCloseNamesStartOk: rabbitmq-c asks for a Connection.Close on a refused
// login (authentication_failure_close); RabbitMQ's close names no method (0.0), and the tracked
// error names the login the broker answered, Connection.StartOk, not the Connection.Close it
// came in.
func TestRefusedLoginWithCloseNamesStartOk(t *testing.T) {
	h := startProxy(t, nil)
	url := toolURL("amqp://guest:wrong@" + h.p.Addr().String() + "/")
	out, err := exec.CommandContext(t.Context(), amqpTool(t, "amqp-declare-queue"), "-u", url, "-q", unique("refused")).CombinedOutput()
	if err == nil {
		t.Fatalf("amqp-declare-queue with a wrong password succeeded: %s", out)
	}
	waitFor(t, "the refusal tracked", func() bool { return len(refusals(h)) > 0 })
	ev := refusals(h)[0]
	if ev.Category != errtrack.BrokerError || ev.Name != "ACCESS_REFUSED" || ev.Operation != "Connection.StartOk" {
		t.Errorf("tracked %s %s on %q (%s), want broker_error ACCESS_REFUSED on Connection.StartOk", ev.Category, ev.Name, ev.Operation, ev.Message)
	}
}
