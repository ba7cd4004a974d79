// Command dsmproxy is a transparent proxy for Kafka, SQS/SNS/Kinesis and RabbitMQ that gives
// Datadog Data Streams Monitoring to applications without changing their code.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/redact"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usageTop = `dsmproxy: Data Streams Monitoring for Kafka, SQS/SNS/Kinesis and RabbitMQ, with no code change.

Point your clients at dsmproxy instead of the broker; dsmproxy forwards every byte, adds the
dd-pathway-ctx-base64 pathway context to each message, and sends DSM stats to a Datadog Agent.

Usage:
  dsmproxy run [flags]            proxy traffic (see dsmproxy run --help)
  dsmproxy demo [flags]           in-process Kafka, proxy, example services and a stand-in Agent
  dsmproxy check-config [flags]   validate configuration (file, env, flags) without listening
  dsmproxy probe [flags]          exit 0 if a running dsmproxy is ready (a container health check)
  dsmproxy version                print the version

Every command explains itself with --help.
`

func main() {
	os.Exit(mainArgs(os.Args[1:], os.Stdout, os.Stderr))
}

// mainArgs runs one subcommand and returns the process exit code.
func mainArgs(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageTop)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdout, stderr)
	case "demo":
		err = cmdDemo(args[1:], stdout, stderr)
	case "check-config":
		err = cmdCheckConfig(args[1:], stdout, stderr)
	case "probe":
		err = cmdProbe(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		err = cmdVersion(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageTop)
		return 0
	default:
		msg := fmt.Sprintf("unknown command %q", args[0])
		if near := nearestKey(args[0], []string{"run", "demo", "check-config", "probe", "version", "help"}); near != "" {
			msg += ": did you mean " + near + "?"
		}
		fmt.Fprintf(stderr, "dsmproxy: %s\n\n%s", msg, usageTop)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "dsmproxy %s: %v\n", args[0], err)
		return 1
	}
}

const usageVersion = `Usage: dsmproxy %s

Prints dsmproxy's version (dsmproxy --version does too). It takes no flags.
`

// cmdVersion prints the version, or its help for --help.
func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", usageVersion, stderr)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dsmproxy %s\n", version)
	return nil
}

// errUsage means the flag package already printed what was wrong.
var errUsage = errors.New("usage")

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ", ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// runFlags are the flags shared by run and check-config.
type runFlags struct {
	config       string
	kafka        listFlag
	aws          listFlag
	amqp         listFlag
	admin        string
	agentURL     string
	env          string
	service      string
	logLevel     string
	logFormat    string
	drainTimeout string
	noAgent      bool
}

const usageRunFlags = `Usage: dsmproxy %s [flags]

Configuration comes from a YAML file (--config), the Datadog environment variables and flags;
flags beat the environment, the environment beats the file. Listener flags are repeatable and,
when given, replace that protocol's listeners from the file.

Flags:
  --config FILE             YAML configuration file (reference: README.md, "Configuration reference")
  --kafka LISTEN=BOOTSTRAP  Kafka front: listen address = upstream bootstrap brokers (comma separated),
                            e.g. --kafka 127.0.0.1:19092=kafka-1:9092,kafka-2:9092. Broker nodes get
                            listeners on the next ports (node id + LISTEN's port + 1).
  --aws LISTEN=URL          SQS/SNS/Kinesis front: listen address = real endpoint URL,
                            e.g. --aws 127.0.0.1:4566=https://sqs.us-east-1.amazonaws.com (an AWS
                            regional endpoint: SNS and Kinesis go to theirs in its region; any other
                            URL, an emulator's, serves all three). The config file sets one URL per
                            service (upstreams) and kinesis_inject_data (links Kinesis consumes to puts).
  --amqp LISTEN=UPSTREAM    AMQP 0-9-1 front, e.g. --amqp 127.0.0.1:5673=rabbitmq:5672
  --admin LISTEN            admin HTTP listener: /dsm /metrics /stats /errors /healthz /readyz /debug/pprof/
                            (default 127.0.0.1:8790; "off" disables it)
  --agent-url URL           Datadog Agent: http://host:8126, https://..., unix:///var/run/datadog/apm.socket
  --no-agent                aggregate but send nothing to an Agent
  --env ENV                 DSM env (part of every pathway hash)
  --service NAME            service for clients nothing else names (default dsmproxy-client)
  --drain-timeout DURATION  on SIGTERM, how long in-flight requests may finish (default 15s; 1ms: at once)
  --log-level LEVEL         trace, debug, info, warn, error (default info)
  --log-format FORMAT       json or console (default json)

Environment (Datadog's own variables; flags beat them):
  DD_TRACE_AGENT_URL        Agent URL (http, https, unix); wins over DD_AGENT_HOST/DD_TRACE_AGENT_PORT
  DD_AGENT_HOST             Agent host (default localhost)
  DD_TRACE_AGENT_PORT       Agent port (default 8126)
  DD_ENV                    env, as --env
  DD_SERVICE                default service, as --service
  DD_VERSION                version sent in the DSM payload of every proxied service (unset it on a shared proxy)
  DD_ERROR_TRACKING_HANDLED_ERRORS  user, third_party or all: also send every tracked error group
                            (broker errors, lost messages, proxy skips, decode errors) to the Agent
                            as error spans (other values, empty or false, leave it off, as dd-trace-py)
  DD_ERROR_TRACKING_HANDLED_ERRORS_INCLUDE  a module list: the same (which modules is not read)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE
                            credentials the AWS front re-signs with, and its region where the file
                            sets none (standard AWS chain)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY
                            egress proxy the AWS front sends through (/readyz then dials it)
  NO_COLOR                  not empty: --log-format console writes no colours (it colours only a terminal)
`

const usageRun = usageRunFlags + `
Signals: SIGTERM/SIGINT drain and exit 0 after a last flush; a second SIGTERM/SIGINT meanwhile
exits at once with code 1 (connections cut, no last flush), but the first one again within 1s
is its copy (timeout(1) delivers it twice); SIGHUP reloads TLS certificates, keys and CAs only
(the config file is read at start: restart to apply a change to it).
`

const usageCheckConfig = usageRunFlags + `
check-config takes run's flags, file and environment, builds every front as run would (nothing
listens or dials), prints what run would warn about at start (on stderr) and a one-line summary
and exits 0, or names what is wrong and exits 1 (2 for a flag it does not know or an extra
argument).
`

func (f *runFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "YAML configuration file")
	fs.Var(&f.kafka, "kafka", "Kafka front LISTEN=BOOTSTRAP[,BOOTSTRAP...] (repeatable)")
	fs.Var(&f.aws, "aws", "SQS/SNS/Kinesis front LISTEN=URL (repeatable)")
	fs.Var(&f.amqp, "amqp", "AMQP front LISTEN=UPSTREAM (repeatable)")
	fs.StringVar(&f.admin, "admin", "", "admin listener address, or off")
	fs.StringVar(&f.agentURL, "agent-url", "", "Datadog Agent URL")
	fs.BoolVar(&f.noAgent, "no-agent", false, "send nothing to an Agent")
	fs.StringVar(&f.env, "env", "", "DSM env")
	fs.StringVar(&f.service, "service", "", "default service name")
	fs.StringVar(&f.drainTimeout, "drain-timeout", "", "drain time on SIGTERM")
	fs.StringVar(&f.logLevel, "log-level", "", "log level")
	fs.StringVar(&f.logFormat, "log-format", "", "json or console")
}

func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintf(fs.Output(), usage, name) }
	return fs
}

// parseFlags parses args into fs. The help a --help asks for goes to stdout, as the top-level
// --help's does (so `dsmproxy run --help | less` works). A mistake goes to fs's output, stderr,
// in one line that names it, the flag most likely meant and where every flag is listed: the
// whole usage after it would scroll it off the terminal.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var msg bytes.Buffer
	out := fs.Output()
	fs.SetOutput(&msg)
	err := fs.Parse(args)
	fs.SetOutput(out)
	if errors.Is(err, flag.ErrHelp) {
		stdout.Write(msg.Bytes())
		return err
	}
	help := fmt.Sprintf("dsmproxy %s --help lists every flag", fs.Name())
	if err != nil {
		fmt.Fprintf(out, "dsmproxy %s: %s (%s)\n", fs.Name(), flagMistake(fs, err), help)
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(out, "dsmproxy %s: unexpected argument %q: flags are written --name value (%s)\n", fs.Name(), fs.Arg(0), help)
		return errUsage
	}
	return nil
}

// reFlagName is the flag package's way of naming a flag in its errors ("flag needs an argument:
// -kafka"), with one dash where the docs and --help write two.
var reFlagName = regexp.MustCompile(`(defined: |argument: |for flag )-([^\s:]+)`)

// flagMistake says what was wrong with the flags in the docs' terms, and for a flag that does not
// exist, the one most likely meant.
func flagMistake(fs *flag.FlagSet, err error) string {
	msg := reFlagName.ReplaceAllString(err.Error(), "$1--$2")
	name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -")
	if !ok {
		return msg
	}
	msg = "unknown flag --" + name
	var known []string
	fs.VisitAll(func(f *flag.Flag) { known = append(known, f.Name) })
	if near := nearestKey(name, known); near != "" {
		msg += ": did you mean --" + near + "?"
	}
	return msg
}

// loadConfig builds the effective configuration: file, then env, then flags, then defaults, then
// validation.
func (f *runFlags) loadConfig(lookup func(string) (string, bool)) (*Config, error) {
	cfg := &Config{}
	if f.config != "" {
		c, err := LoadConfigFile(f.config)
		if err != nil {
			return nil, err
		}
		cfg = c
		cfg.file = f.config
	}
	cfg.ApplyEnv(lookup)
	if err := f.apply(cfg); err != nil {
		return nil, err
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.file != "" {
		cfg.recheck = func() error {
			c, err := f.loadConfig(lookup)
			if err != nil {
				return err
			}
			return checkBuild(c, zerolog.Nop())
		}
	}
	return cfg, nil
}

// apply overlays flags onto cfg.
func (f *runFlags) apply(cfg *Config) error {
	for _, l := range []struct {
		flag, example string
		vals          []string
		set           func(listen, upstream string)
		reset         func()
	}{
		{"--kafka", "LISTEN=BOOTSTRAP, e.g. 127.0.0.1:19092=127.0.0.1:9092", f.kafka,
			func(l, up string) {
				brokers := strings.Split(up, ",")
				for i, b := range brokers { // "a:9092, b:9092", as lists are written
					brokers[i] = strings.TrimSpace(b)
				}
				cfg.Kafka = append(cfg.Kafka, KafkaConfig{Listen: l, Bootstrap: brokers})
			},
			func() { cfg.Kafka = nil }},
		{"--aws", "LISTEN=URL, e.g. 127.0.0.1:4566=https://sqs.us-east-1.amazonaws.com", f.aws,
			func(l, up string) { cfg.AWS = append(cfg.AWS, AWSConfig{Listen: l, Upstream: up}) },
			func() { cfg.AWS = nil }},
		{"--amqp", "LISTEN=UPSTREAM, e.g. 127.0.0.1:5673=127.0.0.1:5672", f.amqp,
			func(l, up string) { cfg.AMQP = append(cfg.AMQP, AMQPConfig{Listen: l, Upstream: up}) },
			func() { cfg.AMQP = nil }},
	} {
		if len(l.vals) > 0 {
			l.reset() // listener flags replace the file's listeners of that protocol
			cfg.setBy(strings.TrimPrefix(l.flag, "--"), l.flag)
		}
		for _, v := range l.vals {
			listen, up, ok := strings.Cut(v, "=")
			if !ok || listen == "" || up == "" {
				return fmt.Errorf("%s %q: want %s", l.flag, v, l.example)
			}
			l.set(listen, up)
		}
	}
	if f.admin != "" {
		cfg.Admin.Listen = f.admin
		cfg.setBy("admin.listen", "--admin")
		cfg.Admin.Disabled = false // --admin off turns it off; an address turns it on over the file
	}
	if f.agentURL != "" {
		cfg.Agent.URL = f.agentURL
		cfg.setBy("agent.url", "--agent-url")
		cfg.Agent.Disabled = false // unless --no-agent, below
	}
	if f.noAgent {
		cfg.Agent.Disabled = true
	}
	if f.env != "" {
		cfg.Env = f.env
	}
	if f.service != "" {
		cfg.Service = f.service
	}
	if f.drainTimeout != "" {
		d, err := time.ParseDuration(f.drainTimeout)
		if err != nil || d < 0 {
			return fmt.Errorf("--drain-timeout: %q is not a duration (write it like 15s)", f.drainTimeout)
		}
		if d == 0 { // 0 means unset in the file, which would make this the default, not 0
			return fmt.Errorf("--drain-timeout: must be above 0 (1ms closes connections at once)")
		}
		cfg.DrainTimeout = Duration(d)
	}
	if f.logLevel != "" {
		cfg.Log.Level = f.logLevel
		cfg.setBy("log.level", "--log-level")
	}
	if f.logFormat != "" {
		cfg.Log.Format = f.logFormat
		cfg.setBy("log.format", "--log-format")
	}
	return nil
}

// parseRunConfig parses run's flags (shared by check-config) into the effective configuration.
func parseRunConfig(name string, args []string, stdout, stderr io.Writer) (*Config, error) {
	var f runFlags
	usage := usageRun
	if name == "check-config" {
		usage = usageCheckConfig
	}
	fs := newFlagSet(name, usage, stderr)
	f.register(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return nil, err
	}
	return f.loadConfig(os.LookupEnv)
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseRunConfig("check-config", args, stdout, stderr)
	if err != nil {
		return err
	}
	// What building a front warns about (run logs it at start) is printed too.
	var warnings warnCounter
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, NoColor: true, PartsExclude: []string{zerolog.TimestampFieldName}}).
		Level(zerolog.WarnLevel).Hook(&warnings)
	if err := checkBuild(cfg, log); err != nil {
		return err
	}
	cfg.warnEnv(log)
	admin := cfg.Admin.Listen
	if cfg.adminOff() {
		admin = "off"
	} else if !loopbackListen(admin) {
		log.Warn().Str("listen", admin).Msg(adminReachableMsg)
	}
	ok := "configuration OK"
	if warnings.n > 0 {
		ok += fmt.Sprintf(" with %d warning(s)", warnings.n)
	}
	fmt.Fprintf(stdout, "%s: %d kafka, %d amqp, %d aws front(s); agent %s; admin %s\n",
		ok, len(cfg.Kafka), len(cfg.AMQP), len(cfg.AWS), agentDesc(cfg), admin)
	return nil
}

// checkBuild builds what run would start from cfg, its services rules and fronts, and starts
// nothing: nothing binds or dials, but every front's own checks run (check-config, and a SIGHUP
// after the file was edited). What building warns about goes to log.
func checkBuild(cfg *Config, log zerolog.Logger) error {
	services, err := buildServices(cfg, log)
	if err != nil {
		return err
	}
	sh := shared{env: cfg.Env, cp: pathway.NewCheckpointer(cfg.Env, 0), obs: noObserver{}, errs: errtrack.Discard{},
		services: services, log: log}
	_, err = buildFronts(cfg, sh)
	return err
}

// warnCounter counts the warnings logged through it.
type warnCounter struct{ n int }

func (w *warnCounter) Run(_ *zerolog.Event, level zerolog.Level, _ string) {
	if level >= zerolog.WarnLevel {
		w.n++
	}
}

func agentDesc(cfg *Config) string {
	if cfg.Agent.Disabled {
		return "disabled"
	}
	return redact.URL(cfg.Agent.URL)
}
