package main

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/dsmproxy/dsmproxy/internal/closedport"
)

// TestProbe: `dsmproxy probe` exits 0 when the admin listener says ready, 1 with the answer when
// it says not ready, 1 with a hint when nothing listens; --live asks /healthz, which a proxy
// not ready yet still answers 200.
func TestProbe(t *testing.T) {
	a := newAdmin(nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a.mux}
	go srv.Serve(ln)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	goneAddr := closedport.New(t).Addr()

	for _, tc := range []struct {
		name   string
		ready  bool
		args   []string
		code   int
		stderr string
	}{
		{"ready", true, []string{"--admin", ln.Addr().String()}, 0, ""},
		{"ready, wildcard listen asked on loopback", true, []string{"--admin", "0.0.0.0:" + port}, 0, ""},
		{"ready, port alone", true, []string{"--admin", ":" + port}, 0, ""},
		{"not ready", false, []string{"--admin", ln.Addr().String()}, 1, `503 Service Unavailable: {"fronts":[],"listening":false,"ready":false}`},
		{"not ready, but live", false, []string{"--admin", ln.Addr().String(), "--live"}, 0, ""},
		{"nothing listens", true, []string{"--admin", goneAddr}, 1, "is dsmproxy running with its admin listener there?"},
		{"bad address", true, []string{"--admin", "nonsense"}, 1, `--admin "nonsense"`},
		{"a URL", true, []string{"--admin", "http://" + ln.Addr().String()}, 1, "give the admin listener's HOST:PORT (" + ln.Addr().String() + "), not a URL"},
		{"extra argument", true, []string{"now"}, 2, `unexpected argument "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.ready.Store(tc.ready)
			var out, errb bytes.Buffer
			code := mainArgs(append([]string{"probe"}, tc.args...), &out, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.stderr) || (tc.stderr == "") != (errb.Len() == 0) {
				t.Errorf("probe %v: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.stderr)
			}
		})
	}

	var out, errb bytes.Buffer
	if code := mainArgs([]string{"probe", "--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "HEALTHCHECK") || errb.Len() > 0 {
		t.Errorf("probe --help: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}
