package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/rs/zerolog/diode"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// newCollector builds error tracking from the config: logs and /errors always, the Agent when asked.
func newCollector(cfg *Config, log zerolog.Logger) *errtrack.Collector {
	ec := errtrack.Config{Interval: cfg.Errors.Interval.D(), MaxFingerprints: cfg.Errors.MaxFingerprints,
		Log: log.With().Str("component", "errors").Logger()}
	for _, c := range cfg.Errors.Categories {
		if cat, ok := errtrack.ParseCategory(c); ok { // Validate refused unknown names
			ec.Categories = append(ec.Categories, cat)
		}
	}
	if cfg.Errors.Agent != nil && *cfg.Errors.Agent && !cfg.Agent.Disabled {
		ec.Agent = errtrack.AgentConfig{Enabled: true, URL: cfg.Agent.URL, Env: cfg.Env, Version: cfg.Version}
	}
	return errtrack.New(ec)
}

func cmdRun(args []string, stdout, stderr io.Writer) error {
	// SIGHUP's default action ends the process: until the reloads listen for it (once the fronts
	// are up), a logrotate or supervisor SIGHUP must not stop a proxy that is starting.
	signal.Ignore(syscall.SIGHUP)
	// A write to a stdout or stderr whose reader is gone (a log shipper behind a pipe that
	// exited) would end the process with SIGPIPE, and every proxied connection with it: the
	// data path must not depend on the logs. Ignored, such a write fails and the line is lost,
	// as systemd's IgnoreSIGPIPE does for its services.
	signal.Ignore(syscall.SIGPIPE)
	cfg, err := parseRunConfig("run", args, stdout, stderr)
	if err != nil {
		return err
	}
	log, closeLog, err := newRunLogger(cfg, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	ctx, stop := shutdownSignals(log, cfg.DrainTimeout.D(), func() { closeLog(); os.Exit(1) })
	defer stop()
	return run(ctx, cfg, log, nil)
}

// shutdownSignals returns a context that ends at the first SIGTERM or SIGINT: run then drains.
// A second one during the drain or the last flush calls exit (which ends the process) after a
// log line: whoever sends it, Ctrl-C pressed again, wants out now, not up to drain_timeout and
// a flush later, and would otherwise need SIGKILL. The first signal again within repeatWindow
// is its copy, not a second request: `timeout` signals the process and then its process group,
// and a wrapper script that forwards Ctrl-C repeats the SIGINT the terminal sent the whole group.
// stop releases the signals; once it returns, exit is not called.
func shutdownSignals(log zerolog.Logger, drain time.Duration, exit func()) (ctx context.Context, stop func()) {
	sigs := make(chan os.Signal, 2) // a SIGTERM and a SIGINT sent back to back: both kept
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		var first os.Signal
		select {
		case first = <-sigs:
		case <-done:
			return
		}
		began := time.Now()
		log.Info().Str("signal", signalName(first)).Msg("shutting down; SIGTERM or SIGINT again exits at once")
		cancel()
		for {
			select {
			case again := <-sigs:
				if again == first && time.Since(began) < repeatWindow {
					log.Info().Str("signal", signalName(again)).Msg(repeatedSignalMsg)
					continue
				}
				since := time.Since(began)
				left := max(drain-since, 0)
				log.Warn().Str("signal", signalName(again)).Str("after", since.Round(time.Millisecond).String()).Str("drain_left", left.Round(time.Second).String()).
					Msg("second shutdown signal: exiting now, exit code 1; open connections are cut and the last DSM flush is not sent")
				exit()
			case <-done:
			}
			return
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		<-finished
		cancel()
	}
}

// listenCause is the listen error inside a front's start error, which names the address itself:
// the protocol package's wrapping named the front and its address twice more ("amqp front A:
// amqp: amqp listener on A: listen tcp A: ..."). Any other error is returned whole.
func listenCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "listen" {
		return op
	}
	return err
}

// warnUnreachableAtStart dials each of an AMQP or AWS front's upstreams once as the front
// starts: one that does not answer gets a Warn, where otherwise nothing would be said until a
// client connected and was cut off (its request answered 502, its AMQP connection reset). Such
// an upstream is dialed again until it answers, which one Info line says, or ctx ends.
func warnUnreachableAtStart(ctx context.Context, log zerolog.Logger, f namedFront) {
	var wg sync.WaitGroup
	for _, up := range f.upstreams {
		wg.Go(func() {
			began := time.Now()
			err := dialWithin(ctx, f, up)
			if err == nil || errors.Is(err, context.Canceled) { // answered, or the proxy is stopping
				return
			}
			log.Warn().Str("front", f.key).Str("protocol", f.protocol).Str("upstream", up).AnErr("dial", err).
				Msg("upstream not reachable at start: clients of this front fail until it answers (/readyz says when it does)")
			for wait := startRedialFirst; ; wait = min(2*wait, startRedialMax) {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				if dialWithin(ctx, f, up) == nil {
					log.Info().Str("front", f.key).Str("protocol", f.protocol).Str("upstream", up).
						Str("after", time.Since(began).Round(time.Second).String()).
						Msg("upstream answers now: it was not reachable at start")
					return
				}
			}
		})
	}
	wg.Wait()
}

// dialWithin is f.dialUpstream bounded by startDialTimeout.
func dialWithin(ctx context.Context, f namedFront, up string) error {
	ctx, cancel := context.WithTimeout(ctx, startDialTimeout)
	defer cancel()
	return f.dialUpstream(ctx, up)
}

const (
	// startDialTimeout bounds warnUnreachableAtStart's dials.
	startDialTimeout = 10 * time.Second
	// An upstream not reachable at start is dialed again after startRedialFirst, then at
	// doubling intervals up to startRedialMax: its return is told within seconds, for the cost
	// of a dial now and then while it stays down.
	startRedialFirst = time.Second
	startRedialMax   = 5 * time.Second
)

// repeatWindow: the signal that began the shutdown, again within this time, is its copy, not a
// second request (see shutdownSignals).
const repeatWindow = time.Second

// repeatedSignalMsg is the Info line for a copy of the first shutdown signal, named so that
// tests can wait for it.
const repeatedSignalMsg = "the same shutdown signal again within a second: taken as a copy of the first (timeout and wrappers that forward Ctrl-C deliver it twice); send it again to exit at once"

// signalName is the name operators send a signal by (SIGTERM), not its description (terminated).
func signalName(s os.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return s.String()
}

// runtime is a started dsmproxy: what run() tears down at the end.
type runtime struct {
	cfg     *Config
	log     zerolog.Logger
	agg     *aggregator.Aggregator
	agent   *aggregator.AgentSink // nil: agent.disabled
	flusher *aggregator.Flusher
	errs    *errtrack.Collector
	cp      *pathway.Checkpointer
	errDone chan struct{}
	bgStop  context.CancelFunc // stops the flusher and the error collector, after the drain
	fronts  []namedFront
	admin   *admin
	adminLn net.Listener
	adminHS *http.Server
}

// run starts everything cfg asks for, serves until ctx is done, then drains and flushes. started,
// when non-nil, is called once everything listens (tests use it to learn addresses).
func run(ctx context.Context, cfg *Config, log zerolog.Logger, started func(*runtime)) error {
	rt, err := start(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	if started != nil {
		started(rt)
	}
	<-ctx.Done()
	return rt.stop()
}

// start wires and starts the aggregator, flusher, fronts and admin listener. extra sinks (the demo's
// table) get every flushed bucket too.
func start(ctx context.Context, cfg *Config, log zerolog.Logger, extra []aggregator.Sink) (*runtime, error) {
	services, err := buildServices(cfg, log)
	if err != nil {
		return nil, err
	}
	rt := &runtime{cfg: cfg, log: log}
	rt.agg = aggregator.New(aggregator.Config{
		Env: cfg.Env, Version: cfg.Version, TracerVersion: version, DefaultService: cfg.Service,
		// Buckets are as wide as the flush interval (10 s unless configured), as in the tracers.
		BucketDuration: cfg.Agent.FlushInterval.D(), Log: log.With().Str("component", "aggregator").Logger(),
	})
	rt.agg.Start()
	view := &localView{log: log.With().Str("component", "view").Logger()}
	sinks := append([]aggregator.Sink{view}, extra...)
	if !cfg.Agent.Disabled {
		as, err := aggregator.NewAgentSink(aggregator.AgentConfig{
			URL: cfg.Agent.URL, Env: cfg.Env, Version: cfg.Version, TracerVersion: version,
			MaxPendingBytes: cfg.Agent.MaxPendingBytes, Log: log.With().Str("component", "agent").Logger(),
		})
		if err != nil {
			rt.agg.Close()
			return nil, fmt.Errorf("agent: %w", err)
		}
		sinks = append(sinks, as)
		view.agent, rt.agent = as, as
		log.Info().Str("agent", as.URL()).Str("flush_interval", cfg.Agent.FlushInterval.D().String()).
			Msg("DSM stats go to the Datadog Agent; the first flush says whether it took them")
	} else if len(extra) == 0 { // the demo's --agent-url is an extra sink
		log.Info().Msg("no Datadog Agent (agent.disabled): DSM stats show only on the admin listener (/dsm, /metrics)")
	}
	cfg.warnEnv(log)
	rt.flusher = aggregator.NewFlusher(rt.agg, cfg.Agent.FlushInterval.D(), log.With().Str("component", "flusher").Logger(), sinks...)
	// Monitoring outlives the fronts: it stops only after the drain, so the drain's own points and
	// errors are flushed too.
	bg, bgStop := context.WithCancel(context.WithoutCancel(ctx))
	rt.bgStop = bgStop
	go rt.flusher.Run(bg)

	rt.errs = newCollector(cfg, log)
	view.errs = func() *errtrack.Snapshot { s := rt.errs.Snapshot(); return &s }
	rt.errDone = make(chan struct{})
	go func() {
		defer close(rt.errDone)
		if err := rt.errs.Run(bg); err != nil {
			log.Warn().Err(err).Msg("error tracking")
		}
	}()

	rt.cp = pathway.NewCheckpointer(cfg.Env, 0)
	sh := shared{
		env: cfg.Env, cp: rt.cp, obs: rt.agg, gone: view.offsetsGone, errs: rt.errs,
		services: services, log: log,
	}
	if rt.fronts, err = buildFronts(cfg, sh); err != nil {
		rt.abort()
		return nil, err
	}
	for _, f := range rt.fronts {
		// Fronts stop by Shutdown (the drain), not by ctx.
		if err := f.Start(bg); err != nil {
			rt.abort()
			return nil, fmt.Errorf("%s front %s: %w%s", f.protocol, f.listen, listenCause(err), cfg.listenHint(err, f.listen, f.key+".listen"))
		}
		log.Info().Str("front", f.key).Str("protocol", f.protocol).Str("listen", f.Addr().String()).Bool("tls", f.clientTLS).Strs("upstream", f.upstreams).Msg("front listening")
		if f.protocol != "kafka" { // the Kafka front's discovery of its brokers says so already
			go warnUnreachableAtStart(bg, log, f)
		}
	}
	var reloaders []*proxy.CertReloader
	for _, f := range rt.fronts {
		reloaders = append(reloaders, f.reloaders...)
	}
	// Always taken: SIGHUP's default action would end the process.
	proxy.OnSIGHUP(bg, func() {
		cfg.warnFileChanged(log)
		proxy.ReloadAll(log, reloaders...)
	})
	rt.admin = newAdmin(rt.fronts)
	rt.admin.Handle("GET /errors", rt.errs.View())
	rt.admin.Handle("GET /dsm", view)
	rt.admin.Handle("GET /stats", http.HandlerFunc(rt.stats))
	rt.admin.Handle("GET /metrics", &metricsPage{view: view, stats: rt.snapshot})
	if !cfg.adminOff() {
		ln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			rt.abort()
			return nil, fmt.Errorf("admin listener %s: %w%s", cfg.Admin.Listen, err, cfg.listenHint(err, cfg.Admin.Listen, "admin.listen"))
		}
		rt.adminLn = ln
		rt.adminHS = &http.Server{Handler: rt.admin.mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = rt.adminHS.Serve(ln) }()
		log.Info().Str("listen", ln.Addr().String()).Msg("admin listening: /dsm /metrics /stats /errors /healthz /readyz /debug/pprof/")
		if !loopbackOnly(ln.Addr()) {
			// Nothing there asks who is calling: pprof's profiles and traces cost CPU, and
			// /errors and /dsm name the topics, queues and services.
			log.Warn().Str("listen", ln.Addr().String()).Msg(adminReachableMsg)
		}
	}
	rt.admin.ready.Store(true)
	return rt, nil
}

// listenHint says what to change when addr, set by key, cannot be listened on: the bind error
// names no setting, and the admin listener's fails without being set (a second proxy on one
// host).
func (c *Config) listenHint(err error, addr, key string) string {
	change := "set " + key + " to another address"
	switch src := c.sourceOf(key); {
	case key == "admin.listen":
		change = "set --admin or admin.listen to another address, or to off"
	case src != "":
		change = "give " + src + " another listen address"
	}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Sprintf(" (another process listens on %s: stop it, or %s)", addr, change)
	case errors.Is(err, syscall.EACCES):
		return fmt.Sprintf(" (a port below 1024 needs root or the CAP_NET_BIND_SERVICE capability: grant it, or use a port of 1024 or more: %s)", change)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Sprintf(" (no network interface of this host has %s's IP address: %s, such as :port for every interface)", addr, change)
	}
	return ""
}

// snapshot is every counter the process keeps: per front (what was injected, skipped, consumed,
// not understood), the aggregator's and the Agent sink's.
func (rt *runtime) snapshot() statsSnapshot {
	st := statsSnapshot{Fronts: make([]frontStats, 0, len(rt.fronts)), Aggregator: rt.agg.Stats(),
		Checkpointer: checkpointerStats{CacheResets: rt.cp.CacheResets()}}
	for _, f := range rt.fronts {
		fs := frontStats{Front: f.key, Protocol: f.protocol, Listen: f.bound()}
		if f.stats != nil {
			fs.Stats = f.stats()
		}
		if f.listeners != nil {
			fs.Listeners = f.listeners()
		}
		st.Fronts = append(st.Fronts, fs)
		for _, r := range f.reloaders {
			if leaf := r.Leaf(); leaf != nil { // nil: a CA file only
				st.Certificates = append(st.Certificates, certificateStatus{Front: r.Front, For: r.Owner,
					CertFile: r.Files().CertFile, NotAfter: leaf.NotAfter})
			}
		}
	}
	if rt.agent != nil {
		a := rt.agent.Stats()
		st.Agent = &a
	}
	return st
}

// stats serves the snapshot as JSON.
func (rt *runtime) stats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, rt.snapshot())
}

// abort undoes a partial start.
func (rt *runtime) abort() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	rt.shutdownFronts(ctx)
	rt.bgStop()
	<-rt.errDone
	rt.agg.Close()
}

// shutdownFronts drains every front at once under ctx: drained one after another, a front that
// cannot drain would spend the others' drain time, and they would be closed mid-request. Being
// closed at the deadline is what a drain does, not an error.
func (rt *runtime) shutdownFronts(ctx context.Context) []error {
	errs := make([]error, len(rt.fronts))
	var wg sync.WaitGroup
	for i, f := range rt.fronts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				errs[i] = fmt.Errorf("%s front %s: %w", f.protocol, f.listen, err)
			}
		}()
	}
	wg.Wait()
	return errs
}

// stop drains: not ready, fronts stop accepting and finish in-flight requests within the drain
// time, then the last flush.
func (rt *runtime) stop() error {
	rt.admin.ready.Store(false)
	drain := rt.cfg.DrainTimeout.D()
	rt.log.Info().Str("drain_timeout", drain.String()).Msg("shutting down: draining connections")
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	errs := rt.shutdownFronts(ctx)
	// Ending bg stops the SIGHUP reloads, and SIGHUP's default action ends the process: one
	// sent now (logrotate, a supervisor's reload) would lose the last flush. Ignore it instead.
	signal.Ignore(syscall.SIGHUP)
	rt.bgStop()
	<-rt.errDone // its final flush is done
	rt.agg.Close()
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	rt.flusher.FlushNow(fctx, true)
	if rt.adminHS != nil {
		_ = rt.adminHS.Shutdown(fctx)
	}
	e := rt.log.Info().Interface("aggregator", rt.agg.Stats())
	if rt.agent != nil {
		e = e.Interface("agent", rt.agent.Stats())
	}
	e.Msg("stopped")
	return errors.Join(errs...)
}

// newRunLogger is run's logger. Log lines go through a ring buffer written by a goroutine of its
// own: a stalled stderr (a full pipe to a log shipper) drops lines, counted, instead of holding a
// connection that logs. Colours are decided by stderr itself (the buffer is no terminal). The
// returned close flushes the buffer; it closes what the buffer wraps when that can close: not
// stderr, which still has the error to print once run returns.
func newRunLogger(cfg *Config, stderr io.Writer) (zerolog.Logger, func(), error) {
	// The count of dropped lines is written past the buffer (by the goroutine that writes the
	// others, so the two never interleave), in the log's own format: a JSON pipeline reads it too.
	direct, err := newLogger(cfg, stderr, colorTerminal(stderr))
	if err != nil {
		return zerolog.Nop(), nil, err
	}
	lw := diode.NewWriter(struct{ io.Writer }{stderr}, 10000, 10*time.Millisecond, func(missed int) {
		direct.Warn().Int("dropped", missed).Msg("log lines dropped: the log output did not keep up")
	})
	log, err := newLogger(cfg, lw, colorTerminal(stderr))
	if err != nil {
		lw.Close()
		return zerolog.Nop(), nil, err
	}
	return log, func() { lw.Close() }, nil
}

// adminReachableMsg is run's start warning (and check-config's) for an admin listener that
// other hosts can reach.
const adminReachableMsg = "admin listener reachable from other hosts: its pages answer anyone who connects, unauthenticated; keep the port on a private network, or set admin.listen to 127.0.0.1:PORT"

// loopbackListen reports whether listening on listen (host:port, not bound yet) would be
// reachable from this host alone, as loopbackOnly says of the bound listener; a host name is
// looked up. An address that cannot be read or looked up says true: run refuses it anyway.
func loopbackListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "localhost" {
		return true
	}
	if ip := net.ParseIP(host); ip != nil || host == "" {
		return ip != nil && ip.IsLoopback()
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return true
	}
	return ips[0].IsLoopback() // what net.Listen binds: the first address
}

// loopbackOnly reports whether a listener bound to addr is reachable from this host alone.
func loopbackOnly(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}
