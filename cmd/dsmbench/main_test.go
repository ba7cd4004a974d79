package main

import (
	"bytes"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestMain lets the test binary play the proxy child process, as dsmbench itself does.
func TestMain(m *testing.M) {
	if code, ok := runAsChild(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestSmoke runs a tiny Kafka workload through the harness: every path, every column, with the
// broker in its own process (and the relay) and in dsmbench's.
func TestSmoke(t *testing.T) {
	for _, flags := range [][]string{{"--kafka-in-process=false", "--relay"}, {"--kafka-in-process"}} {
		t.Run(strings.Join(flags, " "), func(t *testing.T) { smokeKafka(t, flags...) })
	}
}

func smokeKafka(t *testing.T, flags ...string) {
	var out bytes.Buffer
	var errb syncbuf.Buffer // the child's stderr is copied in by exec's goroutine
	code := run(append([]string{"--protocols", "kafka", "--records", "500", "--rounds", "1", "--codecs", "none,lz4"}, flags...), &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	s := out.String()
	for _, want := range []string{"produce none, 100/batch", "produce lz4, with ctx", "fetch lz4", "fetch none, with ctx", "direct", "proxy", "CORES BUSY", "PROXY CPU", "s/GB", "MiB", "PER ROUND"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
	if !strings.Contains(errb.String(), "points aggregated, 0 dropped") {
		t.Errorf("the proxy child did not report its aggregation:\n%s", errb.String())
	}
	// The proxied path did the proxy's work: every record it produced got the header and was
	// checkpointed when fetched back.
	if m := kafkaWork.FindStringSubmatch(errb.String()); m == nil || m[1] != m[2] || m[1] == "0" || m[3] != "0" {
		t.Errorf("the proxy child's Kafka work (header, fetch checkpoints, unobserved responses): %q\n%s", m, errb.String())
	}
	// One relay line under each produce and fetch row, none under the "with ctx" ones.
	if got, want := len(relayLine.FindAllString(s, -1)), 4*strings.Count(strings.Join(flags, " "), "--relay"); got != want {
		t.Errorf("%d relay lines, want %d:\n%s", got, want, s)
	}
}

// kafkaWork matches the proxy child's account of its Kafka work.
var kafkaWork = regexp.MustCompile(`kafka: (\d+) records given the header, (\d+) checkpointed from fetches, (\d+) fetch responses not observed`)

// relayLine matches a table line of the relay path.
var relayLine = regexp.MustCompile(`(?m)^ +relay `)

// TestSmokeAMQP: the AMQP workload against the local RabbitMQ, direct, through the child proxy and
// through the relay, which like the direct path must deliver each context as it was sent.
func TestSmokeAMQP(t *testing.T) {
	var out bytes.Buffer
	var errb syncbuf.Buffer
	code := run([]string{"--protocols", "amqp", "--amqp-messages", "400", "--rounds", "1", "--relay"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	if strings.Contains(errb.String(), "skipped") {
		t.Fatalf("RabbitMQ must answer on 127.0.0.1:5672 (start it with `rabbitmq-server -detached`):\n%s", errb.String())
	}
	for _, want := range []string{"publish, confirms off", "publish, confirms on", "consume (2 queues)", "publish with ctx, confirms off", "publish with ctx, confirms on", "consume with ctx, acked"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if got := len(relayLine.FindAllString(out.String(), -1)); got != 6 {
		t.Errorf("%d relay lines, want 6:\n%s", got, out.String())
	}
}

// TestBenchValuesCompressLikeEvents: a 100-record batch of the Kafka workload's values compresses
// with lz4 like real JSON events (between 1.5x and 5x), not like identical records or noise.
func TestBenchValuesCompressLikeEvents(t *testing.T) {
	vals := benchValues(1024, 256)
	var batch []byte
	for i := 0; i < 100; i++ {
		if len(vals[i]) != 1024 {
			t.Fatalf("value %d is %d bytes", i, len(vals[i]))
		}
		batch = append(batch, vals[i]...)
	}
	var buf bytes.Buffer
	w := lz4.NewWriter(&buf)
	w.Write(batch)
	w.Close()
	ratio := float64(len(batch)) / float64(buf.Len())
	t.Logf("lz4: %d -> %d bytes (%.2fx)", len(batch), buf.Len(), ratio)
	if ratio < 1.5 || ratio > 5 {
		t.Errorf("lz4 ratio %.2f, want 1.5-5", ratio)
	}
}

// TestRounds: each path keeps its best run, and each round's ratio pairs the proxy run with the
// direct run of the same round, whatever the order, not with the best direct run.
func TestRounds(t *testing.T) {
	run := func(msgs int) result { return result{msgs: msgs, elapsed: time.Second} }
	var r rounds
	r.add(pathProxy, run(50)) // a round with no direct run has no ratio
	r.endRound()
	for round, rd := range [][3]int{{100, 80, 90}, {200, 100, 150}, {150, 120, 75}} {
		for _, i := range roundOrder(round, 3) {
			r.add(i, run(rd[i]))
		}
		r.endRound()
	}
	row := r.row("p", "w", 0, false)
	if got := roundOrder(1, 3); !slices.Equal(got, []int{2, 1, 0}) {
		t.Errorf("round 1 runs paths %v, want them reversed", got)
	}
	if row.direct.msgs != 200 || row.proxy.msgs != 120 || row.relay.msgs != 150 {
		t.Errorf("best direct %d, proxy %d, relay %d; want 200, 120, 150", row.direct.msgs, row.proxy.msgs, row.relay.msgs)
	}
	if want := []float64{0.8, 0.5, 0.8}; !slices.Equal(row.ratios, want) {
		t.Errorf("round ratios %v, want %v", row.ratios, want)
	}
	if want := []float64{0.9, 0.75, 0.5}; !slices.Equal(row.relayRatios, want) {
		t.Errorf("relay round ratios %v, want %v", row.relayRatios, want)
	}
	if got := spread(row.ratios); got != "0.50-0.80" {
		t.Errorf("spread %q", got)
	}
	if got := spread(nil); got != "-" {
		t.Errorf("spread of none %q", got)
	}
	for _, c := range []struct {
		ratios []float64
		want   string
	}{{nil, "-"}, {[]float64{0.7}, "0.70"}, {row.ratios, "0.80"}, {row.relayRatios, "0.75"}, {[]float64{0.9, 0.5, 0.6, 1.2}, "0.75"}} {
		if got := median(c.ratios); got != c.want {
			t.Errorf("median(%v) = %s, want %s", c.ratios, got, c.want)
		}
	}
}

// TestWithGODEBUG: the setting replaces its key wherever GODEBUG had it and keeps the others.
func TestWithGODEBUG(t *testing.T) {
	for _, c := range []struct {
		env  []string
		want string
	}{
		{[]string{"PATH=/bin"}, "GODEBUG=madvdontneed=1"},
		{[]string{"GODEBUG="}, "GODEBUG=madvdontneed=1"},
		{[]string{"GODEBUG=gctrace=1"}, "GODEBUG=gctrace=1,madvdontneed=1"},
		{[]string{"GODEBUG=madvdontneed=0,gctrace=1,madvdontneed=0"}, "GODEBUG=gctrace=1,madvdontneed=1"},
	} {
		got := withGODEBUG(c.env, shipMemory)
		var debug, other []string
		for _, e := range got {
			if strings.HasPrefix(e, "GODEBUG=") {
				debug = append(debug, e)
			} else {
				other = append(other, e)
			}
		}
		keep := slices.DeleteFunc(slices.Clone(c.env), func(e string) bool { return strings.HasPrefix(e, "GODEBUG=") })
		if !slices.Equal(debug, []string{c.want}) || !slices.Equal(other, keep) {
			t.Errorf("withGODEBUG(%q) = %q, want %s and the rest as it was", c.env, got, c.want)
		}
	}
}

// TestStopwatch: the machine's busy time over a run covers at least this process's own CPU in it
// (give or take a clock tick per CPU), and busyCores shows it against the CPU count.
func TestStopwatch(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/stat is Linux's")
	}
	own := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	w, own0 := startWatch(), own()
	x := 0
	for own()-own0 < 300*time.Millisecond {
		for i := range 1 << 20 {
			x ^= i
		}
	}
	var r result
	w.stop(&r)
	spent := own() - own0
	slack := time.Duration(machineCPUs()) * 2 * time.Second / clockTicks
	if r.busy < spent-slack {
		t.Errorf("machine busy %v over a run in which this process alone used %v (x=%d)", r.busy, spent, x)
	}
	cores := busyCores(r)
	if !regexp.MustCompile(`^[0-9]+\.[0-9]{2}/` + strconv.Itoa(machineCPUs()) + `$`).MatchString(cores) {
		t.Errorf("busyCores = %q", cores)
	}
	if got := busyCores(result{elapsed: time.Second}); got != "-" {
		t.Errorf("busyCores of an unmeasured run = %q, want -", got)
	}
}
