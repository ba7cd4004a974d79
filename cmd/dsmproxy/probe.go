package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"time"
)

const usageProbe = `Usage: dsmproxy %s [flags]

Asks a running dsmproxy whether it is ready (GET /readyz on its admin listener: every front
listens and has an upstream that answers) and exits 0 when it answered 200, else 1, with the
answer or the error on stderr. It is the health check for images with no HTTP client in them,
such as the distroless one the Dockerfile builds, which asks with --live:
  HEALTHCHECK CMD ["/usr/local/bin/dsmproxy", "probe", "--live", "--admin", "127.0.0.1:8790"]

Flags:
  --admin ADDR        the admin listener (default 127.0.0.1:8790; 0.0.0.0 or :PORT is asked on
                      127.0.0.1, [::] on ::1)
  --live              ask /healthz instead: the process serves, whatever its upstreams do
  --timeout DURATION  how long to wait for the answer (default 5s; /readyz dials for up to 2s)
`

// probeFlags are probe's flags.
type probeFlags struct {
	admin   string
	live    bool
	timeout time.Duration
}

func (f *probeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.admin, "admin", defaultAdmin, "admin listener address")
	fs.BoolVar(&f.live, "live", false, "ask /healthz instead of /readyz")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for the answer")
}

// cmdProbe asks a running proxy's admin listener for /readyz (or /healthz).
func cmdProbe(args []string, stdout, stderr io.Writer) error {
	var f probeFlags
	fs := newFlagSet("probe", usageProbe, stderr)
	f.register(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	path := "/readyz"
	if f.live {
		path = "/healthz"
	}
	addr, err := probeAddr(f.admin)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	url := "http://" + addr + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// No environment proxy: the admin listener is this host's.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		if ue, ok := err.(*neturl.Error); ok {
			err = ue.Err // it repeats the URL
		}
		return fmt.Errorf("GET %s: %w (is dsmproxy running with its admin listener there? --admin says where)", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		var line bytes.Buffer // one line for a health check's log
		if json.Compact(&line, body) != nil {
			line.Reset()
			line.Write(bytes.TrimSpace(body))
		}
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, line.Bytes())
	}
	return nil
}

// probeAddr is the address to ask for the admin listener addr: a wildcard host is asked on
// loopback, where a listener on every interface answers too.
func probeAddr(addr string) (string, error) {
	if u, err := neturl.Parse(addr); err == nil && u.Scheme != "" && u.Host != "" {
		// As run's --admin and admin.listen take it: a URL there is refused too.
		return "", fmt.Errorf("--admin %q: give the admin listener's HOST:PORT (%s), not a URL", addr, u.Host)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--admin %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port), nil
}
