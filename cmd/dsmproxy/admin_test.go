package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestAdminIndex: the admin address itself lists the pages served, those registered later
// included; other unknown paths stay 404.
func TestAdminIndex(t *testing.T) {
	a := newAdmin(nil)
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	a.Handle("GET /stats", ok)
	a.Handle("/plain", ok)
	srv := httptest.NewServer(a.mux)
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/")
	if code != http.StatusOK {
		t.Fatalf("GET / answered %d", code)
	}
	for _, p := range []string{"\n/healthz\n", "\n/readyz\n", "\n/debug/pprof/\n", "\n/stats\n", "\n/plain\n"} {
		if !strings.Contains(body, p) {
			t.Errorf("the index does not list %q:\n%s", strings.TrimSpace(p), body)
		}
	}
	if strings.Contains(body, "GET ") {
		t.Errorf("the index shows methods:\n%s", body)
	}
	if code, _ := get("/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope answered %d, want 404", code)
	}
}

// TestPprofCmdlineMasksSecrets: /debug/pprof/cmdline shows the arguments as pprof does, but an
// Agent URL's password or token is masked, in either flag form.
func TestPprofCmdlineMasksSecrets(t *testing.T) {
	defer func(args []string) { os.Args = args }(os.Args)
	os.Args = []string{"dsmproxy", "run", "--agent-url", "https://dd:s3cret@agent:8126", "--agent-url=http://t0ken@agent", "--config", "/etc/dsmproxy.yaml"}
	srv := httptest.NewServer(newAdmin(nil).mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	got := strings.Split(string(b), "\x00")
	want := []string{"dsmproxy", "run", "--agent-url", "https://dd:xxxxx@agent:8126", "--agent-url=http://xxxxx@agent", "--config", "/etc/dsmproxy.yaml"}
	if !slices.Equal(got, want) {
		t.Errorf("cmdline %q, want %q", got, want)
	}
}

// TestAdminOffLoopbackWarned: the admin pages answer whoever connects, so a listener that other
// hosts can reach (0.0.0.0, as in a container) is told at Warn; the default, on loopback, is not.
func TestAdminOffLoopbackWarned(t *testing.T) {
	const warning = "admin listener reachable from other hosts"
	for _, tc := range []struct {
		listen string
		warned bool
	}{
		{"127.0.0.1:0", false},
		{"0.0.0.0:0", true},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			cfg := &Config{
				Admin: AdminConfig{Listen: tc.listen},
				AMQP:  []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9"}},
			}
			cfg.Agent.Disabled = true
			prepare(t, cfg)
			rt, logs := startLogged(t, cfg)
			defer rt.stop()
			if got := strings.Contains(logs.String(), warning); got != tc.warned {
				t.Errorf("admin on %s: warned %v, want %v; logs:\n%s", tc.listen, got, tc.warned, logs.String())
			}
		})
	}
}
