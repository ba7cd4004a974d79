package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/internal/closedport"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// buildBinary builds dsmproxy once per test binary run.
var buildOnce struct {
	sync.Once
	path string
	err  error
}

func dsmproxyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dsmproxy-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "dsmproxy")
		out, err := exec.Command("go", "build", "-race", "-o", buildOnce.path, ".").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.path
}

// startWatched starts cmd with its stderr watched, and reports its exit once every line it wrote
// has been read. (exec's StderrPipe would not do: Wait closes that pipe, and the last lines,
// written just before the exit, could be lost to the watcher.)
func startWatched(t *testing.T, cmd *exec.Cmd) (*logWatcher, <-chan error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	err = cmd.Start()
	w.Close() // the child holds its own copy: the reader ends when the child does
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	logs := watchLogs(r)
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		<-logs.done
		r.Close()
		exited <- err
	}()
	return logs, exited
}

// logWatcher reads the JSON log lines of a dsmproxy process and hands out fields of chosen messages.
type logWatcher struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   bytes.Buffer
	more  chan struct{}
	done  chan struct{} // closed when the output ended
}

func watchLogs(r io.Reader) *logWatcher {
	w := &logWatcher{more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var m map[string]any
			_ = json.Unmarshal(sc.Bytes(), &m)
			w.mu.Lock()
			w.raw.Write(sc.Bytes())
			w.raw.WriteByte('\n')
			if m != nil {
				w.lines = append(w.lines, m)
			}
			w.mu.Unlock()
			select {
			case w.more <- struct{}{}:
			default:
			}
		}
	}()
	return w
}

// field waits for a log line with message msg (and protocol, when set) and returns one of its fields.
func (w *logWatcher) field(t *testing.T, msg, protocol, key string) string {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		w.mu.Lock()
		for _, l := range w.lines {
			if l["message"] == msg && (protocol == "" || l["protocol"] == protocol) {
				w.mu.Unlock()
				return fmt.Sprint(l[key])
			}
		}
		w.mu.Unlock()
		select {
		case <-w.more:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no log line %q; logs:\n%s", msg, w.String())
		}
	}
}

func (w *logWatcher) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.raw.String() }

// TestRunSIGTERM runs the real binary in front of a kfake cluster: /readyz answers, records flow
// through with the pathway header, SIGTERM with a consumer connection open exits 0, and the last
// flush reaches the Agent.
func TestRunSIGTERM(t *testing.T) {
	bin := dsmproxyBinary(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	agent := agenttest.New(t)
	cfgFile := filepath.Join(t.TempDir(), "dsmproxy.yaml")
	cfg := fmt.Sprintf(`env: it
drain_timeout: 5s
admin:
  listen: 127.0.0.1:0
agent:
  url: %s
  flush_interval: 1s
kafka:
  - listen: 127.0.0.1:0
    bootstrap: [%s]
`, agent.URL(), strings.Join(cluster.ListenAddrs(), ", "))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgFile, "--log-level", "debug")
	cmd.Env = append(os.Environ(), "DD_SERVICE=fallback-svc")
	logs, exited := startWatched(t, cmd)

	admin := logs.field(t, "admin listening: /dsm /metrics /stats /errors /healthz /readyz /debug/pprof/", "", "listen")
	bootstrap := logs.field(t, "front listening", "kafka", "listen")
	for deadline := time.Now().Add(60 * time.Second); ; {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never answered 200 (last: %v); logs:\n%s", err, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prod, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ClientID("checkout-7"), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	if err := prod.ProduceSync(ctx, &kgo.Record{Topic: "payments", Value: []byte("paid")}).FirstErr(); err != nil {
		t.Fatalf("produce through dsmproxy: %v", err)
	}
	cons, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ClientID("ledger"), kgo.ConsumeTopics("payments"),
		kgo.ConsumerGroup("ledger-group"), kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	fs := cons.PollRecords(ctx, 1)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 || len(recs[0].Headers) != 1 || recs[0].Headers[0].Key != "dd-pathway-ctx-base64" {
		t.Fatalf("consumed %+v; want the record with one dd-pathway-ctx-base64 header", recs)
	}
	if err := cons.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	// What DSM sees, for people without an Agent: the pathway and the group's lag at GET /dsm.
	var view string
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + admin + "/dsm")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			view = strings.Join(strings.Fields(string(b)), " ")
		}
		if strings.Contains(view, "checkout direction:out kafka_cluster_id:kfake topic:payments") &&
			strings.Contains(view, "ledger direction:in group:ledger-group kafka_cluster_id:kfake topic:payments") &&
			strings.Contains(view, "ledger-group payments 1 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /dsm never showed the pathway and the lag:\n%s", view)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Every counter, as JSON: the Kafka front injected and consumed the record.
	resp, err := http.Get("http://" + admin + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Fronts []struct {
			Protocol string
			Stats    struct{ InjectedRecords, ConsumedRecords uint64 }
		}
		Agent        *struct{ Pending int } // present: an Agent is configured
		Checkpointer *struct{ CacheResets uint64 }
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || len(st.Fronts) != 1 || st.Fronts[0].Protocol != "kafka" || st.Fronts[0].Stats.InjectedRecords == 0 ||
		st.Fronts[0].Stats.ConsumedRecords == 0 || st.Agent == nil || st.Checkpointer == nil {
		t.Fatalf("GET /stats = %+v (%v); want the kafka front with the injected and the consumed record, and the Agent sink's counters", st, err)
	}
	// The same for a Prometheus scraper, parsed by Prometheus's own text parser.
	fams := scrapeMetrics(t, "http://"+admin+"/metrics")
	for _, want := range []struct {
		family string
		labels map[string]string
		check  func(float64) bool
	}{
		{"dsmproxy_kafka_injected_records_total", map[string]string{"listen": bootstrap}, func(v float64) bool { return v >= 1 }},
		{"dsmproxy_kafka_consumed_records_total", nil, func(v float64) bool { return v >= 1 }},
		{"dsmproxy_pathway_messages_per_second", map[string]string{"service": "checkout",
			"edge_tags": "direction:out,kafka_cluster_id:kfake,topic:payments,type:kafka"}, func(v float64) bool { return v > 0 }},
		{"dsmproxy_pathway_latency_seconds", map[string]string{"service": "ledger", "quantile": "0.99"}, func(v float64) bool { return v >= 0 }},
		{"dsmproxy_kafka_consumer_lag_messages", map[string]string{"consumer_group": "ledger-group", "topic": "payments"}, func(v float64) bool { return v == 0 }},
		{"dsmproxy_kafka_offset", map[string]string{"service": "ledger", "type": "kafka_high_watermark", "topic": "payments", "partition": "0"}, func(v float64) bool { return v == 1 }},
		{"dsmproxy_aggregator_points_total", nil, func(v float64) bool { return v >= 2 }},
		{"dsmproxy_agent_pending", nil, func(v float64) bool { return v >= 0 }},
	} {
		if v, ok := metricValue(fams, want.family, want.labels); !ok || !want.check(v) {
			t.Errorf("GET /metrics: %s%v = %v (found: %v)", want.family, want.labels, v, ok)
		}
	}
	// SIGHUP reloads TLS (none here) and must not end the process.
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logs.field(t, "SIGHUP: no TLS certificates configured, nothing to reload", "", "level")
	// The consumer's connections stay open across SIGTERM; the drain closes them.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("dsmproxy exited with %v after SIGTERM; logs:\n%s", err, logs)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("dsmproxy still running a minute after SIGTERM (drain 5s); logs:\n%s", logs)
	}
	pts := agent.Points()
	prodPts := agenttest.PointsWith(pts, "current", "direction:out", "kafka_cluster_id:kfake", "topic:payments", "type:kafka")
	consPts := agenttest.PointsWith(pts, "current", "direction:in", "group:ledger-group", "kafka_cluster_id:kfake", "topic:payments", "type:kafka")
	if len(prodPts) != 1 || prodPts[0].Service != "checkout" || len(consPts) != 1 || consPts[0].ParentHash != prodPts[0].Hash {
		t.Fatalf("the last flush did not bring the produce and consume points: %+v\nlogs:\n%s", pts, logs)
	}
	// The lag of the pipeline as the Agent gets it: the producer's last offset, the broker's high
	// watermark the consumer saw and the group's commit (the next offset to read). The cluster id
	// comes last, as dd-trace-go writes backlog tags.
	backlogs := map[string]int64{}
	for _, b := range agent.Backlogs() {
		backlogs[b.Service+"|"+strings.Join(b.Tags, ",")] = b.Value
	}
	for k, v := range map[string]int64{
		"checkout|partition:0,topic:payments,type:kafka_produce,kafka_cluster_id:kfake":                          0,
		"ledger|partition:0,topic:payments,type:kafka_high_watermark,kafka_cluster_id:kfake":                     1,
		"ledger|consumer_group:ledger-group,partition:0,topic:payments,type:kafka_commit,kafka_cluster_id:kfake": 1,
	} {
		if got, ok := backlogs[k]; !ok || got != v {
			t.Errorf("backlog %s = %d (sent: %v), want %d; all: %v", k, got, ok, v, backlogs)
		}
	}
	if !strings.Contains(logs.String(), "shutting down: draining connections") {
		t.Errorf("no drain log line")
	}
}

// TestDemo runs the embedded demo with short buckets and checks the table shows the whole pipeline
// with throughput and chained hashes, for Kafka, AMQP and SQS; a fake Agent fed through
// --agent-url shows the edge types the table leaves out.
func TestDemo(t *testing.T) {
	var out syncbuf.Buffer
	agent := agenttest.New(t)
	if !answers("127.0.0.1:5672") {
		t.Fatal("RabbitMQ does not answer on 127.0.0.1:5672 (the demo's AMQP part needs it): start it with `rabbitmq-server -detached`")
	}
	wants := []string{
		"orders    direction:out kafka_cluster_id:kfake topic:orders",
		"billing   direction:in group:billing kafka_cluster_id:kfake topic:orders",
		"billing   direction:out kafka_cluster_id:kfake topic:invoices",
		"mailer    direction:in group:mailer kafka_cluster_id:kfake topic:invoices",
		"CONSUMER GROUP",
		"TRACKED ERRORS",
		"auditor   kafka Produce       direction:out kafka_cluster_id:kfake topic:audit-log",
		"MESSAGE_TOO_LARGE",
		"shipping   direction:out exchange:dsmproxy-demo has_routing_key:true",
		"warehouse  direction:in topic:dsmproxy-demo-parcels",
		"lost_message    shipping  amqp Basic.Publish",
		"NO_ROUTE",
		"checkout   direction:out topic:dsmproxy-demo-payments",
		"payments   direction:in topic:dsmproxy-demo-payments",
		"broker_error    checkout  sqs SendMessage",
	}
	// Column widths depend on the rows: compare with runs of spaces collapsed.
	squash := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	missing := func() []string {
		s := squash(out.String())
		var m []string
		for _, want := range wants {
			if !strings.Contains(s, squash(want)) {
				m = append(m, want)
			}
		}
		return m
	}
	// The demo runs until every row has shown (a loaded machine takes longer to get there), then
	// is stopped as a user stops it.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- runDemo(ctx, demoOptions{rate: 100, flush: time.Second, logLevel: "error", amqpUpstream: "127.0.0.1:5672", sqs: true, agentURL: agent.URL()}, &out, io.Discard)
	}()
	var err error
poll:
	for len(missing()) > 0 {
		select {
		case err = <-done:
			break poll
		case <-time.After(100 * time.Millisecond):
		}
	}
	cancel()
	if err == nil {
		err = <-done
	}
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range missing() {
		t.Errorf("demo output lacks %q:\n%s", want, out.String())
	}
	s := squash(out.String())
	if strings.Contains(s, "did not decode") {
		t.Errorf("the stand-in Agent could not decode a payload:\n%s", s)
	}
	// The auditor's records are over audit-log's limit as sent: the broker's refusal is the
	// event, and no proxy skip (the proxy read the topic's limit, as from a real cluster).
	if strings.Contains(s, "proxy_skip auditor") {
		t.Errorf("the demo shows proxy skips for records too large as sent:\n%s", out.String())
	}
	// checkout -> [sqs queue] -> payments, as the Agent sees it: typed sqs edges, chained hashes.
	sqsEdge := func(pts []agenttest.Point, service, dir string) []agenttest.Point {
		var got []agenttest.Point
		for _, p := range pts {
			if p.TimestampType == "current" && p.Service == service &&
				slices.Equal(p.EdgeTags, []string{"direction:" + dir, "topic:" + demoSQSQueue, "type:sqs"}) {
				got = append(got, p)
			}
		}
		return got
	}
	agent.WaitFor(t, 10*time.Second, "the SQS produce and consume points", func(a *agenttest.Agent) bool {
		pts := a.Points()
		return len(sqsEdge(pts, "checkout", "out")) > 0 && len(sqsEdge(pts, "payments", "in")) > 0
	})
	pts := agent.Points()
	prod, cons := sqsEdge(pts, "checkout", "out"), sqsEdge(pts, "payments", "in")
	if cons[0].ParentHash != prod[0].Hash {
		t.Errorf("payments' consume point (parent %016x) does not follow checkout's produce point (%016x)", cons[0].ParentHash, prod[0].Hash)
	}
}

// startHeldDrain starts the binary with an AWS front and one request in flight through it, which
// its upstream holds until release is called: a drain begun meanwhile lasts until then (its
// drain time is 10 minutes).
func startHeldDrain(t *testing.T) (cmd *exec.Cmd, logs *logWatcher, exited <-chan error, release func()) {
	t.Helper()
	bin := dsmproxyBinary(t)
	arrived, held := make(chan struct{}, 1), make(chan struct{})
	release = sync.OnceFunc(func() { close(held) })
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-held
	}))
	t.Cleanup(upstream.Close)
	t.Cleanup(release) // before Close (cleanups run last first), which waits for the handler
	cfgFile := filepath.Join(t.TempDir(), "dsmproxy.yaml")
	cfg := fmt.Sprintf("drain_timeout: 10m\nadmin: {listen: \"off\"}\nagent: {disabled: true}\naws:\n  - listen: 127.0.0.1:0\n    upstream: %s\n    trust_clients: true\n", upstream.URL)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, "run", "--config", cfgFile)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY=secret", "AWS_REGION=us-east-1")
	logs, exited = startWatched(t, cmd)

	front := logs.field(t, "front listening", "aws", "listen")
	answered := make(chan error, 1)
	go func() {
		resp, err := http.Post("http://"+front+"/", "application/x-www-form-urlencoded", strings.NewReader("Action=ListQueues&Version=2012-11-05"))
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	select {
	case <-arrived:
	case err := <-answered:
		t.Fatalf("the request was answered (%v) before it reached the upstream; logs:\n%s", err, logs)
	case <-time.After(60 * time.Second):
		t.Fatalf("the request never reached the upstream; logs:\n%s", logs)
	}
	return cmd, logs, exited, release
}

// TestRunSecondSignalExitsNow: a second SIGINT or SIGTERM during the drain ends the process at
// once with exit code 1 and a log line saying so, where it used to be ignored until the drain
// time (10 minutes here, held by a request the upstream never answers) was up.
func TestRunSecondSignalExitsNow(t *testing.T) {
	for _, sigs := range [][2]syscall.Signal{{syscall.SIGINT, syscall.SIGINT}, {syscall.SIGTERM, syscall.SIGINT}} {
		t.Run(signalName(sigs[0])+" then "+signalName(sigs[1]), func(t *testing.T) {
			cmd, logs, exited, _ := startHeldDrain(t)
			if err := cmd.Process.Signal(sigs[0]); err != nil {
				t.Fatal(err)
			}
			// The second signal must come once the first was taken: two pending ones would be
			// one. The same signal again must also come after repeatWindow, or it is the first
			// one's copy (TestRunRepeatedSignalIsOneRequest).
			logs.field(t, "shutting down: draining connections", "", "drain_timeout")
			if sigs[1] == sigs[0] {
				time.Sleep(repeatWindow + 100*time.Millisecond)
			}
			if err := cmd.Process.Signal(sigs[1]); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("dsmproxy exited with %v after the second signal, want exit code 1; logs:\n%s", err, logs)
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("dsmproxy still draining a minute after the second signal (drain time 10m); logs:\n%s", logs)
			}
			if got, want := logs.field(t, secondSignalMsg, "", "signal"), signalName(sigs[1]); got != want {
				t.Errorf("the exit line names signal %q, want %q", got, want)
			}
			if got, want := logs.field(t, "shutting down; SIGTERM or SIGINT again exits at once", "", "signal"), signalName(sigs[0]); got != want {
				t.Errorf("the shutdown line names signal %q, want %q", got, want)
			}
		})
	}
}

// TestRunRepeatedSignalIsOneRequest: the same signal twice at once is one request to stop.
// `timeout` sends its signal to the process and then to its process group, and a wrapper script
// that forwards Ctrl-C repeats the SIGINT its terminal sent the whole group: the proxy must
// drain and exit 0, where it took the copy for a second signal and exited 1 at once, cutting
// connections and skipping the last flush, about one run in three under `timeout`.
func TestRunRepeatedSignalIsOneRequest(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(signalName(sig), func(t *testing.T) {
			// On a loaded machine the copy may be sent more than the window after the first was
			// taken; the proxy's line says when it came, and such an attempt proves nothing.
			for attempt := 1; ; attempt++ {
				if repeatedSignalAttempt(t, sig) {
					return
				}
				if attempt == 3 {
					t.Fatalf("in 3 attempts the signal's copy never reached dsmproxy within %s of the first", repeatWindow)
				}
			}
		})
	}
}

// repeatedSignalAttempt sends sig twice to a draining dsmproxy and checks the second is taken as
// a copy; it reports false, having checked nothing, when the copy came after repeatWindow.
func repeatedSignalAttempt(t *testing.T, sig syscall.Signal) bool {
	cmd, logs, exited, release := startHeldDrain(t)
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	// The copy must come once the first was taken (two pending ones would be one),
	// which is when the process is most likely to mistake it for a second request.
	logs.field(t, "shutting down: draining connections", "", "drain_timeout")
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	for deadline := time.After(60 * time.Second); !logs.has(repeatedSignalMsg); {
		select {
		case err := <-exited:
			if after, perr := time.ParseDuration(logs.value(secondSignalMsg, "after")); perr == nil && after >= repeatWindow {
				t.Logf("the copy reached dsmproxy %s after the first signal, past the %s window: trying again", after, repeatWindow)
				return false
			}
			t.Fatalf("dsmproxy exited (%v) at the signal's copy, with a request still in flight; logs:\n%s", err, logs)
		case <-logs.more:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no log line %q a minute after the signal's copy; logs:\n%s", repeatedSignalMsg, logs)
		}
	}
	release()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("dsmproxy exited with %v once its drain finished, want 0; logs:\n%s", err, logs)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("dsmproxy still draining a minute after its last request was answered; logs:\n%s", logs)
	}
	logs.field(t, "stopped", "", "message")
	if logs.has(secondSignalMsg) {
		t.Errorf("the copy was taken for a second signal; logs:\n%s", logs)
	}
	return true
}

// secondSignalMsg is dsmproxy's Warn line for a second shutdown signal.
const secondSignalMsg = "second shutdown signal: exiting now, exit code 1; open connections are cut and the last DSM flush is not sent"

// value returns key of the first log line with message msg read so far, or "".
func (w *logWatcher) value(msg, key string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.lines {
		if l["message"] == msg {
			if v, ok := l[key]; ok {
				return fmt.Sprint(v)
			}
		}
	}
	return ""
}

// has reports whether a log line with message msg has been read.
func (w *logWatcher) has(msg string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.lines {
		if l["message"] == msg {
			return true
		}
	}
	return false
}

// TestListenAddressInUse: a listen address another process holds fails the start with what to
// change, for every front and the admin listener: the bind error alone names no setting.
func TestListenAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"kafka", Config{Kafka: []KafkaConfig{{Listen: addr, Bootstrap: []string{"127.0.0.1:9"}}}},
			[]string{"kafka front " + addr, "address already in use", "another process listens on " + addr, "kafka[0].listen"}},
		{"amqp", Config{AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9"}, {Listen: addr, Upstream: "127.0.0.1:9"}}},
			[]string{"amqp front " + addr, "another process listens on " + addr, "amqp[1].listen"}},
		{"aws", Config{AWS: []AWSConfig{{Listen: addr, Upstream: "http://127.0.0.1:9", credentials: demoSQSCreds}}},
			[]string{"aws front " + addr, "another process listens on " + addr, "aws[0].listen"}},
		{"admin", Config{Admin: AdminConfig{Listen: addr}, AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9"}}},
			[]string{"admin listener " + addr, "another process listens on " + addr, "--admin", "admin.listen", "or to off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg.Admin.Listen == "" {
				cfg.Admin.Listen = "off"
			}
			err := startFails(t, &cfg, "an address in use")
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error %q does not wrap EADDRINUSE", err)
			}
			if n := strings.Count(err.Error(), addr); tc.name != "admin" && n != 3 {
				// the front, the listen error, the hint: the protocol package's own wrapping
				// named it twice more
				t.Errorf("error %q names %s %d times, want 3", err, addr, n)
			}
		})
	}
}

// prepare fills cfg's defaults and fails the test if it is not valid, as run does.
func prepare(t *testing.T, cfg *Config) {
	t.Helper()
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// startLogged starts cfg with its log lines (JSON) kept in the buffer returned.
func startLogged(t *testing.T, cfg *Config) (*runtime, *syncbuf.Buffer) {
	t.Helper()
	logs := new(syncbuf.Buffer)
	rt, err := start(context.Background(), cfg, zerolog.New(logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	return rt, logs
}

// startFails starts cfg (no Agent) and returns the error it must fail with; where says where
// it must not have started.
func startFails(t *testing.T, cfg *Config, where string) error {
	t.Helper()
	cfg.Agent.Disabled = true
	prepare(t, cfg)
	rt, err := start(context.Background(), cfg, zerolog.Nop(), nil)
	if err == nil {
		rt.stop()
		t.Fatalf("started on %s", where)
	}
	return err
}

// TestListenAddressUnusable: a listen address on no interface of this host, or a port the
// process may not bind, fails the start with why and what to change. The tests run as root, so
// the refused port is the kernel's error put to the hint as bind returns it.
func TestListenAddressUnusable(t *testing.T) {
	cfg := Config{Kafka: []KafkaConfig{{Listen: "192.0.2.1:0", Bootstrap: []string{"127.0.0.1:9"}}}, Admin: AdminConfig{Listen: "off"}}
	err := startFails(t, &cfg, "192.0.2.1 (TEST-NET-1), which no interface here has")
	for _, w := range []string{"kafka front 192.0.2.1:0", "no network interface of this host has 192.0.2.1:0's IP address", "kafka[0].listen", ":port"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}

	denied := &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("bind", syscall.EACCES)}
	hint := cfg.listenHint(denied, ":443", "aws[0].listen")
	for _, w := range []string{"below 1024", "CAP_NET_BIND_SERVICE", "aws[0].listen"} {
		if !strings.Contains(hint, w) {
			t.Errorf("hint %q does not say %q", hint, w)
		}
	}
	if h := cfg.listenHint(errors.New("other"), ":1", "aws[0].listen"); h != "" {
		t.Errorf("hint for another error: %q", h)
	}
}

// silentListener accepts connections and never answers them (holding them open until the test
// ends): its address, and a channel that gets a value when a connection came (not one each).
func silentListener(t *testing.T) (string, <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	came := make(chan struct{}, 1)
	go func() {
		var held []net.Conn // kept open, unanswered (a collected conn would close)
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			select {
			case came <- struct{}{}:
			default:
			}
		}
	}()
	return ln.Addr().String(), came
}

// TestKafkaDiscoveryStopsQuietly: a stop (SIGTERM, or another front failing to start) while
// the proxy was still asking the cluster for its brokers logged the cancelled request as the
// cluster's failure: "a bootstrap broker did not answer the proxy's ApiVersions ... is it a
// Kafka listener, and does it want TLS?" (i/o timeout), or "cannot learn the broker nodes ...
// trying again" (operation was canceled): false leads in the log of a proxy being stopped.
func TestKafkaDiscoveryStopsQuietly(t *testing.T) {
	silent, dialed := silentListener(t)                       // a bootstrap that accepts and never answers
	_, port, _ := net.SplitHostPort(closedport.New(t).Addr()) // a fixed node port base: discovery runs
	basePort, _ := strconv.Atoi(port)
	cfg := &Config{Kafka: []KafkaConfig{{Listen: "127.0.0.1:0", Bootstrap: []string{silent}, NodePortBase: basePort}},
		Admin: AdminConfig{Listen: "off"}, Agent: AgentConfig{Disabled: true}}
	prepare(t, cfg)
	rt, logs := startLogged(t, cfg)
	<-dialed // discovery is waiting on the cluster
	if err := rt.stop(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), `"level":"warn"`) {
		t.Errorf("stopping the proxy logged its cancelled node discovery as a failure:\n%s", logs.String())
	}
}

// TestFrontLogLinesNameTheFront: with two AWS fronts, the line about a malformed request named
// the protocol, conn and client but not the front it reached (the AWS front's lines carry no
// listen address), nor did a Kafka front's lines about itself (its cluster identified, its node
// discovery) say which of two Kafka fronts they were about.
func TestFrontLogLinesNameTheFront(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	cfg := &Config{AWS: []AWSConfig{
		{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1", Region: "us-east-1", TrustClients: true},
		{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1", Region: "us-east-1", TrustClients: true},
	}, Admin: AdminConfig{Listen: "off"}, Agent: AgentConfig{Disabled: true}}
	prepare(t, cfg)
	rt, logs := startLogged(t, cfg)
	defer rt.stop()
	c, err := net.Dial("tcp", rt.fronts[1].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "garbage\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); err != nil { // the 400, then the close
		t.Fatal(err)
	}
	var line string
	for deadline := time.Now().Add(30 * time.Second); line == ""; time.Sleep(10 * time.Millisecond) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "malformed request") {
				line = l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line about a malformed request; logs:\n%s", logs.String())
		}
	}
	if !strings.Contains(line, `"front":"aws[1]"`) {
		t.Errorf("the line about a malformed request to aws[1] does not name that front:\n%s", line)
	}
	if !strings.Contains(logs.String(), `"front":"aws[1]","protocol":"aws","listen":"`+rt.fronts[1].Addr().String()+`"`) {
		t.Errorf("no front listening line names aws[1] beside its address:\n%s", logs.String())
	}
}

// TestRunOutlivesItsLogReader: dsmproxy's stderr is often a pipe to a log shipper (`2>&1 |
// logger`, a sidecar). When the reader went away, the next log line killed the process with
// SIGPIPE (exit 141), Go's default for fd 1 and 2, and every proxied connection with it: the
// data path depended on the logs. Here the reader closes once the front listens; the SIGTERM that
// follows is logged ("shutting down"), so the process writes to the closed pipe either way.
func TestRunOutlivesItsLogReader(t *testing.T) {
	bin := dsmproxyBinary(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--amqp", "127.0.0.1:0=127.0.0.1:1", "--admin", "off", "--no-agent")
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("log ended before the front listened: %q, %v", line, err)
		}
		if strings.Contains(line, "front listening") {
			break
		}
	}
	r.Close() // the log reader is gone
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if err != nil {
		t.Errorf("after its log reader went away, SIGTERM ended dsmproxy with %v (%s), want a clean exit", err, cmd.ProcessState)
	}
}

// TestUnreachableUpstreamWarnedAtStart: an AMQP front whose broker does not answer is warned
// about as the proxy starts; nothing used to be said until a client connected and was reset.
// The front whose broker (the local RabbitMQ) answers gets no such line.
func TestUnreachableUpstreamWarnedAtStart(t *testing.T) {
	down := closedport.New(t).Addr()
	cfg := &Config{AMQP: []AMQPConfig{
		{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:5672"},
		{Listen: "127.0.0.1:0", Upstream: down},
	}, Admin: AdminConfig{Listen: "off"}, Agent: AgentConfig{Disabled: true}}
	prepare(t, cfg)
	rt, logs := startLogged(t, cfg)
	defer rt.stop()
	const msg = "upstream not reachable at start"
	var line string
	for deadline := time.Now().Add(30 * time.Second); line == ""; time.Sleep(10 * time.Millisecond) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, msg) {
				line = l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line saying amqp[1]'s upstream %s is not reachable; logs:\n%s", down, logs.String())
		}
	}
	if !strings.Contains(line, `"front":"amqp[1]"`) || !strings.Contains(line, `"upstream":"`+down+`"`) || !strings.Contains(line, `"level":"warn"`) {
		t.Errorf("the Warn does not name amqp[1] and its upstream %s:\n%s", down, line)
	}
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, msg) && !strings.Contains(l, `"front":"amqp[1]"`) {
			t.Errorf("a front whose broker answers was warned about:\n%s", l)
		}
	}
}

// TestUpstreamBackAfterStartTold: an upstream not reachable at start gets a Warn, and once it
// answers, one Info line that says so: nothing did, only /readyz showed it.
func TestUpstreamBackAfterStartTold(t *testing.T) {
	down := closedport.New(t)
	cfg := &Config{AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: down.Addr()}},
		Admin: AdminConfig{Listen: "off"}, Agent: AgentConfig{Disabled: true}}
	prepare(t, cfg)
	rt, logs := startLogged(t, cfg)
	defer rt.stop()
	waitLine := func(msg string) string {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, msg) {
					return l
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no line saying %q; logs:\n%s", msg, logs.String())
			}
		}
	}
	waitLine("upstream not reachable at start")
	down.Release()
	ln, err := net.Listen("tcp", down.Addr()) // the broker comes back
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	line := waitLine("upstream answers now")
	for _, w := range []string{`"level":"info"`, `"front":"amqp[0]"`, `"upstream":"` + down.Addr() + `"`} {
		if !strings.Contains(line, w) {
			t.Errorf("the line does not say %s: %s", w, line)
		}
	}
}
