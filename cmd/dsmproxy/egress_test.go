package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// connectProxy is an egress HTTP proxy (CONNECT only) that sends every tunnel to target, as a
// corporate egress proxy sends sqs.<region>.amazonaws.com to AWS.
func connectProxy(t *testing.T, target string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				up, err := net.Dial("tcp", target)
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				go io.Copy(up, br)
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

// egressHost is reachable only through the egress proxy: the name does not even resolve.
const egressHost = "sqs.example.invalid"

// TestAWSBehindEgressProxy: where only an egress proxy (HTTPS_PROXY) reaches AWS, the AWS front
// sends through it, /readyz dials it (not the endpoint, which does not resolve), and a reloaded
// upstream_tls.ca_file applies to the connections made through it. net/http reads the proxy
// variables once per process, so the checks run in a child started with them set.
func TestAWSBehindEgressProxy(t *testing.T) {
	if dir := os.Getenv("DSMPROXY_EGRESS_CHILD"); dir != "" {
		egressChild(t, dir)
		return
	}
	dir := t.TempDir()
	oldCA, newCA := testpki.New(t, "old CA"), testpki.New(t, "new CA")
	for name, pem := range map[string][]byte{"old.pem": oldCA.CAPEM, "new.pem": newCA.CAPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<ListQueuesResponse><ListQueuesResult></ListQueuesResult></ListQueuesResponse>")
	}))
	_, _, cert := newCA.Issue(t, egressHost, egressHost)
	up.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	up.Config.ErrorLog = log.New(io.Discard, "", 0)
	up.StartTLS()
	defer up.Close()
	px := connectProxy(t, up.Listener.Addr().String())
	cmd := exec.Command(os.Args[0], "-test.run=^TestAWSBehindEgressProxy$", "-test.v")
	cmd.Env = append(os.Environ(), "DSMPROXY_EGRESS_CHILD="+dir, "HTTPS_PROXY=http://"+px, "https_proxy=http://"+px,
		"NO_PROXY=", "no_proxy=", "HTTP_PROXY=", "http_proxy=", "AWS_ACCESS_KEY_ID=AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY=secret")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Errorf("child: %v\n%s", err, out)
	}
}

func egressChild(t *testing.T, dir string) {
	startFront := func(ca string) (*runtime, string) {
		caFile := filepath.Join(t.TempDir(), "ca.pem")
		pem, err := os.ReadFile(filepath.Join(dir, ca))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(caFile, pem, 0o600); err != nil {
			t.Fatal(err)
		}
		return startTLSAWSFront(t, "https://"+egressHost, caFile), caFile
	}
	send := func(rt *runtime) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+rt.fronts[0].Addr().String()+"/", strings.NewReader("Action=ListQueues&Version=2012-11-05"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}

	rt, _ := startFront("new.pem")
	if code := send(rt); code != http.StatusOK {
		t.Fatalf("through the egress proxy the front answered %d, want 200", code)
	}
	rec := httptest.NewRecorder()
	rt.admin.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("the front sends requests fine, but /readyz = %d: %s", rec.Code, strings.Join(strings.Fields(rec.Body.String()), " "))
	}

	rt2, caFile := startFront("old.pem")
	if code := send(rt2); code == http.StatusOK {
		t.Fatal("the old CA accepted the new CA's certificate")
	}
	pem, err := os.ReadFile(filepath.Join(dir, "new.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	if failed := proxy.ReloadAll(zerolog.Nop(), rt2.fronts[0].reloaders...); failed != 0 {
		t.Fatal("reload failed")
	}
	if code := send(rt2); code != http.StatusOK {
		t.Errorf("after the CA file was replaced and reloaded (SIGHUP) the front answered %d: the old CA is still in use behind HTTPS_PROXY", code)
	}
}

// TestAWSEgressProxyOfAnotherProtocol: behind an egress proxy, /readyz dials the proxy, so an
// answer that is not HTTP is the proxy's fault only when the proxy itself gave it. HTTPS_PROXY
// naming RabbitMQ's port, which answers CONNECT with AMQP's protocol header, is not ready with
// a reason naming the egress proxy; a real CONNECT proxy whose tunnel leads to RabbitMQ (the
// endpoint's fault: its TLS handshake fails) is not blamed.
func TestAWSEgressProxyOfAnotherProtocol(t *testing.T) {
	const rabbitAddr = "127.0.0.1:5672" // the local RabbitMQ (test-peers.md section 3)
	if os.Getenv("DSMPROXY_EGRESS_CHILD") != "" {
		egressOfAnotherProtocolChild(t)
		return
	}
	for _, tc := range []struct{ name, proxy, want string }{
		{"RabbitMQ as the egress proxy", rabbitAddr, "the egress proxy (HTTPS_PROXY or HTTP_PROXY) answered an HTTP request with an AMQP protocol header"},
		{"a CONNECT proxy to RabbitMQ", connectProxy(t, rabbitAddr), "ok"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAWSEgressProxyOfAnotherProtocol$", "-test.v")
		cmd.Env = append(os.Environ(), "DSMPROXY_EGRESS_CHILD=1", "DSMPROXY_EGRESS_WANT="+tc.want, "HTTPS_PROXY=http://"+tc.proxy, "https_proxy=http://"+tc.proxy,
			"NO_PROXY=", "no_proxy=", "HTTP_PROXY=", "http_proxy=")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Errorf("%s: child: %v\n%s", tc.name, err, out)
		}
	}
}

func egressOfAnotherProtocolChild(t *testing.T) {
	px := strings.TrimPrefix(os.Getenv("HTTPS_PROXY"), "http://")
	cfg := &Config{AWS: []AWSConfig{{Listen: "127.0.0.1:0", Upstream: "https://" + egressHost, Region: "us-east-1", TrustClients: true,
		credentials: credentials.NewStaticCredentialsProvider("proxy", "proxy", "")}}, Admin: AdminConfig{Listen: "off"}}
	cfg.Agent.Disabled = true
	rt := startRuntime(t, cfg)
	if code := listQueues(t, rt.fronts[0].Addr().String()); code != http.StatusBadGateway {
		t.Fatalf("a request through the egress proxy %s was answered %d, want 502", px, code)
	}
	a := newAdmin(rt.fronts)
	a.ready.Store(true)
	rec, body := getReadyz(t, a, context.Background())
	want := os.Getenv("DSMPROXY_EGRESS_WANT")
	if status := body.Fronts[0].Upstreams[px]; !strings.Contains(status, want) || (want == "ok") != (rec.Code == http.StatusOK) || len(body.Fronts[0].Upstreams) != 1 {
		t.Errorf("/readyz %d, upstreams %q; want only the egress proxy %s, saying %q", rec.Code, body.Fronts[0].Upstreams, px, want)
	}
}
