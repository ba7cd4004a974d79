package aws

// What a client that cannot sign (or a web page) must not get the proxy to sign with its own
// identity, and what of the proxy's credentials must not reach a client or the log.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials/processcreds"
)

// TestUnsignedOperationRefused: the proxy signs every header it forwards, so those that say what a
// request does (X-Amz-Target, Content-Type, X-Amzn-Query-Mode) must be among the client's
// SignedHeaders. Otherwise a request signed with host;x-amz-date alone (awscurl signs no more)
// could be captured and sent again, within the clock skew, as another operation: here a
// GetQueueAttributes turned DeleteQueue.
func TestUnsignedOperationRefused(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	body := `{"QueueUrl":"` + up.URL() + `/000000000000/orders"}`
	for _, tc := range []struct {
		name     string
		unsigned []string // set after signing
		want     int
	}{
		{"target and content type signed", nil, http.StatusOK},
		{"target unsigned", []string{"X-Amz-Target"}, http.StatusForbidden},
		{"content type unsigned", []string{"Content-Type"}, http.StatusForbidden},
		{"query mode unsigned", []string{"X-Amzn-Query-Mode"}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := up.count()
			headers := map[string]string{"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"}
			if tc.unsigned != nil {
				headers["X-Amz-Target"] = "AmazonSQS.DeleteQueue"
				headers["X-Amzn-Query-Mode"] = "true"
			}
			req, _ := http.NewRequest(http.MethodPost, tp.url+"/", strings.NewReader(body))
			late := map[string]bool{}
			for _, h := range tc.unsigned {
				late[h] = true
			}
			for h, v := range headers {
				if !late[h] {
					req.Header.Set(h, v)
				}
			}
			creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
			if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, sha256Hex([]byte(body)), "sqs", "us-east-1", time.Now()); err != nil {
				t.Fatal(err)
			}
			for h := range late {
				req.Header.Set(h, headers[h])
			}
			st, _, rb := do(t, req)
			if st != tc.want {
				t.Fatalf("answered %d %s, want %d", st, rb, tc.want)
			}
			if tc.want != http.StatusOK && (!strings.Contains(rb, "IncompleteSignature") || up.count() != before) {
				t.Errorf("refusal %s; %d request(s) reached the service", rb, up.count()-before)
			}
		})
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream check: %v", bad)
	}
}

// TestTrustedModeRefusesBrowsers: with trust_clients on a loopback listener, a web page the user
// opens can make the browser POST a form to the port (a CORS "simple request", sent without a
// preflight), and with DNS rebinding (the page's own name resolving to 127.0.0.1) read the
// answers. SDKs send no Origin or Sec-Fetch-* and name a loopback host: only those get through.
func TestTrustedModeRefusesBrowsers(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL(); c.TrustClients = true })
	port := tp.url[strings.LastIndex(tp.url, ":")+1:]
	form := "Action=ListQueues&Version=2012-11-05"
	for _, tc := range []struct {
		name    string
		host    string
		headers map[string]string
		want    int
	}{
		{"sdk", "", nil, http.StatusOK},
		{"sdk naming localhost", "localhost:" + port, nil, http.StatusOK},
		{"cross-site form", "", map[string]string{"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, http.StatusForbidden},
		{"dns rebinding", "rebind.attacker.example:" + port, map[string]string{"Origin": "http://rebind.attacker.example:" + port}, http.StatusForbidden},
		{"rebinding without origin", "rebind.attacker.example:" + port, nil, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := up.count()
			req, _ := http.NewRequest(http.MethodPost, tp.url+"/", strings.NewReader(form))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			if tc.host != "" {
				req.Host = tc.host
			}
			st, _, rb := do(t, req)
			if st != tc.want {
				t.Fatalf("answered %d %s, want %d", st, rb, tc.want)
			}
			if tc.want != http.StatusOK && up.count() != before {
				t.Errorf("a refused request reached the service")
			}
		})
	}
}

// TestCredentialErrorNotReflected: a request naming an access key the proxy does not know makes it
// load its own credentials. When that fails, the chain's error must reach neither that
// unauthenticated client nor the log: credential_process puts the helper's whole output in its
// error when the output is not pure JSON (a helper that prints a notice first), secret included.
func TestCredentialErrorNotReflected(t *testing.T) {
	const secret = "wJalrXUtnFEMI-REAL-SECRET-FROM-HELPER"
	var logBuf strings.Builder
	var logMu sync.Mutex
	tp := startProxy(t, func(c *Config) {
		c.Upstream = "http://127.0.0.1:1" // refused before any forwarding
		c.Credentials = processcreds.NewProvider(fmt.Sprintf(
			`printf 'notice: session refreshed\n{"Version":1,"AccessKeyId":"AKIAHELPER0000000001","SecretAccessKey":"%s"}\n'`, secret))
		c.ClientKeys = nil
		c.Log = c.Log.Output(writerFunc(func(p []byte) (int, error) { logMu.Lock(); defer logMu.Unlock(); return logBuf.Write(p) })).Level(0)
	})
	req, _ := http.NewRequest(http.MethodPost, tp.url+"/", strings.NewReader("{}"))
	req.Header.Set("X-Amz-Target", "AmazonSQS.ListQueues")
	req.Header.Set("Content-Type", "application/x-amz-json-1.0")
	req.Header.Set("X-Amz-Date", time.Now().UTC().Format("20060102T150405Z"))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDANYONE/"+time.Now().UTC().Format("20060102")+
		"/us-east-1/sqs/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature="+strings.Repeat("0", 64))
	st, _, body := do(t, req)
	if st != http.StatusForbidden || strings.Contains(body, secret) || strings.Contains(body, "notice") {
		t.Errorf("anonymous client got %d %s", st, body)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logBuf.String(), secret) || !strings.Contains(logBuf.String(), "cannot load the proxy's own AWS credentials") {
		t.Errorf("log: %s", logBuf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestOnlyFrontedServicesSigned: the proxy signs for the service the client's credential scope
// names; a scope for any other service (iam, s3, sts) is refused, or with an upstream that serves
// everything (LocalStack) a client key would reach it as the proxy.
func TestOnlyFrontedServicesSigned(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	before := up.count()
	req, _ := http.NewRequest(http.MethodPost, tp.url+"/", strings.NewReader("Action=ListUsers&Version=2010-05-08"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, sha256Hex([]byte("Action=ListUsers&Version=2010-05-08")), "iam", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if st, _, rb := do(t, req); st != http.StatusForbidden || !strings.Contains(rb, "iam") || up.count() != before {
		t.Errorf("an IAM-scoped request: %d %s (%d reached the service)", st, rb, up.count()-before)
	}
}
