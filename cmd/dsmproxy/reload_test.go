package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// testCA is a certificate authority and a 127.0.0.1 server certificate it signed, in PEM.
type testCA struct{ caPEM, certPEM, keyPEM []byte }

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	return testCA{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})}
}

// TestAWSUpstreamCAReload: the upstream moves to a certificate of a new CA; once the CA file is
// replaced and reloaded (what SIGHUP does), the AWS front trusts it on its next connection.
func TestAWSUpstreamCAReload(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	oldCA, newCA := newTestCA(t, "old-ca"), newTestCA(t, "new-ca")
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<ListQueuesResponse><ListQueuesResult></ListQueuesResult></ListQueuesResponse>")
	}))
	cert, err := tls.X509KeyPair(newCA.certPEM, newCA.keyPEM) // the upstream has rotated already
	if err != nil {
		t.Fatal(err)
	}
	up.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	up.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	up.StartTLS()
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, oldCA.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{AWS: []AWSConfig{{Listen: "127.0.0.1:0", Upstream: up.URL, TrustClients: true,
		ListenerLimits: ListenerLimits{UpstreamTLS: &TLSClient{CAFile: caFile}}}}, Admin: AdminConfig{Listen: "off"}}
	cfg.Agent.Disabled = true
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := start(context.Background(), cfg, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.stop()
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
	if err := os.WriteFile(caFile, newCA.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if failed := proxy.ReloadAll(zerolog.Nop(), rt.fronts[0].reloaders...); failed != 0 {
		t.Fatal("reload failed")
	}
	if code := send(); code != http.StatusOK {
		t.Errorf("after the CA file was replaced and reloaded the front answered %d: the old CA is still in use", code)
	}
}
