package proxy

import (
	"context"
	"crypto/tls"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// TestClientRefusingCertificateTold: a client that refuses the certificate the front serves (here
// an expired one) gets a Warn line that names the client's alert, says the client refused the
// front's certificate, and what is wrong with it. OpenSSL clients (kcat, Python, the aws CLI)
// send that alert in plaintext in TLS 1.3, which Go's handshake reads as "bad record MAC": the
// line said only that, which reads as a corrupted connection.
func TestClientRefusingCertificateTold(t *testing.T) {
	pki := testpki.New(t, "test CA")
	pki.LeafNotAfter = time.Now().Add(-time.Hour)
	dir := t.TempDir()
	caFile := pki.WriteCA(t, dir)
	certFile, keyFile, _ := pki.IssueFiles(t, dir, "proxy", "proxy")
	_, conf, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	addr, logs := startLoggedTLSListener(t, conf)
	kcat := lookKcat(t)

	for _, tc := range []struct {
		name, alert, err string // err: Go's handshake error
		connect          func(ctx context.Context)
	}{
		{"kcat (OpenSSL)", "expired certificate", "bad record MAC", func(ctx context.Context) {
			exec.CommandContext(ctx, kcat, "-L", "-m", "2", "-b", addr, "-X", "security.protocol=ssl",
				"-X", "ssl.ca.location="+caFile).Run()
		}},
		{"kgo (Go)", "bad certificate", "remote error: tls: bad certificate", func(ctx context.Context) {
			cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RequestRetries(0), kgo.DialTLSConfig(&tls.Config{RootCAs: pki.Pool}))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			_ = cl.Ping(ctx) // refused: the line is what counts
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tc.connect(ctx)
			line := handshakeLine(t, logs, tc.err)
			for _, want := range []string{`"client_alert":"` + tc.alert + `"`, "refused the certificate this front serves", `"problem":"the certificate expired at`} {
				if !strings.Contains(line, want) {
					t.Errorf("the line has no %s:\n%s", want, line)
				}
			}
		})
	}
}

// TestClientCertificateRefusalTold: at a front with client_ca_file, a client with no certificate
// (kcat without ssl.certificate.location) or with one another CA signed (kgo) gets a line that
// says it is the client's certificate at fault, which one, and what to change: Go's own error
// for the second, "certificate signed by unknown authority", reads like the client refusing the
// front's certificate.
func TestClientCertificateRefusalTold(t *testing.T) {
	pki := testpki.New(t, "test CA")
	dir := t.TempDir()
	caFile := pki.WriteCA(t, dir)
	certFile, keyFile, _ := pki.IssueFiles(t, dir, "proxy", "proxy")
	_, conf, err := ServerTLS(TLSFiles{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, ClientAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	addr, logs := startLoggedTLSListener(t, conf)
	kcat := lookKcat(t)
	_, _, stranger := testpki.New(t, "another CA").Issue(t, "stranger")

	for _, tc := range []struct {
		name, err string // err: Go's handshake error
		want      []string
		connect   func(ctx context.Context)
	}{
		{"kcat without a certificate", "client didn't provide a certificate", []string{"client_ca_file", "ssl.certificate.location"}, func(ctx context.Context) {
			exec.CommandContext(ctx, kcat, "-L", "-m", "2", "-b", addr, "-X", "security.protocol=ssl", "-X", "ssl.ca.location="+caFile).Run()
		}},
		{"kgo with another CA's certificate", "certificate signed by unknown authority", []string{"client_ca_file", `"client_cert":"CN=stranger"`}, func(ctx context.Context) {
			cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RequestRetries(0),
				// GetClientCertificate: Go's client leaves out a certificate the front's CA list does not name.
				kgo.DialTLSConfig(&tls.Config{RootCAs: pki.Pool, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &stranger, nil }}))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			_ = cl.Ping(ctx) // refused: the line is what counts
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tc.connect(ctx)
			line := handshakeLine(t, logs, tc.err)
			for _, want := range append(tc.want, "the client's certificate") {
				if !strings.Contains(line, want) {
					t.Errorf("the line has no %s:\n%s", want, line)
				}
			}
		})
	}
}

// startLoggedTLSListener serves a TLS listener with conf whose handler does nothing, logging to
// the buffer it returns, until the test ends.
func startLoggedTLSListener(t *testing.T, conf *tls.Config) (string, *syncbuf.Buffer) {
	t.Helper()
	logs := new(syncbuf.Buffer)
	l, err := Listen(ListenerConfig{Addr: "127.0.0.1:0", Protocol: "test", Upstream: startEcho(t, nil).addr(), TLS: conf},
		HandlerFunc(func(context.Context, *Conn) error { return nil }), zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- l.Serve(context.Background()) }()
	t.Cleanup(func() { l.Close(); <-served })
	return l.Addr().String(), logs
}

func lookKcat(t *testing.T) string {
	t.Helper()
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat is required: install it with `apt-get install -y kcat` (%v)", err)
	}
	return kcat
}

// handshakeLine waits for the log line holding goErr, Go's handshake error: a client that gives
// up mid-handshake adds other lines.
func handshakeLine(t *testing.T, logs *syncbuf.Buffer, goErr string) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, goErr) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failed TLS handshake logged with %q; logs:\n%s", goErr, logs.String())
		}
	}
}
