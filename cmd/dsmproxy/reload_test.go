package main

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestAWSUpstreamCAReload: the upstream moves to a certificate of a new CA; once the CA file is
// replaced and reloaded (what SIGHUP does), the AWS front trusts it on its next connection.
func TestAWSUpstreamCAReload(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	oldCA, newCA := testpki.New(t, "old CA"), testpki.New(t, "new CA")
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<ListQueuesResponse><ListQueuesResult></ListQueuesResult></ListQueuesResponse>")
	}))
	_, _, cert := newCA.Issue(t, "upstream") // the upstream has rotated already
	up.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	up.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	up.StartTLS()
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, oldCA.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	rt := startTLSAWSFront(t, up.URL, caFile)
	send := func() int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+rt.fronts[0].Addr().String()+"/", strings.NewReader("Action=ListQueues&Version=2012-11-05"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if code := send(); code == http.StatusOK {
		t.Fatal("the old CA accepted the new CA's certificate")
	}
	if err := os.WriteFile(caFile, newCA.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if n := len(rt.fronts[0].reloaders); n != 1 {
		t.Errorf("%d reloaders for one upstream_tls: a SIGHUP reads and logs it %d times", n, n)
	}
	if failed := proxy.ReloadAll(zerolog.Nop(), rt.fronts[0].reloaders...); failed != 0 {
		t.Fatal("reload failed")
	}
	if code := send(); code != http.StatusOK {
		t.Errorf("after the CA file was replaced and reloaded the front answered %d: the old CA is still in use", code)
	}
}

// startTLSAWSFront runs an AWS front (trusting its clients) toward upstream, with caFile as its
// upstream_tls CA, stopped at the test's end.
func startTLSAWSFront(t *testing.T, upstream, caFile string) *runtime {
	t.Helper()
	cfg := &Config{AWS: []AWSConfig{{Listen: "127.0.0.1:0", Upstream: upstream, Region: "us-east-1", TrustClients: true,
		ListenerLimits: ListenerLimits{UpstreamTLS: &TLSClient{CAFile: caFile}}}}, Admin: AdminConfig{Listen: "off"}}
	cfg.Agent.Disabled = true
	return startRuntime(t, cfg)
}

// startRuntime defaults, validates and starts cfg as run does, and stops it at the test's end.
func startRuntime(t *testing.T, cfg *Config) *runtime {
	t.Helper()
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := start(context.Background(), cfg, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.stop() })
	return rt
}
