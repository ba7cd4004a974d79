package main

import (
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/proxy"
	"github.com/rs/zerolog"
)

// TestCertificateExpiryExposed: a front serving an expired certificate stays ready (making every
// replica unready at once would take them all out of service, and clients would see a refused
// connection instead of the expiry), so the expiry must be something to alert on: /metrics has
// each served certificate's end of validity, as last loaded (SIGHUP included).
func TestCertificateExpiryExposed(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, "front CA")
	pki.LeafNotAfter = time.Now().Add(48 * time.Hour).Truncate(time.Second)
	certFile, keyFile, leaf := pki.IssueFiles(t, dir, "front", "dsmproxy", "127.0.0.1")
	cfg := &Config{Admin: AdminConfig{Listen: "127.0.0.1:0"},
		AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9",
			ListenerLimits: ListenerLimits{TLS: &TLSServer{CertFile: certFile, KeyFile: keyFile}}}}}
	cfg.Agent.Disabled = true
	rt := startRuntime(t, cfg)
	url := "http://" + rt.adminLn.Addr().String() + "/metrics"
	notAfter := func() (float64, map[string]string) {
		fam := scrapeMetrics(t, url)["dsmproxy_tls_certificate_not_after_seconds"]
		if fam == nil || len(fam.GetMetric()) != 1 {
			t.Fatalf("want one dsmproxy_tls_certificate_not_after_seconds sample, got %v", fam)
		}
		m := fam.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		return m.GetGauge().GetValue(), labels
	}
	got, labels := notAfter()
	if want := float64(leaf.NotAfter.Unix()); got != want {
		t.Errorf("not_after %v, want %v", got, want)
	}
	if labels["front"] != "amqp[0]" || labels["cert_file"] != certFile {
		t.Errorf("labels %v; want front amqp[0] and cert_file %s", labels, certFile)
	}
	// Rotated and reloaded: the new certificate's end shows.
	pki.LeafNotAfter = pki.LeafNotAfter.Add(90 * 24 * time.Hour)
	_, _, renewed := pki.IssueFiles(t, dir, "front", "dsmproxy", "127.0.0.1")
	if failed := proxy.ReloadAll(zerolog.Nop(), rt.fronts[0].reloaders...); failed != 0 {
		t.Fatal("reload failed")
	}
	if got, _ := notAfter(); got != float64(renewed.NotAfter.Unix()) {
		t.Errorf("after the reload not_after %v, want the renewed certificate's %v", got, renewed.NotAfter.Unix())
	}
}
