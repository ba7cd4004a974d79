package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// childArg re-executes dsmbench as the proxy process.
const childArg = "__proxy"

// front is what the child runs.
type front interface {
	Start(ctx context.Context) error
	Shutdown(ctx context.Context) error
	Addr() net.Addr
}

// monitoring is the real DSM pipeline the proxy feeds: aggregator, flusher and error tracking,
// with a sink that drops the buckets (the encoding to the Agent is off the data path).
type monitoring struct {
	agg  *aggregator.Aggregator
	errs *errtrack.Collector
	cp   *pathway.Checkpointer
	svc  *proxy.Services
}

type discardSink struct{}

func (discardSink) Send(context.Context, []aggregator.Bucket) error { return nil }

// pinEnv carries --pin's CPUs for the proxy child (comma-separated).
const pinEnv = "DSMBENCH_PROXY_CPUS"

// runChild: dsmbench __proxy PROTOCOL UPSTREAM. It prints "LISTEN addr" and serves until stdin closes.
func runChild(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "dsmbench __proxy PROTOCOL UPSTREAM")
		return 2
	}
	if err := pinFromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if path := os.Getenv("DSMBENCH_PROXY_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if err := pprof.StartCPUProfile(f); err == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	// An execution trace shows where the proxy's goroutines waited (go tool trace -pprof=sched).
	if path := os.Getenv("DSMBENCH_PROXY_TRACE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if err := trace.Start(f); err == nil {
				defer trace.Stop()
			}
		}
	}
	m := monitoring{
		agg:  aggregator.New(aggregator.Config{Env: "bench"}),
		errs: errtrack.New(errtrack.Config{}),
		cp:   pathway.NewCheckpointer("bench", 0),
		svc:  &proxy.Services{Default: "bench-client"},
	}
	m.agg.Start()
	fl := aggregator.NewFlusher(m.agg, 10*time.Second, zerolog.Nop(), discardSink{})
	go fl.Run(ctx)
	go func() { _ = m.errs.Run(ctx) }()
	f, err := newFront(args[0], args[1], m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := f.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("LISTEN %s\n", f.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = f.Shutdown(sctx)
	// Allocations are what the proxy's heap churns through: each collection's freed pages can go
	// back to the kernel and fault in again, which on a VM costs more than the allocation.
	if path := os.Getenv("DSMBENCH_PROXY_MEMPROFILE"); path != "" {
		if out, err := os.Create(path); err == nil {
			runtime.GC() // the profile counts allocations up to the last completed collection
			_ = pprof.Lookup("allocs").WriteTo(out, 0)
			out.Close()
		}
	}
	m.agg.Close()
	st := m.agg.Stats()
	fmt.Fprintf(os.Stderr, "proxy: %d points aggregated, %d dropped\n", st.Aggregated, st.PointsDropped)
	// A proxy that skipped work would look faster: say what it did.
	if k, ok := f.(*kafka.Proxy); ok {
		ks := k.Stats()
		fmt.Fprintf(os.Stderr, "proxy: kafka: %d records given the header, %d checkpointed from fetches, %d fetch responses not observed (queue full), %d batches skipped\n",
			ks.InjectedRecords, ks.ConsumedRecords, ks.ObserveDropped, ks.SkippedBatches)
	}
	return 0
}

// pinFromEnv pins this process to the CPUs --pin left in pinEnv for the proxy (or the relay).
func pinFromEnv() error {
	v := os.Getenv(pinEnv)
	if v == "" {
		return nil
	}
	var cpus []int
	for _, f := range strings.Split(v, ",") {
		c, err := strconv.Atoi(f)
		if err != nil {
			return fmt.Errorf("%s=%q: %w", pinEnv, v, err)
		}
		cpus = append(cpus, c)
	}
	return pinSelf(cpus)
}

// childProcess is this binary re-executed as the proxy or the Kafka broker. It printed
// "LISTEN addr" and runs until its stdin closes.
type childProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	addr  string
}

// startChild runs this binary with args; env, when not nil, is the child's whole environment.
func startChild(stderr io.Writer, env []string, args ...string) (*childProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = stderr
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "LISTEN ") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s process did not start (%q): %v", args[0], line, err)
	}
	return &childProcess{cmd: cmd, stdin: stdin, out: out, addr: strings.TrimSpace(strings.TrimPrefix(line, "LISTEN "))}, nil
}

func startProxy(protocol, upstream string, stderr io.Writer) (*childProcess, error) {
	return startChild(stderr, withGODEBUG(os.Environ(), shipMemory), childArg, protocol, upstream)
}

func (p *childProcess) stop() {
	_ = p.stdin.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// cpu is the process's user+system CPU time so far (0 for no process), from /proc (in clock ticks, clockTicks a second).
func (p *childProcess) cpu() time.Duration {
	if p == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / clockTicks)
}

// peakRSS is the process's high-water resident set (VmHWM).
func (p *childProcess) peakRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
