package aws

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/smithy-go"
)

func TestTrustClientsNeedsLoopbackOrSecondSetting(t *testing.T) {
	creds := credentials.NewStaticCredentialsProvider(testKey, testSecret, "")
	if _, err := New(Config{Listen: "0.0.0.0:0", TrustClients: true, Credentials: creds}); err == nil || !strings.Contains(err.Error(), "trust_clients_non_loopback") {
		t.Fatalf("trust_clients on 0.0.0.0: %v, want a refusal naming trust_clients_non_loopback", err)
	}
	if _, err := New(Config{Listen: "0.0.0.0:0", TrustClients: true, TrustClientsNonLoopback: true, Credentials: creds}); err != nil {
		t.Fatalf("told twice: %v", err)
	}
	for _, l := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		if _, err := New(Config{Listen: l, TrustClients: true, Credentials: creds}); err != nil {
			t.Errorf("trust_clients on %s: %v", l, err)
		}
	}
}

// signedRaw signs a request with the SDK signer at a chosen time.
func signedRaw(t *testing.T, url, target, body string, when time.Time, token string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.0")
	req.Header.Set("X-Amz-Target", target)
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret, SessionToken: token}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, sha256Hex([]byte(body)), "sqs", "us-east-1", when); err != nil {
		t.Fatal(err)
	}
	return req
}

func do(t *testing.T, req *http.Request) (int, http.Header, string) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header, b.String()
}

func TestSigV4Details(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })

	// a stale signature is refused before anything is forwarded
	before := up.count()
	st, _, body := do(t, signedRaw(t, tp.url+"/", "AmazonSQS.ListQueues", "{}", time.Now().Add(-20*time.Minute), ""))
	if st != 403 || !strings.Contains(body, "SignatureDoesNotMatch") || !strings.Contains(body, "expired") {
		t.Errorf("stale signature: %d %s", st, body)
	}
	// a presigned URL is refused
	req, _ := http.NewRequest(http.MethodPost, tp.url+"/?X-Amz-Signature=abc&X-Amz-Credential=x", strings.NewReader("{}"))
	req.Header.Set("X-Amz-Target", "AmazonSQS.ListQueues")
	req.Header.Set("Content-Type", "application/x-amz-json-1.0")
	if st, _, body := do(t, req); st != 403 || !strings.Contains(body, "presigned") {
		t.Errorf("presigned: %d %s", st, body)
	}
	// a body changed after signing does not verify
	req = signedRaw(t, tp.url+"/", "AmazonSQS.ListQueues", "{}", time.Now(), "")
	req.Body = http.NoBody
	req.ContentLength = 0
	req.Header.Del("Content-Length")
	if st, _, body := do(t, req); st != 403 || !strings.Contains(body, "SignatureDoesNotMatch") {
		t.Errorf("tampered body: %d %s", st, body)
	}
	if up.count() != before {
		t.Errorf("refused requests reached upstream")
	}
	// the sidecar case with a session token: the client's token is dropped, the proxy signs with its own
	st, _, body = do(t, signedRaw(t, tp.url+"/", "AmazonSQS.ListQueues", "{}", time.Now(), "client-session-token"))
	if st != 200 {
		t.Errorf("session-token client: %d %s", st, body)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream check: %v", bad)
	}
}

// TestQueryProtocolAuthError: a Query client gets its error as an XML ErrorResponse.
func TestQueryProtocolAuthError(t *testing.T) {
	tp := startProxy(t, func(c *Config) { c.Upstream = "http://127.0.0.1:1" })
	sn := sns.New(sns.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, "wrong", "")})
	_, err := sn.ListTopics(context.Background(), &sns.ListTopicsInput{})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "SignatureDoesNotMatch" {
		t.Fatalf("SNS (Query) with a wrong secret: %v", err)
	}
}

// TestTrustClients forwards unsigned requests on a loopback listener, still re-signed upstream.
func TestTrustClients(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL(); c.TrustClients = true })
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), Credentials: awssdk.AnonymousCredentials{}})
	if _, err := cl.ListQueues(context.Background(), &sqs.ListQueuesInput{}); err != nil {
		t.Fatalf("unsigned client in trust mode: %v", err)
	}
	if bad := up.failures(); len(bad) > 0 || up.count() != 1 {
		t.Fatalf("upstream: %d requests, failures %v", up.count(), bad)
	}
}

// TestSigV4ContentSha256: a client that signs X-Amz-Content-Sha256 (as S3-style signers do) is
// verified; an UNSIGNED-PAYLOAD one is refused.
func TestSigV4ContentSha256(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:4566/", strings.NewReader("{}"))
	r.Header.Set("X-Amz-Target", "AmazonSQS.ListQueues")
	now := time.Now()
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	for _, tc := range []struct {
		hash string
		ok   bool
	}{{sha256Hex([]byte("{}")), true}, {"UNSIGNED-PAYLOAD", false}} {
		req := r.Clone(context.Background())
		req.Header.Set("X-Amz-Content-Sha256", tc.hash)
		if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, tc.hash, "sqs", "us-east-1", now); err != nil {
			t.Fatal(err)
		}
		a, err := parseAuthorization(req.Header.Get("Authorization"))
		if err != nil {
			t.Fatal(err)
		}
		f := verifySigV4(req, &a, testSecret, []byte("{}"), now, time.Minute)
		if (f == nil) != tc.ok {
			t.Errorf("X-Amz-Content-Sha256 %s: verification %v, want ok=%v", tc.hash, f, tc.ok)
		}
	}
}

// expiring hands out credentials that expire soon after they are issued.
type expiring struct{ calls atomic.Int32 }

func (e *expiring) Retrieve(context.Context) (awssdk.Credentials, error) {
	e.calls.Add(1)
	return awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret, CanExpire: true, Expires: time.Now().Add(2 * time.Minute)}, nil
}

// TestCredentialsRefreshedBeforeExpiry: credentials inside the refresh window are fetched again
// rather than used until they die.
func TestCredentialsRefreshedBeforeExpiry(t *testing.T) {
	e := &expiring{}
	p, err := New(Config{Listen: "127.0.0.1:0", Credentials: e})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := p.creds.Retrieve(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.calls.Load(); n != 3 {
		t.Fatalf("provider called %d times for 3 retrievals of credentials 2 minutes from expiry, want 3 (refresh window 5m)", n)
	}
}

// TestDefaultCredentialChain: with no Credentials the proxy uses the SDK's chain (here the
// environment variables).
func TestDefaultCredentialChain(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV000000001")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	p, err := New(Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.creds.Retrieve(context.Background())
	if err != nil || c.AccessKeyID != "AKIDFROMENV000000001" {
		t.Fatalf("default chain gave %v, %v", c.AccessKeyID, err)
	}
}

// TestRegionFromDefaultChain: with no Region set, the region comes from the SDK's chain
// (AWS_REGION, AWS_DEFAULT_REGION, the profile) as the README says, before us-east-1: a proxy
// given AWS_REGION=eu-west-1 and no upstream must not send to us-east-1's endpoints.
func TestRegionFromDefaultChain(t *testing.T) {
	for _, tc := range []struct {
		name, region, env, want string
	}{
		{"env", "", "eu-west-1", "eu-west-1"},
		{"config wins", "ap-south-1", "eu-west-1", "ap-south-1"},
		{"neither", "", "", "us-east-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("AWS_REGION", tc.env)
			t.Setenv("AWS_DEFAULT_REGION", "")
			t.Setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV000000001")
			t.Setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
			t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
			p, err := New(Config{Listen: "127.0.0.1:0", Region: tc.region})
			if err != nil {
				t.Fatal(err)
			}
			if p.cfg.Region != tc.want {
				t.Errorf("region %q, want %q", p.cfg.Region, tc.want)
			}
			for svc, u := range p.up {
				if want := svc + "." + tc.want + ".amazonaws.com"; u.Host != want {
					t.Errorf("%s endpoint %s, want %s", svc, u.Host, want)
				}
			}
		})
	}
}

// TestDefaultChainRefreshesBeforeExpiry: credentials from the SDK's default chain (here the
// container credentials endpoint, as on ECS or EKS Pod Identity) that come within the refresh
// window of their expiry are fetched again, and the proxy signs with the new ones.
func TestDefaultChainRefreshesBeforeExpiry(t *testing.T) {
	var calls atomic.Int32
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"AccessKeyId":"AKIDCONTAINER%07d","SecretAccessKey":"secret","Token":"token","Expiration":%q}`,
			n, time.Now().Add(2*time.Minute).UTC().Format(time.RFC3339))
	}))
	defer endpoint.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.URL+"/creds")
	p, err := New(Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for range 3 {
		c, err := p.creds.Retrieve(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, c.AccessKeyID)
	}
	// 2 minutes left is inside the 5-minute window even with its jitter (at least 2.5 minutes).
	if n := calls.Load(); n != 3 || keys[0] == keys[2] {
		t.Fatalf("the endpoint was asked %d times for 3 retrievals of credentials 2 minutes from expiry (keys %v); want 3 and new keys", n, keys)
	}
}

func TestAppID(t *testing.T) {
	for ua, want := range map[string]string{
		"":                                       "",
		"aws-sdk-go-v2/1.0 os/linux app/billing": "billing",
		"app/x":                                  "x",
		"  app/first\tapp/second ":               "first",
		"myapp/x lang/go":                        "",
		"a\u00a0app/nbsp b":                      "nbsp",
		"app/":                                   "",
		// Capped, and not cut inside a character: 254 bytes, then a 2-byte é across the cap.
		"app/" + strings.Repeat("a", 254) + "é" + strings.Repeat("b", 1<<20): strings.Repeat("a", 254),
		"app/" + strings.Repeat("c", 300):                                    strings.Repeat("c", 255),
	} {
		if got := appID(ua); got != want {
			t.Errorf("appID(%q) = %q, want %q", ua, got, want)
		}
	}
}

// TestLongHostNotRemembered: queue URLs are handed out under the Host the client used; under a
// Host no DNS name could be, the rewritten URL is not kept in the bounded map (whose 10,000
// entries would each hold it), and still maps back upstream by its host.
func TestLongHostNotRemembered(t *testing.T) {
	up, _ := url.Parse("http://upstream:4566")
	for _, c := range []struct {
		host     string
		remember bool
	}{{"127.0.0.1:4566", true}, {strings.Repeat("h", maxRememberedHost+1), false}} {
		p := &Proxy{qurls: newBoundedMap(10), up: map[string]*endpoint{ServiceSQS: newEndpoint(up)}}
		cl := &call{r: &http.Request{Host: c.host}, service: ServiceSQS}
		out := p.toProxyURL(cl, "http://upstream:4566/123456789012/q")
		if out != "http://"+c.host+"/123456789012/q" {
			t.Errorf("host of %d bytes: handed out %.80q", len(c.host), out)
		}
		if got := p.qurls.m.Len() == 1; got != c.remember {
			t.Errorf("host of %d bytes: remembered %v, want %v", len(c.host), got, c.remember)
		}
		if back, ok := p.toUpstreamURL(cl, out); !ok || back != "http://upstream:4566/123456789012/q" {
			t.Errorf("host of %d bytes: maps back to %q, %v", len(c.host), back, ok)
		}
	}
}

// TestLongScopeNotCached: signing keys are cached per scope; a scope no AWS region and service
// make (the client chooses it) is derived but not kept.
func TestLongScopeNotCached(t *testing.T) {
	cached := func(region string) bool {
		signingKey("secret", "20261205", region, "sqs")
		signingKeys.Lock()
		defer signingKeys.Unlock()
		_, ok := signingKeys.m[signingKeyID{"secret", "20261205", region, "sqs"}]
		return ok
	}
	if !cached("us-east-1") {
		t.Error("the key of a real scope is not cached")
	}
	long := strings.Repeat("r", 1<<16)
	if cached(long) {
		t.Error("the key of a 64 KiB region is cached")
	}
	if !bytes.Equal(signingKey("secret", "20261205", long, "sqs"), deriveKey("secret", "20261205", long, "sqs")) {
		t.Error("the uncached key differs from the derived one")
	}
}
