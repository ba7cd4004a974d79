// Package testpki makes certificate authorities and certificates while tests run, so that no
// key is ever committed; the tests of every package that speaks TLS use it.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a certificate authority made at test time.
type PKI struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	CAPEM []byte
	Pool  *x509.CertPool
	// LeafNotAfter, when set, ends the validity of the leaves issued from now on (an expired
	// certificate, say); otherwise they are valid for a year.
	LeafNotAfter time.Time
}

// New makes a fresh CA named cn.
func New(t testing.TB, cn string) *PKI {
	t.Helper()
	tmpl := certTemplate(t, cn)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	key := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &PKI{cert: cert, key: key, CAPEM: pemBlock("CERTIFICATE", der), Pool: pool}
}

// Issue signs a leaf for cn, valid for 127.0.0.1 and localhost (or only for hosts, when given), for
// both server and client use. It returns the PEM pair and the parsed pair.
func (p *PKI) Issue(t testing.TB, cn string, hosts ...string) (certPEM, keyPEM []byte, pair tls.Certificate) {
	t.Helper()
	tmpl := certTemplate(t, cn)
	if !p.LeafNotAfter.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = p.LeafNotAfter.Add(-24*time.Hour), p.LeafNotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	key := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM = pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", kder)
	pair, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM, pair
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// certTemplate is valid from an hour ago for a year, with a random serial so rotations differ.
func certTemplate(t testing.TB, cn string) *x509.Certificate {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
	}
}

// WriteCA writes the CA certificate into dir and returns its path.
func (p *PKI) WriteCA(t testing.TB, dir string) string {
	t.Helper()
	f := filepath.Join(dir, "ca.pem")
	WriteFileAtomic(t, f, p.CAPEM)
	return f
}

// IssueFiles issues a leaf for cn and writes it as dir/name.crt and dir/name.key (replacing them
// atomically, as a certificate rotation would). It returns the paths and the leaf.
func (p *PKI) IssueFiles(t testing.TB, dir, name, cn string, hosts ...string) (certFile, keyFile string, leaf *x509.Certificate) {
	t.Helper()
	certPEM, keyPEM, pair := p.Issue(t, cn, hosts...)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	WriteFileAtomic(t, certFile, certPEM)
	WriteFileAtomic(t, keyFile, keyPEM)
	return certFile, keyFile, pair.Leaf
}

// WriteFileAtomic replaces path with data through a rename.
func WriteFileAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// ServerTLS is a server configuration with a fresh CA's certificate for 127.0.0.1 and
// localhost, and the pool that trusts it.
func ServerTLS(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	p := New(t, "dsmproxy test CA")
	_, _, pair := p.Issue(t, "dsmproxy test")
	return &tls.Config{Certificates: []tls.Certificate{pair}}, p.Pool
}

// ClientHello is the first record a crypto/tls client sends: a client that sends it and then
// hangs up, without an alert, fails the server's handshake with a plain EOF.
func ClientHello(t testing.TB) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		tls.Client(a, &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS12}).Handshake()
		a.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// HelloAndHangUp connects to addr, sends a ClientHello, reads the server's answer until it stops
// for a moment, and closes without an alert: the server's handshake ends with a plain EOF (with
// the answer read, the close is not a reset).
func HelloAndHangUp(t testing.TB, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(ClientHello(t)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16<<10)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("no answer to a ClientHello: %v", err)
	}
	for {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// Knock connects to addr and sends data: nothing, as a port probe or TCP health check does, or
// bytes that are not TLS. It then reads until the server closes the connection.
func Knock(t testing.TB, addr, data string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if data == "" {
		return
	}
	c.Write([]byte(data))
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	io.Copy(io.Discard, c)
}
