package amqp

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
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

// TestRefusedLoginWithoutCloseTracked: amqp091-go does not ask for a Connection.Close, so
// RabbitMQ refuses its login by closing the socket. The refusal is tracked as the one of a client
// that asked (same operation, code and name: one group per service), and the Warn line blames
// the credentials only: RabbitMQ checks the vhost later, at Connection.Open, with a close of its
// own.
func TestRefusedLoginWithoutCloseTracked(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	_, err := amqp091.DialConfig("amqp://guest:wrong@"+h.p.Addr().String()+"/",
		amqp091.Config{Properties: amqp091.Table{"connection_name": "refused-go"}})
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.AccessRefused {
		t.Fatalf("dial with a wrong password: %v, want 403 ACCESS_REFUSED", err)
	}
	waitFor(t, "the refusal tracked", func() bool { return len(refusals(h)) > 0 })
	ev := refusals(h)[0]
	if ev.Category != errtrack.BrokerError || ev.Name != "ACCESS_REFUSED" || ev.Operation != "Connection.StartOk" || ev.Service != "refused-go" {
		t.Errorf("tracked %s %s on %q for %q (%s), want broker_error ACCESS_REFUSED on Connection.StartOk for refused-go",
			ev.Category, ev.Name, ev.Operation, ev.Service, ev.Message)
	}
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "refused the credentials") })
	if !strings.Contains(logs.String(), `"user":"guest"`) {
		t.Errorf("the log does not name the user: %s", logs.String())
	}
	if strings.Contains(logs.String(), "vhost") {
		t.Errorf("the log blames the vhost, which RabbitMQ checks at Connection.Open: %s", logs.String())
	}
}

// TestRefusedLoginLogNamesUser: the Warn line about a refused login names the user the client
// logged in as, so that of several clients the misconfigured one shows, also for a client that
// sends no connection_name (rabbitmq-c), whose login no other line names.
func TestRefusedLoginLogNamesUser(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	user := unique("nobody")
	url := toolURL("amqp://" + user + ":wrong@" + h.p.Addr().String() + "/")
	if out, err := exec.CommandContext(t.Context(), amqpTool(t, "amqp-declare-queue"), "-u", url, "-q", unique("refused")).CombinedOutput(); err == nil {
		t.Fatalf("amqp-declare-queue as an unknown user succeeded: %s", out)
	}
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "ACCESS_REFUSED") })
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "ACCESS_REFUSED") && !strings.Contains(line, `"user":"`+user+`"`) {
			t.Errorf("the refusal's line does not name the user %s: %s", user, line)
		}
	}
}

// TestRefusedLoginRetriesLoggedOnce: a client that retries a refused login in a loop (amqp091-go,
// whose login RabbitMQ refuses by closing the socket, and rabbitmq-c, which asks for a
// Connection.Close) writes one Warn line for it, not one a try; every try is still tracked and
// logged at Debug.
func TestRefusedLoginRetriesLoggedOnce(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs).Level(zerolog.DebugLevel) })
	const tries = 6
	for range tries {
		if _, err := amqp091.Dial("amqp://guest:wrong@" + h.p.Addr().String() + "/"); err == nil {
			t.Fatal("dial with a wrong password succeeded")
		}
		url := toolURL("amqp://guest:wrong@" + h.p.Addr().String() + "/")
		if out, err := exec.CommandContext(t.Context(), amqpTool(t, "amqp-declare-queue"), "-u", url, "-q", unique("refused")).CombinedOutput(); err == nil {
			t.Fatalf("amqp-declare-queue with a wrong password succeeded: %s", out)
		}
	}
	waitFor(t, "every refusal tracked", func() bool { return len(refusals(h)) >= 2*tries })
	count := func(prefix string) (warn, all int) {
		for _, l := range strings.Split(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil || !strings.HasPrefix(fmt.Sprint(m["message"]), prefix) {
				continue
			}
			all++
			if m["level"] == "warn" {
				warn++
			}
		}
		return
	}
	waitFor(t, "every close logged", func() bool { _, all := count("the broker closed the connection"); return all >= 2*tries })
	if warn, all := count("the broker closed the connection after the client's login"); warn != 1 || all != tries {
		t.Errorf("socket closes (amqp091-go): %d Warn lines of %d, want 1 of %d", warn, all, tries)
	}
	if warn, all := count("the broker closed the connection"); warn != 2 || all != 2*tries {
		t.Errorf("all closes: %d Warn lines of %d, want 2 (one a client and reason) of %d", warn, all, 2*tries)
	}
}

// TestRefusedLoginScanLoggedSparingly: a client that tries a new login each time (a scanner)
// makes each close new to the log; those are Warn lines for the first 10 a minute only. A
// minute later, a close new to the log is a Warn line again (a broker restart, whose closes
// are all new, must not leave the next refused login at Debug for the process's life).
func TestRefusedLoginScanLoggedSparingly(t *testing.T) {
	var logs syncbuf.Buffer
	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC).UnixNano())
	h := startProxy(t, func(cfg *Config) {
		cfg.Log = zerolog.New(&logs).Level(zerolog.DebugLevel)
		cfg.Clock = func() time.Time { return time.Unix(0, clock.Load()) }
	})
	scan := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := amqp091.Dial(fmt.Sprintf("amqp://scan%d:wrong@%s/", i, h.p.Addr())); err == nil {
				t.Fatal("dial with a made-up login succeeded")
			}
		}
		waitFor(t, "every refusal tracked", func() bool { return len(refusals(h)) >= to })
	}
	closeLines := func(want int) (warn, all int) {
		waitFor(t, "every close logged", func() bool {
			warn, all = 0, 0
			for _, l := range strings.Split(logs.String(), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(l), &m) != nil || !strings.HasPrefix(fmt.Sprint(m["message"]), "the broker closed the connection") {
					continue
				}
				all++
				if m["level"] == "warn" {
					warn++
				}
			}
			return all >= want
		})
		return warn, all
	}
	const tries = 14
	scan(0, tries)
	if warn, all := closeLines(tries); warn != 10 || all != tries {
		t.Errorf("%d made-up logins: %d Warn lines of %d, want 10 of %d", tries, warn, all, tries)
	}
	clock.Add(int64(61 * time.Second))
	scan(tries, tries+2)
	if warn, all := closeLines(tries + 2); warn != 12 || all != tries+2 {
		t.Errorf("two more made-up logins a minute later: %d Warn lines of %d in all, want 12 of %d", warn, all, tries+2)
	}
}
