package aws

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestSDKLogsInTheProxysLog: what the AWS SDK logs while it looks for the proxy's own credentials
// (here its IMDSv1 fallback, on a host with no credentials and an instance metadata service that
// answers 404) is a JSON line in the proxy's log, not plain text on stderr; and that there are
// none is said at start, before any client's request fails for it.
func TestSDKLogsInTheProxysLog(t *testing.T) {
	imds := httptest.NewServer(http.NotFoundHandler())
	defer imds.Close()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.URL, "AWS_EC2_METADATA_DISABLED": "false",
		"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "",
		"AWS_CONFIG_FILE": filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_WEB_IDENTITY_TOKEN_FILE": "", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
	} {
		t.Setenv(k, v)
	}
	var logs syncbuf.Buffer
	p, err := New(Config{Listen: "127.0.0.1:0", Region: "us-east-1", Upstream: "http://127.0.0.1:1", Log: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	waitForLog(t, &logs, "cannot load the proxy's own AWS credentials")
	var found bool
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if m["source"] == "aws-sdk" && strings.Contains(m["message"].(string), "IMDSv1") {
			found = m["level"] == "warn"
		}
	}
	if !found {
		t.Errorf("the SDK's IMDSv1 fallback warning is not a warn line of the proxy's log:\n%s", logs.String())
	}
}

// TestCredentialsSourceLogged: the source of the proxy's own credentials is logged at start, and
// the key is not.
func TestCredentialsSourceLogged(t *testing.T) {
	var logs syncbuf.Buffer
	startProxy(t, func(c *Config) { c.Upstream, c.Log = "http://127.0.0.1:1", zerolog.New(&logs) })
	waitForLog(t, &logs, "the proxy's own AWS credentials are loaded")
	if s := logs.String(); !strings.Contains(s, `"source":"StaticCredentials"`) || strings.Contains(s, testKey) {
		t.Errorf("want the source and not the key:\n%s", s)
	}
}
