package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/amqp"
	"github.com/dsmproxy/dsmproxy/protocols/aws"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// front is one protocol listener group as the binary drives it.
type front interface {
	Start(ctx context.Context) error
	Shutdown(ctx context.Context) error
	Addr() net.Addr
}

// namedFront carries what the admin listener and logs say about a front.
type namedFront struct {
	front
	protocol  string
	listen    string
	key       string   // its entry in the config: kafka[0], amqp[1]...
	upstreams []string // host:port dialed by /readyz
	// readyDials: the dial /readyz makes to an upstream the front reaches over TLS, handshake
	// included, so that a wrong CA or server name shows there (absent: a TCP dial).
	readyDials map[string]proxy.DialFunc
	reloaders  []*proxy.CertReloader
	clientTLS  bool       // the front terminates TLS toward its clients
	stats      func() any // the front's counters, for GET /stats
	// listeners: a Kafka front's open connections per listener (bootstrap and broker nodes),
	// as max_conns limits each; nil for fronts of one listener.
	listeners func() []kafka.ListenerConnections
}

// bound is the front's listen setting with port 0 replaced by the port it got once started:
// fronts on port 0 share the setting, and a label or key made of it would merge them. Any other
// setting stays as written (Go would show 0.0.0.0:19092 as [::]:19092), so the labels of a
// dashboard written against the configuration keep matching.
func (f namedFront) bound() string {
	host, port, err := net.SplitHostPort(f.listen)
	if err != nil || port != "0" || f.front == nil {
		return f.listen
	}
	if a, ok := f.Addr().(*net.TCPAddr); ok && a != nil {
		return net.JoinHostPort(host, strconv.Itoa(a.Port))
	}
	return f.listen
}

// observer is what protocol fronts hand their points and offsets to.
type observer interface {
	Add(pathway.Point) bool
	Offset(pathway.Offset) bool
}

// newLogger writes cfg's log to w; color: the console format may colour it (w reaches a
// terminal: colorTerminal of the writer w wraps, if it wraps one).
func newLogger(cfg *Config, w io.Writer, color bool) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log level %q: %w", cfg.Log.Level, err)
	}
	if cfg.Log.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !color}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// colorTerminal reports whether w is a terminal that should get colours: not a file, a pipe or
// /dev/null (escape codes would land in them), and NO_COLOR (no-color.org) unset.
func colorTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && os.Getenv("NO_COLOR") == "" && term.IsTerminal(int(f.Fd()))
}

// buildServices turns the configured rules into the resolver every front shares, and warns of
// rules that can never apply.
func buildServices(cfg *Config, log zerolog.Logger) (*proxy.Services, error) {
	for _, sh := range shadowedRules(cfg.Services) {
		log.Warn().Str("rule", fmt.Sprintf("services[%d]", sh.rule)).Int("line", cfg.Services[sh.rule].line).
			Str("by", fmt.Sprintf("services[%d]", sh.by)).Int("by_line", cfg.Services[sh.by].line).
			Msg("services rule never applies: an earlier rule matches every client it matches, and the first rule that matches decides")
	}
	s := &proxy.Services{Default: cfg.Service}
	for i, r := range cfg.Services {
		rule := proxy.ServiceRule{Service: r.Service, Traced: r.Traced, Protocol: r.Protocol, User: r.User, AccessKey: r.AccessKey}
		if r.ClientID != "" {
			re, err := regexp.Compile(r.ClientID)
			if err != nil {
				return nil, fmt.Errorf("services[%d].client_id: %w", i, err)
			}
			rule.ClientID = re
		}
		if r.CIDR != "" {
			p, err := netip.ParsePrefix(r.CIDR)
			if err != nil {
				return nil, fmt.Errorf("services[%d].cidr: %w", i, err)
			}
			rule.CIDR = p
		}
		s.Rules = append(s.Rules, rule)
	}
	return s, nil
}

// shadowed is a services rule (its index) that an earlier one (by) always matches first.
type shadowed struct{ rule, by int }

// shadowedRules finds the rules that can never apply: an earlier rule whose every matcher the
// later one has too, the same (so it matches every client the later one does; a rule with no
// matcher matches every client). Regular expressions are compared as written, so this finds
// the plain cases only (a rule copied below a catch-all, a traced rule under a service rule for
// the same client_id).
func shadowedRules(rules []ServiceRule) []shadowed {
	var out []shadowed
	for j := range rules {
		for i := range j {
			a, b := rules[i], rules[j]
			if (a.Protocol == "" || a.Protocol == b.Protocol) && (a.ClientID == "" || a.ClientID == b.ClientID) &&
				(a.User == "" || a.User == b.User) && (a.AccessKey == "" || a.AccessKey == b.AccessKey) &&
				(a.CIDR == "" || a.CIDR == b.CIDR) {
				out = append(out, shadowed{rule: j, by: i})
				break
			}
		}
	}
	return out
}

// shared is what every front gets from the binary.
type shared struct {
	env      string
	cp       *pathway.Checkpointer
	obs      observer
	gone     func(pathway.OffsetsGone) // nil: fronts built only to be checked
	errs     errtrack.Reporter
	services *proxy.Services
	log      zerolog.Logger
	// handed: the contexts every front's consumers were handed, one table for all, so that a
	// client consuming from one front and sending on through another is known as a relay.
	handed *pathway.Handed
}

// noObserver drops points and offsets: fronts built only to be checked.
type noObserver struct{}

func (noObserver) Add(pathway.Point) bool     { return true }
func (noObserver) Offset(pathway.Offset) bool { return true }

// forFront is sh for the front of config entry key (kafka[0], aws[1]): every line the front logs
// names it as "front", so that lines about the front as a whole (a cluster identified, a
// discovery retry) and the AWS front's lines about a request, which carry no listen address,
// say which of several fronts of a protocol they are about.
func (sh shared) forFront(key string) shared {
	sh.log = sh.log.With().Str("front", key).Logger()
	return sh
}

// buildFronts builds every configured front, unstarted: what each front's New refuses (a Kafka
// listener on every interface without advertised_host, trusted clients off loopback, a TLS file
// that does not load) is found here, by run and by check-config alike.
func buildFronts(cfg *Config, sh shared) ([]namedFront, error) {
	var fronts []namedFront
	// Sized as the fronts would size tables of their own: the same memory, in one table.
	sh.handed = pathway.NewHanded(len(cfg.Kafka)*pathway.HandedPerKafkaFront + len(cfg.AMQP)*pathway.HandedPerAMQPFront + len(cfg.AWS)*pathway.HandedPerAWSFront)
	for i, k := range cfg.Kafka {
		key := fmt.Sprintf("kafka[%d]", i)
		f, err := buildKafka(k, sh.forFront(key))
		if err != nil {
			return nil, cfg.entryError(key, k.line, err)
		}
		f.key = key
		fronts = append(fronts, f)
	}
	for i, a := range cfg.AMQP {
		key := fmt.Sprintf("amqp[%d]", i)
		f, err := buildAMQP(a, sh.forFront(key))
		if err != nil {
			return nil, cfg.entryError(key, a.line, err)
		}
		f.key = key
		fronts = append(fronts, f)
	}
	for i, a := range cfg.AWS {
		key := fmt.Sprintf("aws[%d]", i)
		f, err := buildAWS(a, sh.forFront(key))
		if err != nil {
			return nil, cfg.entryError(key, a.line, err)
		}
		f.key = key
		fronts = append(fronts, f)
	}
	now := time.Now()
	for _, f := range fronts {
		for _, r := range f.reloaders {
			r.Front = f.key
			r.Owner = f.protocol + " " + f.listen + " upstream_tls"
			if r.ServerSide() {
				r.Owner = f.protocol + " " + f.listen + " tls"
			}
			if problem := r.Problem(now); problem != "" {
				sh.log.Warn().Str("front", f.key).Str("protocol", f.protocol).Str("listen", f.listen).Str("cert_file", r.Files().CertFile).Msg(problem)
			}
		}
	}
	return fronts, nil
}

// listenerTemplate turns a front's limits and TLS settings into the proxy package's listener
// template; the reloaders it returns are reloaded on SIGHUP.
func listenerTemplate(l ListenerLimits) (proxy.ListenerConfig, []*proxy.CertReloader, error) {
	lc := proxy.ListenerConfig{MaxConns: l.MaxConns, DialTimeout: l.DialTimeout.D(), IdleTimeout: l.IdleTimeout.D()}
	var rs []*proxy.CertReloader
	if t := l.TLS; t != nil {
		r, conf, err := proxy.ServerTLS(proxy.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.ClientCAFile, ClientAuth: t.ClientCAFile != ""})
		if err != nil {
			return lc, nil, tlsFileKey("tls", fmt.Errorf("tls: %w", err))
		}
		lc.TLS = conf
		rs = append(rs, r)
	}
	if t := l.UpstreamTLS; t.on() {
		r, _, err := proxy.ClientTLS(proxy.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify})
		if err != nil {
			return lc, nil, tlsFileKey("upstream_tls", fmt.Errorf("upstream_tls: %w", err))
		}
		var d net.Dialer
		if l.DialTimeout > 0 {
			d.Timeout = l.DialTimeout.D()
		}
		lc.Dial = r.DialFunc(d.DialContext)
		rs = append(rs, r)
	}
	return lc, rs, nil
}

// keyError is an error about one key under a front's entry (tls.cert_file): entryError names
// the whole key (amqp[0].tls.cert_file).
type keyError struct {
	key string
	err error
}

func (e *keyError) Error() string { return e.err.Error() }
func (e *keyError) Unwrap() error { return e.err }

// tlsFileKey is err, met loading the files of section (tls or upstream_tls), naming the key of
// the file at fault when the proxy package says which it is.
func tlsFileKey(section string, err error) error {
	var fe *proxy.TLSFileError
	if !errors.As(err, &fe) {
		return err
	}
	name := "ca_file"
	switch {
	case fe.File == proxy.TLSCertFile:
		name = "cert_file"
	case fe.File == proxy.TLSKeyFile:
		name = "key_file"
	case section == "tls": // the server side's CA verifies clients
		name = "client_ca_file"
	}
	return &keyError{key: section + "." + name, err: err}
}

// warnInsecure warns at start about upstream TLS that verifies nothing.
func warnInsecure(log zerolog.Logger, protocol, listen string, t *TLSClient) {
	if t != nil && t.InsecureSkipVerify {
		log.Warn().Str("protocol", protocol).Str("listen", listen).
			Msg("upstream_tls.insecure_skip_verify is set: the upstream's certificate is not checked, so anyone on the path can read and change the traffic")
	}
}

// warnNodeOnBootstrap warns when a broker node's listener would take the address of one of the
// front's own bootstrap brokers on this host (listen one port below a local broker): while the
// broker runs that node's listener cannot open, and clients fail after their first Metadata.
// Node ids 0-9 are looked at, as the config check's clash check does.
func warnNodeOnBootstrap(log zerolog.Logger, k KafkaConfig) {
	for _, n := range k.nodeListeners() {
		for _, b := range k.Bootstrap {
			bh, bp, err := net.SplitHostPort(b)
			if p, perr := portNumber(bp); err != nil || perr != nil || p != n.port || !onThisHost(n.host, bh) {
				continue
			}
			log.Warn().Str("listen", k.Listen).Int32("node", n.id).Str("bootstrap", b).
				Msgf("kafka front: broker node %d's listener would be on port %d, where bootstrap broker %s listens on this host (node N listens on node_port_base + N, by default the listen port + 1 + N): if the cluster has a node %d, its listener cannot open and clients fail after their first Metadata; set node_port_base, or map the node in node_addrs (config file keys)", n.id, n.port, b, n.id)
		}
	}
}

// onThisHost: a listener on host listen would take the port of a broker dialed at host broker,
// both on this host: the same host written alike, or a loopback broker and a listener on
// loopback or every interface. A broker named by any other host may be another machine.
func onThisHost(listen, broker string) bool {
	if listen == broker && listen != "" {
		return true
	}
	ip := net.ParseIP(broker)
	if broker != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return false
	}
	return sameHost(listen, broker)
}

func buildKafka(k KafkaConfig, sh shared) (namedFront, error) {
	lc, reloaders, err := listenerTemplate(k.ListenerLimits)
	if err != nil {
		return namedFront{}, fmt.Errorf("kafka front %s: %w", k.Listen, err)
	}
	warnInsecure(sh.log, "kafka", k.Listen, k.UpstreamTLS)
	warnNodeOnBootstrap(sh.log, k)
	own, err := kafkaLogin(k.SASL, sh.log)
	if err != nil {
		return namedFront{}, fmt.Errorf("kafka front %s: sasl: %w", k.Listen, err)
	}
	if own != nil && own.Name() == "PLAIN" && !k.UpstreamTLS.on() {
		sh.log.Warn().Str("listen", k.Listen).Msg("kafka front: sasl PLAIN without upstream_tls sends the proxy's own password to the brokers unencrypted")
	}
	kc := kafka.Config{
		SASL:                    own,
		TopicLimitWait:          durationPtr(k.TopicLimitWait),
		Listen:                  k.Listen,
		Bootstrap:               k.Bootstrap,
		AdvertisedHost:          k.AdvertisedHost,
		NodeAddrs:               k.NodeAddrs,
		NodePortBase:            k.NodePortBase,
		MaxBatchBytes:           k.MaxBatchBytes,
		InjectAcks0UnknownLimit: k.InjectAcks0UnknownLimit,
		MaxFrameBytes:           k.MaxFrameBytes,
		MaxTopicIDs:             k.MaxTopicIDs,
		FrameBudgetBytes:        k.FrameBudgetBytes,
		Env:                     sh.env,
		Checkpointer:            sh.cp,
		Handed:                  sh.handed,
		Observer:                sh.obs,
		OffsetsGone:             sh.gone,
		Errors:                  sh.errs,
		Services:                sh.services,
		Log:                     sh.log,
		Listener:                lc,
		LinkConsumeProduce:      k.LinkConsumeProduce,
		LinkWindow:              k.LinkWindow.D(),
		RespectExistingContext:  k.RespectExistingContext,
	}
	p, err := kafka.New(kc)
	if err != nil {
		return namedFront{}, err
	}
	for _, r := range reloaders {
		if r.ServerSide() {
			r.Hosts = p.AdvertisedHosts() // checked at start (buildFronts) and at every reload
		}
	}
	return namedFront{front: p, protocol: "kafka", listen: k.Listen, clientTLS: lc.TLS != nil, upstreams: k.Bootstrap, reloaders: reloaders, readyDials: tlsDials(k.Bootstrap, lc.Dial),
		stats: func() any { return p.Stats() }, listeners: p.ListenerConnections}, nil
}

// durationPtr is d as a *time.Duration: nil (unset) stays nil, and 0 stays a set 0.
func durationPtr(d *Duration) *time.Duration {
	if d == nil {
		return nil
	}
	v := d.D()
	return &v
}

func buildAWS(a AWSConfig, sh shared) (namedFront, error) {
	// The AWS front dials its upstreams itself (below): the template's upstream TLS would be a
	// second reloader of the same files, reloaded and logged twice at every SIGHUP.
	limits := a.ListenerLimits
	limits.UpstreamTLS = nil
	lc, reloaders, err := listenerTemplate(limits)
	if err != nil {
		return namedFront{}, fmt.Errorf("aws front %s: %w", a.Listen, err)
	}
	warnInsecure(sh.log, "aws", a.Listen, a.UpstreamTLS)
	ac := aws.Config{
		Listen: a.Listen, Upstream: a.Upstream, Upstreams: a.Upstreams, Region: a.Region,
		Env: sh.env, Checkpointer: sh.cp, Handed: sh.handed, Observer: sh.obs, Errors: sh.errs, Services: sh.services, Log: sh.log,
		TrustClients: a.TrustClients, TrustClientsNonLoopback: a.TrustClientsNonLoopback,
		MaxBodyBytes: int64(a.MaxBodyBytes), MaxAnswerBytes: int64(a.MaxAnswerBytes), MaxMessageBytes: a.MaxMessageBytes, KinesisInjectData: a.KinesisInjectData,
		RespectExistingContext: a.RespectExistingContext,
		Listener:               lc, Credentials: a.credentials,
	}
	if len(a.ClientKeys) > 0 {
		ac.ClientKeys = make(map[string]string, len(a.ClientKeys))
		for _, k := range a.ClientKeys {
			ac.ClientKeys[k.AccessKeyID] = k.SecretAccessKey
		}
	}
	upTLS := func() *tls.Config { return nil } // system roots
	if t := a.UpstreamTLS; t != nil && t.configured() {
		r, _, err := proxy.ClientTLS(proxy.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify})
		if err != nil {
			return namedFront{}, tlsFileKey("upstream_tls", fmt.Errorf("aws front %s: upstream_tls: %w", a.Listen, err))
		}
		ac.UpstreamTLS = r.Current // read at every dial: a reloaded CA file applies
		upTLS = r.Current
		reloaders = append(reloaders, r)
	}
	p, err := aws.New(ac)
	if err != nil {
		return namedFront{}, err
	}
	if a.UpstreamTLS != nil && !slices.ContainsFunc(p.Endpoints(), func(e string) bool { return strings.HasPrefix(e, "https://") }) {
		sh.log.Warn().Str("protocol", "aws").Str("listen", a.Listen).
			Msg("upstream_tls is set, but every upstream is an http:// URL: nothing uses it, and the traffic to the upstreams is not encrypted (the URL's scheme decides)")
	}
	// What /readyz dials: every service's endpoint as the front resolved it (an empty upstream
	// means AWS's regional endpoints), or the egress proxy (HTTPS_PROXY) the front reaches it by;
	// the front names them so, and UpstreamProblem takes the same names.
	var ups []string
	dials := map[string]proxy.DialFunc{}
	for _, u := range p.Upstreams() {
		ups = append(ups, u.Addr)
		if u.TLS {
			dials[u.Addr] = func(ctx context.Context, network, addr string) (net.Conn, error) {
				return proxy.DialTLS(nil, upTLS())(ctx, network, addr)
			}
		}
	}
	return namedFront{front: p, protocol: "aws", listen: a.Listen, clientTLS: lc.TLS != nil, upstreams: ups, reloaders: reloaders, readyDials: dials,
		stats: func() any { return p.Stats() }}, nil
}

// tlsDials is dial for each of addrs, when the front dials its upstreams over TLS (dial set).
func tlsDials(addrs []string, dial proxy.DialFunc) map[string]proxy.DialFunc {
	if dial == nil {
		return nil
	}
	m := make(map[string]proxy.DialFunc, len(addrs))
	for _, a := range addrs {
		m[a] = dial
	}
	return m
}

func buildAMQP(a AMQPConfig, sh shared) (namedFront, error) {
	lc, reloaders, err := listenerTemplate(a.ListenerLimits)
	if err != nil {
		return namedFront{}, fmt.Errorf("amqp front %s: %w", a.Listen, err)
	}
	warnInsecure(sh.log, "amqp", a.Listen, a.UpstreamTLS)
	p, err := amqp.New(amqp.Config{
		Listen: a.Listen, Upstream: a.Upstream, MaxFrameBytes: a.MaxFrameBytes, RespectExistingContext: a.RespectExistingContext,
		Env: sh.env, Checkpointer: sh.cp, Handed: sh.handed, Observer: sh.obs, Errors: sh.errs, Services: sh.services, Log: sh.log,
		Listener: lc,
	})
	if err != nil {
		return namedFront{}, err
	}
	return namedFront{front: p, protocol: "amqp", listen: a.Listen, clientTLS: lc.TLS != nil, upstreams: []string{a.Upstream}, reloaders: reloaders, readyDials: tlsDials([]string{a.Upstream}, lc.Dial),
		stats: func() any { return p.Stats() }}, nil
}
