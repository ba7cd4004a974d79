package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/protocols/amqp"
	"github.com/dsmproxy/dsmproxy/protocols/aws"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
)

// configKeys lists every YAML key Config accepts, as dotted paths (kafka.sasl.password_file;
// list and map entries add no step), from the struct tags the decoder reads.
func configKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || t == reflect.TypeOf(Duration(0)) {
			return
		}
		yamlFields(t, func(key string, f reflect.StructField) bool {
			keys = append(keys, prefix+key)
			walk(f.Type, prefix+key+".")
			return true
		})
	}
	walk(reflect.TypeOf(Config{}), "")
	return keys
}

// TestConfigKeysDocumented: the README says the example config shows every key, and names the
// keys in its text: a key added to Config without either is one an operator cannot find.
func TestConfigKeysDocumented(t *testing.T) {
	readme := readDoc(t, "../../README.md")
	example := readDoc(t, "testdata/dsmproxy.example.yaml")
	// Words inside the README's `code` spans (fenced blocks taken out first, as their fences
	// would pair with the spans' backticks): keys are written there, alone or in lists such as
	// `log {level, format}`. And keys of its yaml blocks, their comments' included.
	fenced := regexp.MustCompile("(?s)```.*?```")
	inREADME := map[string]bool{}
	for _, span := range regexp.MustCompile("`[^`]+`").FindAllString(fenced.ReplaceAllString(string(readme), ""), -1) {
		for _, w := range regexp.MustCompile(`[a-z0-9_]+`).FindAllString(span, -1) {
			inREADME[w] = true
		}
	}
	for _, block := range fenced.FindAllString(string(readme), -1) {
		for _, m := range regexp.MustCompile(`([a-z0-9_]+):`).FindAllStringSubmatch(block, -1) {
			inREADME[m[1]] = true
		}
	}
	for _, k := range configKeys() {
		name := k[strings.LastIndexByte(k, '.')+1:]
		if !inREADME[name] {
			t.Errorf("config key %s is not named in README.md", k)
		}
		// Keys whose values need real files are shown commented out: "# tls: {cert_file: ...}".
		if !regexp.MustCompile(`(?m)(^\s*#?\s*(- )?|[{,]\s*)` + name + `:`).Match(example) {
			t.Errorf("config key %s is not shown in testdata/dsmproxy.example.yaml", k)
		}
	}
}

// TestDocumentedKeysExist: what the docs show is accepted. The example's live keys are checked
// by TestShippedConfigs; here its commented-out sections and the README's yaml blocks.
func TestDocumentedKeysExist(t *testing.T) {
	known := map[string]bool{}
	for _, k := range configKeys() {
		known[k[strings.LastIndexByte(k, '.')+1:]] = true
	}
	example := readDoc(t, "testdata/dsmproxy.example.yaml")
	commented := regexp.MustCompile(`(?m)^\s*#\s*([a-z_]+: \{.*\})\s*$`)
	for _, m := range commented.FindAllStringSubmatch(string(example), -1) {
		var v map[string]map[string]any
		if err := yaml.Unmarshal([]byte(m[1]), &v); err != nil {
			t.Errorf("example: commented-out %q: %v", m[1], err)
			continue
		}
		for section, inner := range v {
			if !known[section] {
				t.Errorf("example: commented-out key %s is not a config key", section)
			}
			for k := range inner {
				if !known[k] {
					t.Errorf("example: commented-out key %s.%s is not a config key", section, k)
				}
			}
		}
	}
	readme := readDoc(t, "../../README.md")
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) == 0 {
		t.Fatal("no yaml block in README.md: update this test")
	}
	for _, b := range blocks {
		if _, err := ParseConfig([]byte(b[1])); err != nil {
			t.Errorf("README.md yaml block is refused: %v\n%s", err, b[1])
		}
	}
}

// TestREADMEExamplesPassCheckConfig: what the README tells a user to write or run is what
// check-config accepts, through every front's own checks (TLS files loaded, SASL files read),
// not the YAML decoding alone. Each yaml block's file-valued keys are pointed at real files of
// their kind (the README's paths are the user's), and each `dsmproxy run` line of its sh
// blocks is checked with the same arguments.
func TestREADMEExamplesPassCheckConfig(t *testing.T) {
	readme := readDoc(t, "../../README.md")
	files := exampleFiles(t)
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	fileKey := regexp.MustCompile(`\b([a-z_]+_file):[ \t]*([^\s,}#]+)`)
	for i, b := range blocks {
		var missing []string
		snippet := fileKey.ReplaceAllStringFunc(b[1], func(kv string) string {
			key := fileKey.FindStringSubmatch(kv)[1]
			path, ok := files[key]
			if !ok {
				missing = append(missing, key)
			}
			return key + ": " + path
		})
		if len(missing) > 0 {
			t.Errorf("README yaml block %d: no stand-in file for %v: add one to exampleFiles", i+1, missing)
			continue
		}
		path := filepath.Join(t.TempDir(), "readme.yaml")
		if err := os.WriteFile(path, []byte(snippet), 0o600); err != nil {
			t.Fatal(err)
		}
		checkConfigPasses(t, fmt.Sprintf("README yaml block %d", i+1), []string{"--config", path})
	}
	runs := 0
	for _, sh := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(readme), -1) {
		for _, line := range strings.Split(sh[1], "\n") {
			line, _, _ = strings.Cut(line, "#")
			args, ok := strings.CutPrefix(strings.TrimSpace(line), "dsmproxy run ")
			if !ok {
				continue
			}
			runs++
			checkConfigPasses(t, "README: "+strings.TrimSpace(line), strings.Fields(args))
		}
	}
	if len(blocks) == 0 || runs == 0 {
		t.Fatalf("found %d yaml blocks and %d `dsmproxy run` lines in README.md: update this test", len(blocks), runs)
	}
}

// TestComposeCommandPassesCheckConfig: docker-compose.yml's dsmproxy command, with the config
// file its volume mounts, is accepted by check-config: a flag or path renamed in the binary
// fails here rather than in a user's `docker compose up`.
func TestComposeCommandPassesCheckConfig(t *testing.T) {
	b := readDoc(t, "../../docker-compose.yml")
	var compose struct {
		Services map[string]struct {
			Command []string `yaml:"command"`
			Volumes []string `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatal(err)
	}
	svc, ok := compose.Services["dsmproxy"]
	if !ok || len(svc.Command) == 0 || svc.Command[0] != "run" {
		t.Fatalf("docker-compose.yml: no dsmproxy service running `run`: %+v", svc)
	}
	mounts := map[string]string{} // container path -> host path
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 {
			mounts[parts[1]] = filepath.Join("../..", parts[0])
		}
	}
	args := slices.Clone(svc.Command[1:])
	for i, a := range args {
		if host, ok := mounts[a]; ok {
			args[i] = host
		} else if i > 0 && args[i-1] == "--config" {
			t.Fatalf("docker-compose.yml: --config %s is not a path its volumes mount", a)
		}
	}
	checkConfigPasses(t, "docker-compose.yml command", args)
}

// checkConfigPasses runs check-config with args and fails the test unless it accepts them.
func checkConfigPasses(t *testing.T, what string, args []string) {
	t.Helper()
	var out, errb bytes.Buffer
	if code := mainArgs(append([]string{"check-config"}, args...), &out, &errb); code != 0 || !strings.Contains(out.String(), "configuration OK") {
		t.Errorf("%s: check-config exit %d: %s%s", what, code, out.String(), errb.String())
	}
}

// exampleFiles writes a real file for each file-valued config key: a password, a certificate
// and its key, a CA.
func exampleFiles(t *testing.T) map[string]string {
	dir := t.TempDir()
	pki := testpki.New(t, "docs example CA")
	cert, key, _ := pki.IssueFiles(t, dir, "example", "localhost")
	ca := pki.WriteCA(t, dir)
	password := filepath.Join(dir, "password")
	if err := os.WriteFile(password, []byte("example-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"password_file": password, "cert_file": cert, "key_file": key, "ca_file": ca, "client_ca_file": ca}
}

// TestMetricLevelsDocumented: the README names /metrics' counters by a rule
// (dsmproxy_<front>_<counter>_total), but a level is a gauge without _total, which a user
// looking for the rule's name would not find: every gauge the /stats structs give is named in
// the README, in full or by its part after the front's prefix (`open_buckets`,
// `dsmproxy_<front>_open_connections`).
func TestMetricLevelsDocumented(t *testing.T) {
	readme := readDoc(t, "../../README.md")
	page := &metricsPage{stats: func() statsSnapshot {
		return statsSnapshot{
			Fronts: []frontStats{
				{Protocol: "kafka", Listen: "k", Stats: kafka.Stats{}, Listeners: []kafka.ListenerConnections{{Node: -1}}},
				{Protocol: "amqp", Listen: "a", Stats: amqp.Stats{}},
				{Protocol: "aws", Listen: "w", Stats: aws.Stats{}},
			},
			Agent: &aggregator.AgentStats{},
		}
	}}
	rec := httptest.NewRecorder()
	page.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	prefix := regexp.MustCompile(`^dsmproxy_(kafka|amqp|aws|aggregator|checkpointer|agent)_`)
	gauges := 0
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) gauge$`).FindAllStringSubmatch(rec.Body.String(), -1) {
		gauges++
		name := m[1]
		part := prefix.ReplaceAllString(name, "")
		if !bytes.Contains(readme, []byte("`"+name+"`")) && !bytes.Contains(readme, []byte("`"+part+"`")) &&
			!bytes.Contains(readme, []byte("_"+part+"`")) {
			t.Errorf("gauge %s is not named in README.md (as %s or `%s` among the levels)", name, name, part)
		}
	}
	if gauges == 0 {
		t.Fatal("no gauge in /metrics: update this test")
	}
}

// subcommandFlags is each subcommand's flags, as the binary registers them.
func subcommandFlags() map[string]*flag.FlagSet {
	sets := map[string]*flag.FlagSet{}
	for _, name := range []string{"run", "check-config", "demo", "probe"} {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		switch name {
		case "run", "check-config":
			new(runFlags).register(fs)
		case "demo":
			new(demoOptions).register(fs)
		case "probe":
			new(probeFlags).register(fs)
		}
		sets[name] = fs
	}
	return sets
}

// otherToolsFlags are the flags of other programs the README tells a user to run: docker
// compose, kafka-consumer-groups.sh and the AWS CLI (dsmbench's are read from its source).
var otherToolsFlags = []string{"build", "delete", "delete-offsets", "endpoint-url"}

// reFlag finds --flag, not the arrows of demo's diagram (--produce-->).
var reFlag = regexp.MustCompile(`--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?:[^-a-z0-9]|$)`)

// readmeParagraphs splits the README at its blank lines.
func readmeParagraphs(t *testing.T) []string {
	t.Helper()
	readme := readDoc(t, "../../README.md")
	return regexp.MustCompile(`\n\s*\n`).Split(string(readme), -1)
}

// TestFlagsDocumented: every flag of every subcommand is in its --help and in the README, where
// the README speaks of that subcommand (a paragraph naming `dsmproxy demo` names demo's flags);
// and every flag the help texts and the README name is one the binary (or the tool it is given
// to) has.
func TestFlagsDocumented(t *testing.T) {
	sets := subcommandFlags()
	known := map[string]bool{"help": true}
	for _, fs := range sets {
		fs.VisitAll(func(f *flag.Flag) { known[f.Name] = true })
	}
	bench := readDoc(t, "../dsmbench/main.go")
	benchFlags := regexp.MustCompile(`fs\.[A-Z][a-z]+(?:Var)?\((?:&[\w.]+, )?"([a-z0-9-]+)"`).FindAllStringSubmatch(string(bench), -1)
	if len(benchFlags) == 0 {
		t.Fatal("no flag found in cmd/dsmbench/main.go: update this test")
	}
	inREADME := maps.Clone(known)
	for _, m := range benchFlags {
		inREADME[m[1]] = true
	}
	for _, f := range otherToolsFlags {
		inREADME[f] = true
	}
	paragraphs := readmeParagraphs(t)
	for name, fs := range sets {
		var out, errb bytes.Buffer
		if code := mainArgs([]string{name, "--help"}, &out, &errb); code != 0 {
			t.Fatalf("%s --help: exit %d: %s", name, code, errb.String())
		}
		help := out.String()
		// check-config takes run's flags: the README speaks of them as run's.
		about := "dsmproxy " + name
		if name == "check-config" {
			about = "dsmproxy run"
		}
		var said string
		for _, p := range paragraphs {
			if strings.Contains(p, about) {
				said += p + "\n"
			}
		}
		fs.VisitAll(func(f *flag.Flag) {
			word := regexp.MustCompile(`--` + regexp.QuoteMeta(f.Name) + `\b([^-]|$)`)
			if !word.MatchString(help) {
				t.Errorf("%s --help does not name --%s", name, f.Name)
			}
			if !word.MatchString(said) {
				t.Errorf("README.md does not name %s's --%s where it speaks of `%s`", name, f.Name, about)
			}
		})
		for _, m := range reFlag.FindAllStringSubmatch(help, -1) {
			if fs.Lookup(m[1]) == nil && m[1] != "help" {
				t.Errorf("%s --help names --%s, which %s does not take", name, m[1], name)
			}
		}
	}
	for _, m := range reFlag.FindAllStringSubmatch(strings.Join(paragraphs, "\n\n"), -1) {
		if !inREADME[m[1]] {
			t.Errorf("README.md names --%s, which no subcommand, dsmbench or listed tool takes", m[1])
			inREADME[m[1]] = true // once
		}
	}
}

// TestVariablesDocumented: every environment variable the configuration reads is in run --help
// and the README's table of them, and every DD_ variable those name is one it reads.
func TestVariablesDocumented(t *testing.T) {
	read := map[string]bool{"NO_COLOR": true} // colorTerminal's, read where the log is made
	var c Config
	c.ApplyEnv(func(k string) (string, bool) { read[k] = true; return "", false })
	if len(read) < 5 {
		t.Fatalf("ApplyEnv read only %v: update this test", read)
	}
	var out, errb bytes.Buffer
	if code := mainArgs([]string{"run", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("run --help: exit %d", code)
	}
	help := out.String()
	readme := readDoc(t, "../../README.md")
	_, table, _ := strings.Cut(string(readme), "### Datadog environment variables")
	table, _, _ = strings.Cut(table, "\n### ")
	for v := range read {
		word := regexp.MustCompile(`\b` + v + `\b`)
		if !word.MatchString(help) {
			t.Errorf("run --help does not name %s", v)
		}
		if !word.MatchString(string(readme)) {
			t.Errorf("README.md does not name %s", v)
		}
	}
	for _, m := range regexp.MustCompile(`\bDD_[A-Z_]+[A-Z]\b`).FindAllString(help+table, -1) {
		if !read[m] {
			t.Errorf("run --help or the README's variable table names %s, which dsmproxy does not read", m)
		}
	}
}

// TestAdminPagesDocumented: every page the admin listener serves is named in the README (as
// `GET /page` or `/page`), in run --help, in the example config's admin.listen comment and in the
// admin listener's start line; and every `GET /page` the README names is served.
func TestAdminPagesDocumented(t *testing.T) {
	cfg := &Config{Admin: AdminConfig{Listen: "127.0.0.1:0"}, AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9"}}}
	cfg.Agent.Disabled = true
	prepare(t, cfg)
	var logs syncbuf.Buffer
	rt, err := start(context.Background(), cfg, zerolog.New(&logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	pages := slices.Clone(rt.admin.pages)
	rt.stop()
	if len(pages) < 5 {
		t.Fatalf("admin pages %v: update this test", pages)
	}
	startLine := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "admin listening") {
			startLine = l
		}
	}
	readme := readDoc(t, "../../README.md")
	example := readDoc(t, "testdata/dsmproxy.example.yaml")
	adminComment := regexp.MustCompile(`(?m)^admin:\n\s+listen:.*$`).FindString(string(example))
	var out, errb bytes.Buffer
	mainArgs([]string{"run", "--help"}, &out, &errb)
	help := out.String()
	for _, p := range pages {
		word := regexp.MustCompile(regexp.QuoteMeta(p) + `([^a-z/]|$)`)
		if !strings.Contains(string(readme), "`"+p+"`") && !strings.Contains(string(readme), "GET "+p) {
			t.Errorf("README.md does not name the admin page %s", p)
		}
		for what, text := range map[string]string{"run --help": help, "the example's admin.listen comment": adminComment, "the admin start line": startLine} {
			if !word.MatchString(text) {
				t.Errorf("%s does not name the admin page %s: %q", what, p, text)
			}
		}
	}
	for _, m := range regexp.MustCompile("GET (/[a-z/_]*)").FindAllStringSubmatch(string(readme), -1) {
		if p := m[1]; p != "/" && !slices.Contains(pages, p) {
			t.Errorf("README.md names GET %s, which the admin listener does not serve", p)
		}
	}
}

// TestLayoutDocumented: the README's Layout names every package directory of the repository
// (protocols/{kafka,aws,amqp} names three).
func TestLayoutDocumented(t *testing.T) {
	readme := readDoc(t, "../../README.md")
	_, layout, ok := strings.Cut(string(readme), "- Layout: ")
	if !ok {
		t.Fatal("no Layout in README.md: update this test")
	}
	layout, _, _ = strings.Cut(layout, "\n- ")
	named := map[string]bool{}
	for _, m := range regexp.MustCompile("`([a-z/]+)\\{([a-z,]+)\\}`").FindAllStringSubmatch(layout, -1) {
		for _, p := range strings.Split(m[2], ",") {
			named[m[1]+p] = true
		}
	}
	for _, m := range regexp.MustCompile("`([a-z][a-z/]*?)/?`").FindAllStringSubmatch(layout, -1) {
		named[m[1]] = true
	}
	dirs := 0
	err := filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".") && path != "../..") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		dir, _ := filepath.Rel("../..", filepath.Dir(path))
		if dir != "." && !named[filepath.ToSlash(dir)] {
			t.Errorf("README.md's Layout does not name %s/", dir)
			named[dir] = true // once
		}
		dirs++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if dirs == 0 {
		t.Fatal("no Go file found: update this test")
	}
}

// readDoc reads a file the docs tests check (the README, the example config).
func readDoc(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDockerfileCommands: the image's default command and its HEALTHCHECK are commands the binary
// takes, the HEALTHCHECK asks the admin listener where a config that leaves it alone puts it, as
// its comment and the README say, probe --help quotes it as it is, and the README says where the
// default command reads its config file: a flag renamed in the binary, or a default moved, would
// otherwise show only as an image that never starts or is never healthy.
func TestDockerfileCommands(t *testing.T) {
	dockerfile := string(readDoc(t, "../../Dockerfile"))
	// A JSON-array instruction, continued lines joined.
	instruction := func(name string) []string {
		t.Helper()
		joined := strings.ReplaceAll(dockerfile, "\\\n", " ")
		m := regexp.MustCompile(`(?m)^` + name + `\b.*?(\[.*\])\s*$`).FindStringSubmatch(joined)
		if m == nil {
			t.Fatalf("Dockerfile: no %s [...] instruction: update this test", name)
		}
		var args []string
		if err := yaml.Unmarshal([]byte(m[1]), &args); err != nil || len(args) == 0 {
			t.Fatalf("Dockerfile: %s %s: not a JSON array of strings (%v)", name, m[1], err)
		}
		return args
	}
	entry, cmd, health := instruction("ENTRYPOINT"), instruction("CMD"), instruction("HEALTHCHECK")
	if len(entry) != 1 || health[0] != entry[0] {
		t.Fatalf("Dockerfile: HEALTHCHECK runs %s, the ENTRYPOINT is %v", health[0], entry)
	}
	parse := func(what string, args []string) *flag.FlagSet {
		t.Helper()
		sets := subcommandFlags()
		fs, ok := sets[args[0]]
		if !ok {
			t.Fatalf("Dockerfile %s: %q is not a subcommand", what, args[0])
		}
		fs.SetOutput(io.Discard)
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
			t.Fatalf("Dockerfile %s %v: %v (extra arguments: %v)", what, args, err, fs.Args())
		}
		return fs
	}
	run := parse("CMD", cmd)
	probe := parse("HEALTHCHECK", health[1:])
	if health[1] != "probe" || probe.Lookup("live").Value.String() != "true" {
		t.Errorf("Dockerfile HEALTHCHECK %v: want probe --live (/healthz: a broker outage must not make the container unhealthy)", health)
	}
	var cfg Config
	cfg.Defaults()
	if asked, err := probeAddr(probe.Lookup("admin").Value.String()); err != nil || asked != cfg.Admin.Listen {
		t.Errorf("Dockerfile HEALTHCHECK asks %s (%v), but the admin listener of a config that does not move it is %s", asked, err, cfg.Admin.Listen)
	}
	var out, errb bytes.Buffer
	mainArgs([]string{"probe", "--help"}, &out, &errb)
	quoted, _ := json.Marshal(health)
	if !strings.Contains(strings.ReplaceAll(out.String(), `", "`, `","`), "HEALTHCHECK CMD "+string(quoted)) {
		t.Errorf("probe --help does not quote the Dockerfile's HEALTHCHECK CMD %s:\n%s", quoted, out.String())
	}
	readme := string(readDoc(t, "../../README.md"))
	_, docker, _ := strings.Cut(readme, "\n### Docker\n")
	docker, _, _ = strings.Cut(docker, "\n### ")
	if path := run.Lookup("config").Value.String(); path == "" || !strings.Contains(docker, path) {
		t.Errorf("README's Docker section does not say the image's default command reads its config from %q (Dockerfile CMD %v)", path, cmd)
	}
}
