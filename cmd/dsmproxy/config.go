package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/redact"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
)

// Config is the whole configuration, as read from the YAML file and then overridden by the
// environment and flags (flags > env > file). Its YAML keys are a public interface: extend, never rename.
type Config struct {
	Env          string        `yaml:"env"`
	Service      string        `yaml:"service"` // default service for clients nothing else names
	Version      string        `yaml:"version"`
	DrainTimeout Duration      `yaml:"drain_timeout"`
	Log          LogConfig     `yaml:"log"`
	Admin        AdminConfig   `yaml:"admin"`
	Agent        AgentConfig   `yaml:"agent"`
	Errors       ErrorsConfig  `yaml:"errors"`
	Services     []ServiceRule `yaml:"services"`
	Kafka        []KafkaConfig `yaml:"kafka"`
	AMQP         []AMQPConfig  `yaml:"amqp"`
	AWS          []AWSConfig   `yaml:"aws"`

	lines map[string]int    // dotted key -> line of its value in the file (top-level sections)
	from  map[string]string // dotted key (or kafka, amqp, aws) -> the variable or flag that set it
	file  string            // the file read, if any
	sum   [sha256.Size]byte // of the file's bytes as read at start
	// recheck loads the file again with the flags and environment of the start and checks it
	// as check-config does (nil: not loaded from flags, as in tests that build a Config).
	recheck func() error
	// agentHost and agentPort: DD_AGENT_HOST and DD_TRACE_AGENT_PORT (defaults filled in), when
	// they made agent.url, so that a mistake in one is named in its own terms.
	agentHost, agentPort string
	// handledErrorsIgnored: a DD_ERROR_TRACKING_HANDLED_ERRORS value that leaves error spans off
	// though it reads as on (true, 1), for warnEnv.
	handledErrorsIgnored string
}

// agentHostPortVars is the source of an agent.url made from DD_AGENT_HOST and DD_TRACE_AGENT_PORT.
const agentHostPortVars = "DD_AGENT_HOST/DD_TRACE_AGENT_PORT"

// checkAgentHostPort refuses a DD_AGENT_HOST that is a URL or carries a port, and a
// DD_TRACE_AGENT_PORT that is no port: joined into a URL, they read as a bracketed host that
// url.Parse refuses with words about IPv6 addresses.
func (c *Config) checkAgentHostPort() error {
	bad := func(v, msg string) error { return &configError{source: v, key: "agent.url", msg: msg} }
	h, p := c.agentHost, c.agentPort
	shown := redact.URL("http://" + h)[len("http://"):] // h with any user info masked
	if strings.Contains(h, "://") {
		return bad("DD_AGENT_HOST", fmt.Sprintf("%q is a URL: give the host alone (its port as DD_TRACE_AGENT_PORT), or the URL as DD_TRACE_AGENT_URL", redact.URL(h)))
	}
	if hh, hp, err := net.SplitHostPort(h); err == nil {
		return bad("DD_AGENT_HOST", fmt.Sprintf("%q has a port: give the host alone (%s) and the port as DD_TRACE_AGENT_PORT (%s)", shown, hh, hp))
	}
	if strings.TrimSpace(h) != h || strings.ContainsAny(h, "/@ ") {
		return bad("DD_AGENT_HOST", fmt.Sprintf("%q is not a host name or IP address", shown))
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return bad("DD_TRACE_AGENT_PORT", fmt.Sprintf("%q is not a port (1..65535)", p))
	}
	return nil
}

// warnFileChanged warns, at a SIGHUP, when the config file is no longer what was read at start:
// SIGHUP reloads only TLS files, and an operator who edited the file and sent it would otherwise
// take the "reloaded" lines for the new settings being in force. An edited file a restart would
// refuse is named at Error, with why.
func (c *Config) warnFileChanged(log zerolog.Logger) {
	if c.file == "" {
		return
	}
	b, err := os.ReadFile(c.file)
	if err == nil && sha256.Sum256(b) == c.sum {
		return
	}
	if err == nil && c.recheck != nil {
		// A restart with a file the proxy refuses would stop the proxy that runs: say so now.
		if err := c.recheck(); err != nil {
			log.Error().Str("config", c.file).Err(err).
				Msg("SIGHUP: the config file was edited, and a restart would refuse it: fix it before restarting; the configuration read at start stays in force (SIGHUP reloads only TLS certificates, keys and CAs)")
			return
		}
	}
	ev := log.Warn().Str("config", c.file)
	if err != nil {
		ev = ev.Err(err)
	}
	ev.Msg("SIGHUP: the config file is not what was read at start, and SIGHUP reloads only TLS certificates, keys and CAs: restart dsmproxy to apply the file (check-config checks it first)")
}

// refuse is a configError about key that says where its value came from: the variable or flag
// that set it, or the file and line (the line given, else the one recorded for key).
func (c *Config) refuse(line int, key, msg string) *configError {
	e := &configError{line: line, key: key, msg: msg, source: c.sourceOf(key)}
	switch {
	case e.source != "":
		e.line = 0
	case e.line == 0:
		e.line = c.lines[key]
		fallthrough
	default:
		e.file = c.file
	}
	return e
}

// entryError is err, which building entry key (kafka[0], ...) met, as a configError naming the
// line the entry starts at, or the listener flag, and the key under the entry when err says
// which (a keyError: amqp[0].tls.cert_file), then on that key's own line.
func (c *Config) entryError(key string, line int, err error) error {
	if ke := (*keyError)(nil); errors.As(err, &ke) {
		key += "." + ke.key
		if l := c.lines[key]; l > 0 {
			line = l
		}
	}
	return c.refuse(line, key, err.Error())
}

// setBy records that src (an environment variable, a flag) set key: its errors name src.
func (c *Config) setBy(key, src string) {
	if c.from == nil {
		c.from = map[string]string{}
	}
	c.from[key] = src
}

// sourceOf is what set key when not the file: "" for the file. A front's keys (kafka[0].listen)
// belong to the listener flag that replaced that protocol's fronts.
func (c *Config) sourceOf(key string) string {
	if src, ok := c.from[key]; ok {
		return src
	}
	if i := strings.IndexByte(key, '['); i > 0 {
		return c.from[key[:i]]
	}
	return ""
}

// LogConfig sets the process log.
type LogConfig struct {
	Level  string `yaml:"level"`  // trace, debug, info, warn, error
	Format string `yaml:"format"` // json or console
}

// AdminConfig is the admin HTTP listener (health, readiness, pprof, errors).
type AdminConfig struct {
	Listen   string `yaml:"listen"`   // default 127.0.0.1:8790; "off" disables it
	Disabled bool   `yaml:"disabled"` // same as listen: off
}

// AgentConfig says where DSM stats go.
type AgentConfig struct {
	URL             string   `yaml:"url"` // http://, https://, unix:///path
	FlushInterval   Duration `yaml:"flush_interval"`
	MaxPendingBytes int      `yaml:"max_pending_bytes"`
	Disabled        bool     `yaml:"disabled"` // aggregate and show locally, send nothing
}

// ErrorsConfig configures error tracking.
type ErrorsConfig struct {
	Agent      *bool    `yaml:"agent"`      // report error spans to the Agent (also DD_ERROR_TRACKING_HANDLED_ERRORS[_INCLUDE])
	Categories []string `yaml:"categories"` // broker_error, lost_message, proxy_skip, decode_error
	Interval   Duration `yaml:"interval"`
	// MaxFingerprints bounds the error groups kept at once (0: errtrack.DefaultMaxFingerprints).
	MaxFingerprints int `yaml:"max_fingerprints"`
}

// ServiceRule maps clients to a service name; every non-empty matcher must match.
type ServiceRule struct {
	Service   string `yaml:"service"`
	Protocol  string `yaml:"protocol"`   // kafka, amqp, aws
	ClientID  string `yaml:"client_id"`  // regular expression over Kafka client.id, AMQP connection_name, AWS app id
	User      string `yaml:"user"`       // AMQP login (Kafka SASL users are not matched)
	AccessKey string `yaml:"access_key"` // AWS access key id
	CIDR      string `yaml:"cidr"`       // client source network
	// Traced: the matched clients' own Datadog tracer checkpoints what they consume; the proxy
	// takes no consume checkpoint for them.
	Traced bool `yaml:"traced"`

	line int
}

// TLSServer terminates TLS toward clients.
type TLSServer struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"` // set to require and verify client certificates
}

// TLSClient originates TLS toward the upstream.
type TLSClient struct {
	// Enabled: unset, TLS is on when any other field is set; false with another field set is a
	// configuration error, not a silent choice between the two.
	Enabled            *bool  `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// configured: a field other than enabled is set.
func (t *TLSClient) configured() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// on: TLS toward the upstream is asked for, explicitly or by setting any of its fields.
func (t *TLSClient) on() bool {
	if t == nil {
		return false
	}
	if t.Enabled != nil {
		return *t.Enabled
	}
	return t.configured()
}

// ListenerLimits are shared by every protocol front.
type ListenerLimits struct {
	MaxConns    int        `yaml:"max_conns"`
	IdleTimeout Duration   `yaml:"idle_timeout"`
	DialTimeout Duration   `yaml:"dial_timeout"`
	TLS         *TLSServer `yaml:"tls"`
	UpstreamTLS *TLSClient `yaml:"upstream_tls"`
}

// KafkaConfig is one Kafka front: a bootstrap listener plus one listener per broker node.
type KafkaConfig struct {
	Listen         string           `yaml:"listen"`
	Bootstrap      []string         `yaml:"bootstrap"`
	AdvertisedHost string           `yaml:"advertised_host"`
	NodePortBase   int              `yaml:"node_port_base"`
	NodeAddrs      map[int32]string `yaml:"node_addrs"`
	MaxBatchBytes  int              `yaml:"max_batch_bytes"`
	// InjectAcks0UnknownLimit: acks=0 batches get the header even to topics whose
	// max.message.bytes the proxy could not read (SASL clusters).
	InjectAcks0UnknownLimit bool `yaml:"inject_acks0_unknown_limit"`
	// TopicLimitWait: how long a produce request may wait for its topics' first size limits
	// (unset: 500ms; 0s: never).
	TopicLimitWait *Duration `yaml:"topic_limit_wait"`
	MaxFrameBytes  int       `yaml:"max_frame_bytes"`
	// MaxTopicIDs: the topic ids (and their names) kept from Metadata answers, for the requests
	// that name topics by id only (unset: 100000).
	MaxTopicIDs int `yaml:"max_topic_ids"`
	// FrameBudgetBytes: what all connections together hold of requests over 1 MiB (three
	// times the bytes that arrived, for read, spliced and rewritten) and of fetch responses
	// streaming; past it they are relayed unread.
	FrameBudgetBytes       int64    `yaml:"frame_budget_bytes"`
	RespectExistingContext *bool    `yaml:"respect_existing_context"`
	LinkConsumeProduce     bool     `yaml:"link_consume_produce"`
	LinkWindow             Duration `yaml:"link_window"`
	// SASL is the proxy's own login, for its own connections to the cluster.
	SASL           *KafkaSASL `yaml:"sasl"`
	ListenerLimits `yaml:",inline"`

	line int
}

// KafkaSASL is the proxy's own SASL login to a Kafka cluster, used only on the connections the
// proxy opens itself (topic configs, node discovery); clients' logins pass through untouched.
type KafkaSASL struct {
	Mechanism    string `yaml:"mechanism"` // PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"` // must exist at start; read at every login; one trailing newline dropped
}

// AMQPConfig is one AMQP 0-9-1 front.
type AMQPConfig struct {
	Listen                 string `yaml:"listen"`
	Upstream               string `yaml:"upstream"`
	MaxFrameBytes          int    `yaml:"max_frame_bytes"`
	RespectExistingContext *bool  `yaml:"respect_existing_context"`
	ListenerLimits         `yaml:",inline"`

	line int
}

// AWSKey is a client key pair the AWS front accepts signatures from.
type AWSKey struct {
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"`
}

// AWSConfig is one SQS/SNS/Kinesis HTTP front.
type AWSConfig struct {
	Listen                  string            `yaml:"listen"`
	Upstream                string            `yaml:"upstream"`  // URL of the real endpoint; empty = AWS's regional endpoints
	Upstreams               map[string]string `yaml:"upstreams"` // per service: sqs, sns, kinesis -> URL
	Region                  string            `yaml:"region"`
	MaxMessageBytes         int               `yaml:"max_message_bytes"`
	KinesisInjectData       bool              `yaml:"kinesis_inject_data"`
	RespectExistingContext  *bool             `yaml:"respect_existing_context"`
	ClientKeys              []AWSKey          `yaml:"client_keys"`
	TrustClients            bool              `yaml:"trust_clients"`
	TrustClientsNonLoopback bool              `yaml:"trust_clients_non_loopback"`
	MaxBodyBytes            int               `yaml:"max_body_bytes"`
	MaxAnswerBytes          int               `yaml:"max_answer_bytes"`
	ListenerLimits          `yaml:",inline"`

	line int
	// credentials sign upstream requests instead of the standard AWS chain; only code sets it
	// (the demo's static keys for its in-process SQS server), never the file or flags.
	credentials awssdk.CredentialsProvider
}

// Duration is a time.Duration written as "10s", "1m30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
// A bad value is a yaml.TypeError, as a value of the wrong kind is: decoding goes on, and every
// such value in the file is reported at once.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration (write it like 10s, 1m30s)", n.Line, n.Value)}}
	}
	if v < 0 {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is negative: durations here are 0 or more", n.Line, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as it is read ("1m30s"): a config printed reads back the same.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

func (d Duration) D() time.Duration { return time.Duration(d) }

// configError is an error tied to a line of the config file.
type configError struct {
	line   int
	key    string
	msg    string
	source string // the variable or flag the value came from; "" for the file
	file   string // the file the value came from
}

func (e *configError) Error() string {
	s := ""
	switch {
	case e.source != "":
		s = e.source + ": "
	case e.file != "":
		s = "config " + e.file + ": "
	}
	if e.line > 0 {
		s += "line " + strconv.Itoa(e.line) + ": "
	}
	if e.key != "" {
		s += "key " + e.key + ": "
	}
	return s + e.msg
}

// Defaults.
const (
	defaultAdmin        = "127.0.0.1:8790"
	defaultDrainTimeout = 15 * time.Second
	defaultFlush        = 10 * time.Second
)

// Upper bounds of settings whose memory and output grow with them: far past any real cluster's
// topics or any useful error view, and a typo's extra zeros are refused, not run with.
const (
	maxTopicIDs    = 10_000_000
	maxErrorGroups = 100_000
)

// LoadConfigFile reads and strictly decodes a YAML config file: unknown keys and values of the wrong
// type are errors that name the file, line and key.
func LoadConfigFile(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err == nil {
		cfg.sum = sha256.Sum256(b)
	}
	if err != nil {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			var errs []error
			for _, e := range j.Unwrap() {
				errs = append(errs, fmt.Errorf("config %s: %w", path, e))
			}
			return nil, errors.Join(errs...)
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

var (
	reUnknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type main\.(\w+)$`)
	reLinePrefix   = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
)

// sectionName turns a Go type from a yaml error back into the section a user wrote.
var sectionName = map[string]string{
	"Config": "top level", "LogConfig": "log", "AdminConfig": "admin", "AgentConfig": "agent",
	"ErrorsConfig": "errors", "ServiceRule": "services[]", "KafkaConfig": "kafka[]", "AMQPConfig": "amqp[]",
	"AWSConfig": "aws[]", "AWSKey": "aws[].client_keys[]", "KafkaSASL": "kafka[].sasl", "TLSServer": "tls", "TLSClient": "upstream_tls",
}

// ParseConfig decodes YAML bytes (strict) and records the line of every list entry for later errors.
func ParseConfig(b []byte) (*Config, error) {
	var cfg Config
	if len(bytes.TrimSpace(b)) == 0 {
		return &cfg, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		var root yaml.Node
		_ = yaml.Unmarshal(b, &root)
		var te *yaml.TypeError
		syntax := !errors.As(err, &te)
		err = friendlyYAMLError(err, &root)
		var ce *configError
		if syntax && !errors.As(err, &ce) {
			// Said of the file's first line, yaml.v3's message names none (its line 0 reads
			// as unknown).
			if msg, ok := strings.CutPrefix(err.Error(), "yaml: "); ok {
				ce = &configError{msg: msg}
				err = ce
			}
		}
		if syntax && ce != nil {
			ce.line = syntaxErrorLine(b, ce.msg, ce.line)
		}
		return nil, tabHint(err, b)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &configError{line: extra.Line, msg: "a second YAML document; put everything in one"}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err == nil {
		if errs := slices.Concat(fractions(&root), emptyTLS(&root), emptyEntries(&root)); len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		recordLines(&root, &cfg)
	}
	return &cfg, nil
}

// tabHint adds to a syntax error on a line indented with a tab that YAML indents with spaces:
// yaml says only "found character that cannot start any token", and an editor shows the tab as
// the spaces it meant.
func tabHint(err error, b []byte) error {
	var ce *configError
	if !errors.As(err, &ce) || ce.line <= 0 || ce.key != "" {
		return err
	}
	lines := bytes.Split(b, []byte("\n"))
	if ce.line > len(lines) {
		return err
	}
	line := lines[ce.line-1]
	if indent := line[:len(line)-len(bytes.TrimLeft(line, " \t"))]; bytes.IndexByte(indent, '\t') >= 0 {
		ce.msg += " (the line is indented with a tab: YAML indents with spaces only)"
	}
	return err
}

// friendlyYAMLError turns yaml's decoding errors into the file's terms, one error per line of
// the file at fault, each naming its line and key.
func friendlyYAMLError(err error, root *yaml.Node) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		errs := make([]error, 0, len(te.Errors))
		used := map[string]bool{} // values named so far (valueAt)
		for _, e := range te.Errors {
			if m := reUnknownField.FindStringSubmatch(e); m != nil {
				sec := sectionAt(root, atoi(m[1]), m[2], m[3])
				if sec == "" {
					if sec = sectionName[m[3]]; sec == "" {
						sec = m[3]
					}
				}
				msg := "unknown key in " + sec
				near := keyMeant[m[3]][m[2]]
				if near == "" {
					near = nearestKey(m[2], sectionKeys(m[3]))
				}
				if near != "" {
					msg += ": did you mean " + near + "?"
				}
				errs = append(errs, &configError{line: atoi(m[1]), key: m[2], msg: msg + " (every key: the README's config reference)"})
				continue
			}
			m := reLinePrefix.FindStringSubmatch(e)
			if m == nil {
				errs = append(errs, errors.New(e))
				continue
			}
			line, msg, key := atoi(m[1]), m[2], ""
			if w := reWrongType.FindStringSubmatch(msg); w != nil {
				// The node's line is where its value starts: for a mapping or a list written on
				// the lines below its key, the key's own line is the one to name.
				if k, kl := valueAt(root, line, w[1], w[2], w[3], used); k != "" {
					key, line = k, kl
				}
				what, want := yamlTagWords[w[1]], goTypeWords(w[3])
				if what == "" {
					what = "a value of another kind"
				}
				if w[2] != "" {
					what += " (" + strings.TrimSpace(w[2]) + ")"
				}
				msg = fmt.Sprintf("is %s, but must be %s", what, want)
				if want == "a whole number" && (w[1] == "int" || w[1] == "float") {
					// yaml takes a float that fits into an integer field: one it refuses is
					// past the field's range (a whole number past 64 bits is read as a float).
					msg = fmt.Sprintf("is %s, out of range for this key", what)
				}
			}
			if key == "" {
				key = keyAtLine(root, line, "")
			}
			errs = append(errs, &configError{line: line, key: key, msg: msg})
		}
		return errors.Join(errs...) // one line each, as validation's errors are
	}
	if m := reLinePrefix.FindStringSubmatch(err.Error()); m != nil {
		return &configError{line: atoi(m[1]), msg: m[2]}
	}
	return err
}

// syntaxErrorLine is the line a YAML syntax error is at. yaml.v3 names the line its parser was
// in when it failed, the start of the enclosing list or mapping counted from 0 (a key indented
// one space less than its list entry's is reported on the line above the list), or, for a
// quoted string never closed, the end of the file. A flow list or mapping never closed ([a,)
// is best named where it opened, which yaml.v3 names counted from 0, unless it is 0: then it
// names the problem's line, which can be past the file's end (flowOpenLine). Otherwise the
// line is found again as the end of the shortest run of the file's first lines that fails
// with the same message: a run that ends before the line at fault parses, or fails otherwise,
// and every run that includes it fails there, so a binary search finds it. reported is kept
// when no run fails so.
func syntaxErrorLine(b []byte, msg string, reported int) int {
	if strings.HasPrefix(msg, "did not find expected ',' or ") {
		if l := flowOpenLine(b, msg); l > 0 {
			return l
		}
		return reported + 1
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	fails := func(n int) bool { // the first n lines fail with msg
		var v any
		err := yaml.Unmarshal(bytes.Join(lines[:n], nil), &v)
		if err == nil {
			return false
		}
		e := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := reLinePrefix.FindStringSubmatch(e); m != nil {
			e = m[2]
		}
		return e == msg
	}
	n := sort.Search(len(lines), func(i int) bool { return fails(i + 1) })
	if n >= len(lines) {
		return reported
	}
	return n + 1
}

// flowOpenLine is the line a flow list or mapping that b never closes opens on (msg: yaml's
// error for it), or 0. With a line put before the file, the flow opens on line 1 or later,
// counted from 0, which yaml.v3 names: its line in the file as written, counted from 1.
func flowOpenLine(b []byte, msg string) int {
	var v any
	err := yaml.Unmarshal(append([]byte("\n"), b...), &v)
	if err == nil {
		return 0
	}
	if m := reLinePrefix.FindStringSubmatch(strings.TrimPrefix(err.Error(), "yaml: ")); m != nil && m[2] == msg {
		return atoi(m[1])
	}
	return 0
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// keyMeant: keys of one front written in another's terms, which no spelling rule finds (a Kafka
// front's upstream would read as upstream_tls).
var keyMeant = map[string]map[string]string{
	"KafkaConfig": {"upstream": "bootstrap", "upstreams": "bootstrap", "brokers": "bootstrap"},
	"AMQPConfig":  {"bootstrap": "upstream"},
	"AWSConfig":   {"bootstrap": "upstream", "endpoint": "upstream", "endpoint_url": "upstream"},
}

// sectionKeys lists the keys of the config struct yaml's message names (KafkaConfig), inline
// ones included.
func sectionKeys(typeName string) []string {
	var found reflect.Type
	seen := map[reflect.Type]bool{}
	var find func(t reflect.Type)
	find = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] || found != nil {
			return
		}
		seen[t] = true
		if t.Name() == typeName {
			found = t
			return
		}
		for i := range t.NumField() {
			find(t.Field(i).Type)
		}
	}
	find(reflect.TypeOf(Config{}))
	var keys []string
	if found != nil {
		yamlFields(found, func(key string, _ reflect.StructField) bool {
			keys = append(keys, key)
			return true
		})
	}
	return keys
}

// nearestKey is the known key a mistyped one most likely meant ("" if none is close): within two
// edits (kafak, max_con), or the same but for its end (max_connections, ca, bootstrap_servers).
func nearestKey(key string, known []string) string {
	best, bestD := "", math.MaxInt
	for _, k := range known {
		d := editDistance(key, k)
		p := 0
		for p < len(key) && p < len(k) && key[p] == k[p] {
			p++
		}
		if (d <= 2 || p >= 2 && p >= min(len(key), len(k))-1) && d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, with a swap of two neighbours as one edit.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// reWrongType is yaml's message for a value of the wrong kind ("cannot unmarshal !!map into
// []main.KafkaConfig"), which names Go types a user never wrote.
var reWrongType = regexp.MustCompile("^cannot unmarshal !!(\\w+) (`[^`]*` )?into (\\S+)$")

// yamlTagWords says what a YAML tag in yaml's messages is, in the file's terms.
var yamlTagWords = map[string]string{"map": "a mapping", "seq": "a list", "str": "a string",
	"int": "a whole number", "float": "a number", "bool": "true or false", "null": "empty",
	"timestamp": "a date", "binary": "binary data"}

// goTypeWords says what a config field of Go type t takes, in the file's terms.
func goTypeWords(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list (each entry starting with `- `)"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "main."): // a struct (yaml names it without its pointer)
		return "a mapping (key: value lines)"
	case t == "string":
		return "a string"
	case t == "bool":
		return "true or false"
	case strings.HasPrefix(t, "int") || strings.HasPrefix(t, "uint"):
		return "a whole number"
	case strings.HasPrefix(t, "float"):
		return "a number"
	}
	return "of type " + t
}

// valueAt finds the value yaml could not decode into a field of Go type typ (as its message
// names it: "[]main.KafkaConfig", "int") starting at line, by walking the file's nodes alongside
// the Config type, in document order as yaml decodes. used holds the values already named, so
// that a second identical error on one line names the second such value. It returns the value's
// path (a key, or a list entry: kafka[0]) and its key's line (the entry's own for a list entry).
func valueAt(root *yaml.Node, line int, tag, quoted, typ string, used map[string]bool) (string, int) {
	fits := func(n *yaml.Node) bool { // what yaml's message says of the value
		switch tag {
		case "map":
			return n.Kind == yaml.MappingNode
		case "seq":
			return n.Kind == yaml.SequenceNode
		}
		return n.Kind == yaml.ScalarNode && scalarQuoted(n.Value, quoted)
	}
	var found string
	var foundLine int
	walkConfig(root, func(n *yaml.Node, t reflect.Type, path string, keyLine int) bool {
		if n.Line != line || t.String() != typ || !fits(n) || used[path] {
			return false
		}
		used[path] = true // by path: an anchor's value aliased twice is two values
		found, foundLine = path, keyLine
		return true
	})
	return found, foundLine
}

// sectionAt finds the mapping of Go type typ (as yaml's message names it: "KafkaConfig") that
// holds key at line, and returns its path (kafka[1], kafka[0].sasl): with several fronts of a
// protocol, "kafka[]" would not say which. It returns "" when none is found (top level included).
func sectionAt(root *yaml.Node, line int, key, typ string) string {
	var found string
	walkConfig(root, func(n *yaml.Node, t reflect.Type, path string, _ int) bool {
		if n.Kind != yaml.MappingNode || t.Name() != typ {
			return false
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Line == line && k.Value == key {
				found = path
				return true
			}
		}
		return false
	})
	return found
}

// walkConfig visits the file's values beside the Config type, in document order as yaml decodes
// them: each value with the Go type it decodes into (pointers looked through), its path (a key,
// or a list entry: kafka[0]) and its key's line (the entry's own for a list entry). Merge keys
// and aliases are followed; keys Config does not have are skipped. It stops when visit says so.
func walkConfig(root *yaml.Node, visit func(n *yaml.Node, t reflect.Type, path string, keyLine int) bool) {
	var walk func(n *yaml.Node, t reflect.Type, path string, keyLine int) bool
	walk = func(n *yaml.Node, t reflect.Type, path string, keyLine int) bool {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		if path != "" && visit(n, t, path, keyLine) {
			return true
		}
		switch {
		case n.Kind == yaml.DocumentNode && len(n.Content) == 1:
			return walk(n.Content[0], t, path, keyLine)
		case n.Kind == yaml.MappingNode && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map):
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if k.Tag == "!!merge" { // <<: a mapping (or a list of them) whose keys are this one's
					merged := []*yaml.Node{v}
					if v.Kind == yaml.SequenceNode {
						merged = v.Content
					}
					for _, m := range merged {
						if walk(m, t, path, k.Line) {
							return true
						}
					}
					continue
				}
				ft := t
				if t.Kind() == reflect.Map {
					ft = t.Elem()
				} else if ft = yamlField(t, k.Value); ft == nil {
					continue
				}
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if walk(v, ft, p, k.Line) {
					return true
				}
			}
		case n.Kind == yaml.SequenceNode && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array):
			for i, c := range n.Content {
				if walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), c.Line) {
					return true
				}
			}
		}
		return false
	}
	walk(root, reflect.TypeOf(Config{}), "", 0)
}

// fractions finds numbers with a fraction written for whole-number keys: yaml decodes 12.5 into
// an integer field as 12, without a word.
func fractions(root *yaml.Node) []error {
	var errs []error
	walkConfig(root, func(n *yaml.Node, t reflect.Type, path string, keyLine int) bool {
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!float" {
			return false
		}
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		default:
			return false
		}
		if f, err := strconv.ParseFloat(n.Value, 64); err == nil && f == math.Trunc(f) {
			return false
		}
		errs = append(errs, &configError{line: keyLine, key: path, msg: fmt.Sprintf("is a number with a fraction (`%s`), but must be a whole number", n.Value)})
		return false
	})
	return errs
}

// emptyTLS finds tls: and upstream_tls: keys with nothing under them (null: their keys commented
// out, say). yaml leaves such a key's pointer nil, the same as no key at all, and the front would
// run in plaintext although the file asks for TLS.
func emptyTLS(root *yaml.Node) []error {
	server, client := reflect.TypeOf(TLSServer{}), reflect.TypeOf(TLSClient{})
	var errs []error
	walkConfig(root, func(n *yaml.Node, t reflect.Type, path string, keyLine int) bool {
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!null" {
			return false
		}
		switch t {
		case server:
			errs = append(errs, &configError{line: keyLine, key: path, msg: "is empty: give cert_file and key_file to terminate TLS toward clients, or remove the key for plaintext"})
		case client:
			errs = append(errs, &configError{line: keyLine, key: path, msg: "is empty: set enabled: true (system roots) or its other keys for TLS toward the upstream, or remove the key for plaintext"})
		}
		return false
	})
	return errs
}

// emptyEntries finds list entries with nothing in them (a "-" alone, its keys commented out or
// indented under the next entry). yaml drops such an entry without a word: the front or rule is
// not there, and the entries after it get the numbers and lines of the ones before.
func emptyEntries(root *yaml.Node) []error {
	var errs []error
	walkConfig(root, func(n *yaml.Node, t reflect.Type, path string, keyLine int) bool {
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" && t.Kind() == reflect.Struct && strings.HasSuffix(path, "]") {
			errs = append(errs, &configError{line: keyLine, key: path, msg: "is an empty entry: give it its keys (indented under its `- `), or remove the line"})
		}
		return false
	})
	return errs
}

// scalarQuoted reports whether yaml's message quoted text as q ("`lots` ", or "`1234567...` " for
// text over 10 bytes; "" when it quoted nothing).
func scalarQuoted(text, q string) bool {
	q = strings.Trim(strings.TrimSpace(q), "`")
	if short, ok := strings.CutSuffix(q, "..."); ok && len(text) > 10 {
		return strings.HasPrefix(text, short)
	}
	return q == "" || text == q
}

// yamlField is the type of struct t's field that key decodes into (inline structs looked
// through), or nil.
func yamlField(t reflect.Type, key string) (ft reflect.Type) {
	yamlFields(t, func(k string, f reflect.StructField) bool {
		if k == key {
			ft = f.Type
		}
		return ft == nil
	})
	return ft
}

// yamlFields calls fn with the key and field of each field of struct t that the YAML decoder
// fills, the fields of inline structs as t's own, until fn returns false (then so does it).
func yamlFields(t reflect.Type, fn func(key string, f reflect.StructField) bool) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return true
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-":
			continue
		case strings.Contains(opts, "inline"):
			if !yamlFields(f.Type, fn) {
				return false
			}
			continue
		case name == "":
			name = strings.ToLower(f.Name) // the decoder's default
		}
		if !fn(name, f) {
			return false
		}
	}
	return true
}

// keyAtLine returns the dotted path (kafka[0].max_conns) of the mapping key on line, if any.
func keyAtLine(n *yaml.Node, line int, path string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if k := keyAtLine(c, line, path); k != "" {
				return k
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if k.Line == line {
				return p
			}
			if r := keyAtLine(v, line, p); r != "" {
				return r
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if r := keyAtLine(c, line, fmt.Sprintf("%s[%d]", path, i)); r != "" {
				return r
			}
		}
	}
	return ""
}

// recordLines remembers where each list entry starts so validation errors can point at it.
func recordLines(root *yaml.Node, cfg *Config) {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return
	}
	m := root.Content[0]
	cfg.lines = map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		key, val := m.Content[i].Value, m.Content[i+1]
		cfg.lines[key] = val.Line
		if val.Kind == yaml.MappingNode { // log:, admin:, agent:, errors:
			for k := 0; k+1 < len(val.Content); k += 2 {
				cfg.lines[key+"."+val.Content[k].Value] = val.Content[k+1].Line
			}
		}
		if val.Kind != yaml.SequenceNode {
			continue
		}
		for j, item := range val.Content {
			recordKeyLines(cfg.lines, fmt.Sprintf("%s[%d]", key, j), item)
			switch key {
			case "kafka":
				if j < len(cfg.Kafka) {
					cfg.Kafka[j].line = item.Line
				}
			case "amqp":
				if j < len(cfg.AMQP) {
					cfg.AMQP[j].line = item.Line
				}
			case "aws":
				if j < len(cfg.AWS) {
					cfg.AWS[j].line = item.Line
				}
			case "services":
				if j < len(cfg.Services) {
					cfg.Services[j].line = item.Line
				}
			}
		}
	}
}

// recordKeyLines records in lines the line of every key under the mapping n (a list entry),
// as prefix.key, nested mappings too (kafka[0].sasl.password_file): what building the entry
// refuses is named on its key's own line.
func recordKeyLines(lines map[string]int, prefix string, n *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := prefix + "." + n.Content[i].Value
		lines[key] = n.Content[i].Line
		recordKeyLines(lines, key, n.Content[i+1])
	}
}

// ApplyEnv overlays the Datadog environment variables onto cfg (env beats file). lookup is
// os.LookupEnv in production.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) {
	get := func(k string) string { v, _ := lookup(k); return v }
	if v := get("DD_ENV"); v != "" {
		c.Env = v
	}
	if v := get("DD_SERVICE"); v != "" {
		c.Service = v
	}
	if v := get("DD_VERSION"); v != "" {
		c.Version = v
	}
	if v := get("DD_TRACE_AGENT_URL"); v != "" {
		c.Agent.URL = v
		c.setBy("agent.url", "DD_TRACE_AGENT_URL")
	} else if h, p := get("DD_AGENT_HOST"), get("DD_TRACE_AGENT_PORT"); h != "" || p != "" {
		if h == "" {
			h = "localhost"
		}
		if p == "" {
			p = "8126"
		}
		c.Agent.URL = "http://" + net.JoinHostPort(h, p)
		c.setBy("agent.url", agentHostPortVars)
		c.agentHost, c.agentPort = h, p
	}
	// As dd-trace-py reads them (AgentEnabledFromEnv): a fleet configured for the tracer gets the
	// spans, and one that set the variables to turn it off ("", "false") does not.
	if errtrack.AgentEnabledFromEnv(get) {
		on := true
		c.Errors.Agent = &on
	} else if v := get(errtrack.HandledErrorsVars[0]); v != "" && v != "false" {
		c.handledErrorsIgnored = v
	}
}

// warnEnv warns about what the environment set that does nothing, though it reads as if it
// did (run at start, and check-config).
func (c *Config) warnEnv(log zerolog.Logger) {
	if v := c.handledErrorsIgnored; v != "" && (c.Errors.Agent == nil || !*c.Errors.Agent) {
		log.Warn().Str(errtrack.HandledErrorsVars[0], v).
			Msg("DD_ERROR_TRACKING_HANDLED_ERRORS is not user, third_party or all: error spans stay off, as dd-trace-py reads it (all, or errors.agent: true, turns them on)")
	}
}

// Defaults fills what is still unset after file, env and flags.
func (c *Config) Defaults() {
	if c.Admin.Listen == "" {
		c.Admin.Listen = defaultAdmin
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = Duration(defaultDrainTimeout)
	}
	if c.Agent.FlushInterval == 0 {
		c.Agent.FlushInterval = Duration(defaultFlush)
	}
	if c.Agent.URL == "" {
		// As dd-trace-go: the default socket when anything is at its path.
		c.Agent.URL = aggregator.DefaultAgentURL
		if _, err := os.Stat(aggregator.DefaultAgentSocket); err == nil {
			c.Agent.URL = "unix://" + aggregator.DefaultAgentSocket
		}
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	if c.Errors.Interval == 0 {
		c.Errors.Interval = Duration(defaultFlush)
	}
}

// Validate checks everything that can be checked without listening. Errors name the section,
// entry and key at fault (and the file line when the entry came from the file).
func (c *Config) Validate() error {
	var errs []error
	bad := func(line int, key, format string, a ...any) {
		errs = append(errs, c.refuse(line, key, fmt.Sprintf(format, a...)))
	}
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		bad(0, "log.level", "%q is not one of trace, debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		bad(0, "log.format", "%q is not json or console", c.Log.Format)
	}
	if !c.adminOff() {
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			bad(0, "admin.listen", "%q is not host:port (or off)", c.Admin.Listen)
		}
	}
	if !c.Agent.Disabled {
		var envErr error
		if c.sourceOf("agent.url") == agentHostPortVars {
			envErr = c.checkAgentHostPort()
		}
		if envErr != nil {
			errs = append(errs, envErr)
		} else if err := checkAgentURL(c.Agent.URL); err != nil {
			bad(0, "agent.url", "%v", err)
		}
	}
	if c.Agent.MaxPendingBytes < 0 {
		bad(0, "agent.max_pending_bytes", "must be >= 0 (0: the default)")
	}
	if d := c.Agent.FlushInterval.D(); d != 0 && d < time.Second {
		bad(0, "agent.flush_interval", "%s is below 1s: it is also the width of the DSM buckets (Datadog's tracers use 10s)", d)
	}
	if d := c.Errors.Interval.D(); d != 0 && d < time.Second {
		bad(0, "errors.interval", "%s is below 1s: every tracked error group is logged (and sent to the Agent, with errors.agent) once an interval", d)
	}
	if c.Errors.MaxFingerprints < 0 {
		bad(0, "errors.max_fingerprints", "must be >= 0 (0: the default, %d)", errtrack.DefaultMaxFingerprints)
	} else if c.Errors.MaxFingerprints > maxErrorGroups {
		bad(0, "errors.max_fingerprints", "%d is over %d: every group active in an interval is a log line, an Agent span and a /metrics series", c.Errors.MaxFingerprints, maxErrorGroups)
	}
	for _, cat := range c.Errors.Categories {
		switch cat {
		case "broker_error", "lost_message", "proxy_skip", "decode_error":
		default:
			bad(0, "errors.categories", "%q is not one of broker_error, lost_message, proxy_skip, decode_error", cat)
		}
	}
	for i, r := range c.Services {
		k := fmt.Sprintf("services[%d]", i)
		if r.Service == "" && !r.Traced {
			bad(r.line, k+".service", "a rule needs the service it maps to (or traced: true)")
		}
		if r.ClientID != "" {
			if _, err := regexp.Compile(r.ClientID); err != nil {
				bad(r.line, k+".client_id", "not a regular expression: %v", err)
			}
		}
		if r.CIDR != "" {
			if _, err := netip.ParsePrefix(r.CIDR); err != nil {
				bad(r.line, k+".cidr", "%v", err)
			}
		}
		switch r.Protocol {
		case "", "kafka", "amqp", "aws":
		default:
			bad(r.line, k+".protocol", "%q is not kafka, amqp or aws", r.Protocol)
		}
	}
	// Every port the proxy will listen on, to find two that clash (below).
	type claim struct {
		host      string
		port      int
		key, what string
		line      int
		node      bool // a Kafka broker node's listener, opened when the cluster names it
	}
	var claims []claim
	listen := func(line int, key, addr string) {
		if addr == "" {
			bad(line, key, "a listen address (host:port) is required")
			return
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			bad(line, key, "%q is not host:port", addr)
			return
		}
		n, err := portNumber(port)
		if err != nil {
			bad(line, key, "%q: %v", addr, err)
			return
		}
		if n != 0 { // ephemeral: never a clash
			claims = append(claims, claim{host: host, port: n, key: key, what: key, line: line})
		}
	}
	if _, _, err := net.SplitHostPort(c.Admin.Listen); err == nil && !c.adminOff() { // else refused above
		listen(0, "admin.listen", c.Admin.Listen)
	}
	for i, k := range c.Kafka {
		p := fmt.Sprintf("kafka[%d]", i)
		listen(k.line, p+".listen", k.Listen)
		if len(k.Bootstrap) == 0 {
			bad(k.line, p+".bootstrap", "at least one upstream broker (host:port) is required")
		}
		for _, b := range k.Bootstrap {
			if !validHostPort(b) {
				bad(k.line, p+".bootstrap", "%q is not host:port (port 1..65535 or a service name)", b)
			}
		}
		// Frames: a Kafka frame holds a whole request or response (fetch responses run to
		// fetch.max.bytes); an AMQP one, a method or content header (at least frame_min_size 4096).
		if k.MaxFrameBytes != 0 && k.MaxFrameBytes < 1<<20 {
			bad(k.line, p+".max_frame_bytes", "%d is below 1 MiB, less than a Kafka client's default fetch of one partition (0: the default, 100 MiB)", k.MaxFrameBytes)
		}
		if w := k.TopicLimitWait; w != nil && w.D() > kafka.MaxTopicLimitWait {
			bad(k.line, p+".topic_limit_wait", "%v is over %v: clients give up on a request after request.timeout.ms (30 s by default), and every produce to a new topic would wait that long while the cluster does not answer (0s: never wait)", w.D(), kafka.MaxTopicLimitWait)
		}
		if k.FrameBudgetBytes < 0 {
			bad(k.line, p+".frame_budget_bytes", "must be >= 0 (0: the default, 512 MiB)")
		}
		if k.MaxTopicIDs < 0 {
			bad(k.line, p+".max_topic_ids", "must be >= 0 (0: the default, 100000)")
		} else if k.MaxTopicIDs > maxTopicIDs {
			bad(k.line, p+".max_topic_ids", "%d is over %d (each id kept takes about 100 bytes, and up to twice the setting are kept)", k.MaxTopicIDs, maxTopicIDs)
		}
		if k.MaxBatchBytes < 0 {
			bad(k.line, p+".max_batch_bytes", "must be >= 0 (0: the default)")
		}
		for _, id := range slices.Sorted(maps.Keys(k.NodeAddrs)) {
			a := k.NodeAddrs[id]
			_, port, err := net.SplitHostPort(a)
			if err == nil {
				_, err = portNumber(port)
			}
			if err != nil {
				bad(k.line, fmt.Sprintf("%s.node_addrs.%d", p, id), "%q is not host:port (port 0..65535; an empty or wildcard host is advertised as advertised_host)", a)
			}
		}
		// Broker node N listens on node_port_base + N: a base that is no port gives no node one,
		// and every client would fail at its first Metadata.
		if k.NodePortBase < 0 || k.NodePortBase > 65535 {
			bad(k.line, p+".node_port_base", "%d is not a port (1..65535; 0: the listen port + 1): broker node N listens on node_port_base + N", k.NodePortBase)
		} else if _, port, err := net.SplitHostPort(k.Listen); err == nil && k.NodePortBase == 0 {
			if lp, err := portNumber(port); err == nil && lp == 65535 {
				bad(k.line, p+".node_port_base", "unset, it is the listen port + 1, 65536, which is no port: set node_port_base (broker node N listens on node_port_base + N)")
			}
		}
		if a := k.SASL; a != nil {
			switch strings.ToUpper(a.Mechanism) {
			case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
			default:
				bad(k.line, p+".sasl.mechanism", "%q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", a.Mechanism)
			}
			if a.Username == "" {
				bad(k.line, p+".sasl.username", "required: the user the proxy logs in as (it needs Describe and DescribeConfigs on the topics)")
			}
			if (a.Password == "") == (a.PasswordFile == "") {
				bad(k.line, p+".sasl", "set one of password and password_file")
			}
		}
		if host, _, err := net.SplitHostPort(k.Listen); err == nil && k.AdvertisedHost == "" && wildcard(host) {
			bad(k.line, p+".advertised_host", "required when listen %s binds every interface: it is the host clients are told to reach the broker nodes at (set it in a config file)", k.Listen)
		}
		c.checkLimits(k.line, p, k.ListenerLimits, true, bad)
	}
	for i, a := range c.AMQP {
		p := fmt.Sprintf("amqp[%d]", i)
		listen(a.line, p+".listen", a.Listen)
		if a.Upstream == "" {
			bad(a.line, p+".upstream", "required: the real broker's host:port")
		} else if !validHostPort(a.Upstream) {
			bad(a.line, p+".upstream", "%q is not host:port (port 1..65535 or a service name) of the real broker", a.Upstream)
		}
		if a.MaxFrameBytes != 0 && a.MaxFrameBytes < 4096 {
			bad(a.line, p+".max_frame_bytes", "%d is below AMQP's frame_min_size 4096 (0: the default, 1 MiB)", a.MaxFrameBytes)
		}
		c.checkLimits(a.line, p, a.ListenerLimits, true, bad)
	}
	for i, a := range c.AWS {
		p := fmt.Sprintf("aws[%d]", i)
		listen(a.line, p+".listen", a.Listen)
		if a.Upstream != "" && !httpURL(a.Upstream) {
			bad(a.line, p+".upstream", "%q is not an http(s) URL of the real endpoint", a.Upstream)
		}
		for svc, u := range a.Upstreams {
			if svc != "sqs" && svc != "sns" && svc != "kinesis" {
				bad(a.line, p+".upstreams."+svc, "unknown service (sqs, sns or kinesis)")
			} else if !httpURL(u) {
				bad(a.line, p+".upstreams."+svc, "%q is not an http(s) URL", u)
			}
		}
		for j, key := range a.ClientKeys {
			if key.AccessKeyID == "" || key.SecretAccessKey == "" {
				bad(a.line, fmt.Sprintf("%s.client_keys[%d]", p, j), "both access_key_id and secret_access_key are required")
			}
		}
		if a.TrustClientsNonLoopback && !a.TrustClients {
			bad(a.line, p+".trust_clients_non_loopback", "only means something with trust_clients: true")
		}
		c.checkLimits(a.line, p, a.ListenerLimits, false, bad)
	}
	// Broker node N listens on node_port_base + N (default: the bootstrap port + 1 + N) unless
	// node_addrs maps it: another listener there (a front, the admin, another Kafka front's node)
	// takes node N's port, and every client then fails at its first Metadata. Node ids 0-9 are
	// checked, as clusters number brokers from 0 or 1.
	for i, k := range c.Kafka {
		for _, n := range k.nodeListeners() {
			key := "node_port_base"
			if n.mapped {
				key = "node_addrs"
			}
			claims = append(claims, claim{host: n.host, port: n.port, key: fmt.Sprintf("kafka[%d].%s", i, key), what: fmt.Sprintf("kafka[%d]'s broker node %d", i, n.id), line: k.line, node: true})
		}
	}
	// Two fronts whose node ports overlap clash on every node id: said once per pair of keys.
	type nodeClash struct {
		a, b, n claim
		ports   map[int]bool // every port they clash on
	}
	var nodeClashes []*nodeClash
	clashOf := map[string]*nodeClash{}
	for i, a := range claims {
		for _, b := range claims[i+1:] {
			if a.port != b.port || !sameHost(a.host, b.host) {
				continue
			}
			if !a.node && !b.node {
				// Written alike or not (localhost and 127.0.0.1, a wildcard and a host).
				bad(b.line, b.key, "port %d on this host is already used by %s", b.port, a.key)
				continue
			}
			n := b
			if !n.node {
				n = a
			}
			if nc := clashOf[a.key+"|"+b.key]; nc != nil {
				nc.ports[a.port] = true
				continue
			}
			nc := &nodeClash{a: a, b: b, n: n, ports: map[int]bool{a.port: true}}
			clashOf[a.key+"|"+b.key] = nc
			nodeClashes = append(nodeClashes, nc)
		}
	}
	for _, nc := range nodeClashes {
		more := ""
		if n := len(nc.ports) - 1; n > 0 {
			more = fmt.Sprintf(", and so would %d more of their node ports", n)
		}
		bad(nc.n.line, nc.n.key, "%s and %s would both listen on port %d%s (node N listens on node_port_base + N, by default the listen port + 1 + N): set node_port_base, map the node in node_addrs, or move the other", nc.a.what, nc.b.what, nc.a.port, more)
	}
	if len(c.Kafka)+len(c.AMQP)+len(c.AWS) == 0 {
		bad(0, "", "nothing to proxy: give at least one of --kafka, --amqp, --aws (or kafka:, amqp:, aws: in the config file)")
	}
	return errors.Join(errs...)
}

// checkLimits checks the keys every front shares; enabledRead: the front reads
// upstream_tls.enabled (AWS fronts follow the upstream URL's scheme instead).
func (c *Config) checkLimits(line int, p string, l ListenerLimits, enabledRead bool, bad func(int, string, string, ...any)) {
	if l.MaxConns < 0 {
		bad(line, p+".max_conns", "must be >= 0 (0 = unlimited)")
	}
	if l.TLS != nil && (l.TLS.CertFile == "" || l.TLS.KeyFile == "") {
		bad(line, p+".tls", "cert_file and key_file are both required to terminate TLS")
	}
	if t := l.UpstreamTLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			bad(line, p+".upstream_tls", "a client certificate needs both cert_file and key_file")
		}
		if enabledRead && t.Enabled != nil && !*t.Enabled && t.configured() {
			bad(line, p+".upstream_tls", "enabled is false but ca_file, cert_file, server_name or insecure_skip_verify is set: remove them, or set enabled: true")
		}
	}
}

// nodeListener is where a Kafka front's broker node listens, as the configuration places it.
type nodeListener struct {
	id     int32
	host   string
	port   int
	mapped bool // by node_addrs; else node_port_base + id
}

// nodeListeners places broker nodes 0 to nodePortsChecked-1: node_addrs entries, else
// node_port_base + id (by default the listen port + 1 + id). Nodes whose port is picked when
// they open (listen port 0 without node_port_base, or a mapped port 0) are left out.
func (k KafkaConfig) nodeListeners() []nodeListener {
	host, port, err := net.SplitHostPort(k.Listen)
	lp, _ := portNumber(port)
	base := k.NodePortBase
	if base == 0 && lp != 0 {
		base = lp + 1
	}
	var out []nodeListener
	for id := int32(0); id < nodePortsChecked; id++ {
		if a, mapped := k.NodeAddrs[id]; mapped {
			h, pt, err := net.SplitHostPort(a)
			if n, _ := portNumber(pt); err == nil && n != 0 {
				out = append(out, nodeListener{id: id, host: h, port: n, mapped: true})
			}
		} else if err == nil && base != 0 {
			out = append(out, nodeListener{id: id, host: host, port: base + int(id)})
		}
	}
	return out
}

// nodePortsChecked: how many broker node ids (0, 1, ...) the clash check covers; clusters number
// their brokers from 0 or 1 as a rule.
const nodePortsChecked = 10

// validHostPort: s is host:port with a port a peer can listen on.
func validHostPort(s string) bool {
	h, p, err := net.SplitHostPort(s)
	n, perr := portNumber(p)
	return err == nil && h != "" && strings.TrimSpace(h) == h && perr == nil && n >= 1
}

// portNumber reads a port as the net package does: a number, or a service name (amqp, 5672).
func portNumber(p string) (int, error) {
	n, err := net.LookupPort("tcp", p)
	if err != nil {
		return 0, fmt.Errorf("the port is not 0..65535 or a known service name")
	}
	return n, nil
}

func wildcard(host string) bool {
	return host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()
}

// sameHost: listeners on a and b can take each other's ports (the same host, a wildcard, or
// both loopback: localhost, 127.0.0.1, ::1).
func sameHost(a, b string) bool {
	if a == b || wildcard(a) || wildcard(b) {
		return true
	}
	ia, ib := net.ParseIP(a), net.ParseIP(b)
	if ia != nil && ib != nil {
		return ia.Equal(ib) // 127.0.0.1 and ::1 bind side by side
	}
	loopback := func(h string, ip net.IP) bool { return h == "localhost" || ip != nil && ip.IsLoopback() }
	// localhost is some loopback address: written alike or not (localhost, 127.0.0.1), a clash.
	return (a == "localhost" || b == "localhost") && loopback(a, ia) && loopback(b, ib)
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func (c *Config) adminOff() bool { return c.Admin.Disabled || c.Admin.Listen == "off" }

func checkAgentURL(s string) error {
	// host:port, as DD_AGENT_HOST and DD_TRACE_AGENT_PORT are given. unix:/path has no "//" and
	// is a URL all the same: the tracers take it (url.Parse puts the socket in its Path).
	if !strings.Contains(s, "://") && !strings.HasPrefix(s, "unix:") {
		// Read as the http URL it was meant to be, so that a user:password in it is masked.
		shown := strings.TrimPrefix(redact.URL("http://"+s), "http://")
		return fmt.Errorf("%q has no scheme: write http://%s (or https://..., unix:///path/to/apm.socket)", shown, shown)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q: %w", redact.URL(s), redact.ParseError(s, err))
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return fmt.Errorf("%q has no host", redact.URL(s))
		}
	case "unix":
		if u.Path == "" {
			return fmt.Errorf("%q has no socket path (write unix:///path/to/apm.socket)", redact.URL(s))
		}
	default:
		return fmt.Errorf("%q: scheme must be http, https or unix", redact.URL(s))
	}
	return nil
}
