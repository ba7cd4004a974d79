package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TLSFiles names the PEM files of one TLS side. For termination toward clients (ServerTLS),
// CertFile and KeyFile are required; CAFile verifies client certificates. For origination toward
// upstream (ClientTLS), CAFile replaces the system roots, and CertFile/KeyFile (optional, both or
// neither) are presented when the upstream asks for a client certificate.
type TLSFiles struct {
	CertFile string
	KeyFile  string
	CAFile   string

	// ClientAuth (server side) requires every client to present a certificate signed by CAFile.
	// Without it, a CAFile still verifies the certificates that clients choose to present.
	ClientAuth bool

	// ServerName (client side) is the name the upstream certificate must carry; empty means the
	// host of the address dialed.
	ServerName string
	// InsecureSkipVerify (client side) accepts any upstream certificate. For tests and labs only.
	InsecureSkipVerify bool
}

// CertReloader holds the certificate, key and CA pool read from one TLSFiles and re-reads them on
// Reload. The tls.Configs it hands out look the material up at every handshake, so a reload reaches
// new connections without restarting listeners; established connections keep their session.
type CertReloader struct {
	files  TLSFiles
	server bool
	// Owner names what uses the files in reload log lines ("kafka 127.0.0.1:19092 tls"), since
	// several fronts may share one certificate. Set it before reloads start.
	Owner string
	// Front is the configuration entry (kafka[0]) of the front that uses the files: reload log
	// lines carry it as front, as every line about a front does. Set it before reloads start.
	Front string
	// Hosts (server side) are hosts the proxy itself tells clients to dial it at (a Kafka front's
	// advertised broker hosts): clients verify the certificate against them, so Problem names
	// those it is not valid for. Set it before reloads start.
	Hosts []string

	mu   sync.Mutex // one Reload at a time
	cert atomic.Pointer[tls.Certificate]
	conf atomic.Pointer[tls.Config] // snapshot for new handshakes, rebuilt by Reload
}

// ServerTLS reads f and returns the reloader and the config that terminates TLS toward clients
// (ListenerConfig.TLS). The config serves the current certificate and CA pool through
// GetConfigForClient/GetCertificate.
func ServerTLS(f TLSFiles) (*CertReloader, *tls.Config, error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, nil, errors.New("proxy: TLS toward clients needs both a certificate file and a key file")
	}
	if f.ClientAuth && f.CAFile == "" {
		return nil, nil, errors.New("proxy: TLS client authentication needs a CA file to verify client certificates")
	}
	r := &CertReloader{files: f, server: true}
	if err := r.Reload(); err != nil {
		return nil, nil, err
	}
	conf := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.certificate,
		// The snapshot carries the current ClientCAs too; GetCertificate alone could not swap them.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.conf.Load(), nil },
	}
	return r, conf, nil
}

// ClientTLS reads f and returns the reloader and a config for originating TLS toward an upstream.
// The config presents the current client certificate at every handshake; connections dialed with
// r.DialFunc also see a reloaded CA file. ServerName stays empty when f has none: DialFunc fills it
// with the host it dials, other users must set it.
func ClientTLS(f TLSFiles) (*CertReloader, *tls.Config, error) {
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, nil, fmt.Errorf("proxy: upstream TLS client certificate needs both files (cert %q, key %q)", f.CertFile, f.KeyFile)
	}
	r := &CertReloader{files: f}
	if err := r.Reload(); err != nil {
		return nil, nil, err
	}
	return r, r.conf.Load().Clone(), nil
}

// Reload re-reads the files. Either every file reads and parses and the new material is used by the
// next handshake, or nothing changes and the error names the file at fault.
func (r *CertReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.files
	var cert *tls.Certificate
	if f.CertFile != "" {
		c, err := loadKeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return err
		}
		cert = c
	}
	var pool *x509.CertPool
	if f.CAFile != "" {
		p, err := loadPool(f.CAFile)
		if err != nil {
			return err
		}
		pool = p
	}
	r.cert.Store(cert)
	r.conf.Store(r.snapshot(cert, pool))
	return nil
}

// Leaf is the certificate served now (nil for a client side without a certificate).
func (r *CertReloader) Leaf() *x509.Certificate {
	if c := r.cert.Load(); c != nil {
		return c.Leaf
	}
	return nil
}

// certSoon: a certificate that ends within it is worth a warning.
const certSoon = 7 * 24 * time.Hour

// Problem says what is wrong at now with the certificate served or presented (expired, not valid
// yet, or ending within a week; on the server side, not valid for one of Hosts), or "": peers
// refuse such a certificate, and nothing else would tell the operator before they do.
func (r *CertReloader) Problem(now time.Time) string {
	leaf := r.Leaf()
	if leaf == nil {
		return ""
	}
	var problems []string
	switch {
	case now.After(leaf.NotAfter):
		problems = append(problems, "the certificate expired at "+leaf.NotAfter.UTC().Format(time.RFC3339)+": peers refuse it")
	case now.Before(leaf.NotBefore):
		problems = append(problems, "the certificate is not valid before "+leaf.NotBefore.UTC().Format(time.RFC3339)+": peers refuse it until then")
	case leaf.NotAfter.Sub(now) < certSoon:
		problems = append(problems, "the certificate expires at "+leaf.NotAfter.UTC().Format(time.RFC3339)+", within a week: replace it and send SIGHUP")
	}
	if r.server {
		var unnamed []string
		for _, h := range r.Hosts {
			if leaf.VerifyHostname(h) != nil {
				unnamed = append(unnamed, h)
			}
		}
		if len(unnamed) > 0 {
			problems = append(problems, "the certificate does not name "+strings.Join(unnamed, ", ")+
				", which clients are told to reach the proxy at: clients that verify host names refuse it there (add the names to the certificate, or set advertised_host or node_addrs to names it has)")
		}
	}
	return strings.Join(problems, "; ")
}

// Current is the configuration for the next handshake, with the material last (re)loaded; for
// users that dial themselves and must see a reloaded CA file.
func (r *CertReloader) Current() *tls.Config { return r.conf.Load() }

// ServerSide reports whether the reloader terminates TLS toward clients (ServerTLS), not toward
// an upstream (ClientTLS).
func (r *CertReloader) ServerSide() bool { return r.server }

// Files are the files this reloader reads.
func (r *CertReloader) Files() TLSFiles { return r.files }

func (r *CertReloader) snapshot(cert *tls.Certificate, pool *x509.CertPool) *tls.Config {
	if r.server {
		c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}, ClientCAs: pool}
		switch {
		case r.files.ClientAuth:
			c.ClientAuth = tls.RequireAndVerifyClientCert
		case pool != nil:
			c.ClientAuth = tls.VerifyClientCertIfGiven
		}
		return c
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		RootCAs:            pool, // nil: system roots
		ServerName:         r.files.ServerName,
		InsecureSkipVerify: r.files.InsecureSkipVerify,
	}
	if cert != nil {
		c.GetClientCertificate = r.clientCertificate
	}
	return c
}

func (r *CertReloader) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

func (r *CertReloader) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// DialFunc returns a DialFunc that dials with base (nil: net.Dialer) and originates TLS with the
// reloader's current material; the handshake is bounded by ctx.
func (r *CertReloader) DialFunc(base DialFunc) DialFunc {
	return dialTLS(base, r.conf.Load)
}

// DialTLS returns a DialFunc that originates TLS with a fixed conf over base (nil: net.Dialer).
// An empty conf.ServerName becomes the host dialed.
func DialTLS(base DialFunc, conf *tls.Config) DialFunc {
	if conf == nil {
		conf = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return dialTLS(base, func() *tls.Config { return conf })
}

func dialTLS(base DialFunc, conf func() *tls.Config) DialFunc {
	if base == nil {
		var d net.Dialer
		base = d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := base(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		raw = RawSyscallConn(raw)
		c := conf()
		if c.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			c = c.Clone()
			c.ServerName = host
		}
		tc := tls.Client(raw, c)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with upstream %s (server name %q): %w", addr, c.ServerName, err)
		}
		return tc, nil
	}
}

// TLSFile names one of the files of TLSFiles.
type TLSFile int

// The files of TLSFiles.
const (
	TLSCertFile TLSFile = iota
	TLSKeyFile
	TLSCAFile
)

// TLSFileError is a file of TLSFiles that could not be read or used; File says which, so that a
// configuration error can name its key.
type TLSFileError struct {
	File TLSFile
	Err  error
}

func (e *TLSFileError) Error() string { return e.Err.Error() }
func (e *TLSFileError) Unwrap() error { return e.Err }

func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, &TLSFileError{TLSCertFile, fmt.Errorf("proxy: reading TLS certificate file: %w%s", err, relativeNote(certFile, err))}
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, &TLSFileError{TLSKeyFile, fmt.Errorf("proxy: reading TLS key file: %w%s", err, relativeNote(keyFile, err))}
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// A certificate file that holds a certificate leaves the key at fault: unreadable, or
		// not the certificate's.
		at := TLSKeyFile
		if !holdsCertificate(certPEM) {
			at = TLSCertFile
		}
		return nil, &TLSFileError{at, fmt.Errorf("proxy: TLS certificate file %s with key file %s: %w", certFile, keyFile, err)}
	}
	return &c, nil
}

// holdsCertificate: the first CERTIFICATE block of pemBytes parses.
func holdsCertificate(pemBytes []byte) bool {
	for {
		var b *pem.Block
		b, pemBytes = pem.Decode(pemBytes)
		if b == nil {
			return false
		}
		if b.Type == "CERTIFICATE" {
			_, err := x509.ParseCertificate(b.Bytes)
			return err == nil
		}
	}
}

func loadPool(caFile string) (*x509.CertPool, error) {
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, &TLSFileError{TLSCAFile, fmt.Errorf("proxy: reading TLS CA file: %w%s", err, relativeNote(caFile, err))}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, &TLSFileError{TLSCAFile, fmt.Errorf("proxy: TLS CA file %s holds no PEM certificate", caFile)}
	}
	return pool, nil
}

// relativeNote says, for a relative path that does not exist, which directory it was read from:
// the process's working directory (/ under systemd), not the config file's.
func relativeNote(path string, err error) string {
	if filepath.IsAbs(path) || !errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	wd, werr := os.Getwd()
	if werr != nil {
		return " (relative paths are read from the working directory)"
	}
	return " (relative paths are read from the working directory, " + wd + ")"
}
