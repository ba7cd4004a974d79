package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
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
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("testdata/dsmproxy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
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
	example, err := os.ReadFile("testdata/dsmproxy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
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
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
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
